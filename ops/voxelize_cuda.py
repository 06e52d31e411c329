# mypy: disable-error-code="call-arg, var-annotated"
# (numba.cuda intrinsics such as cuda.grid carry no usable type hints)
"""numba CUDA kernels for :func:`perception.ops.voxelize`: a lock-free open-addressing hash on packed int64 keys.

Import this module only when the CUDA backend is used (importing ``numba.cuda`` is slow, and the simulator must be
switched on before numba is imported). Pipeline, one thread per point unless noted:

1. ``_keys_kernel``: packed voxel key per point, float32 index arithmetic identical to the CPU kernel (and spconv).
2. ``_insert_kernel``: linear probing with ``atomic.cas`` on the key slot; every point then does ``atomic.min`` of
   its own index on the slot, so each slot ends up holding the index of its voxel's first point.
3. ``_first_kernel`` flags first points; an inclusive prefix sum over the flags (``torch.cumsum`` on the device)
   numbers voxels in order of first occurrence -- the CPU order, independent of thread scheduling.
4. ``_voxel_id_kernel`` / ``_point_id_kernel``: voxel id per slot, then per point, and counts (integer atomics).
5. ranks: a stable sort of the per-point voxel ids (``torch.argsort(stable=True)`` on the device) puts each voxel's
   points in input order; ``_rank_kernel`` turns sorted positions into in-voxel ranks.
6. ``_gather_kernel``: copies the first ``P`` points of each kept voxel.

All integer outputs are bit-identical to the CPU kernels. Table memory is ``O(N)`` (``next_pow2(2N)`` slots).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from numba import cuda

from ._backend import blocks_for, copy_back, launch_stream, to_device_array

THREADS = 256
_EMPTY = -1
_HASH_MUL = 0x5BD1E995

Grid = tuple[tuple[float, float, float], tuple[float, float, float], tuple[int, int, int]]
AssignResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]


@cuda.jit(device=True)
def _slot(key: Any, bits: Any) -> Any:
    lo = key & 0xFFFFFFFF
    hi = key >> 32
    x = (lo ^ (hi * 0x9E37)) & 0xFFFFFFFF
    return ((x * _HASH_MUL) & 0xFFFFFFFF) >> (32 - bits)


@cuda.jit(device=True)
def _axis_index(p: Any, lo: Any, size: Any, gridf: Any) -> Any:
    q = (p - lo) / size  # float32 arithmetic, as spconv
    if q >= 0 and q < gridf:
        return int(math.floor(q))
    return -1


@cuda.jit
def _keys_kernel(points: Any, batch: Any, lo: Any, size: Any, grid: Any, gridf: Any, keys: Any) -> None:
    i = cuda.grid(1)
    if i >= points.shape[0]:
        return
    for j in range(points.shape[1]):
        if not math.isfinite(points[i, j]):
            keys[i] = -2
            return
    ix = _axis_index(points[i, 0], lo[0], size[0], gridf[0])
    iy = _axis_index(points[i, 1], lo[1], size[1], gridf[1])
    iz = _axis_index(points[i, 2], lo[2], size[2], gridf[2])
    if ix < 0 or iy < 0 or iz < 0:
        keys[i] = -1
        return
    keys[i] = ((batch[i] * grid[2] + iz) * grid[1] + iy) * grid[0] + ix


@cuda.jit
def _insert_kernel(keys: Any, table_keys: Any, table_first: Any, point_slot: Any, bits: Any) -> None:
    i = cuda.grid(1)
    if i >= keys.shape[0]:
        return
    k = keys[i]
    if k < 0:
        point_slot[i] = -1
        return
    mask = (1 << bits) - 1
    h = _slot(k, bits)
    while True:
        old = cuda.atomic.cas(table_keys, h, _EMPTY, k)
        if old == _EMPTY or old == k:
            cuda.atomic.min(table_first, h, i)
            point_slot[i] = h
            return
        h = (h + 1) & mask


@cuda.jit
def _first_kernel(point_slot: Any, table_first: Any, is_first: Any) -> None:
    i = cuda.grid(1)
    if i >= point_slot.shape[0]:
        return
    s = point_slot[i]
    is_first[i] = 1 if (s >= 0 and table_first[s] == i) else 0


@cuda.jit
def _voxel_id_kernel(
    point_slot: Any, is_first: Any, first_cumsum: Any, keys: Any, slot_voxel: Any, voxel_keys: Any
) -> None:
    i = cuda.grid(1)
    if i >= point_slot.shape[0] or is_first[i] == 0:
        return
    v = first_cumsum[i] - 1
    slot_voxel[point_slot[i]] = v
    voxel_keys[v] = keys[i]


@cuda.jit
def _point_id_kernel(point_slot: Any, slot_voxel: Any, point_to_voxel: Any, counts: Any) -> None:
    i = cuda.grid(1)
    if i >= point_slot.shape[0]:
        return
    s = point_slot[i]
    if s < 0:
        point_to_voxel[i] = -1
        return
    v = slot_voxel[s]
    point_to_voxel[i] = v
    cuda.atomic.add(counts, v, 1)


@cuda.jit
def _rank_kernel(order: Any, point_to_voxel: Any, starts: Any, rank: Any) -> None:
    j = cuda.grid(1)
    if j >= order.shape[0]:
        return
    i = order[j]
    v = point_to_voxel[i]
    rank[i] = j - starts[v] if v >= 0 else -1


@cuda.jit
def _gather_kernel(points: Any, point_to_voxel: Any, rank: Any, out: Any) -> None:
    i = cuda.grid(1)
    if i >= points.shape[0]:
        return
    v = point_to_voxel[i]
    r = rank[i]
    if v >= 0 and v < out.shape[0] and r < out.shape[1]:
        for j in range(points.shape[1]):
            out[v, r, j] = points[i, j]


def _launch(kernel: Any, n: int, like: torch.Tensor, args: list[Any], outputs: tuple[int, ...]) -> None:
    """Run ``kernel`` over ``n`` threads; tensors in ``args`` are wrapped (zero-copy on CUDA), ``outputs`` copied back."""
    dev_args = [to_device_array(a) if isinstance(a, torch.Tensor) else a for a in args]
    kernel[blocks_for(n, THREADS), THREADS, launch_stream(like)](*dev_args)
    for k in outputs:
        copy_back(dev_args[k], args[k])


def _table_bits(n: int) -> int:
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    return bits


def assign(points: torch.Tensor, batch: torch.Tensor | None, spec: Grid) -> AssignResult:
    """CUDA version of :func:`perception.ops.voxelize_torch.assign` (same outputs, bit for bit)."""
    n = points.shape[0]
    dev = points.device
    lo = torch.tensor(spec[0], dtype=torch.float32, device=dev)
    size = torch.tensor(spec[1], dtype=torch.float32, device=dev)
    grid = torch.tensor(spec[2], dtype=torch.int64, device=dev)
    gridf = grid.to(torch.float32)
    b = batch if batch is not None else torch.zeros(n, dtype=torch.int64, device=dev)
    keys = torch.empty(n, dtype=torch.int64, device=dev)
    _launch(_keys_kernel, n, points, [points, b, lo, size, grid, gridf, keys], (6,))
    num_non_finite = int((keys == -2).sum())
    num_out = int((keys == -1).sum())
    bits = _table_bits(n - num_non_finite - num_out)
    table_keys = torch.full((1 << bits,), _EMPTY, dtype=torch.int64, device=dev)
    table_first = torch.full((1 << bits,), n, dtype=torch.int64, device=dev)
    point_slot = torch.empty(n, dtype=torch.int64, device=dev)
    _launch(_insert_kernel, n, points, [keys, table_keys, table_first, point_slot, bits], (1, 2, 3))
    is_first = torch.empty(n, dtype=torch.int64, device=dev)
    _launch(_first_kernel, n, points, [point_slot, table_first, is_first], (2,))
    first_cumsum = torch.cumsum(is_first, 0)
    m = int(first_cumsum[-1]) if n > 0 else 0
    slot_voxel = torch.empty(1 << bits, dtype=torch.int64, device=dev)
    voxel_keys = torch.empty(m, dtype=torch.int64, device=dev)
    _launch(
        _voxel_id_kernel,
        n,
        points,
        [point_slot, is_first, first_cumsum, keys, slot_voxel, voxel_keys],
        (4, 5),
    )
    point_to_voxel = torch.empty(n, dtype=torch.int64, device=dev)
    counts = torch.zeros(m, dtype=torch.int64, device=dev)
    _launch(_point_id_kernel, n, points, [point_slot, slot_voxel, point_to_voxel, counts], (2, 3))
    order = torch.argsort(point_to_voxel, stable=True)  # dropped points (-1) first, then voxel by voxel
    starts = torch.cumsum(counts, 0) - counts + (num_non_finite + num_out)
    rank = torch.empty(n, dtype=torch.int64, device=dev)
    _launch(_rank_kernel, n, points, [order, point_to_voxel, starts, rank], (3,))
    return point_to_voxel, rank, voxel_keys, counts, num_non_finite, num_out


def gather_features(
    points: torch.Tensor, point_to_voxel: torch.Tensor, rank: torch.Tensor, num_voxels: int, max_points: int
) -> torch.Tensor:
    """float32 ``(num_voxels, max_points, C)``: point ``i`` at ``[point_to_voxel[i], rank[i]]``, zeros elsewhere."""
    out = points.new_zeros((num_voxels, max_points, points.shape[1]))
    if out.numel() > 0 and points.shape[0] > 0:
        _launch(_gather_kernel, points.shape[0], points, [points, point_to_voxel, rank, out], (3,))
    return out
