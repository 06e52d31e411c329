"""Hungarian targets of a set of box candidates with a validity mask, against a subset of the ground truth.

SparseFusion matches three candidate sets, each one to one against ground truth (the TransFusion cost of
:mod:`perception.models.heads.transfusion_matching`): the view transformer's lifted camera candidates against the
objects visible in some valid camera, and the fusion stage's LiDAR + camera candidates against all objects.
Candidates that are not valid (from a missing camera, or padding) are never matched: matching runs on the valid
ones only, so they are background for the class loss and carry no box loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from perception._validate import check_tensor
from perception.structures import Boxes3D

from ..heads.box_coder import CenterBoxCoder
from ..heads.transfusion_config import MatchCosts
from ..heads.transfusion_matching import hungarian_match

__all__ = ["SetTargets", "build_set_targets"]


@dataclass
class SetTargets:
    """Targets of ``B`` samples x ``N`` candidates (``K`` classes, ``D`` code columns).

    Attributes:
        cls_targets: float32 ``(B, N, K)`` one-hot class of the matched object, zero for background.
        box_targets: float32 ``(B, N, D)`` the matched object's code relative to the candidate's position.
        positive: bool ``(B, N)`` matched.
        ious: float32 ``(B, N)`` 3D IoU of the (detached) decoded candidate with its object (0 if unmatched).
    """

    cls_targets: torch.Tensor
    box_targets: torch.Tensor
    positive: torch.Tensor
    ious: torch.Tensor

    @property
    def num_positive(self) -> int:
        return int(self.positive.sum())


def build_set_targets(
    coder: CenterBoxCoder,
    box_codes: torch.Tensor,
    cls_logits: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    gt_boxes: Sequence[Boxes3D],
    gt_labels: Sequence[torch.Tensor],
    *,
    with_velocity: bool,
    costs: MatchCosts,
    gt_mask: Sequence[torch.Tensor] | None = None,
) -> SetTargets:
    """Match each sample's valid candidates to its (selected) ground truth.

    Args:
        coder: box coder of the BEV map the positions are in.
        box_codes: float ``(B, N, D)`` predicted codes relative to ``positions``.
        cls_logits: float ``(B, N, K)`` class logits.
        positions: float ``(B, N, 2)`` ``[u, v]`` reference positions in feature-map cells.
        valid: bool ``(B, N)`` candidates that take part.
        gt_boxes: ``B`` boxes ``(G_b, 9)`` (7 columns without velocity).
        gt_labels: ``B`` int64 ``(G_b,)``.
        with_velocity: whether the codes carry velocity.
        costs: the matching cost weights.
        gt_mask: optional ``B`` bool ``(G_b,)``: only these objects are targets (the view transformer: objects
            visible in a valid camera); the others are left out of the matching.

    Returns:
        :class:`SetTargets` on ``box_codes``' device.
    """
    b, n, d = box_codes.shape
    k = cls_logits.shape[-1]
    check_tensor("cls_logits", cls_logits, shape=(b, n, k))
    check_tensor("positions", positions, shape=(b, n, 2))
    check_tensor("valid", valid, shape=(b, n), dtype=torch.bool)
    if d != coder.code_size(with_velocity):
        raise ValueError(f"box_codes must have {coder.code_size(with_velocity)} columns, got {d}")
    if len(gt_boxes) != b or len(gt_labels) != b or (gt_mask is not None and len(gt_mask) != b):
        raise ValueError(f"need one ground-truth entry per sample ({b})")
    device = box_codes.device
    cls_targets = torch.zeros(b, n, k, device=device)
    box_targets = torch.zeros(b, n, d, device=device)
    positive = torch.zeros(b, n, dtype=torch.bool, device=device)
    ious = torch.zeros(b, n, device=device)
    for i in range(b):
        gt = gt_boxes[i].tensor.to(device)
        gt = gt[:, :7] if not with_velocity else gt
        labels = gt_labels[i].to(device)
        if gt_mask is not None:
            keep = gt_mask[i].to(device)
            gt, labels = gt[keep], labels[keep]
        cand = torch.nonzero(valid[i]).squeeze(1)
        if len(gt) == 0 or len(cand) == 0:
            continue
        pos = positions[i, cand].float()
        pred = coder.decode(box_codes[i, cand].detach().float(), pos)
        a = hungarian_match(pred, cls_logits[i, cand].detach(), gt, labels, coder.grid, costs)
        if len(a) == 0:
            continue
        pi = cand[a.pred_index]
        positive[i, pi] = True
        cls_targets[i, pi, labels[a.gt_index]] = 1.0
        box_targets[i, pi] = coder.encode(gt[a.gt_index], reference=pos[a.pred_index]).codes.to(device)
        ious[i, pi] = a.ious.to(device)
    return SetTargets(cls_targets, box_targets, positive, ious)
