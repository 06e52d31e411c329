"""Numba CPU kernels for DSVT's pooling windows; same results as :mod:`perception.ops.pool_windows_torch`.

One pass for pooled ids and slots, :func:`perception.ops.set_partition_cpu.compact_ids` for the pooled voxels
(dense counting or a stable sort, whichever fits the pooled grid), one pass filling the index table (a filled slot
means duplicate voxels) and one decoding the pooled coordinates from the ids.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from .set_partition_cpu import compact_ids, use_dense


@njit(cache=True)
def _pool_windows(
    coords: np.ndarray, sz: int, sy: int, sx: int, npz: int, npy: int, npx: int, id_range: int, dense: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    m = coords.shape[0]
    per_sample = npz * npy * npx
    volume = sz * sy * sx
    pooled_id = np.empty(m, dtype=np.int64)
    slot = np.empty(m, dtype=np.int64)
    for i in range(m):
        z = np.int64(coords[i, 1])
        y = np.int64(coords[i, 2])
        x = np.int64(coords[i, 3])
        pooled_id[i] = (
            np.int64(coords[i, 0]) * per_sample + (x // sx) * (npy * npz) + (y // sy) * npz + z // sz
        )
        slot[i] = (x % sx) * (sy * sz) + (y % sy) * sz + z % sz
    pooled_index, unique_ids, _ = compact_ids(pooled_id, id_range, dense)
    num_pooled = unique_ids.shape[0]
    index = np.full((num_pooled, volume), -1, dtype=np.int64)
    duplicate = False
    for i in range(m):
        p = pooled_index[i]
        if index[p, slot[i]] >= 0:
            duplicate = True
        index[p, slot[i]] = i
    pooled_coords = np.empty((num_pooled, 4), dtype=np.int32)
    for p in range(num_pooled):
        r = unique_ids[p]
        pooled_coords[p, 0] = r // per_sample
        r = r % per_sample
        pooled_coords[p, 3] = r // (npy * npz)
        r = r % (npy * npz)
        pooled_coords[p, 2] = r // npz
        pooled_coords[p, 1] = r % npz
    return index, pooled_coords, pooled_index, slot, duplicate


def pool_windows_cpu(
    coords: torch.Tensor, stride: tuple[int, int, int], pooled_shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPU pooling windows; returns what :func:`pool_windows_torch` returns."""
    c = coords.contiguous().numpy()
    batch = int(c[:, 0].max()) + 1
    id_range = batch * pooled_shape[0] * pooled_shape[1] * pooled_shape[2]
    *out, duplicate = _pool_windows(c, *stride, *pooled_shape, id_range, use_dense(id_range, c.shape[0]))
    if duplicate:
        raise ValueError("coords contain duplicate voxels (same batch index and [z, y, x])")
    index, pooled_coords, pooled_index, slot = (torch.from_numpy(a) for a in out)
    return index, pooled_coords, pooled_index, slot
