"""One-to-one assignment of TransFusion queries to ground-truth boxes (Hungarian matching) and the training targets
built from it.

The cost of assigning prediction ``i`` to ground truth ``j`` is (TransFusion / DETR style, the authors' weights as
defaults)::

    cost[i, j] = w_cls * (focal_pos(p[i, c_j]) - focal_neg(p[i, c_j]))
               + w_center * |xy_i - xy_j|_1 / range_xy          (centres normalised by the grid's x/y extent)
               - w_iou * IoU(box_i, box_j)                       (3D or BEV IoU, perception.ops.iou3d)

with ``p = sigmoid(class logits)``, ``c_j`` the label of ground truth ``j``,
``focal_pos(p) = -alpha (1 - p)^gamma log(p + eps)`` and ``focal_neg(p) = -(1 - alpha) p^gamma log(1 - p + eps)``.
``scipy.optimize.linear_sum_assignment`` finds the assignment of minimum total cost; with more ground truths
than predictions only ``num_predictions`` ground truths are matched (the rest get no query, as in the authors'
code). The costs' settings are :class:`~perception.models.heads.transfusion_config.MatchCosts`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment

from perception._validate import check_tensor
from perception.grid import VoxelGrid
from perception.ops.iou3d import boxes_iou_3d, boxes_iou_bev
from perception.structures import Boxes3D

from .box_coder import CenterBoxCoder
from .centerpoint_targets import build_center_targets
from .transfusion_config import MatchCosts

__all__ = [
    "Assignment",
    "matching_cost",
    "hungarian_match",
    "TransFusionTargets",
    "build_transfusion_targets",
]

DEFAULT_COSTS = MatchCosts()
"""The authors' matching costs (:class:`MatchCosts` defaults)."""


@dataclass
class Assignment:
    """Result of matching one sample's predictions to its ground truth.

    Attributes:
        pred_index: int64 ``(M,)`` matched prediction (query) indices, ascending.
        gt_index: int64 ``(M,)`` the ground-truth index matched to each of them.
        ious: float32 ``(M,)`` IoU (in the matcher's ``iou_mode``) of each matched pair.
    """

    pred_index: torch.Tensor
    gt_index: torch.Tensor
    ious: torch.Tensor

    def __len__(self) -> int:
        return int(self.pred_index.shape[0])


def _check_inputs(
    pred_boxes: torch.Tensor, cls_logits: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor
) -> None:
    check_tensor("pred_boxes", pred_boxes, ndim=2, dtype=(torch.float32, torch.float64))
    n = pred_boxes.shape[0]
    check_tensor("cls_logits", cls_logits, ndim=2)
    if cls_logits.shape[0] != n or not cls_logits.is_floating_point():
        raise ValueError(f"cls_logits must be a float tensor (N={n}, K), got {tuple(cls_logits.shape)}")
    check_tensor("gt_boxes", gt_boxes, ndim=2, dtype=(torch.float32, torch.float64))
    check_tensor("gt_labels", gt_labels, shape=(gt_boxes.shape[0],), dtype=torch.int64)
    for name, t in (("pred_boxes", pred_boxes), ("gt_boxes", gt_boxes)):
        if t.shape[1] < 7:
            raise ValueError(f"{name} must be (N, 7+) [x, y, z, dx, dy, dz, yaw, ...], got {tuple(t.shape)}")
        if t.shape[0] and not bool(torch.isfinite(t[:, :7]).all()):
            raise ValueError(f"{name} contains NaN or inf in its first 7 columns")
        if t.shape[0] and bool((t[:, 3:6] < 0).any()):
            raise ValueError(f"{name} has a negative size (dx, dy, dz must be >= 0)")
    if n and not bool(torch.isfinite(cls_logits).all()):
        raise ValueError("cls_logits contains NaN or inf")
    k = cls_logits.shape[1]
    if gt_labels.numel() and (int(gt_labels.min()) < 0 or int(gt_labels.max()) >= k):
        raise ValueError(f"gt_labels must lie in [0, {k}), got {gt_labels.tolist()}")


def matching_cost(
    pred_boxes: torch.Tensor,
    cls_logits: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    grid: VoxelGrid,
    costs: MatchCosts = DEFAULT_COSTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cost matrix between predictions and ground truths (see the module docstring).

    Args:
        pred_boxes: float ``(N, 7+)`` predicted boxes ``[x, y, z, dx, dy, dz, yaw, ...]`` (LiDAR frame, m, rad).
        cls_logits: float ``(N, K)`` class logits of the predictions.
        gt_boxes: float ``(G, 7+)`` ground-truth boxes.
        gt_labels: int64 ``(G,)`` class indices in ``[0, K)``.
        grid: the voxel grid; its x/y extent (float32 ``hi - lo``, metres) normalises the centre cost.
        costs: cost weights (``model.head.transfusion.loss.match``).

    Returns:
        cost: float32 ``(N, G)``.
        iou: float32 ``(N, G)`` IoU between every prediction and ground truth (``costs.iou_mode``).

    Raises:
        ValueError / TypeError: bad shapes or dtypes, non-finite logits or boxes, labels out of range.
    """
    _check_inputs(pred_boxes, cls_logits, gt_boxes, gt_labels)
    lo = torch.tensor(grid.lo[:2], dtype=torch.float32, device=pred_boxes.device)
    hi = torch.tensor(grid.hi[:2], dtype=torch.float32, device=pred_boxes.device)
    with torch.no_grad():
        pred = pred_boxes.detach().float()
        gt = gt_boxes.detach().float().to(pred.device)
        iou_fn = boxes_iou_3d if costs.iou_mode == "3d" else boxes_iou_bev
        iou = iou_fn(pred[:, :7].contiguous(), gt[:, :7].contiguous()).to(pred.device)

        prob = cls_logits.detach().float().sigmoid()[:, gt_labels.to(pred.device)]  # (N, G)
        eps = 1e-12
        pos = -(prob + eps).log() * costs.focal_alpha * (1 - prob).pow(costs.focal_gamma)
        neg = -(1 - prob + eps).log() * (1 - costs.focal_alpha) * prob.pow(costs.focal_gamma)
        extent = hi - lo
        center = torch.cdist(pred[:, :2] / extent, gt[:, :2] / extent, p=1)
        cost = costs.cls_weight * (pos - neg) + costs.center_weight * center - costs.iou_weight * iou
    return cost, iou


def hungarian_match(
    pred_boxes: torch.Tensor,
    cls_logits: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_labels: torch.Tensor,
    grid: VoxelGrid,
    costs: MatchCosts = DEFAULT_COSTS,
) -> Assignment:
    """Minimum-cost one-to-one assignment of predictions to ground truths.

    Args: as :func:`matching_cost`.

    Returns:
        The matched pairs, ``min(N, G)`` of them (none when either side is empty), on ``pred_boxes``' device.
    """
    cost, iou = matching_cost(pred_boxes, cls_logits, gt_boxes, gt_labels, grid, costs)
    device = pred_boxes.device
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return Assignment(empty, empty.clone(), torch.zeros(0, dtype=torch.float32, device=device))
    rows, cols = linear_sum_assignment(cost.cpu().double().numpy())
    pred_index = torch.as_tensor(rows, dtype=torch.int64, device=device)
    gt_index = torch.as_tensor(cols, dtype=torch.int64, device=device)
    return Assignment(pred_index, gt_index, iou[pred_index, gt_index].float())


@dataclass
class TransFusionTargets:
    """Training targets of a batch (``B`` samples, ``P`` queries, ``K`` classes, ``D`` code columns).

    Attributes:
        cls_targets: float32 ``(B, P, K)`` one-hot class of the matched ground truth, all-zero for unmatched
            queries (background).
        box_targets: float32 ``(B, P, D)`` ground-truth codes relative to the query positions (0 if unmatched).
        positive: bool ``(B, P)`` the query is matched to a ground truth.
        ious: float32 ``(B, P)`` 3D IoU between the (detached) predicted box and its matched ground truth (0 if
            unmatched): the IoU-branch target.
        heatmap: float32 ``(B, K, H, W)`` Gaussian heatmap target (CenterPoint's drawing).
        assignments: per sample, the Hungarian assignment.
        num_heatmap_ignored: ground truths that drew no heatmap peak (centre outside the map or zero BEV size);
            they are still matched to queries.
    """

    cls_targets: torch.Tensor
    box_targets: torch.Tensor
    positive: torch.Tensor
    ious: torch.Tensor
    heatmap: torch.Tensor
    assignments: list[Assignment]
    num_heatmap_ignored: int

    @property
    def matched_iou(self) -> float:
        """Mean 3D IoU of the matched pairs (a training metric; 0 without matches)."""
        n = int(self.positive.sum())
        return float(self.ious[self.positive].sum()) / max(n, 1)


def build_transfusion_targets(
    coder: CenterBoxCoder,
    box_codes: torch.Tensor,
    cls_logits: torch.Tensor,
    query_positions: torch.Tensor,
    gt_boxes: Sequence[Boxes3D],
    gt_labels: Sequence[torch.Tensor],
    *,
    num_classes: int,
    with_velocity: bool,
    costs: MatchCosts = DEFAULT_COSTS,
    gaussian_overlap: float = 0.1,
    min_radius: int = 2,
) -> TransFusionTargets:
    """Match every sample's queries to its ground truth and build the targets.

    Args:
        coder: the head's box coder.
        box_codes: float ``(B, P, D)`` predicted codes relative to ``query_positions`` (``D`` = 10 with velocity).
        cls_logits: float ``(B, P, K)`` predicted class logits.
        query_positions: float ``(B, P, 2)`` ``[u, v]`` query positions in feature-map cells.
        gt_boxes: ``B`` boxes ``(G_b, 9)`` (7 columns allowed without velocity).
        gt_labels: ``B`` int64 ``(G_b,)`` in ``[0, K)``.
        num_classes: ``K``.
        with_velocity: whether the codes carry velocity.
        costs: matching costs.
        gaussian_overlap: heatmap Gaussian ``min_overlap``.
        min_radius: heatmap minimum Gaussian radius (cells).

    Returns:
        :class:`TransFusionTargets` on ``box_codes``' device.
    """
    b, p, d = box_codes.shape
    if d != coder.code_size(with_velocity):
        raise ValueError(f"box_codes must have {coder.code_size(with_velocity)} columns, got {d}")
    if len(gt_boxes) != b or len(gt_labels) != b:
        raise ValueError(
            f"need one gt_boxes and gt_labels entry per sample ({b}), got {len(gt_boxes)}, {len(gt_labels)}"
        )
    device = box_codes.device
    max_gt = max([len(g) for g in gt_boxes if isinstance(g, Boxes3D)] + [1])
    (heat,) = build_center_targets(
        coder,
        gt_boxes,
        gt_labels,
        [list(range(num_classes))],
        with_velocity=with_velocity,
        max_objects=max_gt,
        min_overlap=gaussian_overlap,
        min_radius=min_radius,
        device=device,
    )
    cls_targets = torch.zeros(b, p, num_classes, device=device)
    box_targets = torch.zeros(b, p, d, device=device)
    positive = torch.zeros(b, p, dtype=torch.bool, device=device)
    ious = torch.zeros(b, p, device=device)
    assignments = []
    for i in range(b):
        gt = gt_boxes[i].tensor.to(device)
        gt = gt[:, :7] if not with_velocity else gt
        labels = gt_labels[i].to(device)
        positions = query_positions[i].float()
        pred = coder.decode(box_codes[i].detach().float(), positions)
        a = hungarian_match(pred, cls_logits[i].detach(), gt, labels, coder.grid, costs)
        assignments.append(a)
        if len(a) == 0:
            continue
        pi, gi = a.pred_index, a.gt_index
        positive[i, pi] = True
        cls_targets[i, pi, labels[gi]] = 1.0
        box_targets[i, pi] = coder.encode(gt[gi], reference=positions[pi]).codes.to(device)
        pair_iou = a.ious if costs.iou_mode == "3d" else boxes_iou_3d(pred[pi, :7], gt[gi, :7]).diagonal()
        ious[i, pi] = pair_iou.to(device)
    return TransFusionTargets(
        cls_targets=cls_targets,
        box_targets=box_targets,
        positive=positive,
        ious=ious,
        heatmap=heat.heatmap,
        assignments=assignments,
        num_heatmap_ignored=heat.num_ignored,
    )
