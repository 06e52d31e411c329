"""Non-maximum suppression for 3D detections: rotated BEV-IoU NMS and CenterPoint's circle (centre-distance) NMS.

Processing order (identical on every backend): candidates are sorted by descending score with ties broken by the
lower original index (a stable sort); ``pre_max`` keeps the first ``pre_max`` of them; the greedy pass keeps a
candidate unless an already-kept one suppresses it, and stops once ``post_max`` are kept. The result lists the
kept original indices in that order (descending score).

``nms_bev`` suppresses when the BEV IoU (float64, see :mod:`perception.ops.iou3d`) is **strictly greater** than
``iou_threshold`` (as OpenPCDet's ``nms_gpu``). ``circle_nms`` suppresses when the squared BEV centre distance is
**less than or equal to** ``distance ** 2``. CenterPoint's ``circle_nms(dets, thresh)`` compares the *squared*
distance to ``thresh`` (``dist = dx**2 + dy**2; if dist <= thresh``), and its configs pass ``min_radius`` as that
``thresh`` -- so ``min_radius`` is in m^2 there; to reproduce a CenterPoint config pass
``distance=math.sqrt(min_radius)`` here. (CenterPoint breaks score ties by the higher index; we use the lower.)

Backends: ``"torch"`` (reference), ``"cpu"`` (numba greedy loop; IoU pairs with distant centres are rejected by a
circumscribed-circle test before clipping), ``"cuda"`` (a bit-mask kernel, then the greedy pass on the host).
The kept indices are identical across backends on the CPU and in the CUDA simulator (same float64 operations);
see :mod:`perception.ops.iou3d` for the caveat about fused multiply-adds on a real GPU.
"""

from __future__ import annotations

import math

import torch

from perception._validate import check_tensor

from ._backend import pick_backend
from .iou3d import box_params, check_boxes
from .nms_cpu import circle_nms_sorted, nms_sorted
from .nms_torch import circle_nms_sorted_torch, nms_sorted_torch

__all__ = ["nms_bev", "circle_nms"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_limit(name: str, value: object) -> int:
    if value is None:
        return -1
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be None or an int >= 0, got {value!r}")
    return value


def _order(scores: object, n: int, device: torch.device, pre_max: object) -> torch.Tensor:
    """Processing order: stable descending sort of the scores, truncated to ``pre_max``."""
    s = check_tensor("scores", scores, shape=(n,), dtype=_FLOATS)
    if s.device != device:
        raise ValueError(f"scores must be on the boxes' device {device}, got {s.device}")
    if n > 0 and not bool(torch.isfinite(s).all()):
        raise ValueError("scores contains NaN or inf")
    limit = _check_limit("pre_max", pre_max)
    order = torch.sort(s, descending=True, stable=True).indices
    return order if limit < 0 else order[:limit]


def nms_bev(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    pre_max: int | None = None,
    post_max: int | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Greedy NMS with rotated BEV IoU.

    Args:
        boxes: float32/float64 ``(N, 7+)`` ``[x, y, z, dx, dy, dz, yaw, ...]`` (finite, sizes >= 0).
        scores: float ``(N,)`` finite, same device.
        iou_threshold: in ``[0, 1]``; a box is suppressed when its IoU with a kept box is ``> iou_threshold``.
        pre_max: consider only the ``pre_max`` highest-scoring boxes (``None``: all).
        post_max: keep at most ``post_max`` boxes (``None``: no limit).
        backend: ``None`` (by device), ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        int64 ``(kept,)`` indices into ``boxes``, by descending score (ties: lower index first), on the boxes'
        device.
    """
    b = check_boxes("boxes", boxes)
    thr = float(iou_threshold)
    if not (0.0 <= thr <= 1.0):
        raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold!r}")
    post = _check_limit("post_max", post_max)
    order = _order(scores, b.shape[0], b.device, pre_max)
    which = pick_backend(b, backend)
    params = box_params(b)[order].contiguous()
    if post == 0 or params.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=b.device)
    if which == "torch":
        pos = nms_sorted_torch(params, thr, post)
    elif which == "cuda":
        from .nms_cuda import nms_sorted_cuda

        pos = nms_sorted_cuda(params, thr, post)
    else:
        pos = torch.from_numpy(nms_sorted(params.numpy(), thr, post))
    return order[pos.to(order.device)]


def circle_nms(
    centres: torch.Tensor,
    scores: torch.Tensor,
    distance: float,
    pre_max: int | None = None,
    post_max: int | None = None,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Greedy NMS by BEV centre distance (CenterPoint's circle NMS).

    Args:
        centres: float32/float64 ``(N, 2)`` or ``(N, 3)`` (or boxes ``(N, 7+)``); only x and y are used.
        scores: float ``(N,)`` finite, same device.
        distance: suppression radius in metres, ``>= 0``: a box is suppressed when
            ``dx^2 + dy^2 <= distance^2`` (float64) with a kept box. CenterPoint's ``min_radius`` is a squared
            distance: pass ``math.sqrt(min_radius)``.
        pre_max: consider only the ``pre_max`` highest-scoring boxes (``None``: all).
        post_max: keep at most ``post_max`` boxes (``None``: no limit).
        backend: ``None`` (by device), ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        int64 ``(kept,)`` indices into ``centres``, by descending score (ties: lower index first).
    """
    c = check_tensor("centres", centres, ndim=2, dtype=(torch.float32, torch.float64))
    if c.shape[1] < 2:
        raise ValueError(f"centres must have shape (N, 2+) [x, y, ...], got {tuple(c.shape)}")
    if c.shape[0] > 0 and not bool(torch.isfinite(c[:, :2]).all()):
        raise ValueError("centres contains NaN or inf in x or y")
    dist = float(distance)
    if not (math.isfinite(dist) and dist >= 0.0):
        raise ValueError(f"distance must be a finite number >= 0 (metres), got {distance!r}")
    post = _check_limit("post_max", post_max)
    order = _order(scores, c.shape[0], c.device, pre_max)
    which = pick_backend(c, backend)
    xy = c[:, :2].to(torch.float64)[order].contiguous()
    dist_sq = dist * dist
    if post == 0 or xy.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=c.device)
    if which == "torch":
        pos = circle_nms_sorted_torch(xy, dist_sq, post)
    elif which == "cuda":
        from .nms_cuda import circle_nms_sorted_cuda

        pos = circle_nms_sorted_cuda(xy, dist_sq, post)
    else:
        pos = torch.from_numpy(circle_nms_sorted(xy.numpy(), dist_sq, post))
    return order[pos.to(order.device)]
