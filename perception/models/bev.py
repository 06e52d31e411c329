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

import torch
from torch import nn

from perception.shapes import MapShape, SparseShape
from perception.structures import SparseFeatures

from .cpu_linear import exporting
from .model_config import bev_map_shape


def _check_coords(sparse: SparseFeatures) -> None:
    if exporting() or sparse.num_voxels == 0:  # an exported graph trusts its inputs (the runtime checks them)
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
        input_shape: the 3D backbone's output (channels ``C``, grid ``(nz, ny, nx)``, stride), e.g. 128 channels on
            ``(2, 180, 180)`` after the nuScenes sparse ResNet.
    """

    def __init__(self, *, input_shape: SparseShape) -> None:
        super().__init__()
        if input_shape.channels < 1 or len(input_shape.grid) != 3 or min(input_shape.grid) < 1:
            raise ValueError(f"need channels >= 1 and a grid (nz, ny, nx) >= 1, got {input_shape}")
        self._input_shape = input_shape
        self._output_shape = bev_map_shape(input_shape)

    def input_shape(self) -> SparseShape:
        return self._input_shape

    def output_shape(self) -> MapShape:
        """``C * nz`` channels on ``(ny, nx)`` (:func:`~perception.models.model_config.bev_map_shape`)."""
        return self._output_shape

    def forward(self, sparse: SparseFeatures) -> torch.Tensor:
        """``sparse`` ``(M, C)`` -> ``(B, C * nz, ny, nx)`` in the features' dtype, zeros where no voxel."""
        if not isinstance(sparse, SparseFeatures):
            raise TypeError(f"sparse must be a SparseFeatures, got {type(sparse).__name__}")
        expected = self._input_shape
        if tuple(sparse.grid_shape) != expected.grid:
            raise ValueError(f"sparse.grid_shape must be {expected.grid}, got {sparse.grid_shape}")
        if sparse.features.shape[1] != expected.channels:
            raise ValueError(
                f"sparse.features must have {expected.channels} channels, got {sparse.features.shape[1]}"
            )
        return dense_bev(sparse)


class PillarScatter(HeightCompression):
    """Pillar features ``(M, C)`` on ``(1, ny, nx)`` -> dense BEV ``(B, C, ny, nx)`` (no parameters).

    Args:
        input_shape: the backbone's output; its grid must have ``nz == 1`` (use :class:`HeightCompression` for
            voxels).
    """

    def __init__(self, *, input_shape: SparseShape) -> None:
        if len(input_shape.grid) != 3 or int(input_shape.grid[0]) != 1:
            raise ValueError(f"PillarScatter needs a grid (1, ny, nx), got {input_shape.grid}")
        super().__init__(input_shape=input_shape)
