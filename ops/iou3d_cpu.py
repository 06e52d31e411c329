"""Scalar rotated-box overlap cores and the numba CPU kernels for :mod:`perception.ops.iou3d`.

Every box is described by a float64 parameter row (see :func:`perception.ops.iou3d_torch.box_params`):
``[x, y, z, dx, dy, dz, cos(yaw), sin(yaw), r]`` with ``r = sqrt(dx^2 + dy^2) / 2`` the BEV circumradius. The
cosines, sines and radii are computed once, by torch, and shared by all backends, so the kernels use only
``+ - * /``, ``min`` and ``max`` (all correctly rounded in IEEE 754). The torch reference performs the same operations in the same order, so on the CPU and in the CUDA
simulator the three backends give bit-identical IoUs. (On a real GPU, NVVM may fuse ``a * b + c`` into one FMA,
which changes the last bit of a float64 IoU; see ``ops/iou3d.py``.)

BEV intersection (Sutherland-Hodgman): box A's corners are expressed in box B's frame (B becomes the axis-aligned
rectangle ``[-hx_b, hx_b] x [-hy_b, hy_b]``), then A's quadrilateral is clipped by B's four half-planes
``x <= hx_b``, ``-x <= hx_b``, ``y <= hy_b``, ``-y <= hy_b``. A vertex with signed distance ``s >= 0`` is
inside; a crossing edge gives the point with ``t = s_prev / (s_prev - s_cur)`` (well defined: the two signs
differ), whose clipped coordinate is set exactly to the plane. The area is the shoelace sum, clamped at 0.
Pairs whose circumscribed circles are apart (with a relative margin of 1e-6) are skipped (area exactly 0).

The scalar functions are ``register_jitable``: the same Python source compiles for numba CPU (``@njit``) and
numba CUDA device code (and runs as plain Python in the CUDA simulator).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

#: Capacity of a clipped polygon's vertex buffer. Convex clipping needs at most 8; the extra room absorbs
#: sign flips of vertices lying on a clip line within rounding. All backends drop emissions past this in the
#: same order (not observed: 3000 near-identical and 90-degree-rotated pairs stay within 8 vertices).
MAX_VERTS = 16
#: Relative margin of the circumscribed-circle rejection test.
REJECT_MARGIN = 1e-6


@register_jitable
def bev_intersection(
    ax: float,
    ay: float,
    adx: float,
    ady: float,
    ac: float,
    as_: float,
    ra: float,
    bx: float,
    by: float,
    bdx: float,
    bdy: float,
    bc: float,
    bs: float,
    rb: float,
    px: np.ndarray,
    py: np.ndarray,
    qx: np.ndarray,
    qy: np.ndarray,
) -> float:
    """BEV intersection area (m^2, float64) of rotated rectangles A and B.

    Args:
        ax, ay, adx, ady, ac, as_, ra: A's centre, size, cos/sin of its yaw and BEV circumradius.
        bx, by, bdx, bdy, bc, bs, rb: the same for B.
        px, py, qx, qy: float64 scratch buffers of ``MAX_VERTS`` elements.
    """
    ox = ax - bx
    oy = ay - by
    rr = ra + rb
    if ox * ox + oy * oy > rr * rr * (1.0 + REJECT_MARGIN):
        return 0.0
    # A's centre and orientation in B's frame.
    cx = ox * bc + oy * bs
    cy = oy * bc - ox * bs
    rc = ac * bc + as_ * bs
    rs = as_ * bc - ac * bs
    hx = 0.5 * adx
    hy = 0.5 * ady
    # Corners counter-clockwise: (+,+), (-,+), (-,-), (+,-).
    for k in range(4):
        sx = hx if (k == 0 or k == 3) else -hx
        sy = hy if k < 2 else -hy
        px[k] = cx + (sx * rc - sy * rs)
        py[k] = cy + (sx * rs + sy * rc)
    n = 4
    bhx = 0.5 * bdx
    bhy = 0.5 * bdy
    for plane in range(4):
        if n == 0:
            break
        h = bhx if plane < 2 else bhy
        m = 0
        for k in range(n):
            j = k - 1 if k > 0 else n - 1
            if plane == 0:
                s_cur = h - px[k]
                s_prev = h - px[j]
            elif plane == 1:
                s_cur = h + px[k]
                s_prev = h + px[j]
            elif plane == 2:
                s_cur = h - py[k]
                s_prev = h - py[j]
            else:
                s_cur = h + py[k]
                s_prev = h + py[j]
            cur_in = s_cur >= 0.0
            prev_in = s_prev >= 0.0
            if cur_in != prev_in:
                t = s_prev / (s_prev - s_cur)
                if plane < 2:
                    ix = h if plane == 0 else -h
                    iy = py[j] + t * (py[k] - py[j])
                else:
                    ix = px[j] + t * (px[k] - px[j])
                    iy = h if plane == 2 else -h
                if m < MAX_VERTS:
                    qx[m] = ix
                    qy[m] = iy
                    m += 1
            if cur_in:
                if m < MAX_VERTS:
                    qx[m] = px[k]
                    qy[m] = py[k]
                    m += 1
        for k in range(m):
            px[k] = qx[k]
            py[k] = qy[k]
        n = m
    acc = 0.0
    for k in range(n):
        j = k + 1 if k + 1 < n else 0
        acc += px[k] * py[j] - px[j] * py[k]
    area = 0.5 * acc
    return area if area > 0.0 else 0.0


@register_jitable
def pair_iou(
    pa: np.ndarray,
    pb: np.ndarray,
    mode_3d: bool,
    px: np.ndarray,
    py: np.ndarray,
    qx: np.ndarray,
    qy: np.ndarray,
) -> float:
    """IoU (float64 in ``[0, 1]``) of two boxes given as parameter rows ``(9,)``; BEV when ``mode_3d`` is False."""
    inter = bev_intersection(
        pa[0],
        pa[1],
        pa[3],
        pa[4],
        pa[6],
        pa[7],
        pa[8],
        pb[0],
        pb[1],
        pb[3],
        pb[4],
        pb[6],
        pb[7],
        pb[8],
        px,
        py,
        qx,
        qy,
    )
    area_a = pa[3] * pa[4]
    area_b = pb[3] * pb[4]
    if mode_3d:
        top = min(pa[2] + 0.5 * pa[5], pb[2] + 0.5 * pb[5])
        bottom = max(pa[2] - 0.5 * pa[5], pb[2] - 0.5 * pb[5])
        dz = top - bottom
        if dz < 0.0:
            dz = 0.0
        inter = inter * dz
        area_a = area_a * pa[5]
        area_b = area_b * pb[5]
    union = area_a + area_b - inter
    if not (union > 0.0) or not (inter > 0.0):
        return 0.0
    iou = inter / union
    return iou if iou < 1.0 else 1.0


@njit(parallel=True, cache=True)
def iou_matrix(params_a: np.ndarray, params_b: np.ndarray, mode_3d: bool, out: np.ndarray) -> None:
    """Fill ``out`` (float32 ``(N, K)``) with the IoU of every pair; params float64 ``(N, 9)`` / ``(K, 9)``."""
    n = params_a.shape[0]
    k = params_b.shape[0]
    for i in prange(n):
        px = np.empty(MAX_VERTS, np.float64)
        py = np.empty(MAX_VERTS, np.float64)
        qx = np.empty(MAX_VERTS, np.float64)
        qy = np.empty(MAX_VERTS, np.float64)
        for j in range(k):
            out[i, j] = np.float32(pair_iou(params_a[i], params_b[j], mode_3d, px, py, qx, qy))
