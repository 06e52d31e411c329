"""Numba CPU kernels for DSVT's window and rotated-set partition.

Same results as :mod:`perception.ops.set_partition_torch`, bit for bit, in O(M + W + window volume) time:

1. window id and in-window coordinate of every voxel (one pass);
2. contiguous window indices by a counting pass over the dense window-id range, or by a stable sort of the ids
   when that range is much larger than the number of voxels (:func:`compact_ids`, shared with pooling);
3. each rotated order by two stable counting-sort passes (by in-window key, then by window), which gives the
   voxels of every window in key order without a comparison sort;
4. one pass over the sets filling slot ``t`` of a window with the voxel at sorted position
   ``floor(t * n / (M * set_size))`` (exact integer division, equal to DSVT's float64 floor for these sizes).

Inputs are assumed validated by :mod:`perception.ops.set_partition`.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

# Use the dense counting path while the window-id range is at most this many times the voxel count (plus a
# constant); beyond it the ids are compacted by a stable sort so memory follows the voxels, not the grid.
DENSE_RANGE_FACTOR = 8
DENSE_RANGE_MIN = 1 << 20


@njit(cache=True)
def _column_range(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = a[0].astype(np.int64)
    hi = a[0].astype(np.int64)
    for i in range(1, a.shape[0]):
        for j in range(a.shape[1]):
            v = np.int64(a[i, j])
            if v < lo[j]:
                lo[j] = v
            elif v > hi[j]:
                hi[j] = v
    return lo, hi


def column_range(a: np.ndarray) -> tuple[list[int], list[int]]:
    """Per-column minimum and maximum of a non-empty 2-D integer array, as Python ints."""
    lo, hi = _column_range(a)
    return lo.tolist(), hi.tolist()


@njit(cache=True)
def compact_ids(ids: np.ndarray, id_range: int, dense: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank of each id among the distinct ids (ascending), the distinct ids and their counts.

    Args:
        ids: ``(M,)`` int64 in ``[0, id_range)``.
        id_range: exclusive upper bound of the ids.
        dense: count over a dense ``id_range`` array (fast for small ranges) instead of sorting.

    Returns:
        inverse ``(M,)`` int64, unique ``(W,)`` int64 ascending, counts ``(W,)`` int64.
    """
    m = ids.shape[0]
    inverse = np.empty(m, dtype=np.int64)
    if dense:
        table = np.zeros(id_range, dtype=np.int64)
        for i in range(m):
            table[ids[i]] += 1
        num = 0
        for r in range(id_range):
            if table[r] > 0:
                num += 1
        unique = np.empty(num, dtype=np.int64)
        counts = np.empty(num, dtype=np.int64)
        w = 0
        for r in range(id_range):
            c = table[r]
            if c > 0:
                unique[w] = r
                counts[w] = c
                table[r] = w
                w += 1
        for i in range(m):
            inverse[i] = table[ids[i]]
        return inverse, unique, counts
    order = np.argsort(ids, kind="mergesort")
    num = 0
    for j in range(m):
        if j == 0 or ids[order[j]] != ids[order[j - 1]]:
            num += 1
    unique = np.empty(num, dtype=np.int64)
    counts = np.zeros(num, dtype=np.int64)
    w = -1
    for j in range(m):
        v = order[j]
        if j == 0 or ids[v] != ids[order[j - 1]]:
            w += 1
            unique[w] = ids[v]
        counts[w] += 1
        inverse[v] = w
    return inverse, unique, counts


def use_dense(id_range: int, num_items: int) -> bool:
    """Whether :func:`compact_ids` should count over the dense range."""
    return id_range <= DENSE_RANGE_FACTOR * num_items + DENSE_RANGE_MIN


@njit(cache=True)
def _window_ids(
    coords: np.ndarray, wz: int, wy: int, wx: int, sz: int, sy: int, sx: int, nwz: int, nwy: int, nwx: int
) -> tuple[np.ndarray, np.ndarray]:
    m = coords.shape[0]
    window_id = np.empty(m, dtype=np.int64)
    cin = np.empty((m, 3), dtype=np.int32)
    per_sample = nwz * nwy * nwx
    for i in range(m):
        z = np.int64(coords[i, 1]) + sz
        y = np.int64(coords[i, 2]) + sy
        x = np.int64(coords[i, 3]) + sx
        window_id[i] = (
            np.int64(coords[i, 0]) * per_sample + (x // wx) * (nwy * nwz) + (y // wy) * nwz + z // wz
        )
        cin[i, 0] = z % wz
        cin[i, 1] = y % wy
        cin[i, 2] = x % wx
    return window_id, cin


@njit(cache=True)
def _window_partition(
    coords: np.ndarray,
    wz: int,
    wy: int,
    wx: int,
    sz: int,
    sy: int,
    sx: int,
    nwz: int,
    nwy: int,
    nwx: int,
    id_range: int,
    dense: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    window_id, cin = _window_ids(coords, wz, wy, wx, sz, sy, sx, nwz, nwy, nwx)
    inverse, _, counts = compact_ids(window_id, id_range, dense)
    return window_id, inverse, cin, counts


@njit(cache=True)
def _sorted_by_window_and_key(
    window_index: np.ndarray, first_voxel: np.ndarray, key: np.ndarray, volume: int
) -> tuple[np.ndarray, bool]:
    """Voxel ids ordered by (window, key, voxel id) with two stable counting sorts; flag duplicate keys."""
    m = window_index.shape[0]
    start = np.zeros(volume + 1, dtype=np.int64)
    for i in range(m):
        start[key[i] + 1] += 1
    for k in range(volume):
        start[k + 1] += start[k]
    by_key = np.empty(m, dtype=np.int64)
    for i in range(m):
        k = key[i]
        by_key[start[k]] = i
        start[k] += 1
    fill = first_voxel.copy()
    out = np.empty(m, dtype=np.int64)
    for j in range(m):
        v = by_key[j]
        w = window_index[v]
        out[fill[w]] = v
        fill[w] += 1
    duplicate = False
    for j in range(1, m):
        a = out[j - 1]
        b = out[j]
        if window_index[a] == window_index[b] and key[a] == key[b]:
            duplicate = True
            break
    return out, duplicate


@njit(cache=True)
def _set_partition(
    window_index: np.ndarray, counts: np.ndarray, cin: np.ndarray, wz: int, wy: int, wx: int, set_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    m = window_index.shape[0]
    num_windows = counts.shape[0]
    volume = wz * wy * wx
    key_y = np.empty(m, dtype=np.int64)
    key_x = np.empty(m, dtype=np.int64)
    for i in range(m):
        z = np.int64(cin[i, 0])
        y = np.int64(cin[i, 1])
        x = np.int64(cin[i, 2])
        key_y[i] = y * (wx * wz) + x * wz + z
        key_x[i] = x * (wy * wz) + y * wz + z
    first_voxel = np.empty(num_windows, dtype=np.int64)
    first_set = np.empty(num_windows, dtype=np.int64)
    total_voxels = 0
    total_sets = 0
    for w in range(num_windows):
        first_voxel[w] = total_voxels
        first_set[w] = total_sets
        total_voxels += counts[w]
        total_sets += (counts[w] + set_size - 1) // set_size
    sorted_y, dup_y = _sorted_by_window_and_key(window_index, first_voxel, key_y, volume)
    sorted_x, dup_x = _sorted_by_window_and_key(window_index, first_voxel, key_x, volume)
    voxel_index = np.empty((2, total_sets, set_size), dtype=np.int64)
    mask = np.empty((2, total_sets, set_size), dtype=np.bool_)
    set_window = np.empty(total_sets, dtype=np.int64)
    for w in range(num_windows):
        n = counts[w]
        num_sets = (n + set_size - 1) // set_size
        denom = num_sets * set_size
        base = first_voxel[w]
        for j in range(num_sets):
            s = first_set[w] + j
            set_window[s] = w
            previous = -1
            for k in range(set_size):
                position = ((j * set_size + k) * n) // denom
                voxel_index[0, s, k] = sorted_y[base + position]
                voxel_index[1, s, k] = sorted_x[base + position]
                repeated = position == previous
                mask[0, s, k] = repeated
                mask[1, s, k] = repeated
                previous = position
    return voxel_index, mask, set_window, dup_y or dup_x


def window_partition_cpu(
    coords: torch.Tensor,
    window: tuple[int, int, int],
    shift: tuple[int, int, int],
    grid: tuple[int, int, int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPU window partition; returns what :func:`window_partition_torch` returns."""
    c = coords.contiguous().numpy()
    batch = int(c[:, 0].max()) + 1
    id_range = batch * grid[0] * grid[1] * grid[2]
    out = _window_partition(c, *window, *shift, *grid, id_range, use_dense(id_range, c.shape[0]))
    window_id, window_index, cin, counts = (torch.from_numpy(a) for a in out)
    return window_id, window_index, cin, counts


def set_partition_cpu(
    window_index: torch.Tensor,
    voxels_per_window: torch.Tensor,
    coords_in_window: torch.Tensor,
    window: tuple[int, int, int],
    set_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPU rotated-set partition; returns what :func:`set_partition_torch` returns."""
    voxel_index, mask, set_window, duplicate = _set_partition(
        window_index.numpy(), voxels_per_window.numpy(), coords_in_window.numpy(), *window, set_size
    )
    if duplicate:
        raise ValueError("coords contain duplicate voxels (same batch index and [z, y, x])")
    return torch.from_numpy(voxel_index), torch.from_numpy(mask), torch.from_numpy(set_window)
