"""Plain-torch reference for :mod:`perception.ops.nms`: the greedy loop, one vectorised row of tests per kept box."""

from __future__ import annotations

import torch

from .iou3d_torch import pair_iou_torch


def nms_sorted_torch(params: torch.Tensor, threshold: float, post_max: int) -> torch.Tensor:
    """Kept positions int64 ``(kept,)`` of greedy BEV-IoU NMS over parameter rows float64 ``(M, 9)`` in order.

    A later box is suppressed when its IoU with a kept box is ``> threshold``; stops after ``post_max`` kept
    boxes (``-1``: no limit).
    """
    m = params.shape[0]
    suppressed = torch.zeros(m, dtype=torch.bool, device=params.device)
    keep: list[int] = []
    for i in range(m):
        if bool(suppressed[i]):
            continue
        keep.append(i)
        if len(keep) == post_max:
            break
        rest = (~suppressed[i + 1 :]).nonzero().squeeze(1) + (i + 1)
        if rest.shape[0] == 0:
            break
        iou = pair_iou_torch(params[i : i + 1].expand(rest.shape[0], -1), params[rest], False)
        suppressed[rest] = iou > threshold
    return torch.tensor(keep, dtype=torch.int64)


def circle_nms_sorted_torch(centres: torch.Tensor, distance_sq: float, post_max: int) -> torch.Tensor:
    """Kept positions int64 ``(kept,)`` of greedy circle NMS over float64 BEV centres ``(M, 2)`` in order.

    A later box is suppressed when ``dx^2 + dy^2 <= distance_sq`` with a kept box (float64).
    """
    m = centres.shape[0]
    suppressed = torch.zeros(m, dtype=torch.bool, device=centres.device)
    keep: list[int] = []
    for i in range(m):
        if bool(suppressed[i]):
            continue
        keep.append(i)
        if len(keep) == post_max:
            break
        ddx = centres[i, 0] - centres[i + 1 :, 0]
        ddy = centres[i, 1] - centres[i + 1 :, 1]
        suppressed[i + 1 :] |= ddx * ddx + ddy * ddy <= distance_sq
    return torch.tensor(keep, dtype=torch.int64)
