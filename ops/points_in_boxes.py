"""Which box each point lies in, and how many points each box holds.

Semantics (identical bit for bit on every backend, see :mod:`perception.ops.points_in_boxes_cpu` for the exact
arithmetic): a box is **closed** -- a point on a face, edge or corner is inside (OpenPCDet's ``check_pt_in_box3d``
is closed in z and adds a 1e-5 m margin to a strict test in x/y; we use no margin, so a point counts as inside
exactly when ``|local x| <= dx/2``, ``|local y| <= dy/2`` and ``|z - z_c| <= dz/2`` with the local offsets
computed as documented). Points and boxes are evaluated in float32 (float64 input is rounded to float32 first).
Points with NaN (or inf) coordinates are in no box. A point inside several (overlapping) boxes is assigned the
lowest box index, and is counted in ``points_per_box`` of **every** box containing it (so
``points_per_box.sum()`` can exceed the number of assigned points; ``torch.bincount`` of the index gives the
exclusive counts).
"""

from __future__ import annotations

import torch

from perception._validate import check_tensor

from ._backend import match_torch_threads, pick_backend
from .iou3d import check_boxes
from .points_in_boxes_cpu import points_in_boxes_kernel
from .points_in_boxes_torch import box_rows, points_in_boxes_torch

__all__ = ["points_in_boxes"]

#: Point chunks of the CPU kernel (each has its own row of box counts).
CPU_CHUNKS = 64


def points_in_boxes(
    points: torch.Tensor, boxes: torch.Tensor, *, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Assign points to rotated 3D boxes.

    Args:
        points: float32/float64 ``(N, 3+)`` ``[x, y, z, ...]`` (m); extra columns are ignored.
        boxes: float32/float64 ``(K, 7+)`` ``[x, y, z, dx, dy, dz, yaw, ...]`` (box centre; finite, sizes >= 0),
            same device.
        backend: ``None`` (by device), ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        ``point_box_index``: int64 ``(N,)``, the lowest index of a box containing the point, or -1;
        ``points_per_box``: int64 ``(K,)``, the number of points inside each box.
    """
    p = check_tensor("points", points, ndim=2, dtype=(torch.float32, torch.float64))
    if p.shape[1] < 3:
        raise ValueError(f"points must have shape (N, 3+) [x, y, z, ...], got {tuple(p.shape)}")
    b = check_boxes("boxes", boxes)
    if p.device != b.device:
        raise ValueError(f"points and boxes must be on the same device, got {p.device} and {b.device}")
    which = pick_backend(p, backend)
    xyz = p[:, :3].to(torch.float32).contiguous()
    rows = box_rows(b)
    if which == "torch":
        return points_in_boxes_torch(xyz, rows)
    if which == "cuda":
        from .points_in_boxes_cuda import points_in_boxes_cuda

        return points_in_boxes_cuda(xyz, rows)
    n, k = xyz.shape[0], rows.shape[0]
    index = torch.full((n,), -1, dtype=torch.int64)
    if n == 0 or k == 0:
        return index, torch.zeros(k, dtype=torch.int64)
    counts = torch.zeros(min(CPU_CHUNKS, n), k, dtype=torch.int64)
    match_torch_threads()
    points_in_boxes_kernel(xyz.numpy(), rows.numpy(), index.numpy(), counts.numpy())
    return index, counts.sum(dim=0)
