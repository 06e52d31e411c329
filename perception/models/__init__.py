"""LiDAR detectors: voxelize -> VFE -> 3D backbone -> BEV -> 2D backbone -> head (explicit constructors, typed
inputs and outputs). Names are re-exported lazily (see :mod:`perception._lazy`)."""

from perception._lazy import lazy_exports

_EXPORTS = {
    "VoxelDetector": "detector",
    "Voxelization": "detector",
    "total_loss": "detector",
    "build_detector": "build",
    "ModelConfig": "model_config",
    "ModelPlan": "model_config",
    "MeanVFE": "vfe",
    "DynamicPillarVFE": "vfe",
    "DynamicVoxelVFE": "vfe",
    "PillarScatter": "bev",
    "HeightCompression": "bev",
    "BaseBEVBackbone": "bev_backbone",
    "gaussian_focal_loss": "losses",
    "sigmoid_focal_loss": "losses",
    "weighted_l1_loss": "losses",
    "clamped_sigmoid": "losses",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
