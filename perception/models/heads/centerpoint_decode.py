"""CenterPoint post-processing: top-K heatmap peaks -> boxes -> score / range filter -> NMS per task.

Per task and sample: the ``top_k`` highest sigmoid scores over all of the task's class channels and cells (the
same set as CenterPoint's per-class top-K followed by a top-K over classes), kept when ``score >
score_threshold`` (:func:`select_peaks`); their boxes decoded by the
:class:`~perception.models.heads.box_coder.CenterBoxCoder` relative to the peak cell, kept when the box centre lies
inside ``post_center_range`` (inclusive), then NMS across the task's classes: rotated BEV-IoU NMS
(:func:`perception.ops.nms.nms_bev`) or CenterPoint's circle NMS (:func:`perception.ops.nms.circle_nms`, one
distance per task) (:func:`decode_peaks`). The box codes are read only at the peaks that pass the score
threshold, and NMS reads only the ``pre_max`` best of those whose centre is in range, so a head may compute the
codes at those peaks alone (:func:`peaks_to_decode`, what :meth:`CenterPointHead.predict` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from perception.ops.nms import circle_nms, nms_bev

from .box_coder import CenterBoxCoder
from .centerpoint_config import CenterPointDecodeConfig

__all__ = ["TaskPeaks", "decode_peaks", "decode_task", "peaks_to_decode", "select_peaks"]


@dataclass
class TaskPeaks:
    """One task's heatmap peaks above the score threshold, for a batch of ``B`` samples.

    Attributes:
        sample: int64 ``(N,)`` the sample of each peak, ascending; within a sample peaks are in descending score.
        scores: float32 ``(N,)`` sigmoid scores.
        channels: int64 ``(N,)`` the class channel of the task.
        rows / cols: int64 ``(N,)`` the peak cell on the ``(H, W)`` map.
        batch_size: ``B``.
    """

    sample: torch.Tensor
    scores: torch.Tensor
    channels: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    batch_size: int

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def subset(self, mask: torch.Tensor) -> TaskPeaks:
        """The peaks at ``mask``: a bool ``(N,)`` mask or int64 indices (in their order)."""
        return TaskPeaks(
            self.sample[mask], self.scores[mask], self.channels[mask], self.rows[mask], self.cols[mask],
            self.batch_size,
        )  # fmt: skip


def select_peaks(heatmap: torch.Tensor, config: CenterPointDecodeConfig, task_index: int) -> TaskPeaks:
    """The ``top_k`` peaks per sample of ``heatmap`` ``(B, C_t, H, W)`` (logits) whose score passes the threshold.

    Raises:
        ValueError: a top-K score is NaN/inf (the network diverged).
    """
    b, num_classes, h, w = heatmap.shape
    k = min(config.top_k, num_classes * h * w)
    logits, flat = torch.topk(heatmap.detach().float().reshape(b, -1), k, dim=1)  # sigmoid is monotonic
    scores = torch.sigmoid(logits)
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(f"CenterPoint task {task_index}: the predicted heatmap contains NaN or inf")
    keep = scores > config.score_threshold
    sample = torch.arange(b, device=flat.device)[:, None].expand(b, k)[keep]
    flat = flat[keep]
    cell = flat % (h * w)
    return TaskPeaks(
        sample=sample,
        scores=scores[keep],
        channels=torch.div(flat, h * w, rounding_mode="floor"),
        rows=torch.div(cell, w, rounding_mode="floor"),
        cols=cell % w,
        batch_size=b,
    )


def decode_peaks(
    peaks: TaskPeaks,
    codes: torch.Tensor,
    coder: CenterBoxCoder,
    config: CenterPointDecodeConfig,
    task_index: int,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Boxes of ``peaks`` from their box codes ``(N, D)`` (``CODE_NAMES`` order), range filter and NMS.

    Returns:
        Per sample ``(boxes float32 (N_b, 7|9), scores float32 (N_b,), channels int64 (N_b,))``, sorted by
        descending score; ``channels`` index the task's classes.

    Raises:
        ValueError: a box code is NaN/inf (the network diverged).
    """
    boxes = _peak_boxes(peaks, codes, coder, task_index)
    keep = _in_center_range(boxes, config)
    rotated = None if config.nms is None else config.nms.rotated
    circle = None if config.nms is None else config.nms.circle
    if circle is not None and task_index >= len(circle.distances):
        raise ValueError(
            f"nms.circle.distances has {len(circle.distances)} entries, task {task_index} has none"
        )
    out = []
    for i in range(peaks.batch_size):
        mine = keep & (peaks.sample == i)
        bx, sc, ch = boxes[mine], peaks.scores[mine], peaks.channels[mine]
        if rotated is not None:
            idx = nms_bev(bx, sc, rotated.iou_threshold, rotated.pre_max, rotated.post_max)
            bx, sc, ch = bx[idx], sc[idx], ch[idx]
        elif circle is not None:
            idx = circle_nms(bx[:, :2], sc, circle.distances[task_index], circle.pre_max, circle.post_max)
            bx, sc, ch = bx[idx], sc[idx], ch[idx]
        out.append((bx, sc, ch))
    return out


def _peak_boxes(
    peaks: TaskPeaks, codes: torch.Tensor, coder: CenterBoxCoder, task_index: int
) -> torch.Tensor:
    """float32 ``(N, 7|9)`` the boxes of ``peaks`` from their codes ``(N, D)``."""
    codes = codes.detach().float()
    if not bool(torch.isfinite(codes).all()):
        raise ValueError(f"CenterPoint task {task_index}: the predicted box codes contain NaN or inf")
    ref = torch.stack([peaks.cols, peaks.rows], dim=-1)
    return coder.decode(codes[None], ref[None])[0]


def _in_center_range(boxes: torch.Tensor, config: CenterPointDecodeConfig) -> torch.Tensor:
    """bool ``(N,)`` the box centres inside ``post_center_range`` (inclusive; all without one)."""
    if config.post_center_range is None:
        return torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    r = boxes.new_tensor(config.post_center_range)
    return ((boxes[:, :3] >= r[:3]) & (boxes[:, :3] <= r[3:])).all(dim=-1)


def peaks_to_decode(
    peaks: TaskPeaks,
    codes_at: Callable[[TaskPeaks], torch.Tensor],
    coder: CenterBoxCoder,
    config: CenterPointDecodeConfig,
    task_index: int,
) -> tuple[TaskPeaks, torch.Tensor]:
    """The peaks :func:`decode_peaks` can keep and their codes, asking ``codes_at`` for as few as it can.

    NMS reads, per sample, the ``pre_max`` best-scoring peaks whose box centre is inside ``post_center_range``.
    So the codes (``codes_at(subset) -> (n, D)``) are computed for the ``pre_max`` best peaks of each sample
    first; where some of their centres fall outside the range, for as many of the next ones, until ``pre_max``
    are inside or none are left. Without NMS, for every peak. ``decode_peaks`` on the result gives the same
    detections as on every peak.

    Returns:
        ``(the peaks whose codes were computed, in their order; their codes (n, D))``.
    """
    nms = config.nms
    limit = None if nms is None else (nms.rotated or nms.circle).pre_max  # type: ignore[union-attr]
    if limit is None or len(peaks) == 0:
        return peaks, codes_at(peaks)
    first = torch.searchsorted(peaks.sample, peaks.sample)  # (N,) index of each peak's sample's best peak
    computed = torch.zeros(len(peaks), dtype=torch.bool, device=first.device)
    inside = torch.zeros_like(computed)
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []  # (indices, codes) per round
    new = torch.arange(len(peaks), device=first.device) - first < limit  # the best `limit` of each sample
    while bool(new.any()):
        index = new.nonzero()[:, 0]
        subset = peaks.subset(index)
        codes = codes_at(subset)
        parts.append((index, codes))
        computed[index] = True
        inside[index] = _in_center_range(_peak_boxes(subset, codes, coder, task_index), config)
        short = limit - torch.bincount(peaks.sample[inside], minlength=peaks.batch_size)  # (B,)
        left = ~computed
        before = torch.cumsum(left.long(), 0) - left.long()  # peaks left before each one, over all samples
        new = left & (before - before[first] < short[peaks.sample])  # the next `short` ones of each sample
    index = torch.cat([i for i, _ in parts])
    order = torch.argsort(index)
    return peaks.subset(index[order]), torch.cat([c for _, c in parts])[order]


def decode_task(
    heatmap: torch.Tensor,
    codes: torch.Tensor,
    coder: CenterBoxCoder,
    config: CenterPointDecodeConfig,
    task_index: int,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Decode one task's dense predictions: :func:`select_peaks`, the codes read at the peaks, :func:`decode_peaks`.

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
    peaks = select_peaks(heatmap, config, task_index)
    peak_codes = codes.detach()[peaks.sample, :, peaks.rows, peaks.cols]  # (N, D)
    return decode_peaks(peaks, peak_codes, coder, config, task_index)
