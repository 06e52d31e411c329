"""Plain-torch reference for rotated BEV / 3D IoU, and the box parameter rows shared by all backends.

The reference clips every pair's polygons at once (Sutherland-Hodgman on fixed-size vertex buffers with a valid
count, vectorised over pairs) and performs the same float64 operations in the same order as the scalar kernel
:func:`perception.ops.iou3d_cpu.bev_intersection`, which documents the algorithm.
"""

from __future__ import annotations

import torch

from .iou3d_cpu import MAX_VERTS, REJECT_MARGIN

#: Pairs processed per chunk by the reference (bounds its memory to a few hundred MB).
PAIRS_PER_CHUNK = 1 << 16


def box_params(boxes: torch.Tensor) -> torch.Tensor:
    """float64 ``(N, 9)`` rows ``[x, y, z, dx, dy, dz, cos(yaw), sin(yaw), r]`` from boxes ``(N, >=7)``.

    ``r = sqrt(dx^2 + dy^2) / 2`` is the BEV circumradius. Computed once by torch on the boxes' device and shared by
    every backend (so they all see the same cos, sin and r).
    """
    b = boxes[:, :7].to(torch.float64)
    radius = 0.5 * torch.sqrt(b[:, 3:4] * b[:, 3:4] + b[:, 4:5] * b[:, 4:5])
    return torch.cat([b[:, :6], torch.cos(b[:, 6:7]), torch.sin(b[:, 6:7]), radius], dim=1).contiguous()


def _clip(
    x: torch.Tensor, y: torch.Tensor, n: torch.Tensor, plane: int, h: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clip polygons ``(P, MAX_VERTS)`` with ``n`` valid vertices by one of B's half-planes."""
    num, cap = x.shape
    k = torch.arange(cap, device=x.device).expand(num, cap)
    valid = k < n[:, None]
    prev = torch.where(k > 0, k - 1, (n[:, None] - 1).clamp(min=0).expand(num, cap))
    xp = torch.gather(x, 1, prev)
    yp = torch.gather(y, 1, prev)
    hh = h[:, None]
    if plane == 0:
        s_cur, s_prev = hh - x, hh - xp
    elif plane == 1:
        s_cur, s_prev = hh + x, hh + xp
    elif plane == 2:
        s_cur, s_prev = hh - y, hh - yp
    else:
        s_cur, s_prev = hh + y, hh + yp
    cur_in = s_cur >= 0.0
    prev_in = s_prev >= 0.0
    cross = valid & (cur_in != prev_in)
    t = s_prev / torch.where(cross, s_prev - s_cur, torch.ones_like(s_cur))
    if plane < 2:
        ix = (hh if plane == 0 else -hh).expand(num, cap)
        iy = yp + t * (y - yp)
    else:
        ix = xp + t * (x - xp)
        iy = (hh if plane == 2 else -hh).expand(num, cap)
    # Candidates in emission order: for each vertex k, (intersection, vertex).
    cand_x = torch.stack([ix, x], dim=2).reshape(num, 2 * cap)
    cand_y = torch.stack([iy, y], dim=2).reshape(num, 2 * cap)
    emit = torch.stack([cross, valid & cur_in], dim=2).reshape(num, 2 * cap)
    pos = torch.cumsum(emit.to(torch.int64), dim=1) - 1
    keep = emit & (pos < MAX_VERTS)
    slot = torch.where(keep, pos, torch.full_like(pos, MAX_VERTS))
    out_x = torch.zeros(num, MAX_VERTS + 1, dtype=x.dtype, device=x.device)
    out_y = torch.zeros_like(out_x)
    out_x.scatter_(1, slot, cand_x)
    out_y.scatter_(1, slot, cand_y)
    return out_x[:, :MAX_VERTS], out_y[:, :MAX_VERTS], keep.sum(dim=1)


def bev_intersection_torch(pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
    """BEV intersection areas float64 ``(P,)`` of paired parameter rows ``pa``, ``pb`` (float64 ``(P, 9)``)."""
    num = pa.shape[0]
    ax, ay, adx, ady, ac, as_ = pa[:, 0], pa[:, 1], pa[:, 3], pa[:, 4], pa[:, 6], pa[:, 7]
    bx, by, bdx, bdy, bc, bs = pb[:, 0], pb[:, 1], pb[:, 3], pb[:, 4], pb[:, 6], pb[:, 7]
    ox = ax - bx
    oy = ay - by
    rr = pa[:, 8] + pb[:, 8]
    reject = ox * ox + oy * oy > rr * rr * (1.0 + REJECT_MARGIN)
    cx = ox * bc + oy * bs
    cy = oy * bc - ox * bs
    rc = ac * bc + as_ * bs
    rs = as_ * bc - ac * bs
    hx = 0.5 * adx
    hy = 0.5 * ady
    x = torch.zeros(num, MAX_VERTS, dtype=torch.float64, device=pa.device)
    y = torch.zeros_like(x)
    for k, (sx, sy) in enumerate(((hx, hy), (-hx, hy), (-hx, -hy), (hx, -hy))):
        x[:, k] = cx + (sx * rc - sy * rs)
        y[:, k] = cy + (sx * rs + sy * rc)
    n = torch.full((num,), 4, dtype=torch.int64, device=pa.device)
    bhx = 0.5 * bdx
    bhy = 0.5 * bdy
    for plane in range(4):
        x, y, n = _clip(x, y, n, plane, bhx if plane < 2 else bhy)
    acc = torch.zeros(num, dtype=torch.float64, device=pa.device)
    slots = torch.arange(MAX_VERTS, device=pa.device).expand(num, MAX_VERTS)
    nxt = torch.where(slots + 1 < n[:, None], slots + 1, torch.zeros_like(slots))
    xn = torch.gather(x, 1, nxt)
    yn = torch.gather(y, 1, nxt)
    terms = x * yn - xn * y
    for j in range(MAX_VERTS):
        acc = acc + torch.where(j < n, terms[:, j], torch.zeros_like(acc))
    area = 0.5 * acc
    area = torch.where(area > 0.0, area, torch.zeros_like(area))
    return torch.where(reject, torch.zeros_like(area), area)


def pair_iou_torch(pa: torch.Tensor, pb: torch.Tensor, mode_3d: bool) -> torch.Tensor:
    """IoU float64 ``(P,)`` of paired parameter rows (BEV, or 3D when ``mode_3d``)."""
    inter = bev_intersection_torch(pa, pb)
    area_a = pa[:, 3] * pa[:, 4]
    area_b = pb[:, 3] * pb[:, 4]
    if mode_3d:
        top = torch.minimum(pa[:, 2] + 0.5 * pa[:, 5], pb[:, 2] + 0.5 * pb[:, 5])
        bottom = torch.maximum(pa[:, 2] - 0.5 * pa[:, 5], pb[:, 2] - 0.5 * pb[:, 5])
        dz = (top - bottom).clamp(min=0.0)
        inter = inter * dz
        area_a = area_a * pa[:, 5]
        area_b = area_b * pb[:, 5]
    union = area_a + area_b - inter
    ok = (union > 0.0) & (inter > 0.0)
    iou = inter / torch.where(ok, union, torch.ones_like(union))
    iou = torch.where(ok, iou, torch.zeros_like(iou))
    return iou.clamp(max=1.0)


def iou_matrix_torch(params_a: torch.Tensor, params_b: torch.Tensor, mode_3d: bool) -> torch.Tensor:
    """IoU matrix float32 ``(N, K)`` from parameter rows float64 ``(N, 9)`` and ``(K, 9)``."""
    n, k = params_a.shape[0], params_b.shape[0]
    out = torch.zeros(n, k, dtype=torch.float32, device=params_a.device)
    if n == 0 or k == 0:
        return out
    rows = max(1, PAIRS_PER_CHUNK // k)
    for start in range(0, n, rows):
        pa = params_a[start : start + rows]
        r = pa.shape[0]
        ia = pa[:, None, :].expand(r, k, 9).reshape(-1, 9)
        ib = params_b[None, :, :].expand(r, k, 9).reshape(-1, 9)
        out[start : start + r] = pair_iou_torch(ia, ib, mode_3d).reshape(r, k).to(torch.float32)
    return out
