"""Plain-torch reference for :func:`perception.ops.points_in_boxes` (dense point x box test, chunked over points).

Performs the test documented in :mod:`perception.ops.points_in_boxes_cpu` with the same roundings.
"""

from __future__ import annotations

import torch

#: Point x box pairs per chunk of the reference (bounds its memory).
PAIRS_PER_CHUNK = 1 << 22


def box_rows(boxes: torch.Tensor) -> torch.Tensor:
    """float32 ``(K, 8)`` ``[x, y, z, dx, dy, dz, cos(yaw), sin(yaw)]`` (cos/sin in float64, rounded to float32)."""
    b = boxes[:, :7]
    yaw = b[:, 6:7].to(torch.float64)
    rows = torch.cat([b[:, :6].to(torch.float32), torch.cos(yaw).float(), torch.sin(yaw).float()], dim=1)
    return rows.contiguous()


def inside_mask_torch(points: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """bool ``(N, K)``: point ``n`` (float32 ``(N, 3+)``) is inside box row ``k`` (float32 ``(K, 8)``)."""
    o = [(points[:, None, a] - rows[None, :, a]).to(torch.float64) for a in range(3)]
    c = rows[None, :, 6].to(torch.float64)
    s = rows[None, :, 7].to(torch.float64)
    lx = o[0] * c + o[1] * s
    ly = o[1] * c - o[0] * s
    half = [0.5 * rows[None, :, 3 + a].to(torch.float64) for a in range(3)]
    return (lx.abs() <= half[0]) & (ly.abs() <= half[1]) & (o[2].abs() <= half[2])


def points_in_boxes_torch(points: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: (first box index per point int64 ``(N,)`` or -1, points per box int64 ``(K,)``)."""
    n, k = points.shape[0], rows.shape[0]
    index = torch.full((n,), -1, dtype=torch.int64, device=points.device)
    counts = torch.zeros(k, dtype=torch.int64, device=points.device)
    if n == 0 or k == 0:
        return index, counts
    step = max(1, PAIRS_PER_CHUNK // k)
    ks = torch.arange(k, device=points.device)
    for start in range(0, n, step):
        inside = inside_mask_torch(points[start : start + step], rows)
        first = torch.where(inside, ks, torch.full_like(ks, k)).amin(dim=1)
        index[start : start + step] = torch.where(first < k, first, torch.full_like(first, -1))
        counts += inside.sum(dim=0)
    return index, counts
