"""numba CPU kernels for :mod:`perception.ops.nms` (greedy NMS on boxes already sorted by descending score).

All kernels take the candidates in processing order (sorted by score, ties by lower original index) and return the
kept *positions* in that order; :mod:`perception.ops.nms` maps them back to original indices.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .iou3d_cpu import MAX_VERTS, REJECT_MARGIN, pair_iou

#: Bits per word of the CUDA suppression mask.
WORD = 64


@njit(cache=True)
def nms_sorted(params: np.ndarray, threshold: float, post_max: int) -> np.ndarray:
    """Greedy rotated-IoU NMS.

    For each kept box, the later unsuppressed boxes are tested serially (the work per kept box is too small for
    threads to pay off; with threads, a busy machine made it up to 100x slower). Pairs whose circumscribed circles
    are apart are skipped before clipping: the same test, on the same values, that makes
    :func:`perception.ops.iou3d_cpu.bev_intersection` return 0, so the decisions do not change.

    Args:
        params: float64 ``(M, 9)`` box parameter rows in processing order.
        threshold: a later box is suppressed when its BEV IoU with a kept box is ``> threshold`` (``>= 0``).
        post_max: stop after this many kept boxes (``-1``: no limit).

    Returns:
        int64 ``(kept,)`` kept positions, ascending.
    """
    m = params.shape[0]
    suppressed = np.zeros(m, np.bool_)
    keep = np.empty(m, np.int64)
    nk = 0
    px = np.empty(MAX_VERTS, np.float64)
    py = np.empty(MAX_VERTS, np.float64)
    qx = np.empty(MAX_VERTS, np.float64)
    qy = np.empty(MAX_VERTS, np.float64)
    for i in range(m):
        if suppressed[i]:
            continue
        keep[nk] = i
        nk += 1
        if nk == post_max:
            break
        xi = params[i, 0]
        yi = params[i, 1]
        ri = params[i, 8]
        for j in range(i + 1, m):
            if suppressed[j]:
                continue
            ox = xi - params[j, 0]
            oy = yi - params[j, 1]
            rr = ri + params[j, 8]
            if ox * ox + oy * oy > rr * rr * (1.0 + REJECT_MARGIN):
                continue
            if pair_iou(params[i], params[j], False, px, py, qx, qy) > threshold:
                suppressed[j] = True
    return keep[:nk].copy()


@njit(cache=True)
def circle_nms_sorted(centres: np.ndarray, distance_sq: float, post_max: int) -> np.ndarray:
    """Greedy centre-distance NMS: a later box is suppressed when ``dx^2 + dy^2 <= distance_sq`` (float64).

    Args:
        centres: float64 ``(M, 2)`` BEV centres in processing order.
        distance_sq: squared suppression distance (m^2).
        post_max: stop after this many kept boxes (``-1``: no limit).

    Returns:
        int64 ``(kept,)`` kept positions, ascending.
    """
    m = centres.shape[0]
    suppressed = np.zeros(m, np.bool_)
    keep = np.empty(m, np.int64)
    nk = 0
    for i in range(m):
        if suppressed[i]:
            continue
        keep[nk] = i
        nk += 1
        if nk == post_max:
            break
        xi = centres[i, 0]
        yi = centres[i, 1]
        for j in range(i + 1, m):
            if not suppressed[j]:
                ddx = xi - centres[j, 0]
                ddy = yi - centres[j, 1]
                if ddx * ddx + ddy * ddy <= distance_sq:
                    suppressed[j] = True
    return keep[:nk].copy()


@njit(cache=True)
def reduce_mask(mask: np.ndarray, post_max: int) -> np.ndarray:
    """Greedy pass over a suppression bit mask (the CUDA backend's second stage).

    Args:
        mask: int64 ``(M, ceil(M / 64))``; bit ``j % 64`` of word ``j // 64`` in row ``i`` is set when box ``i``
            would suppress the later box ``j``.
        post_max: stop after this many kept boxes (``-1``: no limit).

    Returns:
        int64 ``(kept,)`` kept positions, ascending.
    """
    m = mask.shape[0]
    words = mask.shape[1]
    removed = np.zeros(words, np.int64)
    keep = np.empty(m, np.int64)
    nk = 0
    for i in range(m):
        if (removed[i // WORD] >> (i % WORD)) & 1:
            continue
        keep[nk] = i
        nk += 1
        if nk == post_max:
            break
        for w in range(words):
            removed[w] |= mask[i, w]
    return keep[:nk].copy()
