"""Pooling windows for DSVT's attention-style 3D pooling between stages (public API, validation, dispatch).

Voxels are grouped by downsampled coordinate ``(z // sz, y // sy, x // sx)`` per sample. Each group (a pooled
voxel of the next stage) gets a row of ``V = sz * sy * sx`` slots; a voxel goes to slot
``(x % sx) * (sy * sz) + (y % sy) * sz + z % sz`` (x-major, DSVT's ``index_in_win``, so DSVT's learned per-slot
pooling embeddings line up). Pooled voxels are ordered by DSVT's pooled id
``b * np + px * (npy * npz) + py * npz + pz`` (sample, then x, y, z), which is the voxel order of DSVT's next stage.

DSVT gathers features into a zero-filled ``(P, V, C)`` placeholder and, in its attention pooling, passes an
all-false key padding mask (empty slots attend as zero features). :class:`PoolWindows` gives both the index table
and the true mask of empty slots; which one a pooling layer uses is the layer's choice.

Triples are ``(z, y, x)``; DSVT configs list ``downsample_stride`` as ``(x, y, z)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._backend import pick_backend
from .pool_windows_torch import pool_windows_torch
from .set_partition import Int3, as_int3, check_coords


@dataclass(frozen=True)
class PoolWindows:
    """Pooling windows of one downsampling step.

    Attributes:
        index: ``(P, V)`` int64 input voxel in each slot, ``-1`` for empty slots.
        mask: ``(P, V)`` bool, True for empty slots (key padding mask convention).
        pooled_coords: ``(P, 4)`` int32 ``[b, z, y, x]`` of the pooled voxels in the pooled grid.
        pooled_index: ``(M,)`` int64 row of ``index`` holding each input voxel (DSVT ``pooling_mapping_index``).
        slot: ``(M,)`` int64 column of ``index`` holding each input voxel (DSVT ``pooling_index_in_pool``).
        stride: ``(sz, sy, sx)``.
        pooled_shape: pooled grid ``(ceil(nz / sz), ceil(ny / sy), ceil(nx / sx))``.
    """

    index: torch.Tensor
    mask: torch.Tensor
    pooled_coords: torch.Tensor
    pooled_index: torch.Tensor
    slot: torch.Tensor
    stride: Int3
    pooled_shape: Int3

    @property
    def num_pooled(self) -> int:
        """Number of pooled voxels ``P``."""
        return int(self.index.shape[0])

    @property
    def pool_volume(self) -> int:
        """Slots per pooled voxel ``V = sz * sy * sx``."""
        return self.stride[0] * self.stride[1] * self.stride[2]


def pool_windows(
    coords: torch.Tensor,
    sparse_shape: Sequence[int],
    stride: Sequence[int],
    *,
    backend: str | None = None,
) -> PoolWindows:
    """Group voxels into DSVT pooling windows.

    Args:
        coords: ``(M, 4)`` int32 (or int64) ``[b, z, y, x]`` inside ``sparse_shape``; no two rows equal.
        sparse_shape: grid ``(nz, ny, nx)`` of the input voxels.
        stride: pooling stride ``(sz, sy, sx)`` in voxels, each ``>= 1``.
        backend: ``None`` (by device), ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        :class:`PoolWindows` on the device of ``coords``; with ``M == 0`` it has no pooled voxels.

    Raises:
        TypeError / ValueError: bad coords, shape or stride; duplicate voxels.
    """
    grid_shape = as_int3("sparse_shape", sparse_shape, minimum=1)
    st = as_int3("stride", stride, minimum=1)
    pooled_shape = (
        math.ceil(grid_shape[0] / st[0]),
        math.ceil(grid_shape[1] / st[1]),
        math.ceil(grid_shape[2] / st[2]),
    )
    c = check_coords(coords, grid_shape)
    chosen = pick_backend(c, backend)
    volume = st[0] * st[1] * st[2]
    if c.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=c.device)
        index = torch.zeros((0, volume), dtype=torch.long, device=c.device)
        pooled_coords = torch.zeros((0, 4), dtype=torch.int32, device=c.device)
        return PoolWindows(index, index.bool(), pooled_coords, empty, empty.clone(), st, pooled_shape)
    if chosen == "torch":
        out = pool_windows_torch(c, st, pooled_shape)
    elif chosen == "cpu":
        from .pool_windows_cpu import pool_windows_cpu

        out = pool_windows_cpu(c, st, pooled_shape)
    else:
        from .pool_windows_cuda import pool_windows_cuda

        out = pool_windows_cuda(c, st, pooled_shape)
    index, pooled_coords, pooled_index, slot = out
    return PoolWindows(index, index < 0, pooled_coords, pooled_index, slot, st, pooled_shape)
