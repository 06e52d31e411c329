"""Numba CUDA kernels for DSVT's window and rotated-set partition.

Same results as :mod:`perception.ops.set_partition_torch`, bit for bit. Steps (one thread per item):

1. ``_window_ids_kernel`` -- window id and in-window coordinate per voxel;
2. contiguous window indices with ``torch.unique`` on the device (a sort, already a GPU primitive);
3. ``_bucket_kernel`` -- scatter voxel ids into per-window buckets (atomic counter; bucket order is arbitrary);
4. ``_rank_kernel`` -- each voxel counts the voxels of its window that precede it in each rotated order
   (key, then voxel id), which makes the result independent of the bucket order, and writes itself at that rank;
   equal keys flag duplicate voxels;
5. ``_set_window_kernel`` and ``_fill_kernel`` -- the window of every set, then one thread per slot picking the
   voxel at ``floor(t * n / (M * set_size))`` and the repeat mask.

Prefix sums between kernels use ``torch.cumsum`` on the device. With CPU tensors the kernels run in numba's CUDA
simulator (testing only), see :mod:`perception.ops._backend`. Import this module only after deciding on the
simulator: importing it imports ``numba.cuda``.
"""

from __future__ import annotations

import torch
from numba import cuda

from ._backend import blocks_for, check_cuda_usable, copy_back, launch_stream, to_device_array

_THREADS = 128


@cuda.jit
def _window_ids_kernel(coords, wz, wy, wx, sz, sy, sx, nwz, nwy, nwx, window_id, cin):  # type: ignore[no-untyped-def]
    i = cuda.grid(1)
    if i >= coords.shape[0]:
        return
    z = coords[i, 1] + sz
    y = coords[i, 2] + sy
    x = coords[i, 3] + sx
    window_id[i] = coords[i, 0] * (nwz * nwy * nwx) + (x // wx) * (nwy * nwz) + (y // wy) * nwz + z // wz
    cin[i, 0] = z % wz
    cin[i, 1] = y % wy
    cin[i, 2] = x % wx


@cuda.jit
def _bucket_kernel(window_index, first_voxel, fill, bucket):  # type: ignore[no-untyped-def]
    i = cuda.grid(1)
    if i >= window_index.shape[0]:
        return
    w = window_index[i]
    slot = cuda.atomic.add(fill, w, 1)
    bucket[first_voxel[w] + slot] = i


@cuda.jit
def _rank_kernel(window_index, cin, first_voxel, counts, bucket, wz, wy, wx, sorted_y, sorted_x, duplicate):  # type: ignore[no-untyped-def]
    i = cuda.grid(1)
    if i >= window_index.shape[0]:
        return
    w = window_index[i]
    key_y = cin[i, 1] * (wx * wz) + cin[i, 2] * wz + cin[i, 0]
    key_x = cin[i, 2] * (wy * wz) + cin[i, 1] * wz + cin[i, 0]
    rank_y = 0
    rank_x = 0
    start = first_voxel[w]
    for j in range(start, start + counts[w]):
        u = bucket[j]
        if u == i:
            continue
        other_y = cin[u, 1] * (wx * wz) + cin[u, 2] * wz + cin[u, 0]
        other_x = cin[u, 2] * (wy * wz) + cin[u, 1] * wz + cin[u, 0]
        if other_y == key_y:
            duplicate[0] = 1
        if other_y < key_y or (other_y == key_y and u < i):
            rank_y += 1
        if other_x < key_x or (other_x == key_x and u < i):
            rank_x += 1
    sorted_y[start + rank_y] = i
    sorted_x[start + rank_x] = i


@cuda.jit
def _set_window_kernel(sets_per_window, first_set, set_window):  # type: ignore[no-untyped-def]
    w = cuda.grid(1)
    if w >= sets_per_window.shape[0]:
        return
    for j in range(sets_per_window[w]):
        set_window[first_set[w] + j] = w


@cuda.jit
def _fill_kernel(set_window, first_set, first_voxel, counts, sorted_y, sorted_x, set_size, voxel_index, mask):  # type: ignore[no-untyped-def]
    g = cuda.grid(1)
    if g >= set_window.shape[0] * set_size:
        return
    s = g // set_size
    k = g - s * set_size
    w = set_window[s]
    n = counts[w]
    num_sets = (n + set_size - 1) // set_size
    t = (s - first_set[w]) * set_size + k
    position = (t * n) // (num_sets * set_size)
    base = first_voxel[w]
    voxel_index[0, s, k] = sorted_y[base + position]
    voxel_index[1, s, k] = sorted_x[base + position]
    repeated = False
    if k > 0:
        repeated = ((t - 1) * n) // (num_sets * set_size) == position
    mask[0, s, k] = repeated
    mask[1, s, k] = repeated


def window_partition_cuda(
    coords: torch.Tensor,
    window: tuple[int, int, int],
    shift: tuple[int, int, int],
    grid: tuple[int, int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CUDA window partition; returns what :func:`window_partition_torch` returns."""
    check_cuda_usable(coords)
    m = coords.shape[0]
    c = coords.long().contiguous()
    window_id = torch.empty(m, dtype=torch.long, device=c.device)
    cin = torch.empty((m, 3), dtype=torch.int32, device=c.device)
    d_id, d_cin = to_device_array(window_id), to_device_array(cin)
    _window_ids_kernel[blocks_for(m, _THREADS), _THREADS, launch_stream(c)](
        to_device_array(c), *window, *shift, *grid, d_id, d_cin
    )
    copy_back(d_id, window_id)
    copy_back(d_cin, cin)
    _, window_index, counts = torch.unique(window_id, sorted=True, return_inverse=True, return_counts=True)
    return window_id, window_index.long(), cin, counts.long()


def set_partition_cuda(
    window_index: torch.Tensor,
    voxels_per_window: torch.Tensor,
    coords_in_window: torch.Tensor,
    window: tuple[int, int, int],
    set_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CUDA rotated-set partition; returns what :func:`set_partition_torch` returns."""
    check_cuda_usable(window_index)
    device = window_index.device
    stream = launch_stream(window_index)
    m = window_index.shape[0]
    counts = voxels_per_window.contiguous()
    num_windows = counts.shape[0]
    first_voxel = torch.cumsum(counts, 0) - counts
    sets_per_window = (counts + set_size - 1) // set_size
    first_set = torch.cumsum(sets_per_window, 0) - sets_per_window
    num_sets = int(sets_per_window.sum())

    d_win, d_cin = to_device_array(window_index), to_device_array(coords_in_window)
    d_first, d_counts = to_device_array(first_voxel), to_device_array(counts)
    fill = torch.zeros(num_windows, dtype=torch.long, device=device)
    bucket = torch.empty(m, dtype=torch.long, device=device)
    d_fill, d_bucket = to_device_array(fill), to_device_array(bucket)
    _bucket_kernel[blocks_for(m, _THREADS), _THREADS, stream](d_win, d_first, d_fill, d_bucket)

    sorted_y = torch.empty(m, dtype=torch.long, device=device)
    sorted_x = torch.empty(m, dtype=torch.long, device=device)
    duplicate = torch.zeros(1, dtype=torch.int32, device=device)
    d_sy, d_sx, d_dup = to_device_array(sorted_y), to_device_array(sorted_x), to_device_array(duplicate)
    _rank_kernel[blocks_for(m, _THREADS), _THREADS, stream](
        d_win, d_cin, d_first, d_counts, d_bucket, *window, d_sy, d_sx, d_dup
    )
    copy_back(d_dup, duplicate)
    if int(duplicate.item()):
        raise ValueError("coords contain duplicate voxels (same batch index and [z, y, x])")

    set_window = torch.empty(num_sets, dtype=torch.long, device=device)
    d_sets, d_first_set = to_device_array(sets_per_window), to_device_array(first_set)
    d_set_window = to_device_array(set_window)
    _set_window_kernel[blocks_for(num_windows, _THREADS), _THREADS, stream](d_sets, d_first_set, d_set_window)

    voxel_index = torch.empty((2, num_sets, set_size), dtype=torch.long, device=device)
    mask = torch.empty((2, num_sets, set_size), dtype=torch.bool, device=device)
    d_index, d_mask = to_device_array(voxel_index), to_device_array(mask)
    _fill_kernel[blocks_for(num_sets * set_size, _THREADS), _THREADS, stream](
        d_set_window, d_first_set, d_first, d_counts, d_sy, d_sx, set_size, d_index, d_mask
    )
    copy_back(d_set_window, set_window)
    copy_back(d_index, voxel_index)
    copy_back(d_mask, mask)
    return voxel_index, mask, set_window
