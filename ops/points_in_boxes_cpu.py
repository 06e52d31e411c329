"""Scalar point-in-box test and the numba CPU kernel for :func:`perception.ops.points_in_boxes`.

Box rows are float32 ``(K, 8)`` ``[x, y, z, dx, dy, dz, cos(yaw), sin(yaw)]`` with cos/sin rounded to float32 once by
torch (:func:`perception.ops.points_in_boxes_torch.box_rows`). The test, identical on every backend:

1. offsets ``o = p - c`` per axis in **float32** (one IEEE subtraction);
2. the in-box frame ``lx = ox*cos + oy*sin``, ``ly = oy*cos - ox*sin`` in **float64**: every product of two float32
   values is exact in float64, so the sum is rounded once and a fused multiply-add gives the same bits;
3. inside iff ``|lx| <= dx/2`` and ``|ly| <= dy/2`` and ``|oz| <= dz/2`` (float64, closed box: the surface counts
   as inside; no margin). Any NaN makes every comparison false, so NaN points are in no box.

A cheap pre-test skips boxes whose bounding square (half side ``(dx + dy) / 2`` plus a 1e-5 relative margin, which
contains the box with room for rounding) does not contain the point; it never changes the answer.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable


@register_jitable
def point_in_box(px: np.float32, py: np.float32, pz: np.float32, box: np.ndarray) -> bool:
    """Whether the float32 point ``(px, py, pz)`` lies in the closed box given by a float32 box row ``(8,)``."""
    ox = px - box[0]
    oy = py - box[1]
    oz = pz - box[2]
    hx = 0.5 * np.float64(box[3])
    hy = 0.5 * np.float64(box[4])
    hz = 0.5 * np.float64(box[5])
    fz = abs(np.float64(oz))
    if not (fz <= hz):
        return False
    fx = np.float64(ox)
    fy = np.float64(oy)
    bound = (hx + hy) * (1.0 + 1e-5) + 1e-6
    if abs(fx) > bound or abs(fy) > bound:
        return False
    c = np.float64(box[6])
    s = np.float64(box[7])
    lx = fx * c + fy * s
    ly = fy * c - fx * s
    return bool(abs(lx) <= hx and abs(ly) <= hy)


@njit(parallel=True, cache=True)
def points_in_boxes_kernel(
    points: np.ndarray, boxes: np.ndarray, out_index: np.ndarray, counts: np.ndarray
) -> None:
    """Fill each point's first box and per-chunk box counts.

    Args:
        points: float32 ``(N, C)``, ``C >= 3``.
        boxes: float32 ``(K, 8)`` box rows.
        out_index: int64 ``(N,)`` output: lowest index of a box containing the point, or -1.
        counts: int64 ``(T, K)`` zero-initialised output: points of chunk ``t`` (of ``T`` equal point ranges) in
            each box; the caller sums over ``t``.
    """
    n = points.shape[0]
    k = boxes.shape[0]
    chunks = counts.shape[0]
    for t in prange(chunks):
        start = t * n // chunks
        end = (t + 1) * n // chunks
        for i in range(start, end):
            first = -1
            px = points[i, 0]
            py = points[i, 1]
            pz = points[i, 2]
            for j in range(k):
                if point_in_box(px, py, pz, boxes[j]):
                    counts[t, j] += 1
                    if first < 0:
                        first = j
            out_index[i] = first
