"""``model.fusion:`` section of a SparseFusion config: one strict, frozen class per stage (torch-free).

.. code-block:: yaml

    model:
      ...                       # the LiDAR detector (TransFusion head), as for TransFusion-L
      fusion:
        mode: fusion            # or camera_only (the camera branch alone)
        freeze_lidar: true      # second stage: LiDAR branch frozen, loaded with tools/train.py --pretrained
        per_view: false         # run the per-view work view by view (memory); identical results
        image_backbone: {depth: 50}
        fpn: {out_channels: 256}
        camera: {num_proposals: 200}
        fusion: {hidden_channels: 128, num_heads: 8, ffn_channels: 256}
"""

from __future__ import annotations

from perception.config_types import NonNegFloat, PosInt, StrictSection

from ..heads.transfusion_config import MatchCosts

__all__ = ["FusionStageConfig"]


class FusionStageConfig(StrictSection):
    """``model.fusion.fusion:`` the fusion stage (reference: width 128, 8 heads, FFN 256, one layer).

    Attributes:
        hidden_channels: fusion width ``C``.
        num_heads: attention heads.
        ffn_channels: FFN hidden size.
        dropout: attention / residual dropout.
        branch_channels: hidden size of the prediction branches.
        cls_weight, bbox_weight: loss weights (focal class loss, L1 box loss).
        match: Hungarian matching costs (against all ground truth).
    """

    hidden_channels: PosInt = 128
    num_heads: PosInt = 8
    ffn_channels: PosInt = 256
    dropout: NonNegFloat = 0.1
    branch_channels: PosInt = 64
    cls_weight: NonNegFloat = 1.0
    bbox_weight: NonNegFloat = 0.25
    match: MatchCosts = MatchCosts()
