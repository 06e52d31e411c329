"""``model.fusion:`` section of a SparseFusion config: one strict, frozen class per stage (torch-free, so the config
loader imports it without torch; the modules import their config class from here).

.. code-block:: yaml

    model:
      ...                       # the LiDAR detector (TransFusion head), as for TransFusion-L
      fusion:
        mode: fusion            # or camera_only (the camera branch and view transformer alone)
        freeze_lidar: true      # second stage: LiDAR branch frozen, loaded with tools/train.py --pretrained
        per_view: false         # run the per-view work view by view (memory); identical results
        image_backbone: {depth: 50}
        fpn: {out_channels: 256}
        geometric_transfer: {channels: 64}
        camera: {num_proposals: 200}
        view_transformer: {num_heads: 8}
        semantic_transfer: {heights: [-1.5, -0.5, 0.5]}
        fusion: {hidden_channels: 128, num_heads: 8, ffn_channels: 256}
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import model_validator

from perception.config_types import (
    Bool,
    Float,
    NonNegFloat,
    PosInt,
    PositiveFloat,
    Probability,
    StrictSection,
)

from ..heads.transfusion_config import MatchCosts
from ..image.image_config import FPNConfig, ResNetConfig
from .camera_config import CameraBranchConfig

__all__ = [
    "FusionStageConfig",
    "GeometricTransferConfig",
    "SemanticTransferConfig",
    "SparseFusionConfig",
    "ViewLossConfig",
    "ViewTransformerConfig",
]


class GeometricTransferConfig(StrictSection):
    """``model.fusion.geometric_transfer:``.

    Attributes:
        channels: width of the depth CNN.
        max_depth: metres; channel 0 of the depth map is ``min(depth / max_depth, 1)``.
        depth_stride: stride of the depth map w.r.t. the input image (the authors: 4, the finest FPN level); it
            must divide the first FPN stride.
    """

    channels: PosInt = 64
    max_depth: PositiveFloat = 60.0
    depth_stride: PosInt = 4


class SemanticTransferConfig(StrictSection):
    """Semantic transfer (``model.fusion.semantic_transfer:``).

    Attributes:
        heights: LiDAR-frame z (m) each cell centre is lifted to (nuScenes: the ground is near -1.8 m, object
            centres near -1 m).
        num_levels: the finest this many FPN levels are sampled; None: all.
        hidden_channels: attention width; None: the BEV channels.
        num_heads: attention heads (divide the width).
        max_cells: occupied cells processed per sample (:meth:`SemanticTransfer.select_cells`).
    """

    heights: tuple[Float, ...] = (-1.5, -0.5, 0.5)
    num_levels: PosInt | None = None
    hidden_channels: PosInt | None = None
    num_heads: PosInt = 8
    max_cells: PosInt = 30000

    @model_validator(mode="after")
    def _check(self) -> SemanticTransferConfig:
        if not self.heights or not all(math.isfinite(h) for h in self.heights):
            raise ValueError(
                f"semantic_transfer.heights must be finite metres, at least one, got {self.heights}"
            )
        return self


class ViewLossConfig(StrictSection):
    """Loss of the view-transform stage (``loss:``).

    Attributes:
        cls_weight: weight of the focal class loss (``loss_view_cls``).
        bbox_weight: weight of the L1 box-code loss (``loss_view_bbox``).
        code_weights: per code column (10, or 8 without velocity); None: 1, and 0.2 for the velocities.
        focal_alpha / focal_gamma: of the class loss.
        match: Hungarian matching costs.
    """

    cls_weight: NonNegFloat = 1.0
    bbox_weight: NonNegFloat = 0.25
    code_weights: tuple[NonNegFloat, ...] | None = None
    focal_alpha: NonNegFloat = 0.25
    focal_gamma: NonNegFloat = 2.0
    match: MatchCosts = MatchCosts()


class ViewTransformerConfig(StrictSection):
    """The view transformer (``model.fusion.view_transformer:``; defaults: the authors' nuScenes config).

    Attributes:
        num_heads: attention heads (divides the hidden size).
        ffn_channels: hidden size of the FFN.
        dropout: attention / residual dropout.
        activation: FFN activation.
        camera_encoding: gate the query features with the encoded camera parameters (the authors' ``se``);
            False leaves them out.
        branch_channels / branch_layers: prediction branches (as TransFusion's).
        loss: the stage's loss.
    """

    num_heads: PosInt = 8
    ffn_channels: PosInt = 256
    dropout: Probability = 0.1
    activation: Literal["relu", "gelu"] = "relu"
    camera_encoding: Bool = True
    branch_channels: PosInt = 64
    branch_layers: PosInt = 2
    loss: ViewLossConfig = ViewLossConfig()


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


class SparseFusionConfig(StrictSection):
    """``model.fusion:`` SparseFusion on top of the ``model:`` LiDAR detector (which must have a TransFusion head).

    Attributes:
        mode: ``fusion`` (LiDAR and camera candidates fused) or ``camera_only`` (the camera branch and the view
            transformer alone; the LiDAR stages are built but never run).
        freeze_lidar: the authors' second stage: the LiDAR stages get no gradient and stay in eval mode; their
            weights come from a LiDAR-only checkpoint (``tools/train.py --pretrained``), and a fresh run without
            one is refused. False trains everything, the LiDAR head's losses included.
        per_view: run the camera branch's and the semantic transfer's per-view work view by view (less memory;
            identical results).
        image_backbone / fpn: the image encoder.
        geometric_transfer: the current sweep's sparse depth added to the image features; None: off.
        camera: the camera branch.
        view_transformer: the view transformer over the lifted camera candidates.
        semantic_transfer: image features into the BEV map (the fused heatmap); None: off.
        fusion: the fusion stage over both candidate sets.
    """

    mode: Literal["fusion", "camera_only"] = "fusion"
    freeze_lidar: Bool = True
    per_view: Bool = False
    image_backbone: ResNetConfig = ResNetConfig()
    fpn: FPNConfig = FPNConfig()
    geometric_transfer: GeometricTransferConfig | None = GeometricTransferConfig()
    camera: CameraBranchConfig = CameraBranchConfig()
    view_transformer: ViewTransformerConfig = ViewTransformerConfig()
    semantic_transfer: SemanticTransferConfig | None = SemanticTransferConfig()
    fusion: FusionStageConfig = FusionStageConfig()

    @model_validator(mode="after")
    def _check(self) -> SparseFusionConfig:
        g = self.geometric_transfer
        if g is not None and self.fpn.levels[0] % g.depth_stride:
            raise ValueError(
                f"model.fusion.geometric_transfer.depth_stride ({g.depth_stride}) must divide the first FPN "
                f"stride (model.fusion.fpn.levels[0] = {self.fpn.levels[0]})"
            )
        s = self.semantic_transfer
        if s is not None and s.num_levels is not None and s.num_levels > len(self.fpn.levels):
            raise ValueError(
                f"model.fusion.semantic_transfer.num_levels ({s.num_levels}) exceeds the FPN levels "
                f"({len(self.fpn.levels)})"
            )
        return self
