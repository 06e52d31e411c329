"""``model.fusion.camera:`` the camera branch's settings (torch-free; :mod:`.camera_branch` builds from them).

Defaults are the reference config of the issue / the authors' nuScenes camera branch: 200 queries, width 128,
8 heads, FFN 256, one decoder layer with 4 deformable sampling points per head and level.
"""

from __future__ import annotations

from pydantic import model_validator

from perception.config_types import NonNegFloat, NonNegInt, PosInt, PositiveFloat, Probability, StrictSection

from ..heads.transfusion_config import MatchCosts

__all__ = ["CameraBranchConfig", "CameraLossConfig"]


class CameraLossConfig(StrictSection):
    """Losses of the camera branch (``model.fusion.camera.loss:``).

    Attributes:
        heatmap_weight: weight of the Gaussian focal loss on the per-view, per-level heatmaps
            (``loss_cam_heatmap``).
        cls_weight: weight of the focal class loss of the queries (``loss_cam_cls``).
        bbox_weight: weight of the L1 loss on the matched queries' camera-frame codes (``loss_cam_bbox``).
        code_weights: per code column ``[du, dv, log_depth, log_dx, log_dy, log_dz, sin, cos, v_x, v_z]`` (10, or
            8 without velocity); None: 1, and 0.2 for the velocities.
        focal_alpha / focal_gamma: of the class loss.
        gaussian_overlap / min_radius: heatmap target radius (CenterPoint's rule on the projected 2D box size in
            level cells).
        match: Hungarian costs; the class and IoU costs as TransFusion, the centre cost on the lifted centres.
    """

    heatmap_weight: NonNegFloat = 1.0
    cls_weight: NonNegFloat = 1.0
    bbox_weight: NonNegFloat = 0.25
    code_weights: tuple[NonNegFloat, ...] | None = None
    focal_alpha: NonNegFloat = 0.25
    focal_gamma: NonNegFloat = 2.0
    gaussian_overlap: Probability = 0.1
    min_radius: NonNegInt = 1
    match: MatchCosts = MatchCosts()

    @model_validator(mode="after")
    def _check(self) -> CameraLossConfig:
        if self.gaussian_overlap <= 0:
            raise ValueError(f"camera.loss.gaussian_overlap must be in (0, 1), got {self.gaussian_overlap}")
        if self.code_weights is not None and len(self.code_weights) not in (8, 10):
            raise ValueError(
                f"camera.loss.code_weights needs 8 (no velocity) or 10 entries, got {len(self.code_weights)}"
            )
        return self


class CameraBranchConfig(StrictSection):
    """The camera branch (``model.fusion.camera:``).

    Attributes:
        num_proposals: queries per sample, the top-K heatmap peaks over all views and levels.
        hidden_channels: query width ``C`` (the decoder's ``d_model``).
        num_heads: attention heads (divide ``hidden_channels``).
        ffn_channels: decoder FFN hidden size.
        num_points: deformable sampling points per head and level.
        nms_kernel_size: max-pool window of the peak selection (odd).
        dropout: decoder dropout.
        branch_channels: hidden size of the prediction MLPs.
        max_depth: metres; predicted depths are clamped to ``(0, max_depth]`` before lifting.
        loss: the branch's losses.
    """

    num_proposals: PosInt = 200
    hidden_channels: PosInt = 128
    num_heads: PosInt = 8
    ffn_channels: PosInt = 256
    num_points: PosInt = 4
    nms_kernel_size: PosInt = 3
    dropout: Probability = 0.1
    branch_channels: PosInt = 64
    max_depth: PositiveFloat = 100.0
    loss: CameraLossConfig = CameraLossConfig()

    @model_validator(mode="after")
    def _check(self) -> CameraBranchConfig:
        if self.hidden_channels % self.num_heads:
            raise ValueError(
                f"camera.num_heads ({self.num_heads}) must divide camera.hidden_channels ({self.hidden_channels})"
            )
        if self.nms_kernel_size % 2 == 0:
            raise ValueError(f"camera.nms_kernel_size must be odd, got {self.nms_kernel_size}")
        return self
