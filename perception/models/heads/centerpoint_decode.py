"""CenterPoint post-processing: top-K heatmap peaks -> boxes -> score / range filter -> NMS per task.

Per task and sample: the ``top_k`` highest sigmoid scores over all of the task's class channels and cells (the
same set as CenterPoint's per-class top-K followed by a top-K over classes), their boxes decoded by the
:class:`~perception.models.heads.box_coder.CenterBoxCoder` relative to the peak cell, then kept when
``score > score_threshold`` and the box centre lies inside ``post_center_range`` (inclusive), then NMS across the
task's classes: rotated BEV-IoU NMS (:func:`perception.ops.nms.nms_bev`) or CenterPoint's circle NMS
(:func:`perception.ops.nms.circle_nms`, one distance per task).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from perception.ops.nms import circle_nms, nms_bev

from .box_coder import CenterBoxCoder

__all__ = [
    "CircleNMS",
    "RotatedNMS",
    "CenterPointDecodeConfig",
    "NUSCENES_CIRCLE_NMS_MIN_RADIUS",
    "decode_task",
]

NUSCENES_CIRCLE_NMS_MIN_RADIUS: tuple[float, ...] = (4.0, 12.0, 10.0, 1.0, 0.85, 0.175)
"""CenterPoint's nuScenes ``min_radius`` per task (car | truck, cons. vehicle | bus, trailer | barrier |
motorcycle, bicycle | pedestrian, traffic cone). CenterPoint compares them with *squared* centre distances, so
they are m^2: :meth:`CircleNMS.from_squared` takes them as they are."""


def _check_limits(name: str, pre_max: int | None, post_max: int | None) -> None:
    for field, v in (("pre_max", pre_max), ("post_max", post_max)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name}.{field} must be None or an int >= 1, got {v!r}")


@dataclass(frozen=True)
class RotatedNMS:
    """Rotated BEV-IoU NMS per task.

    Attributes:
        iou_threshold: suppress when BEV IoU ``>`` this (CenterPoint nuScenes / OpenPCDet: 0.2).
        pre_max: candidates considered per task and sample (1000).
        post_max: boxes kept per task and sample (83).
    """

    iou_threshold: float = 0.2
    pre_max: int | None = 1000
    post_max: int | None = 83

    def __post_init__(self) -> None:
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"RotatedNMS.iou_threshold must be in [0, 1], got {self.iou_threshold}")
        _check_limits("RotatedNMS", self.pre_max, self.post_max)


@dataclass(frozen=True)
class CircleNMS:
    """CenterPoint's circle NMS per task.

    Attributes:
        distances: one suppression radius per task, metres (centre distance ``<=`` radius is suppressed).
        pre_max: candidates considered per task and sample (``None``: all, as CenterPoint).
        post_max: boxes kept per task and sample (83).
    """

    distances: tuple[float, ...]
    pre_max: int | None = None
    post_max: int | None = 83

    def __post_init__(self) -> None:
        object.__setattr__(self, "distances", tuple(float(d) for d in self.distances))
        if not self.distances or not all(math.isfinite(d) and d >= 0 for d in self.distances):
            raise ValueError(f"CircleNMS.distances must be finite values >= 0 (metres), got {self.distances}")
        _check_limits("CircleNMS", self.pre_max, self.post_max)

    @staticmethod
    def from_squared(min_radius: Sequence[float], post_max: int | None = 83) -> CircleNMS:
        """From CenterPoint's ``min_radius`` config values (squared metres), e.g.
        ``CircleNMS.from_squared(NUSCENES_CIRCLE_NMS_MIN_RADIUS)``."""
        return CircleNMS(distances=tuple(math.sqrt(float(r)) for r in min_radius), post_max=post_max)


@dataclass(frozen=True)
class CenterPointDecodeConfig:
    """Post-processing settings (defaults: CenterPoint / OpenPCDet nuScenes).

    Attributes:
        top_k: peaks per task and sample (500).
        score_threshold: keep ``score >`` this (0.1).
        post_center_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` metres that decoded centres must lie in
            (inclusive), or ``None`` for no filter.
        nms: :class:`RotatedNMS`, :class:`CircleNMS` or ``None`` (no NMS).
    """

    top_k: int = 500
    score_threshold: float = 0.1
    post_center_range: tuple[float, ...] | None = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    nms: RotatedNMS | CircleNMS | None = RotatedNMS()

    def __post_init__(self) -> None:
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"CenterPointDecodeConfig.top_k must be an int >= 1, got {self.top_k!r}")
        if not math.isfinite(self.score_threshold):
            raise ValueError(
                f"CenterPointDecodeConfig.score_threshold must be finite, got {self.score_threshold}"
            )
        if self.post_center_range is not None:
            r = tuple(float(v) for v in self.post_center_range)
            if len(r) != 6 or not all(r[i] <= r[i + 3] for i in range(3)):
                raise ValueError(
                    "CenterPointDecodeConfig.post_center_range must be (x_min, y_min, z_min, x_max, y_max, z_max) "
                    f"with min <= max, got {self.post_center_range}"
                )
            object.__setattr__(self, "post_center_range", r)


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
        config: post-processing settings.
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
        nms = config.nms
        if isinstance(nms, RotatedNMS):
            idx = nms_bev(bx, sc, nms.iou_threshold, nms.pre_max, nms.post_max)
            bx, sc, ch = bx[idx], sc[idx], ch[idx]
        elif isinstance(nms, CircleNMS):
            if task_index >= len(nms.distances):
                raise ValueError(
                    f"CircleNMS.distances has {len(nms.distances)} entries, task {task_index} has none"
                )
            idx = circle_nms(bx[:, :2], sc, nms.distances[task_index], nms.pre_max, nms.post_max)
            bx, sc, ch = bx[idx], sc[idx], ch[idx]
        out.append((bx, sc, ch))
    return out
