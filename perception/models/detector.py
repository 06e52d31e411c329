"""A voxel-based LiDAR detector: voxelize -> VFE -> 3D backbone -> BEV -> 2D backbone -> head -> loss / decode.

One class covers CenterPoint (spconv sparse ResNet, height compression), DSVT-pillar / DSVT-voxel (pillar scatter)
and either head (CenterPoint, TransFusion): the stages are built elsewhere (explicitly, or from a config by
:func:`perception.models.build.build_detector`) and handed over. Each stage declares its ``input_shape()`` and
``output_shape()`` (:mod:`perception.shapes`); the constructor compares each output with the next input (grid,
channels, stride, BEV map size) and raises ``ValueError`` saying which pair disagrees. It never asks which class a
stage is.

Voxelization is data-dependent preprocessing outside the learned graph (DESIGN.md): hard voxels
(:func:`perception.ops.voxelize.voxelize`, capped) feed :class:`~perception.models.vfe.MeanVFE`; with dynamic
voxelization the dynamic VFEs voxelize the points themselves (every point kept) on the same grid. Both use the one
:class:`~perception.grid.VoxelGrid` (``cfg.data.grid``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from perception.grid import VoxelGrid
from perception.ops.voxelize import voxelize
from perception.shapes import Backbone3D, BEVStage, DetectionHead, SparseShape, SparseStage, check_fit
from perception.structures import Batch, Detections, SparseFeatures, Voxels

from .model_config import VoxelizationConfig


class Voxelization:
    """Points -> hard voxels (mode ``hard``), or nothing to do (mode ``dynamic``: the dynamic VFEs voxelize).

    Args:
        config: mode and caps (``model.voxelization``).
        grid: the voxel grid (``data``'s :class:`~perception.grid.VoxelGrid`).
    """

    def __init__(self, config: VoxelizationConfig, *, grid: VoxelGrid) -> None:
        self.config = config
        self.grid = grid

    @property
    def mode(self) -> str:
        return self.config.mode

    def __call__(self, batch: Batch, *, training: bool) -> Voxels:
        """Hard voxels of ``batch.points`` (capped by the config's ``max_*``; caps depend on ``training``)."""
        if self.config.mode != "hard":
            raise ValueError(
                "Voxelization in mode 'dynamic' has no voxels to make: the dynamic VFE voxelizes"
            )
        return voxelize(
            batch.points,
            self.grid,
            max_points_per_voxel=self.config.max_points_per_voxel,
            max_voxels=self.config.max_voxels(training),
            batch_index=batch.batch_index,
        )

    def __repr__(self) -> str:
        return f"Voxelization({self.config!r}, grid={self.grid!r})"


class VoxelDetector(nn.Module):
    """Voxel detector assembled from built stages.

    Args:
        voxelization: grid and caps; its mode must be the one the VFE reads (``vfe.voxel_mode``) and its grid the
            VFE's.
        vfe: points / hard voxels -> :class:`SparseFeatures` ``(M, C_vfe)`` on the grid ``(nz, ny, nx)``.
        backbone_3d: a :class:`~perception.shapes.Backbone3D` (spconv ResNet, DSVT): -> ``(M', C_3d)`` on
            ``(D, H, W)``.
        to_bev: :class:`HeightCompression` / ``PillarScatter``: -> dense ``(B, C_3d * D, H, W)``.
        bev_backbone: :class:`BaseBEVBackbone`: -> ``(B, C_2d, H / s, W / s)``.
        head: a :class:`~perception.shapes.DetectionHead` (CenterPoint, TransFusion).

    Every stage declares ``input_shape()`` / ``output_shape()`` (:mod:`perception.shapes`); the constructor checks
    that each output is the next stage's input and raises ``ValueError`` naming the pair.

    ``forward(batch) -> head output``; ``loss(batch) -> dict[str, Tensor]`` (float32 scalars, the total is their
    sum: :func:`total_loss`); ``predict(batch) -> list[Detections]`` (call ``eval()`` first for inference).
    """

    def __init__(
        self,
        *,
        voxelization: Voxelization,
        vfe: SparseStage,
        backbone_3d: Backbone3D,
        to_bev: BEVStage,
        bev_backbone: BEVStage,
        head: DetectionHead,
    ) -> None:
        super().__init__()
        for name, stage, protocol in (
            ("vfe", vfe, SparseStage),
            ("backbone_3d", backbone_3d, Backbone3D),
            ("to_bev", to_bev, BEVStage),
            ("bev_backbone", bev_backbone, BEVStage),
            ("head", head, DetectionHead),
        ):
            if not isinstance(stage, nn.Module) or not isinstance(stage, protocol):
                raise TypeError(
                    f"{name} must be an nn.Module following {protocol.__name__}, got {type(stage).__name__}"
                )
        self.voxelization = voxelization
        self.vfe: SparseStage = vfe
        self.backbone_3d: Backbone3D = backbone_3d
        self.to_bev: BEVStage = to_bev
        self.bev_backbone: BEVStage = bev_backbone
        self.head: DetectionHead = head
        self.num_point_features = int(vfe.num_point_features)
        self._check_stages()

    def _check_stages(self) -> None:
        vox, vfe = self.voxelization, self.vfe
        if vfe.voxel_mode != vox.mode:
            raise ValueError(f"voxelization mode {vox.mode!r} does not fit the VFE {type(vfe).__name__}")
        if vfe.grid != vox.grid:
            raise ValueError(f"the VFE's grid {vfe.grid} differs from the voxelization's {vox.grid}")
        vfe_out: SparseShape = vfe.output_shape()
        backbone_in: SparseShape = self.backbone_3d.input_shape()
        if backbone_in.grid != vfe_out.grid:
            raise ValueError(
                f"backbone_3d expects the grid {backbone_in.grid}, the voxelization makes {vfe_out.grid}"
            )
        check_fit("the VFE", vfe_out, "backbone_3d", backbone_in)
        check_fit("backbone_3d", self.backbone_3d.output_shape(), "to_bev", self.to_bev.input_shape())
        check_fit("to_bev", self.to_bev.output_shape(), "bev_backbone", self.bev_backbone.input_shape())
        check_fit("bev_backbone", self.bev_backbone.output_shape(), "the head", self.head.input_shape())

    def voxel_features(self, batch: Batch) -> SparseFeatures:
        """Voxelize ``batch.points`` and encode: :class:`SparseFeatures` ``(M, C_vfe)`` on the voxel grid."""
        if not isinstance(batch, Batch):
            raise TypeError(f"batch must be a perception.structures.Batch, got {type(batch).__name__}")
        if batch.points.shape[1] != self.num_point_features:
            raise ValueError(
                f"batch.points must have {self.num_point_features} columns, got {batch.points.shape[1]} "
                f"{batch.point_channels}"
            )
        if self.voxelization.mode == "dynamic":
            return self.vfe(batch.points, batch_index=batch.batch_index, batch_size=batch.batch_size)
        voxels = self.voxelization(batch, training=self.training)
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
        """Decoded detections, one :class:`Detections` per sample (boxes ``(N, 9)`` or ``(N, 7)``, LiDAR frame).

        The head's ``predict`` (CenterPoint: regression at the heatmap peaks only; TransFusion: ``decode(head(bev))``).
        Under bf16 autocast the head's outputs are cast to float32 first: peaks, box decoding and NMS run in
        float32 (:mod:`perception.engine.precision`)."""
        return self.head.predict(self.bev_features(batch))


def total_loss(losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Float32 sum of the named loss terms of :meth:`VoxelDetector.loss` (the one loss sum: the trainer uses it).

    Terms are added in the dict's order, each cast to float32 (so bf16 terms under autocast sum in float32).

    Raises:
        TypeError / ValueError: ``losses`` is not a non-empty dict of scalar tensors (names the bad key).
    """
    if not isinstance(losses, Mapping) or not losses:
        raise ValueError(
            f"model.loss(batch) must return a non-empty dict of scalar tensors, got {losses!r:.80}"
        )
    total: torch.Tensor | None = None
    for key, value in losses.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"loss term {key!r} must be a torch.Tensor, got {type(value).__name__}")
        if value.numel() != 1:
            raise ValueError(f"loss term {key!r} must be a scalar, got shape {tuple(value.shape)}")
        v = value.float().reshape(())
        total = v if total is None else total + v
    assert total is not None
    return total


__all__ = ["VoxelDetector", "Voxelization", "total_loss"]
