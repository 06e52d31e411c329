"""numba CPU kernels for :func:`perception.ops.voxelize` (open-addressing hash on packed int64 voxel keys).

Three serial kernels, ``@njit(cache=True)``:

1. :func:`point_keys`: the key ``((b * nz + z) * ny + y) * nx + x`` of each point's voxel, with the index per axis
   ``floor((p - lo) / size)`` evaluated in float32 exactly as spconv does; a point is kept when
   ``0 <= index < grid`` on every axis (so points on the upper border are dropped) and all its values are finite.
2. :func:`hash_assign` (input order): a linear-probing table of ``(key, id)`` rows numbers the voxels in order of
   first occurrence, and gives each point its voxel id and its rank among the voxel's points. The table starts at
   ``N / 4`` rows and doubles when half full, so it grows with the number of voxels (never more than
   ``next_pow2(2 * N)`` rows), never with the grid, and stays small enough to be cache friendly.
3. :func:`gather_features`: each slot of the padded ``(M, P, C)`` output is written exactly once.

All buffers come from :func:`empty_hugepage`: on the project's VMs, page faults of fresh 4 KiB pages cost more
than the voxelization itself.

Why serial: the work is memory-bound (about 10 ms for 340k points). ``prange`` versions of kernels 1 and 3 were
~20% faster on an idle 2-core machine but 1.5-40x slower whenever another process was busy (each parallel region
waits for a descheduled thread: 1 sweep took 82 ms instead of 1.9 ms at load 10), and they would oversubscribe
the cores from every DataLoader worker. Run voxelization in DataLoader workers to use several cores.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import torch
from numba import njit

_EMPTY = -1
_HASH_MUL = 0x5BD1E995  # < 2**31 so that a 32-bit value times it fits in int64 without overflow


_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14  # Linux
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:  # not Linux / no libc: no hint, same results
    _LIBC = None


def empty_hugepage(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``torch.empty(shape, dtype)`` whose 2 MiB-aligned interior is advised for transparent huge pages.

    Writing a fresh 21 MB output page by page costs ~17 ms of page faults on the project's VMs (4 KiB pages) and
    ~2 ms with huge pages, more than the whole voxelization; the same holds for the scratch arrays. Pages that
    are never written are never backed, so buffers sized for the worst case cost only what is used. ``madvise`` is only a hint: where THP is off or the
    call fails, nothing changes but the speed. The user's environment is not touched.
    """
    t = torch.empty(shape, dtype=dtype)
    nbytes = t.numel() * t.element_size()
    if _LIBC is not None and nbytes >= 4 * _HUGE_PAGE:
        start = (t.data_ptr() + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
        end = (t.data_ptr() + nbytes) & ~(_HUGE_PAGE - 1)
        if end > start:
            _LIBC.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_HUGEPAGE)
    return t


@njit(cache=True, inline="always")
def _slot(key: int, bits: int) -> int:
    """Multiplicative hash of a non-negative int64 key onto ``bits`` bits (no integer overflow)."""
    lo = key & 0xFFFFFFFF
    hi = key >> 32
    x = (lo ^ (hi * 0x9E37)) & 0xFFFFFFFF
    return ((x * _HASH_MUL) & 0xFFFFFFFF) >> (32 - bits)


@njit(cache=True, inline="always")
def _axis_index(p: float, lo: float, size: float, gridf: float) -> int:
    """``floor((p - lo) / size)`` in float32 (as spconv), or -1 when it is outside ``[0, grid)``."""
    q = (p - lo) / size
    if q >= 0 and q < gridf:
        return np.int64(np.floor(q))  # type: ignore[return-value]
    return np.int64(-1)  # type: ignore[return-value]


@njit(cache=True)
def table_bits(n: int) -> int:
    """Number of bits of a table with at least ``2 * n`` (and 16) rows."""
    bits = 4
    while (1 << bits) < 2 * n:
        bits += 1
    return bits


@njit(cache=True)
def _rehash(table: np.ndarray, voxel_keys: np.ndarray, m: int, bits: int) -> None:
    """Rebuild the first ``2**bits`` rows of ``table`` (rows ``(key, id)``) with voxels ``0..m-1``."""
    mask = (1 << bits) - 1
    table[: 1 << bits, 0] = _EMPTY
    for v in range(m):
        h = _slot(voxel_keys[v], bits)
        while table[h, 0] != _EMPTY:
            h = (h + 1) & mask
        table[h, 0] = voxel_keys[v]
        table[h, 1] = v


@njit(cache=True)
def point_keys(
    points: np.ndarray,
    batch: np.ndarray,
    lo: np.ndarray,
    size: np.ndarray,
    grid: np.ndarray,
    gridf: np.ndarray,
    keys: np.ndarray,
) -> tuple[int, int]:
    """Packed voxel key per point, ``-2`` if any value is non-finite, ``-1`` if outside the range.

    Args:
        points: float32 ``(N, C)``, ``C >= 3``, columns ``x, y, z, ...``.
        batch: int64 ``(N,)`` batch index per point, or ``(0,)`` for a single sample (batch 0).
        lo, size: float32 ``(3,)`` range minimum and voxel size ``(x, y, z)``.
        grid: int64 ``(3,)`` ``(nx, ny, nz)``; gridf: the same as float32.
        keys: int64 ``(N,)`` output.

    Returns:
        The numbers of non-finite and of out-of-range points.
    """
    n, c = points.shape
    has_batch = batch.shape[0] == n
    nx, ny, nz = grid[0], grid[1], grid[2]
    n_nonfinite = 0
    n_out = 0
    for i in range(n):
        finite = True
        for j in range(c):
            finite &= np.isfinite(points[i, j])
        ix = _axis_index(points[i, 0], lo[0], size[0], gridf[0])
        iy = _axis_index(points[i, 1], lo[1], size[1], gridf[1])
        iz = _axis_index(points[i, 2], lo[2], size[2], gridf[2])
        b = batch[i] if has_batch else 0
        if not finite:
            keys[i] = -2
            n_nonfinite += 1
        elif ix < 0 or iy < 0 or iz < 0:
            keys[i] = -1
            n_out += 1
        else:
            keys[i] = ((b * nz + iz) * ny + iy) * nx + ix
    return n_nonfinite, n_out


@njit(cache=True)
def hash_assign(
    keys: np.ndarray,
    points: np.ndarray,
    batch: np.ndarray,
    lo: np.ndarray,
    size: np.ndarray,
    gridf: np.ndarray,
    table: np.ndarray,
    voxel_keys: np.ndarray,
    counts: np.ndarray,
    coords: np.ndarray,
    point_to_voxel: np.ndarray,
    rank: np.ndarray,
) -> int:
    """Number the voxels in order of first occurrence; serial, in input order. Outputs need no initialisation.

    Args:
        keys: int64 ``(N,)`` from :func:`point_keys`; points, batch, lo, size, gridf: as for :func:`point_keys`
            (a new voxel's coordinates are taken from its first point: cheaper than dividing its key).
        table: int64 ``(2**table_bits(N), 2)`` scratch for the ``(key, id)`` rows.
        voxel_keys: int64 ``(N,)`` scratch.
        counts: int32 ``(N,)`` output: ``counts[v]`` points in voxel ``v`` (before any cap), ``v < M``.
        coords: int32 ``(N, 4)`` output: ``coords[v]`` ``[b, z, y, x]`` of voxel ``v < M``.
        point_to_voxel: int64 ``(N,)`` output: voxel id or -1.
        rank: int32 ``(N,)`` output: the point's position among its voxel's points (input order), or ``(0,)``.

    Returns:
        ``M``, the number of voxels.
    """
    n = keys.shape[0]
    has_batch = batch.shape[0] == n
    write_rank = rank.shape[0] == n
    bits = table_bits(n // 8)
    mask = (1 << bits) - 1
    table[: 1 << bits, 0] = _EMPTY
    m = 0
    last_key = np.int64(-1)
    last_id: int = np.int64(-1)  # type: ignore[assignment]
    for i in range(n):
        k = keys[i]
        if k < 0:
            point_to_voxel[i] = -1
            continue
        if k == last_key:  # consecutive points of a scan often share a voxel
            vid = last_id
        else:
            # linear probing, written inline: a call passing the table costs more than the probe itself
            h = _slot(k, bits)
            while True:
                tk = table[h, 0]
                if tk == k:
                    vid = table[h, 1]
                    break
                if tk == _EMPTY:
                    table[h, 0] = k
                    table[h, 1] = m
                    voxel_keys[m] = k
                    counts[m] = 0
                    coords[m, 0] = batch[i] if has_batch else 0
                    coords[m, 1] = _axis_index(points[i, 2], lo[2], size[2], gridf[2])
                    coords[m, 2] = _axis_index(points[i, 1], lo[1], size[1], gridf[1])
                    coords[m, 3] = _axis_index(points[i, 0], lo[0], size[0], gridf[0])
                    vid = m
                    m += 1
                    break
                h = (h + 1) & mask
            if 2 * m > (1 << bits):  # half full: rehash into a table twice as large
                bits += 1
                mask = (1 << bits) - 1
                _rehash(table, voxel_keys, m, bits)
            last_key = k
            last_id = vid
        point_to_voxel[i] = vid
        r = counts[vid]
        counts[vid] = r + 1
        if write_rank:
            rank[i] = r
    return m


@njit(cache=True)
def gather_features(
    points: np.ndarray, point_to_voxel: np.ndarray, rank: np.ndarray, counts: np.ndarray, features: np.ndarray
) -> None:
    """Fill ``features`` ``(M, P, C)`` (need not be initialised): voxel ``v`` gets its first ``P`` points in
    input order, the remaining slots zeros; every slot is written exactly once.

    Args:
        points: float32 ``(N, C)``; point_to_voxel: int64 ``(N,)``; rank: int32 ``(N,)``;
        counts: int32 ``(>= M,)`` uncapped points per voxel.
    """
    m, p, c = features.shape
    for i in range(points.shape[0]):
        v = point_to_voxel[i]
        r = rank[i]
        if v >= 0 and v < m and r < p:
            for j in range(c):
                features[v, r, j] = points[i, j]
    for v in range(m):
        for r in range(min(counts[v], p), p):
            for j in range(c):
                features[v, r, j] = 0


@njit(cache=True)
def cap_counts(counts: np.ndarray, m: int, p: int) -> tuple[int, int]:
    """Hard-mode caps on the int32 per-voxel counts ``(M,)`` (first-occurrence order), in place.

    Clips ``counts[:m]`` to ``p``. Returns the points in voxels ``>= m`` and the points over ``p``.
    """
    over_points = 0
    for v in range(m):
        if counts[v] > p:
            over_points += counts[v] - p
            counts[v] = p
    over_voxels = 0
    for v in range(m, counts.shape[0]):
        over_voxels += counts[v]
    return over_voxels, over_points


def _compact(buffer: torch.Tensor, m: int) -> torch.Tensor:
    """A compact copy of the first ``m`` rows (a view would keep, pickle or share all ``N`` rows). numpy, not
    torch: torch would copy on its 2-thread pool, which stalls whenever the cores are busy."""
    return torch.from_numpy(buffer.numpy()[:m].copy())


def voxelize_arrays(
    points: np.ndarray,
    batch: np.ndarray | None,
    lo: tuple[float, float, float],
    size: tuple[float, float, float],
    grid_xyz: tuple[int, int, int],
    hard: bool,
    max_points: int | None,
    max_voxels: int | None,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor | None, tuple[int, int, int, int]]:
    """Run the CPU pipeline on numpy arrays (``points`` float32 ``(N, C)`` C-contiguous, ``batch`` int64 ``(N,)``).

    Returns:
        features float32 ``(M, P, C)`` (hard mode, else None); coords int32 ``(M, 4)``; counts int32 ``(M,)``;
        point_to_voxel int64 ``(N,)`` (dynamic mode, else None); (non-finite, out-of-range, over max_voxels,
        over P) point counts.
    """
    n, c = points.shape
    grid = np.asarray(grid_xyz, dtype=np.int64)
    b = batch if batch is not None else np.zeros(0, dtype=np.int64)
    lo_np, size_np, gridf = np.asarray(lo, np.float32), np.asarray(size, np.float32), grid.astype(np.float32)
    keys = empty_hugepage((n,), torch.int64)
    n_nf, n_out = point_keys(points, b, lo_np, size_np, grid, gridf, keys.numpy())
    table = empty_hugepage((1 << table_bits(n), 2), torch.int64)
    voxel_keys = empty_hugepage((n,), torch.int64)
    counts = empty_hugepage((n,), torch.int32)
    coords = empty_hugepage((n, 4), torch.int32)
    p2v = empty_hugepage((n,), torch.int64)
    rank = empty_hugepage((n if hard else 0,), torch.int32)
    m_all = hash_assign(
        keys.numpy(),
        points,
        b,
        lo_np,
        size_np,
        gridf,
        table.numpy(),
        voxel_keys.numpy(),
        counts.numpy(),
        coords.numpy(),
        p2v.numpy(),
        rank.numpy(),
    )
    del table, keys, voxel_keys
    if not hard:  # compact copies: a view would keep (and pickle, or share with DataLoader workers) N rows
        return None, _compact(coords, m_all), _compact(counts, m_all), p2v, (int(n_nf), int(n_out), 0, 0)
    m = m_all if max_voxels is None else min(m_all, max_voxels)
    if max_points is None:  # P = the largest count of a kept voxel
        p = max(1, int(counts[:m].max())) if m > 0 else 1
    else:
        p = max_points
    features = empty_hugepage((m, p, c))
    gather_features(points, p2v.numpy(), rank.numpy(), counts.numpy(), features.numpy())
    over_v, over_p = cap_counts(counts[:m_all].numpy(), m, p)
    return (
        features,
        _compact(coords, m),
        _compact(counts, m),
        None,
        (int(n_nf), int(n_out), int(over_v), int(over_p)),
    )
