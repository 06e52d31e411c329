"""CenterPoint post-processing: top-K heatmap peaks -> boxes -> score / range filter -> NMS per task.

Per task and sample: the ``top_k`` highest sigmoid scores over all of the task's class channels and cells (the
same set as CenterPoint's per-class top-K followed by a top-K over classes), their boxes decoded by the
:class:`~perception.models.heads.box_coder.CenterBoxCoder` relative to the peak cell, then kept when
``score > score_threshold`` and the box centre lies inside ``post_center_range`` (inclusive), then NMS across the
task's classes: rotated BEV-IoU NMS (:func:`perception.ops.nms.nms_bev`) or CenterPoint's circle NMS
(:func:`perception.ops.nms.circle_nms`, one distance per task).
"""

from __future__ import annotations

import torch

from perception.ops.nms import circle_nms, nms_bev

from .box_coder import CenterBoxCoder
from .centerpoint_config import CenterPointDecodeConfig

__all__ = ["decode_task"]


def decode_task(
    heatmap: torch.Tensor,
    codes: torch.Tensor,
    coder: CenterBoxCoder,
    config: CenterPointDecodeConfig,
    task_index: int,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Decode one task's dense predictions.

    Args:
        heatmap: ``(B, C_t, H, W)`` class logits.
        codes: ``(B, D, H, W)`` box codes in ``CODE_NAMES`` order (``D`` = 8 or 10).
        coder: the head's box coder.
        config: post-processing settings (``model.head.centerpoint.decode``).
        task_index: index of the task (selects the circle-NMS distance).

    Returns:
        Per sample ``(boxes float32 (N, 7|9), scores float32 (N,), channels int64 (N,))``, sorted by descending
        score; ``channels`` index the task's classes.

    Raises:
        ValueError: a selected peak has a NaN/inf score or box code (the network diverged).
    """
    b, num_classes, h, w = heatmap.shape
    d = codes.shape[1]
    k = min(config.top_k, num_classes * h * w)
    scores, flat = torch.topk(torch.sigmoid(heatmap.detach().float()).reshape(b, -1), k, dim=1)
    channels = torch.div(flat, h * w, rounding_mode="floor")
    cell = flat % (h * w)
    peak_codes = codes.detach().float().reshape(b, d, h * w).gather(2, cell[:, None, :].expand(b, d, k))
    peak_codes = peak_codes.transpose(1, 2)  # (B, K, D)
    if not (bool(torch.isfinite(scores).all()) and bool(torch.isfinite(peak_codes).all())):
        raise ValueError(
            f"CenterPoint task {task_index}: the predicted heatmap or box codes contain NaN or inf"
        )
    ref = torch.stack([cell % w, torch.div(cell, w, rounding_mode="floor")], dim=-1)
    boxes = coder.decode(peak_codes, ref)  # (B, K, 7|9)
    keep = scores > config.score_threshold
    if config.post_center_range is not None:
        r = boxes.new_tensor(config.post_center_range)
        keep &= ((boxes[..., :3] >= r[:3]) & (boxes[..., :3] <= r[3:])).all(dim=-1)
    out = []
    for i in range(b):
        bx, sc, ch = boxes[i][keep[i]], scores[i][keep[i]], channels[i][keep[i]]
        rotated = None if config.nms is None else config.nms.rotated
        circle = None if config.nms is None else config.nms.circle
        if rotated is not None:
            idx = nms_bev(bx, sc, rotated.iou_threshold, rotated.pre_max, rotated.post_max)
            bx, sc, ch = bx[idx], sc[idx], ch[idx]
        elif circle is not None:
            if task_index >= len(circle.distances):
                raise ValueError(
                    f"nms.circle.distances has {len(circle.distances)} entries, task {task_index} has none"
                )
            idx = circle_nms(bx[:, :2], sc, circle.distances[task_index], circle.pre_max, circle.post_max)
            bx, sc, ch = bx[idx], sc[idx], ch[idx]
        out.append((bx, sc, ch))
    return out
