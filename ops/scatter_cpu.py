"""numba CPU kernels for :func:`perception.ops.scatter`: a stable counting sort into segments, then one thread per
segment reduces its points in ascending point order (deterministic, and bit-identical to the CUDA kernel)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

REDUCE_CODES = {"sum": 0, "mean": 1, "max": 2}


@njit(cache=True)
def segment_order(index: np.ndarray, num_segments: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable counting sort of the points by segment.

    Args:
        index: int64 ``(N,)`` segment per point in ``[-1, num_segments)``; -1 is ignored.

    Returns:
        order: int64 ``(K,)`` the indices of the ``K`` non-ignored points, grouped by segment, ascending inside;
        offsets: int64 ``(num_segments + 1,)`` segment ``s`` owns ``order[offsets[s]:offsets[s + 1]]``.
    """
    offsets = np.zeros(num_segments + 1, dtype=np.int64)
    for i in range(index.shape[0]):
        if index[i] >= 0:
            offsets[index[i] + 1] += 1
    for s in range(num_segments):
        offsets[s + 1] += offsets[s]
    fill = offsets[:-1].copy()
    order = np.empty(offsets[num_segments], dtype=np.int64)
    for i in range(index.shape[0]):
        s = index[i]
        if s >= 0:
            order[fill[s]] = i
            fill[s] += 1
    return order, offsets


@njit(parallel=True, cache=True)
def segment_reduce(
    features: np.ndarray,
    order: np.ndarray,
    offsets: np.ndarray,
    counts: np.ndarray,
    reduce_code: int,
    out: np.ndarray,
    arg: np.ndarray,
) -> None:
    """Reduce each segment's rows of ``features`` ``(N, C)`` into ``out`` ``(S, C)`` (same float dtype).

    ``counts`` ``(S,)`` has the dtype of ``features`` (so that the mean is one same-dtype division).
    ``arg`` int64 ``(S, C)`` receives the point index of the maximum (max only; -1 for empty segments). NaN
    propagates: the maximum of a column with NaN is NaN, at its first NaN point. Empty segments give 0.
    """
    s_total, c_total = out.shape
    for s in prange(s_total):
        a = offsets[s]
        b = offsets[s + 1]
        if a == b:
            for c in range(c_total):
                out[s, c] = 0
                arg[s, c] = -1
            continue
        first = order[a]
        for c in range(c_total):
            out[s, c] = features[first, c]
            arg[s, c] = first
        for k in range(a + 1, b):
            i = order[k]
            for c in range(c_total):
                v = features[i, c]
                if reduce_code == 2:
                    best = out[s, c]
                    if best == best and (v > best or v != v):
                        out[s, c] = v
                        arg[s, c] = i
                else:
                    out[s, c] += v
        if reduce_code == 1:
            for c in range(c_total):
                out[s, c] = out[s, c] / counts[s]
