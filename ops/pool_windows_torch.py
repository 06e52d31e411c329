"""Plain-torch reference of DSVT's pooling windows (the oracle for the numba kernels).

Follows the DSVT authors' ``get_pooling_index`` and the input layer's pooling step, written from scratch: the
pooled id ``b * np + px * (npy * npz) + py * npz + pz`` with ``np* = ceil(n* / s*)``, ``unique`` of the ids for the
pooled voxels (ascending id), and the x-major slot ``x_in * (sy * sz) + y_in * sz + z_in`` inside a pool window.
Inputs are assumed validated by :mod:`perception.ops.pool_windows`. Triples are ``(z, y, x)``.
"""

from __future__ import annotations

import torch

Int3 = tuple[int, int, int]


def pool_ids_torch(
    coords: torch.Tensor, stride: Int3, pooled_shape: Int3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled id ``(M,)`` int64 and slot ``(M,)`` int64 of every voxel of ``coords`` ``(M, 4)`` ``[b, z, y, x]``."""
    c = coords.long()
    sz, sy, sx = stride
    npz, npy, npx = pooled_shape
    pooled_id = (
        c[:, 0] * (npz * npy * npx) + (c[:, 3] // sx) * (npy * npz) + (c[:, 2] // sy) * npz + c[:, 1] // sz
    )
    slot = (c[:, 3] % sx) * (sy * sz) + (c[:, 2] % sy) * sz + c[:, 1] % sz
    return pooled_id, slot


def pool_windows_torch(
    coords: torch.Tensor, stride: Int3, pooled_shape: Int3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference pooling windows.

    Returns:
        index ``(P, V)`` int64 (-1 for empty slots), pooled_coords ``(P, 4)`` int32 ``[b, z, y, x]``,
        pooled_index ``(M,)`` int64, slot ``(M,)`` int64; ``V = sz * sy * sx``.

    Raises:
        ValueError: two voxels fall in the same slot (duplicate voxel coordinates).
    """
    m = coords.shape[0]
    volume = stride[0] * stride[1] * stride[2]
    pooled_id, slot = pool_ids_torch(coords, stride, pooled_shape)
    unique_ids, pooled_index = torch.unique(pooled_id, sorted=True, return_inverse=True)
    num_pooled = unique_ids.numel()
    voxel_ids = torch.arange(m, device=coords.device)
    first = torch.full((num_pooled,), m, dtype=torch.long, device=coords.device)
    first = first.scatter_reduce(0, pooled_index, voxel_ids, reduce="amin")
    c = coords.long()[first]
    pooled_coords = torch.stack(
        [c[:, 0], c[:, 1] // stride[0], c[:, 2] // stride[1], c[:, 3] // stride[2]], dim=1
    ).int()
    flat = pooled_index * volume + slot
    if torch.unique(flat).numel() != m:
        raise ValueError("coords contain duplicate voxels (same batch index and [z, y, x])")
    index = torch.full((num_pooled * volume,), -1, dtype=torch.long, device=coords.device)
    index[flat] = voxel_ids
    return index.view(num_pooled, volume), pooled_coords, pooled_index.long(), slot
