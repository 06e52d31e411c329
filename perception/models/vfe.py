"""Voxel feature encoders (VFEs): points or hard voxels -> one feature row per occupied voxel.

* :class:`MeanVFE` -- hard voxels (:class:`~perception.structures.Voxels`): the mean of each voxel's valid points.
* :class:`DynamicPillarVFE` / :class:`DynamicVoxelVFE` -- PointNet-style encoders on dynamically voxelized points
  (every point kept, no per-voxel cap), as OpenPCDet's ``DynamicPillarVFE`` / ``DynamicVoxelVFE`` used by
  CenterPoint-pillar and DSVT. Per point the input is

  ``[raw point features, xyz - mean xyz of the point's voxel, xyz - centre of the point's voxel (, |xyz|)]``

  (the raw features are all ``C`` columns with ``use_absolute_xyz``, else the ``C - 3`` columns after xyz).
  For a pillar the "centre" z is the middle of the z range (the single pillar spans the whole height). Then a
  stack of layers, each ``Linear (no bias) -> BatchNorm1d(eps 1e-3, momentum 0.01) -> ReLU`` followed by a
  per-voxel reduction (max by default, or mean) with :func:`perception.ops.scatter.scatter`. Every layer but the
  last produces ``filters[i] // 2`` channels per point and concatenates the voxel's reduced feature to each of
  its points (``filters[i]`` channels); the last layer outputs the reduced voxel feature (``filters[-1]``).

Parameter names (``pfn_layers.{i}.linear`` / ``.norm``) follow OpenPCDet so its checkpoints load unchanged.

Empty input: 0 points (or every point dropped) gives a :class:`SparseFeatures` with 0 rows of the output width.
BatchNorm in training mode needs more than one point (torch raises ``ValueError`` for a single point, as for any
batch of one); in eval mode one point works.

Autocast: the dynamic encoders run in float32 under ``torch.autocast`` (e.g. bf16 on the CPU), so their output
features are float32 and the next stage casts them. Their layers are too narrow (10 -> 16 -> 32 channels per
point) to gain from bf16, and the casts to and from the per-voxel reduction (float32 only) cost more than the
matmuls: the demo detector's VFE took 34.8 ms under bf16 autocast vs 25.3 ms in float32 before this
(``benchmarks/bench_frame.py``). A :class:`PFNLayer` called on its own under autocast still runs its linear layer
in the autocast dtype (its reduction in float32, cast back).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from perception._validate import check_tensor
from perception.grid import VoxelGrid
from perception.ops.scatter import scatter
from perception.ops.voxelize import voxelize
from perception.shapes import SparseShape
from perception.structures import SparseFeatures, Voxels

from .model_config import DynamicVFEConfig

Reduce = Literal["max", "mean"]


def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return batch_size


class MeanVFE(nn.Module):
    """Mean of the valid points of each hard voxel (no parameters).

    Args:
        num_point_features: ``C``, the number of point columns (e.g. 5 for ``[x, y, z, intensity, time_lag]``).
        grid: the voxel grid of the hard voxels it reads.
    """

    voxel_mode = "hard"
    """Reads hard voxels (:class:`~perception.models.detector.Voxelization` in mode ``hard``)."""

    def __init__(self, *, num_point_features: int, grid: VoxelGrid) -> None:
        super().__init__()
        if num_point_features < 3:
            raise ValueError(f"num_point_features must be >= 3 (x, y, z, ...), got {num_point_features}")
        self.num_point_features = int(num_point_features)
        self.grid = grid

    def output_shape(self) -> SparseShape:
        """``C`` channels (the point columns) on the voxel grid."""
        return SparseShape(self.num_point_features, self.grid.shape, 1)

    def forward(self, voxels: Voxels, *, batch_size: int) -> SparseFeatures:
        """Average the first ``counts[i]`` points of each voxel (padding rows are ignored, whatever they hold).

        Args:
            voxels: hard voxels, features float32 ``(M, P, C)``, coords int32 ``(M, 4)``, counts int32 ``(M,)``.
            batch_size: number of samples ``B`` (``coords[:, 0] < B``).

        Returns:
            :class:`SparseFeatures` with float32 ``(M, C)`` features on ``voxels.coords`` / ``voxels.grid_shape``.
        """
        if not isinstance(voxels, Voxels):
            raise TypeError(f"voxels must be a perception.structures.Voxels, got {type(voxels).__name__}")
        batch_size = _check_batch_size(batch_size)
        if tuple(voxels.grid_shape) != self.grid.shape:
            raise ValueError(
                f"voxels.grid_shape must be {self.grid.shape} (the VFE's grid), got {voxels.grid_shape}"
            )
        m, p, c = voxels.features.shape
        if c != self.num_point_features:
            raise ValueError(f"voxels.features must have {self.num_point_features} channels, got {c}")
        valid = torch.arange(p, device=voxels.features.device)[None, :] < voxels.counts[:, None].long()
        summed = torch.where(valid[..., None], voxels.features, 0.0).sum(dim=1)
        mean = summed / voxels.counts.clamp(min=1).to(summed.dtype)[:, None]
        return SparseFeatures(mean, voxels.coords, voxels.grid_shape, batch_size)


class PFNLayer(nn.Module):
    """One point-feature layer: ``Linear -> BatchNorm1d -> ReLU``, then a per-voxel reduction.

    Args:
        in_channels: per-point input width.
        out_channels: output width (per point after the concat for inner layers; per voxel for the last layer).
            Inner layers compute ``out_channels // 2`` per point and append the voxel's reduced feature.
        last: the last layer returns only the reduced per-voxel features.
        use_norm: BatchNorm1d after a bias-free Linear; without it the Linear has a bias.
        reduce: ``"max"`` or ``"mean"`` over the points of a voxel.
        backend: backend of the scatter op (``None`` picks by device).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        last: bool,
        use_norm: bool = True,
        reduce: Reduce = "max",
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if not last and out_channels % 2:
            raise ValueError(
                f"inner PFN layers need an even out_channels (half is concatenated), got {out_channels}"
            )
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
        width = out_channels if last else out_channels // 2
        self.last = last
        self.reduce: Reduce = reduce
        self.backend = backend
        self.linear = nn.Linear(in_channels, width, bias=not use_norm)
        self.norm = nn.BatchNorm1d(width, eps=1e-3, momentum=0.01) if use_norm else None
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, point_to_voxel: torch.Tensor, num_voxels: int) -> torch.Tensor:
        """``x`` ``(N, in)`` per point, ``point_to_voxel`` int64 ``(N,)`` in ``[0, M)`` -> ``(N, out)`` or
        ``(M, out)`` (last layer); dtype of the linear output (float32, or the autocast dtype)."""
        x = self.linear(x)
        if self.norm is not None:
            x = self.norm(x)
        x = self.relu(x)
        pooled = scatter(x.float(), point_to_voxel, num_voxels, self.reduce, backend=self.backend).to(x.dtype)
        if self.last:
            return pooled
        return torch.cat([x, pooled[point_to_voxel]], dim=1)


class _DynamicVFE(nn.Module):
    pillar: bool = False
    voxel_mode = "dynamic"
    """Voxelizes the points itself, dynamically (every point kept), on :attr:`grid`."""

    def __init__(
        self,
        config: DynamicVFEConfig,
        *,
        num_point_features: int,
        grid: VoxelGrid,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        if num_point_features < 3:
            raise ValueError(f"num_point_features must be >= 3 (x, y, z, ...), got {num_point_features}")
        if self.pillar and not grid.is_pillar:
            raise ValueError(
                f"DynamicPillarVFE needs one voxel along z (voxel_size z = z range), got grid {grid.shape}"
            )
        self.config = config
        self.grid = grid
        self.num_point_features = int(num_point_features)
        self.use_absolute_xyz = config.use_absolute_xyz
        self.with_distance = config.with_distance
        self.backend = backend
        scale = config.feature_scale
        if scale is not None and len(scale) != num_point_features - 3:
            raise ValueError(
                f"feature_scale must have {num_point_features - 3} values (the point columns after x, y, z of "
                f"num_point_features={num_point_features}), got {list(scale)}"
            )
        # (C - 3,) or None; not in the state dict: it is the config's
        self.feature_scale: torch.Tensor | None
        self.register_buffer(
            "feature_scale",
            None if scale is None else torch.tensor(scale, dtype=torch.float32),
            persistent=False,
        )
        filters = list(config.filters)
        in_channels = (
            num_point_features + (6 if config.use_absolute_xyz else 3) + (1 if config.with_distance else 0)
        )
        widths = [in_channels, *filters]
        self.pfn_layers = nn.ModuleList(
            PFNLayer(
                in_channels=widths[i],
                out_channels=widths[i + 1],
                last=i == len(filters) - 1,
                use_norm=config.use_norm,
                reduce=config.reduce,
                backend=backend,
            )
            for i in range(len(filters))
        )

    def output_shape(self) -> SparseShape:
        """``filters[-1]`` channels on the voxel grid."""
        return SparseShape(self.config.filters[-1], self.grid.shape, 1)

    def _voxelize(
        self, points: torch.Tensor, batch_index: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vox_points = points
        if self.pillar:
            # Pillars span the whole height: like OpenPCDet/DSVT, only x and y are range-checked, so a point above
            # or below the z range still joins its pillar. Non-finite values in any column still drop the point.
            z_mid = self.grid.lo[2] + self.grid.size[2] / 2
            vox_points = points.clone()
            vox_points[:, 2] = torch.where(torch.isfinite(points[:, 2]), z_mid, points[:, 2])
        dv = voxelize(
            vox_points,
            self.grid,
            batch_index=batch_index,
            mode="dynamic",
            backend=self.backend,
        )
        return dv.point_to_voxel, dv.coords

    def forward(
        self, points: torch.Tensor, *, batch_index: torch.Tensor | None = None, batch_size: int = 1
    ) -> SparseFeatures:
        """Voxelize dynamically and encode.

        Args:
            points: float32 ``(N, C)`` ``[x, y, z, ...]`` metres, LiDAR frame, ``C = num_point_features``.
            batch_index: int64/int32 ``(N,)`` sample of each point, or ``None`` (all in sample 0).
            batch_size: ``B``; every ``batch_index`` must be ``< B``.

        Returns:
            :class:`SparseFeatures`: features float32 ``(M, filters[-1])`` (under autocast too), coords int32
            ``(M, 4)`` ``[b, z, y, x]`` (voxels in order of their first point), ``grid_shape`` ``(nz, ny, nx)``.
            Points outside the range (pillars: outside in x or y) or with a non-finite value are dropped.
        """
        check_tensor("points", points, ndim=2, dtype=torch.float32)
        if points.shape[1] != self.num_point_features:
            raise ValueError(
                f"points must have shape (N, {self.num_point_features}), got {tuple(points.shape)}"
            )
        batch_size = _check_batch_size(batch_size)
        if batch_index is not None:
            check_tensor(
                "batch_index", batch_index, shape=(points.shape[0],), dtype=(torch.int32, torch.int64)
            )
            if batch_index.numel() and int(batch_index.max()) >= batch_size:
                raise ValueError(
                    f"batch_index must be < batch_size={batch_size}, got {int(batch_index.max())}"
                )
        p2v, coords = self._voxelize(points, batch_index)
        keep = p2v >= 0
        pts = points[keep]
        inv = p2v[keep]
        m = coords.shape[0]
        xyz = pts[:, :3]
        mean = scatter(xyz, inv, m, "mean", backend=self.backend)
        f_cluster = xyz - mean[inv]
        vc = coords[inv]  # (N', 4) [b, z, y, x] of each point's voxel
        lo, size = self.grid.lo, self.grid.size
        centre = torch.stack(
            [
                vc[:, 3].to(xyz.dtype) * size[0] + (size[0] / 2 + lo[0]),
                vc[:, 2].to(xyz.dtype) * size[1] + (size[1] / 2 + lo[1]),
                vc[:, 1].to(xyz.dtype) * size[2] + (size[2] / 2 + lo[2]),
            ],
            dim=1,
        )
        if self.feature_scale is None:
            parts = [pts if self.use_absolute_xyz else pts[:, 3:]]
        else:
            extra = pts[:, 3:] * self.feature_scale
            parts = [xyz, extra] if self.use_absolute_xyz else [extra]
        parts += [f_cluster, xyz - centre]
        if self.with_distance:
            parts.append(torch.linalg.vector_norm(xyz, dim=1, keepdim=True))
        x = torch.cat(parts, dim=1)
        # float32 throughout, under autocast too: see the module docstring
        with torch.autocast(points.device.type, enabled=False):
            for layer in self.pfn_layers:
                x = layer(x, inv, m)
        return SparseFeatures(x, coords, self.grid.shape, batch_size)


class DynamicPillarVFE(_DynamicVFE):
    """PointNet-style pillar encoder on dynamically voxelized points (see the module docstring).

    Args:
        config: the layers (:class:`~perception.models.model_config.DynamicVFEConfig`: ``filters``,
            ``use_absolute_xyz``, ``with_distance``, ``use_norm``, ``reduce``).
        num_point_features: ``C`` point columns (e.g. 5: ``x, y, z, intensity, time_lag``).
        grid: the voxel grid; one cell along z (voxel size z = the z extent of the range).
        backend: backend of the voxelize / scatter ops (``None`` picks by device).
    """

    pillar = True


class DynamicVoxelVFE(_DynamicVFE):
    """PointNet-style voxel encoder on dynamically voxelized points (see the module docstring).

    Same arguments as :class:`DynamicPillarVFE`, with any number of voxels along z; the centre offset uses the
    voxel's own z centre.
    """

    pillar = False
