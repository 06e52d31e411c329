"""CenterPoint training targets: Gaussian class heatmaps and per-object regression targets on the BEV map.

For every task (a group of classes sharing one sub-head) and sample:

* each ground-truth box whose centre cell lies inside the ``(H, W)`` feature map and whose BEV size is positive
  draws a Gaussian into its class channel (element-wise max with what is there): peak ``1.0`` at the centre cell
  ``floor(u, v)``, ``sigma = (2 r + 1) / 6``, radius ``r = max(min_radius, int(gaussian_radius(l, w,
  min_overlap)))`` with ``l, w`` the box length and width in feature-map cells;
* the first ``max_objects`` such boxes get a slot: the flat index ``row * W + col`` of the centre cell and the
  regression code of :class:`~perception.models.heads.box_coder.CenterBoxCoder` relative to that cell.

Nothing is dropped silently: boxes outside the map or with zero BEV size are counted in ``num_ignored`` and boxes
beyond ``max_objects`` in ``num_overflow`` (they neither draw nor regress, as in CenterPoint; a warning is emitted).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from perception._validate import check_tensor
from perception.structures import Boxes3D

from .box_coder import CenterBoxCoder

__all__ = [
    "CenterPointTaskTargets",
    "build_center_targets",
    "draw_gaussians",
    "gaussian_radius",
    "heatmap_radius",
]


def gaussian_radius(length: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.1) -> torch.Tensor:
    """CenterPoint's Gaussian radius for boxes of ``length x width`` cells (float ``(N,)`` each).

    The smallest of three candidate radii from the CornerNet analysis of how far a corner may move while the box
    keeps IoU ``>= min_overlap`` with the ground truth, *with CenterPoint's exact arithmetic* (the first two roots
    are divided by 2 instead of ``2a``; it is kept so that heatmaps match models trained with CenterPoint)::

        r1 = (s + sqrt(s^2 - 4 c1)) / 2,         c1 = l w (1 - o) / (1 + o),  s = l + w
        r2 = (2 s + sqrt(4 s^2 - 16 c2)) / 2,    c2 = l w (1 - o)
        r3 = (-2 o s + sqrt(4 o^2 s^2 - 16 o c3)) / 2,  c3 = (o - 1) l w
        r  = min(r1, r2, r3)

    Returns:
        float ``(N,)`` radii in cells (not yet rounded or floored by ``min_radius``; see :func:`heatmap_radius`).
    """
    if not (0.0 < min_overlap < 1.0):
        raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
    lw = length * width
    s = length + width
    o = min_overlap
    c1 = lw * (1 - o) / (1 + o)
    r1 = (s + torch.sqrt(s * s - 4 * c1)) / 2
    c2 = (1 - o) * lw
    r2 = (2 * s + torch.sqrt(4 * s * s - 16 * c2)) / 2
    c3 = (o - 1) * lw
    r3 = (-2 * o * s + torch.sqrt(4 * o * o * s * s - 16 * o * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def heatmap_radius(
    length: torch.Tensor, width: torch.Tensor, min_overlap: float, min_radius: int
) -> torch.Tensor:
    """int64 ``(N,)``: ``max(min_radius, int(gaussian_radius(length, width, min_overlap)))`` (sizes in cells)."""
    r = gaussian_radius(length.double(), width.double(), min_overlap)
    return torch.clamp(torch.floor(r).long(), min=min_radius)


def draw_gaussians(
    heatmap: torch.Tensor, channels: torch.Tensor, cells: torch.Tensor, radii: torch.Tensor
) -> None:
    """Draw one Gaussian per object into ``heatmap`` in place (element-wise max), clipped at the borders.

    Args:
        heatmap: float32 ``(C, H, W)``.
        channels: int64 ``(N,)`` channel of each object.
        cells: int64 ``(N, 2)`` ``[col, row]`` centre cell (inside the map).
        radii: int64 ``(N,)`` radius ``r >= 0`` in cells; the Gaussian covers ``(2r + 1)^2`` cells with
            ``sigma = (2r + 1) / 6``, peak exactly 1 at the centre, values below float64 eps set to 0.
    """
    c, h, w = heatmap.shape
    flat = heatmap.view(-1)
    for r in torch.unique(radii).tolist():
        sel = radii == r
        offsets = torch.arange(-r, r + 1, device=heatmap.device)
        dy, dx = torch.meshgrid(offsets, offsets, indexing="ij")
        sigma = (2 * r + 1) / 6.0
        g = torch.exp(-(dx.double() ** 2 + dy.double() ** 2) / (2 * sigma * sigma))
        g = torch.where(g < torch.finfo(torch.float64).eps, 0.0, g).float().reshape(-1)
        cols = cells[sel, 0, None] + dx.reshape(1, -1)
        rows = cells[sel, 1, None] + dy.reshape(1, -1)
        valid = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
        index = (channels[sel, None] * h + rows) * w + cols
        values = g.expand_as(index)
        flat.scatter_reduce_(0, index[valid], values[valid], reduce="amax")


@dataclass
class CenterPointTaskTargets:
    """Targets of one task for a batch of ``B`` samples.

    Attributes:
        heatmap: float32 ``(B, C_t, H, W)`` in ``[0, 1]``, exactly 1 at object centre cells; channel ``j`` is the
            task's ``j``-th class.
        indices: int64 ``(B, K)`` flat centre-cell index ``row * W + col`` of each object slot (0 in empty slots).
        mask: bool ``(B, K)`` slot holds an object.
        codes: float32 ``(B, K, D)`` regression targets (``CODE_NAMES`` order, ``D`` = 8 or 10; 0 in empty slots).
        num_ignored: boxes of this task whose centre is outside the map or whose BEV size is zero.
        num_overflow: boxes beyond ``max_objects`` in some sample.
    """

    heatmap: torch.Tensor
    indices: torch.Tensor
    mask: torch.Tensor
    codes: torch.Tensor
    num_ignored: int
    num_overflow: int


def build_center_targets(
    coder: CenterBoxCoder,
    gt_boxes: Sequence[Boxes3D],
    gt_labels: Sequence[torch.Tensor],
    task_classes: Sequence[Sequence[int]],
    *,
    with_velocity: bool,
    max_objects: int = 500,
    min_overlap: float = 0.1,
    min_radius: int = 2,
    device: torch.device | str = "cpu",
) -> list[CenterPointTaskTargets]:
    """Build CenterPoint targets for every task.

    Args:
        coder: box coder of the head's feature map (defines ``H, W`` and the codes).
        gt_boxes: ``B`` boxes ``(K_b, 7|9)``; with ``with_velocity`` they must have 9 columns.
        gt_labels: ``B`` int64 ``(K_b,)`` global class indices.
        task_classes: per task, the global class indices of its channels in channel order.
        with_velocity: produce 10-column codes (else 8; velocity columns of the boxes are ignored).
        max_objects: object slots per task and sample (``K``).
        min_overlap: ``min_overlap`` of :func:`gaussian_radius` (CenterPoint: 0.1).
        min_radius: smallest Gaussian radius in cells (CenterPoint: 2).
        device: device of the returned tensors.

    Returns:
        One :class:`CenterPointTaskTargets` per task.
    """
    if len(gt_boxes) != len(gt_labels) or len(gt_boxes) == 0:
        raise ValueError(
            f"gt_boxes and gt_labels must be non-empty lists of the same length (one per sample), got "
            f"{len(gt_boxes)} and {len(gt_labels)}"
        )
    if max_objects < 1 or min_radius < 0:
        raise ValueError(f"need max_objects >= 1 and min_radius >= 0, got {max_objects} and {min_radius}")
    h, w = coder.feature_map_size
    code_size = coder.code_size(with_velocity)
    b = len(gt_boxes)
    known = {int(c) for classes in task_classes for c in classes}
    if not known or min(known) < 0 or any(len(set(c)) != len(c) for c in task_classes):
        raise ValueError(
            f"task_classes must be non-empty groups of distinct class indices >= 0, got {task_classes}"
        )
    lookups = []  # per task: global class index -> channel, -1 for other classes
    for classes in task_classes:
        lookup = torch.full((max(known) + 1,), -1, dtype=torch.int64, device=device)
        lookup[torch.as_tensor(list(classes), dtype=torch.int64, device=device)] = torch.arange(
            len(classes), device=device
        )
        lookups.append(lookup)
    out = []
    for classes in task_classes:
        out.append(
            CenterPointTaskTargets(
                heatmap=torch.zeros(b, len(classes), h, w, device=device),
                indices=torch.zeros(b, max_objects, dtype=torch.int64, device=device),
                mask=torch.zeros(b, max_objects, dtype=torch.bool, device=device),
                codes=torch.zeros(b, max_objects, code_size, device=device),
                num_ignored=0,
                num_overflow=0,
            )
        )
    for i, (boxes, labels) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        tensor = _check_sample(i, boxes, labels, with_velocity, known)
        if not with_velocity:
            tensor = tensor[:, :7]
        tensor = tensor.to(device)
        labels = labels.to(device)
        for task, classes, lookup in zip(out, task_classes, lookups, strict=True):
            channel_all = lookup[labels]
            sel = channel_all >= 0
            if not bool(sel.any()):
                continue
            task_boxes = tensor[sel]
            channels = channel_all[sel]
            enc = coder.encode(task_boxes)
            length = task_boxes[:, 3] / coder.cell_size[0]
            width = task_boxes[:, 4] / coder.cell_size[1]
            valid = enc.inside & (length > 0) & (width > 0)
            task.num_ignored += int((~valid).sum())
            idx = torch.nonzero(valid).squeeze(1)
            if idx.numel() > max_objects:
                task.num_overflow += int(idx.numel() - max_objects)
                warnings.warn(
                    f"sample {i}: {idx.numel()} objects for classes {list(classes)} exceed max_objects="
                    f"{max_objects}; the extra {idx.numel() - max_objects} get no targets",
                    stacklevel=2,
                )
                idx = idx[:max_objects]
            n = idx.numel()
            if n == 0:
                continue
            cells = enc.cells[idx]
            radii = heatmap_radius(length[idx], width[idx], min_overlap, min_radius)
            draw_gaussians(task.heatmap[i], channels[idx], cells, radii)
            task.indices[i, :n] = cells[:, 1] * w + cells[:, 0]
            task.mask[i, :n] = True
            task.codes[i, :n] = enc.codes[idx]
    return out


def _check_sample(
    i: int, boxes: object, labels: object, with_velocity: bool, known: set[int]
) -> torch.Tensor:
    if not isinstance(boxes, Boxes3D):
        raise TypeError(f"gt_boxes[{i}] must be a Boxes3D, got {type(boxes).__name__}")
    lab = check_tensor(f"gt_labels[{i}]", labels, shape=(len(boxes),), dtype=torch.int64)
    unknown = sorted(set(lab.tolist()) - known)
    if unknown:
        raise ValueError(
            f"gt_labels[{i}] has class indices {unknown} that belong to no task (tasks: {sorted(known)})"
        )
    if with_velocity and not boxes.has_velocity and len(boxes):
        raise ValueError(
            f"gt_boxes[{i}] has no velocity columns, but the head predicts velocity (needs (N, 9))"
        )
    if len(boxes) and not bool(torch.isfinite(boxes.tensor).all()):
        raise ValueError(f"gt_boxes[{i}] contains NaN or inf")
    return boxes.tensor if boxes.has_velocity or not with_velocity else _pad_velocity(boxes.tensor)


def _pad_velocity(t: torch.Tensor) -> torch.Tensor:
    # only reached for empty 7-column boxes with a velocity head
    return torch.cat([t, t.new_zeros(t.shape[0], 2)], dim=1)
