"""Numba CUDA kernels for DSVT's pooling windows; same results as :mod:`perception.ops.pool_windows_torch`.

``_pool_ids_kernel`` computes each voxel's pooled id and slot, ``torch.unique`` on the device gives the pooled
voxels (ascending id), ``_fill_kernel`` writes the index table with an atomic compare-and-swap (a slot already
taken means duplicate voxels) and ``_decode_kernel`` turns pooled ids back into ``[b, z, y, x]``. With CPU tensors
the kernels run in numba's CUDA simulator (testing only). Importing this module imports ``numba.cuda``.
"""

from __future__ import annotations

import torch
from numba import cuda

from ._backend import blocks_for, check_cuda_usable, copy_back, launch_stream, to_device_array

_THREADS = 128


@cuda.jit
def _pool_ids_kernel(coords, sz, sy, sx, npz, npy, npx, pooled_id, slot):  # type: ignore[no-untyped-def]
    i = cuda.grid(1)
    if i >= coords.shape[0]:
        return
    z = coords[i, 1]
    y = coords[i, 2]
    x = coords[i, 3]
    pooled_id[i] = coords[i, 0] * (npz * npy * npx) + (x // sx) * (npy * npz) + (y // sy) * npz + z // sz
    slot[i] = (x % sx) * (sy * sz) + (y % sy) * sz + z % sz


@cuda.jit
def _fill_kernel(pooled_index, slot, volume, index, duplicate):  # type: ignore[no-untyped-def]
    i = cuda.grid(1)
    if i >= pooled_index.shape[0]:
        return
    old = cuda.atomic.cas(index, pooled_index[i] * volume + slot[i], -1, i)
    if old != -1:
        duplicate[0] = 1


@cuda.jit
def _decode_kernel(unique_ids, npz, npy, npx, pooled_coords):  # type: ignore[no-untyped-def]
    p = cuda.grid(1)
    if p >= unique_ids.shape[0]:
        return
    per_sample = npz * npy * npx
    r = unique_ids[p]
    pooled_coords[p, 0] = r // per_sample
    r = r % per_sample
    pooled_coords[p, 3] = r // (npy * npz)
    r = r % (npy * npz)
    pooled_coords[p, 2] = r // npz
    pooled_coords[p, 1] = r % npz


def pool_windows_cuda(
    coords: torch.Tensor, stride: tuple[int, int, int], pooled_shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CUDA pooling windows; returns what :func:`pool_windows_torch` returns."""
    check_cuda_usable(coords)
    device = coords.device
    stream = launch_stream(coords)
    m = coords.shape[0]
    volume = stride[0] * stride[1] * stride[2]
    c = coords.long().contiguous()
    pooled_id = torch.empty(m, dtype=torch.long, device=device)
    slot = torch.empty(m, dtype=torch.long, device=device)
    d_id, d_slot = to_device_array(pooled_id), to_device_array(slot)
    _pool_ids_kernel[blocks_for(m, _THREADS), _THREADS, stream](
        to_device_array(c), *stride, *pooled_shape, d_id, d_slot
    )
    copy_back(d_id, pooled_id)
    copy_back(d_slot, slot)
    unique_ids, pooled_index = torch.unique(pooled_id, sorted=True, return_inverse=True)
    pooled_index = pooled_index.long().contiguous()
    num_pooled = unique_ids.numel()

    index = torch.full((num_pooled * volume,), -1, dtype=torch.long, device=device)
    duplicate = torch.zeros(1, dtype=torch.int32, device=device)
    d_index, d_dup = to_device_array(index), to_device_array(duplicate)
    _fill_kernel[blocks_for(m, _THREADS), _THREADS, stream](
        to_device_array(pooled_index), d_slot, volume, d_index, d_dup
    )
    copy_back(d_dup, duplicate)
    if int(duplicate.item()):
        raise ValueError("coords contain duplicate voxels (same batch index and [z, y, x])")
    copy_back(d_index, index)

    pooled_coords = torch.empty((num_pooled, 4), dtype=torch.int32, device=device)
    d_coords = to_device_array(pooled_coords)
    _decode_kernel[blocks_for(num_pooled, _THREADS), _THREADS, stream](
        to_device_array(unique_ids.contiguous()), *pooled_shape, d_coords
    )
    copy_back(d_coords, pooled_coords)
    return index.view(num_pooled, volume), pooled_coords, pooled_index, slot
