"""SparseFusion (Xie et al., ICCV 2023): LiDAR-camera fusion of sparse object candidates.

Stages (one module each): geometric transfer (LiDAR depth into the image features), the camera branch (per-view
heatmaps, queries, multi-scale deformable attention), lifting of camera candidates into the LiDAR frame and the
view transformer, semantic transfer (image features into the BEV map), and the fusion stage (self-attention over
LiDAR and camera candidates).
"""
