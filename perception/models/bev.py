"""Sparse voxel features -> dense bird's-eye-view maps.

* :class:`PillarScatter`: pillars (``nz == 1``) ``(M, C)`` -> ``(B, C, ny, nx)``.
* :class:`HeightCompression`: voxels on ``(nz, ny, nx)`` -> ``(B, C * nz, ny, nx)``, channel ``c * nz + z``
  (channel-major, then z), the layout of OpenPCDet's ``HeightCompression`` (``dense().view(B, C * D, H, W)``) and
  ``PointPillarScatter3d``, so their checkpoints' first BEV conv applies unchanged.

Cells without a voxel are 0. Rows are y, columns x (``bev[b, :, y, x]``). Output dtype is the features' dtype
(bf16 under autocast stays bf16). Coordinates must be unique (the :class:`SparseFeatures` contract) and inside
the grid; out-of-range coordinates raise ``ValueError``. 0 voxels give an all-zero map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from perception.structures import SparseFeatures


def _check_coords(sparse: SparseFeatures) -> None:
    if sparse.num_voxels == 0:
        return
    c = sparse.coords
    bounds = (sparse.batch_size, *sparse.grid_shape)
    lo = c.min(dim=0).values.tolist()
    hi = c.max(dim=0).values.tolist()
    for axis, name in enumerate(("batch", "z", "y", "x")):
        if lo[axis] < 0 or hi[axis] >= bounds[axis]:
            raise ValueError(
                f"sparse.coords {name} must lie in [0, {bounds[axis]}), got min {lo[axis]} and max {hi[axis]}"
            )


def dense_bev(sparse: SparseFeatures) -> torch.Tensor:
    """Scatter to ``(B, C * nz, ny, nx)``, channel ``c * nz + z`` (see the module docstring); differentiable."""
    if not isinstance(sparse, SparseFeatures):
        raise TypeError(f"sparse must be a SparseFeatures, got {type(sparse).__name__}")
    _check_coords(sparse)
    nz, ny, nx = sparse.grid_shape
    b = sparse.batch_size
    feats = sparse.features
    c = feats.shape[1]
    coords = sparse.coords.long()
    cell = ((coords[:, 0] * nz + coords[:, 1]) * ny + coords[:, 2]) * nx + coords[
        :, 3
    ]  # into (B, nz, ny, nx)
    dense = feats.new_zeros((b * nz * ny * nx, c)).index_put((cell,), feats)
    # (B, nz, ny, nx, C) -> (B, C, nz, ny, nx) -> (B, C * nz, ny, nx)
    return dense.view(b, nz, ny, nx, c).permute(0, 4, 1, 2, 3).reshape(b, c * nz, ny, nx)


class HeightCompression(nn.Module):
    """Voxel features ``(M, C)`` on ``(nz, ny, nx)`` -> dense BEV ``(B, C * nz, ny, nx)`` (no parameters).

    Args:
        in_channels: ``C`` of the input features.
        grid_shape: ``(nz, ny, nx)`` of the input (e.g. ``(2, 180, 180)`` after the nuScenes sparse ResNet).

    Attributes:
        out_channels: ``C * nz``.
    """

    def __init__(self, *, in_channels: int, grid_shape: Sequence[int]) -> None:
        super().__init__()
        shape = tuple(int(v) for v in grid_shape)
        if len(shape) != 3 or min(shape) < 1 or in_channels < 1:
            raise ValueError(
                f"need in_channels >= 1 and grid_shape (nz, ny, nx) >= 1, got {in_channels}, {grid_shape}"
            )
        self.in_channels = int(in_channels)
        self.grid_shape: tuple[int, int, int] = shape  # type: ignore[assignment]
        self.out_channels = self.in_channels * shape[0]

    def forward(self, sparse: SparseFeatures) -> torch.Tensor:
        """``sparse`` ``(M, C)`` -> ``(B, C * nz, ny, nx)`` in the features' dtype, zeros where no voxel."""
        if not isinstance(sparse, SparseFeatures):
            raise TypeError(f"sparse must be a SparseFeatures, got {type(sparse).__name__}")
        if tuple(sparse.grid_shape) != self.grid_shape:
            raise ValueError(f"sparse.grid_shape must be {self.grid_shape}, got {sparse.grid_shape}")
        if sparse.features.shape[1] != self.in_channels:
            raise ValueError(
                f"sparse.features must have {self.in_channels} channels, got {sparse.features.shape[1]}"
            )
        return dense_bev(sparse)


class PillarScatter(HeightCompression):
    """Pillar features ``(M, C)`` on ``(1, ny, nx)`` -> dense BEV ``(B, C, ny, nx)`` (no parameters).

    Args:
        in_channels: ``C``.
        grid_shape: ``(1, ny, nx)``; ``nz`` must be 1 (use :class:`HeightCompression` for voxels).
    """

    def __init__(self, *, in_channels: int, grid_shape: Sequence[int]) -> None:
        if len(grid_shape) != 3 or int(grid_shape[0]) != 1:
            raise ValueError(f"PillarScatter needs grid_shape (1, ny, nx), got {tuple(grid_shape)}")
        super().__init__(in_channels=in_channels, grid_shape=grid_shape)
