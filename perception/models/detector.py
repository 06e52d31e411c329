"""A voxel-based LiDAR detector: voxelize -> VFE -> 3D backbone -> BEV -> 2D backbone -> head -> loss / decode.

One class covers CenterPoint (spconv sparse ResNet, height compression), DSVT-pillar / DSVT-voxel (pillar scatter)
and either head (CenterPoint, TransFusion): the stages are built elsewhere (explicitly, or from a config by
:func:`perception.models.build.build_detector`) and handed over. The constructor checks that the stages fit
together (grid, channels, strides, BEV map size) and raises ``ValueError`` saying which pair disagrees.

Voxelization is data-dependent preprocessing outside the learned graph (DESIGN.md): hard voxels
(:func:`perception.ops.voxelize.voxelize`, capped) feed :class:`~perception.models.vfe.MeanVFE`; with dynamic
voxelization the dynamic VFEs voxelize the points themselves (every point kept) on the same grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import nn

from perception.ops.voxelize import make_grid, voxelize
from perception.structures import Batch, Detections, SparseFeatures

from .backbones.dsvt import DSVTBackbone
from .bev import HeightCompression
from .bev_backbone import BaseBEVBackbone
from .vfe import MeanVFE, _DynamicVFE


@dataclass(frozen=True)
class Voxelization:
    """Voxel grid and caps.

    Attributes:
        point_cloud_range: ``(x0, y0, z0, x1, y1, z1)`` metres, LiDAR frame.
        voxel_size: ``(vx, vy, vz)`` metres.
        mode: ``"hard"`` (for :class:`MeanVFE`) or ``"dynamic"`` (for the dynamic VFEs, which voxelize themselves).
        max_points_per_voxel: hard mode: points kept per voxel (first in input order).
        max_voxels_train / max_voxels_test: hard mode: voxels kept in training / eval mode (None: all).
    """

    point_cloud_range: tuple[float, ...]
    voxel_size: tuple[float, ...]
    mode: str = "hard"
    max_points_per_voxel: int | None = None
    max_voxels_train: int | None = None
    max_voxels_test: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("hard", "dynamic"):
            raise ValueError(f"Voxelization.mode must be 'hard' or 'dynamic', got {self.mode!r}")
        if self.mode == "hard" and self.max_points_per_voxel is None:
            raise ValueError("Voxelization: mode 'hard' needs max_points_per_voxel")
        if self.mode == "dynamic" and (
            self.max_points_per_voxel or self.max_voxels_train or self.max_voxels_test
        ):
            raise ValueError("Voxelization: caps apply to mode 'hard' only")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return make_grid(self.voxel_size, self.point_cloud_range).shape


def _backbone_io(backbone: nn.Module) -> tuple[tuple[int, ...], int, tuple[int, ...], int, int]:
    """(input grid, input channels, output grid, output channels, x/y stride) of a supported 3D backbone."""
    if isinstance(backbone, DSVTBackbone):
        inp = backbone.input_layer
        strides = [c.downsample_stride for c in inp.stage_configs if c.downsample_stride is not None]
        stride = 1
        for s in strides:
            if s[1] != s[2]:
                raise ValueError(f"DSVT downsample strides must be equal in y and x, got {s}")
            stride *= s[1]
        return inp.sparse_shape, backbone.in_channels, backbone.out_shape, backbone.out_channels, stride
    from .backbones.spconv_resnet import VoxelResBackbone8x  # imports spconv (seconds): only when it is used

    if isinstance(backbone, VoxelResBackbone8x):
        return backbone.grid_shape, backbone.in_channels, backbone.out_grid_shape, backbone.out_channels, 8
    raise TypeError(
        f"backbone_3d must be a VoxelResBackbone8x or DSVTBackbone, got {type(backbone).__name__}"
    )


class VoxelDetector(nn.Module):
    """Voxel detector assembled from built stages.

    Args:
        voxelization: grid and caps; must match the VFE (hard <-> :class:`MeanVFE`, dynamic <-> dynamic VFEs with the
            same range and voxel size) and the backbone's input grid.
        vfe: points / hard voxels -> :class:`SparseFeatures` ``(M, C_vfe)`` on the grid ``(nz, ny, nx)``.
        backbone_3d: :class:`VoxelResBackbone8x` or :class:`DSVTBackbone`: -> ``(M', C_3d)`` on ``(D, H, W)``.
        to_bev: :class:`HeightCompression` / ``PillarScatter``: -> dense ``(B, C_3d * D, H, W)``.
        bev_backbone: :class:`BaseBEVBackbone`: -> ``(B, C_2d, H / s, W / s)``.
        head: CenterPoint or TransFusion head with ``forward(bev) -> output``, ``loss(output, boxes, labels)`` and
            ``decode(output)``, whose ``coder.feature_stride`` is the total stride of its input map.

    ``forward(batch) -> head output``; ``loss(batch) -> dict[str, Tensor]`` (float32 scalars, the total is their
    sum); ``predict(batch) -> list[Detections]`` (call ``eval()`` first for inference).
    """

    vfe: Any
    backbone_3d: Any
    head: Any

    def __init__(
        self,
        *,
        voxelization: Voxelization,
        vfe: nn.Module,
        backbone_3d: nn.Module,
        to_bev: HeightCompression,
        bev_backbone: BaseBEVBackbone,
        head: nn.Module,
    ) -> None:
        super().__init__()
        self.voxelization = voxelization
        self.vfe, self.backbone_3d, self.to_bev = vfe, backbone_3d, to_bev
        self.bev_backbone, self.head = bev_backbone, head
        self.num_point_features = int(self.vfe.num_point_features)
        self._check_stages()

    def _check_stages(self) -> None:
        vox, vfe = self.voxelization, self.vfe
        if isinstance(vfe, MeanVFE) != (vox.mode == "hard"):
            raise ValueError(f"voxelization mode {vox.mode!r} does not fit the VFE {type(vfe).__name__}")
        if isinstance(vfe, _DynamicVFE) and (
            vfe.point_cloud_range != tuple(vox.point_cloud_range) or vfe.voxel_size != tuple(vox.voxel_size)
        ):
            raise ValueError(
                f"the VFE's point_cloud_range / voxel_size {vfe.point_cloud_range} / {vfe.voxel_size} differ from "
                f"the voxelization's {vox.point_cloud_range} / {vox.voxel_size}"
            )
        grid_in, c_in, grid_out, c_out, stride = _backbone_io(self.backbone_3d)
        if tuple(grid_in) != vox.grid_shape:
            raise ValueError(
                f"backbone_3d expects the grid {tuple(grid_in)}, the voxelization makes {vox.grid_shape}"
            )
        if vfe.out_channels != c_in:
            raise ValueError(f"the VFE outputs {vfe.out_channels} channels, backbone_3d expects {c_in}")
        if tuple(self.to_bev.grid_shape) != tuple(grid_out) or self.to_bev.in_channels != c_out:
            raise ValueError(
                f"to_bev expects {self.to_bev.in_channels} channels on {self.to_bev.grid_shape}, backbone_3d "
                f"outputs {c_out} on {tuple(grid_out)}"
            )
        bb = self.bev_backbone
        if bb.in_channels != self.to_bev.out_channels:
            raise ValueError(
                f"bev_backbone expects {bb.in_channels} channels, to_bev gives {self.to_bev.out_channels}"
            )
        h, w = grid_out[1], grid_out[2]
        if h % bb.max_stride or w % bb.max_stride:
            raise ValueError(
                f"the BEV map {h} x {w} is not a multiple of bev_backbone's stride {bb.max_stride}"
            )
        total = Fraction(stride) * Fraction(bb.out_stride).limit_denominator(1000)
        coder = self.head.coder
        if total != coder.feature_stride:
            raise ValueError(
                f"the head's feature_stride is {coder.feature_stride} but its input has stride {float(total):g} "
                f"(backbone_3d {stride} x bev_backbone {bb.out_stride:g})"
            )
        size = (int(h / bb.out_stride), int(w / bb.out_stride))
        if size != tuple(coder.feature_map_size):
            raise ValueError(
                f"the head expects a {coder.feature_map_size} map, the BEV backbone makes {size}"
            )
        head_in = getattr(self.head, "in_channels", None) or self.head.shared_conv.in_channels
        if head_in != bb.out_channels:
            raise ValueError(f"the head expects {head_in} channels, bev_backbone gives {bb.out_channels}")

    def voxel_features(self, batch: Batch) -> SparseFeatures:
        """Voxelize ``batch.points`` and encode: :class:`SparseFeatures` ``(M, C_vfe)`` on the voxel grid."""
        if not isinstance(batch, Batch):
            raise TypeError(f"batch must be a perception.structures.Batch, got {type(batch).__name__}")
        if batch.points.shape[1] != self.num_point_features:
            raise ValueError(
                f"batch.points must have {self.num_point_features} columns, got {batch.points.shape[1]} "
                f"{batch.point_channels}"
            )
        vox = self.voxelization
        if vox.mode == "dynamic":
            return self.vfe(batch.points, batch_index=batch.batch_index, batch_size=batch.batch_size)
        voxels = voxelize(
            batch.points,
            vox.voxel_size,
            vox.point_cloud_range,
            max_points_per_voxel=vox.max_points_per_voxel,
            max_voxels=vox.max_voxels_train if self.training else vox.max_voxels_test,
            batch_index=batch.batch_index,
        )
        return self.vfe(voxels, batch_size=batch.batch_size)

    def bev_features(self, batch: Batch) -> torch.Tensor:
        """The head's input ``(B, C_2d, H, W)``: voxelize -> VFE -> 3D backbone -> BEV -> 2D backbone."""
        sparse = self.voxel_features(batch)
        sparse = self.backbone_3d(sparse)
        bev = self.to_bev(sparse)
        return self.bev_backbone(bev)

    def forward(self, batch: Batch) -> Any:
        """The head's raw output (``CenterPointOutput`` / ``TransFusionOutput``) for ``batch``."""
        return self.head(self.bev_features(batch))

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named float32 training losses for ``batch`` and its ground truth; the total is their sum."""
        return self.head.loss(self(batch), batch.boxes, batch.labels)

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Detections]:
        """Decoded detections, one :class:`Detections` per sample (boxes ``(N, 9)`` or ``(N, 7)``, LiDAR frame)."""
        return self.head.decode(self(batch))


def total_loss(losses: dict[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum of the named losses of :meth:`VoxelDetector.loss`."""
    values = list(losses.values()) if isinstance(losses, dict) else list(losses)
    if not values:
        raise ValueError("no losses to sum")
    return torch.stack([v.float() for v in values]).sum()


__all__ = ["VoxelDetector", "Voxelization", "total_loss"]
