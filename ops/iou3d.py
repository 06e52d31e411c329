"""Rotated-box IoU in bird's-eye view and in 3D: public API and backend dispatch.

Boxes are ``(N, 7+)`` ``[x, y, z, dx, dy, dz, yaw, ...]`` in metres / radians (box centre, ``dx`` along the
heading, yaw counter-clockwise about +z); extra columns (velocities) are ignored. The BEV intersection is the exact
area of the intersection polygon of the two rotated rectangles (Sutherland-Hodgman clipping in float64, see
:mod:`perception.ops.iou3d_cpu`); 3D IoU is ``BEV intersection * z-overlap / union volume``.

Behaviour on edge inputs (tested):

* identical boxes give 1.0 (within 1e-6; the result is clamped to ``[0, 1]``); touching boxes give 0;
* a box with zero length, width (or, in 3D, height) has IoU 0 with everything (no NaN);
* empty inputs give an empty ``(N, K)`` matrix;
* non-finite values or negative sizes raise ``ValueError``.

Backends (``backend=None`` picks by device): ``"torch"`` (reference), ``"cpu"`` (numba, parallel over rows),
``"cuda"`` (numba CUDA, one thread per pair). All three share the per-box cos/sin computed by torch and perform the
same float64 operations, so on the CPU and in the CUDA simulator they agree bit for bit. On a real GPU the compiler
may contract ``a * b + c`` into a fused multiply-add, which can change the last bit of a float64 value (so an IoU
within ~1e-15 of an NMS threshold could be decided differently).
"""

from __future__ import annotations

import torch

from perception._validate import check_tensor

from ._backend import match_torch_threads, pick_backend
from .iou3d_cpu import iou_matrix
from .iou3d_torch import box_params, iou_matrix_torch

__all__ = ["boxes_iou_bev", "boxes_iou_3d", "check_boxes", "box_params"]


def check_boxes(name: str, boxes: object) -> torch.Tensor:
    """Validate boxes: a float32/float64 tensor ``(N, >=7)``, finite, with non-negative sizes.

    Raises:
        TypeError: not a tensor, or not float32/float64.
        ValueError: wrong shape, non-finite values, or a negative size.
    """
    t = check_tensor(name, boxes, ndim=2, dtype=(torch.float32, torch.float64))
    if t.shape[1] < 7:
        raise ValueError(
            f"{name} must have shape (N, 7+) [x, y, z, dx, dy, dz, yaw, ...], got {tuple(t.shape)}"
        )
    core = t[:, :7]
    if t.shape[0] > 0:
        if not bool(torch.isfinite(core).all()):
            raise ValueError(f"{name} contains NaN or inf in its first 7 columns")
        if bool((core[:, 3:6] < 0).any()):
            raise ValueError(f"{name} has a negative size (dx, dy, dz must be >= 0)")
    return t


def _iou(a: object, b: object, mode_3d: bool, backend: str | None) -> torch.Tensor:
    ta = check_boxes("boxes_a", a)
    tb = check_boxes("boxes_b", b)
    if ta.device != tb.device:
        raise ValueError(f"boxes_a and boxes_b must be on the same device, got {ta.device} and {tb.device}")
    which = pick_backend(ta, backend)
    pa = box_params(ta)
    pb = box_params(tb)
    if which == "torch":
        return iou_matrix_torch(pa, pb, mode_3d)
    if which == "cuda":
        from .iou3d_cuda import iou_matrix_cuda

        return iou_matrix_cuda(pa, pb, mode_3d)
    out = torch.zeros(pa.shape[0], pb.shape[0], dtype=torch.float32)
    if out.numel() > 0:
        match_torch_threads()
        iou_matrix(pa.numpy(), pb.numpy(), mode_3d, out.numpy())
    return out


def boxes_iou_bev(
    boxes_a: torch.Tensor, boxes_b: torch.Tensor, *, backend: str | None = None
) -> torch.Tensor:
    """Bird's-eye-view IoU of every pair of rotated boxes.

    Args:
        boxes_a: float32/float64 ``(N, 7+)`` ``[x, y, z, dx, dy, dz, yaw, ...]`` (m, rad).
        boxes_b: float32/float64 ``(K, 7+)``, same device.
        backend: ``None`` (by device), ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        float32 ``(N, K)`` IoU in ``[0, 1]`` of the boxes' ground-plane rectangles (z and dz ignored).
    """
    return _iou(boxes_a, boxes_b, False, backend)


def boxes_iou_3d(boxes_a: torch.Tensor, boxes_b: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """3D IoU of every pair of rotated boxes (yaw-only rotation).

    ``IoU = A_bev(a ∩ b) * overlap_z / (V_a + V_b - A_bev(a ∩ b) * overlap_z)`` with
    ``overlap_z = max(0, min(z_a + dz_a/2, z_b + dz_b/2) - max(z_a - dz_a/2, z_b - dz_b/2))``.

    Args:
        boxes_a: float32/float64 ``(N, 7+)`` ``[x, y, z, dx, dy, dz, yaw, ...]``, ``z`` the box centre.
        boxes_b: float32/float64 ``(K, 7+)``, same device.
        backend: ``None`` (by device), ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        float32 ``(N, K)`` IoU in ``[0, 1]``.
    """
    return _iou(boxes_a, boxes_b, True, backend)
