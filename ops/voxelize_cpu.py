"""numba CPU kernels for :func:`perception.ops.voxelize` (open-addressing hash on packed int64 voxel keys).

Three serial kernels, ``@njit(cache=True)``:

1. :func:`point_keys`: the key ``((b * nz + z) * ny + y) * nx + x`` of each point's voxel, with the index per axis
   ``floor((p - lo) / size)`` evaluated in float32 exactly as spconv does; a point is kept when
   ``0 <= index < grid`` on every axis (so points on the upper border are dropped) and all its values are finite.
   Blocked so that the arithmetic vectorises.
2. :func:`hash_assign` (input order): a linear-probing table of int64 entries ``key << id_bits | id`` numbers the
   voxels in order of first occurrence, and gives each point its voxel id and its rank among the voxel's points.
   The table starts at ``N / 4`` entries and doubles when half full, so it grows with the number of voxels (never
   more than ``next_pow2(2 * N)`` entries), never with the grid, and stays small enough to be cache friendly.
   Keys too large to pack with an id use a wide layout (keys and ids in two arrays).
3. :func:`gather_features`: zero the padded ``(M, P, C)`` output in one pass, then copy each kept point.

Scratch buffers are kept per thread between calls (:class:`_Workspace`, ``release_workspace()`` frees them) and
outputs come from huge-page-advised memory (:func:`empty_hugepage`): on the project's VMs,
page faults of fresh 4 KiB pages cost more than the voxelization itself.

Why serial: the work is memory-bound (about 10 ms for 340k points). ``prange`` versions of kernels 1 and 3 were
~20% faster on an idle 2-core machine but 1.5-40x slower whenever another process was busy (each parallel region
waits for a descheduled thread: 1 sweep took 82 ms instead of 1.9 ms at load 10), and they would oversubscribe
the cores from every DataLoader worker. Run voxelization in DataLoader workers to use several cores.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import threading

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


def _mapped_hugepage(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised 1-D tensor in its own private anonymous map, advised for transparent huge pages.

    For the kept scratch buffers: unlike :func:`empty_hugepage`, the memory never comes from recycled 4 KiB heap
    pages (as it does when ``MALLOC_MMAP_THRESHOLD_`` is raised), so the random accesses of the hash table stay
    on huge pages (fewer TLB misses) whatever the allocator settings.
    """
    if not hasattr(mmap, "MAP_PRIVATE"):  # no POSIX mmap flags (Windows): same results, plain allocation
        return empty_hugepage((numel,), dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    mm = mmap.mmap(-1, numel * itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # only a hint
            pass
    return torch.frombuffer(mm, dtype=dtype)


class _Workspace(threading.local):
    """Per-thread scratch buffers reused across calls (grown on demand): fresh scratch costs page faults on
    every call (about 2 ms for a 10-sweep scan), more than some of the kernels. Buffers above
    ``KEEP_BYTES`` are not kept, so a single huge input does not pin its memory."""

    KEEP_BYTES = 64 << 20

    def __init__(self) -> None:
        self.buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
        """An uninitialised numpy array of ``shape`` and ``dtype``, valid until the next ``take`` of ``name``."""
        numel = int(np.prod(shape))
        buf = self.buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < numel:
            buf = _mapped_hugepage(max(numel, 1), dtype)
            if buf.numel() * buf.element_size() <= self.KEEP_BYTES:
                self.buffers[name] = buf
            else:
                self.buffers.pop(name, None)
        return buf.numpy()[:numel].reshape(shape)

    def release(self) -> None:
        """Drop every kept buffer of this thread."""
        self.buffers.clear()


_WORKSPACE = _Workspace()


def release_workspace() -> None:
    """Free the calling thread's voxelization scratch buffers (kept between calls for speed; O(points) bytes)."""
    _WORKSPACE.release()


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
def _rehash(
    table: np.ndarray, ids: np.ndarray, voxel_keys: np.ndarray, m: int, bits: int, id_bits: int
) -> None:
    """Rebuild the first ``2**bits`` entries of ``table`` with voxels ``0..m-1`` (layout: :func:`hash_assign`)."""
    mask = (1 << bits) - 1
    wide = ids.shape[0] > 0
    table[: 1 << bits] = _EMPTY
    for v in range(m):
        h = _slot(voxel_keys[v], bits)
        while table[h] != _EMPTY:
            h = (h + 1) & mask
        if wide:
            table[h] = voxel_keys[v]
            ids[h] = v
        else:
            table[h] = (voxel_keys[v] << id_bits) | v


def packed_id_bits(max_key: int, n: int) -> int:
    """Bits for the voxel id in a packed table entry ``key << id_bits | id``, or 0 when ``key`` (``<= max_key``)
    and an id ``< n`` do not fit together in 63 bits (then :func:`hash_assign` needs the wide layout)."""
    id_bits = max(1, int(n).bit_length())
    return id_bits if int(max_key).bit_length() + id_bits <= 63 else 0


_KEY_BLOCK = 256
"""Points per block of :func:`point_keys` (its scratch columns stay in L1)."""


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

    Points are processed in blocks of :data:`_KEY_BLOCK`: a scalar pass copies the block's ``x, y, z`` columns
    (and batch indices) into small contiguous arrays and folds every value of a point into ``sum(v * 0)``, which
    is NaN exactly when some value is NaN or infinite; then branch-free passes compute the keys, which LLVM
    vectorises (8 float32 divisions at a time, the same IEEE float32 results as one at a time).

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
    lx, ly, lz, sx, sy, sz = lo[0], lo[1], lo[2], size[0], size[1], size[2]
    gx, gy, gz = gridf[0], gridf[1], gridf[2]
    xs = np.empty(_KEY_BLOCK, np.float32)
    ys = np.empty(_KEY_BLOCK, np.float32)
    zs = np.empty(_KEY_BLOCK, np.float32)
    nan_if_bad = np.empty(_KEY_BLOCK, np.float32)
    bs = np.zeros(_KEY_BLOCK, np.int64)
    block_keys = np.empty(_KEY_BLOCK, np.int64)
    n_nonfinite = 0
    n_out = 0
    for start in range(0, n, _KEY_BLOCK):
        m = min(n, start + _KEY_BLOCK) - start
        for t in range(m):
            i = start + t
            xs[t], ys[t], zs[t] = points[i, 0], points[i, 1], points[i, 2]
            acc = np.float32(0.0)
            for j in range(c):
                acc += points[i, j] * np.float32(0.0)
            nan_if_bad[t] = acc
            if has_batch:
                bs[t] = batch[i]
        # vectorised: floor((p - lo) / size) in float32, as spconv, selects instead of branches
        for t in range(m):
            qx = (xs[t] - lx) / sx
            qy = (ys[t] - ly) / sy
            qz = (zs[t] - lz) / sz
            inside = (qx >= 0) & (qx < gx) & (qy >= 0) & (qy < gy) & (qz >= 0) & (qz < gz)
            ix = np.int64(np.floor(qx)) if inside else 0
            iy = np.int64(np.floor(qy)) if inside else 0
            iz = np.int64(np.floor(qz)) if inside else 0
            key = ((bs[t] * nz + iz) * ny + iy) * nx + ix
            block_keys[t] = key if inside else -1
        for t in range(m):
            finite = nan_if_bad[t] == nan_if_bad[t]
            keys[start + t] = block_keys[t] if finite else -2
            n_nonfinite += not finite
            n_out += finite & (block_keys[t] == -1)
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
    ids: np.ndarray,
    id_bits: int,
    voxel_keys: np.ndarray,
    counts: np.ndarray,
    coords: np.ndarray,
    point_to_voxel: np.ndarray,
    rank: np.ndarray,
) -> int:
    """Number the voxels in order of first occurrence; serial, in input order. Outputs need no initialisation.

    The table is linear probing on int64 entries. Packed layout (``ids`` empty): an entry is
    ``key << id_bits | id``, so a probe reads one 8-byte word (8 entries per cache line; for a 10-sweep scan
    the table stays around 2 MB, the size of the L2 cache, where ``(key, id)`` rows took twice that). Wide layout
    (``ids`` has the table's length; for keys too large to pack, see :func:`packed_id_bits`): the entry is the
    key and ``ids`` holds the id.

    Args:
        keys: int64 ``(N,)`` from :func:`point_keys`; points, batch, lo, size, gridf: as for :func:`point_keys`
            (a new voxel's coordinates are taken from its first point: cheaper than dividing its key).
        table: int64 ``(2**table_bits(N),)`` scratch.
        ids: int64 scratch of the table's length (wide layout) or ``(0,)`` (packed layout).
        id_bits: the packed layout's id bits (:func:`packed_id_bits`); ignored in the wide layout.
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
    wide = ids.shape[0] > 0
    id_mask = (np.int64(1) << id_bits) - 1
    bits = table_bits(n // 8)
    mask = (1 << bits) - 1
    table[: 1 << bits] = _EMPTY
    m = 0
    last_key = np.int64(-1)
    last_id: int = np.int64(-1)  # type: ignore[assignment]
    for i in range(n):
        k = keys[i]
        if k < 0:
            point_to_voxel[i] = -1
            continue
        if k == last_key:  # consecutive points share a voxel often for large voxels (pillars)
            vid = last_id
        else:
            # linear probing, written inline: a call passing the table costs more than the probe itself
            h = _slot(k, bits)
            while True:
                e = table[h]
                if e == _EMPTY:
                    if wide:
                        table[h] = k
                        ids[h] = m
                    else:
                        table[h] = (k << id_bits) | m
                    voxel_keys[m] = k
                    counts[m] = 0
                    coords[m, 0] = batch[i] if has_batch else 0
                    coords[m, 1] = _axis_index(points[i, 2], lo[2], size[2], gridf[2])
                    coords[m, 2] = _axis_index(points[i, 1], lo[1], size[1], gridf[1])
                    coords[m, 3] = _axis_index(points[i, 0], lo[0], size[0], gridf[0])
                    vid = m
                    m += 1
                    if 2 * m > (1 << bits):  # half full: rehash into a table twice as large
                        bits += 1
                        mask = (1 << bits) - 1
                        _rehash(table, ids, voxel_keys, m, bits, id_bits)
                    break
                if wide:
                    if e == k:
                        vid = ids[h]
                        break
                elif (e >> id_bits) == k:
                    vid = e & id_mask
                    break
                h = (h + 1) & mask
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
    points: np.ndarray, point_to_voxel: np.ndarray, rank: np.ndarray, features: np.ndarray
) -> None:
    """Fill ``features`` ``(M, P, C)`` (need not be initialised): voxel ``v`` gets its first ``P`` points in
    input order, the remaining slots zeros (one zeroing pass first: zeroing only the unused slots of each voxel
    afterwards was 2-3x slower, and a fresh zero-page map slower still).

    Args:
        points: float32 ``(N, C)``; point_to_voxel: int64 ``(N,)``; rank: int32 ``(N,)``.
    """
    m, p, c = features.shape
    features[:] = 0
    for i in range(points.shape[0]):
        v = point_to_voxel[i]
        r = rank[i]
        if v >= 0 and v < m and r < p:
            for j in range(c):
                features[v, r, j] = points[i, j]


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


def _compact(buffer: np.ndarray, m: int) -> torch.Tensor:
    """A copy of the first ``m`` rows of a scratch buffer. numpy, not torch: torch would copy on its 2-thread
    pool, which stalls whenever the cores are busy."""
    return torch.from_numpy(buffer[:m].copy())


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
    ws = _WORKSPACE
    keys = ws.take("keys", (n,), torch.int64)
    n_nf, n_out = point_keys(points, b, lo_np, size_np, grid, gridf, keys)
    rows = 1 << table_bits(n)
    num_batches = int(b.max()) + 1 if b.shape[0] > 0 else 1
    id_bits = packed_id_bits(num_batches * int(np.prod(grid)) - 1, n)
    counts = ws.take("counts", (n,), torch.int32)
    coords = ws.take("coords", (n, 4), torch.int32)
    # dynamic mode returns point_to_voxel: a fresh array; hard mode only reads it
    p2v = ws.take("p2v", (n,), torch.int64) if hard else empty_hugepage((n,), torch.int64).numpy()
    rank = ws.take("rank", (n if hard else 0,), torch.int32)
    m_all = hash_assign(
        keys,
        points,
        b,
        lo_np,
        size_np,
        gridf,
        ws.take("table", (rows,), torch.int64),
        ws.take("ids", (0 if id_bits else rows,), torch.int64),
        id_bits,
        ws.take("voxel_keys", (n,), torch.int64),
        counts,
        coords,
        p2v,
        rank,
    )
    if not hard:  # compact copies of the scratch rows
        return (
            None,
            _compact(coords, m_all),
            _compact(counts, m_all),
            torch.from_numpy(p2v),
            (int(n_nf), int(n_out), 0, 0),
        )
    m = m_all if max_voxels is None else min(m_all, max_voxels)
    if max_points is None:  # P = the largest count of a kept voxel
        p = max(1, int(counts[:m].max())) if m > 0 else 1
    else:
        p = max_points
    features = empty_hugepage((m, p, c))
    gather_features(points, p2v, rank, features.numpy())
    over_v, over_p = cap_counts(counts[:m_all], m, p)
    return (
        features,
        _compact(coords, m),
        _compact(counts, m),
        None,
        (int(n_nf), int(n_out), int(over_v), int(over_p)),
    )
