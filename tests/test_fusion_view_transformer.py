"""Lifting of camera candidates and the view transformer: exact back-projection of ideal predictions, no gradient
through the geometry, invalid views / queries masked everywhere (no NaN when all are invalid), residual box codes,
matching only on ground truth visible in a valid camera, gradients to every parameter."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import test_fusion_geometry as geo
import torch

from perception.grid import VoxelGrid
from perception.models.fusion.camera_geometry import boxes_to_camera
from perception.models.fusion.lifting import PLACEHOLDER_BOX, CameraCandidates, lift_camera_queries
from perception.models.fusion.view_transformer import (
    ViewTransformer,
    ViewTransformerConfig,
    visible_ground_truth,
)
from perception.models.heads.box_coder import CenterBoxCoder
from perception.structures import Boxes3D

STRIDES = (4, 8, 16, 32)
GRID = VoxelGrid((-32.0, -32.0, -5.0, 32.0, 32.0, 3.0), (0.5, 0.5, 8.0))
C, K = 32, 3


def _coder() -> CenterBoxCoder:
    return CenterBoxCoder(GRID, 8)  # 16 x 16 cells of 4 m


def _ideal_predictions(boxes: torch.Tensor, cams, seed: int = 0) -> tuple[SimpleNamespace, torch.Tensor]:
    """Camera-branch outputs that describe ``boxes`` (1, G, 9) exactly, one query per (view, visible box)."""
    cb = boxes_to_camera(boxes, cams)
    _, v, g = cb.visible.nonzero(as_tuple=True)
    q = len(v)
    gen = torch.Generator().manual_seed(seed)
    level = torch.randint(0, len(STRIDES), (q,), generator=gen)
    offset = torch.randn(q, 2, generator=gen)
    stride = torch.tensor(STRIDES, dtype=torch.float32)[level]
    out = SimpleNamespace(
        query_view=v[None],
        query_level=level[None],
        query_pixel=(cb.uv[0, v, g] - offset * stride[:, None])[None],
        query_valid=torch.ones(1, q, dtype=torch.bool),
        center_offset=offset[None].requires_grad_(),
        depth=cb.depth[0, v, g][None].requires_grad_(),
        log_dims=cb.log_dims[0, v, g][None],
        rot=cb.rot[0, v, g][None],
        velocity=cb.velocity[0, v, g][None],
    )
    return out, g


def test_lifting_recovers_the_boxes_without_gradient() -> None:
    boxes = geo.random_boxes(40, seed=4).tensor[None]
    cams = geo.camera_batch([geo.ring_rig(pitch=0.05)])
    out, g = _ideal_predictions(boxes, cams)
    cand = lift_camera_queries(out, cams, STRIDES)
    assert cand.valid.all() and cand.boxes.shape == (1, len(g), 9)
    assert not cand.boxes.requires_grad
    geo._assert_boxes_close(cand.boxes[0], boxes[0, g])


def test_lifting_marks_invalid_queries_views_and_depths() -> None:
    boxes = geo.random_boxes(40, seed=5).tensor[None]
    rig = geo.ring_rig()
    out, _ = _ideal_predictions(boxes, geo.camera_batch([rig]))
    view0 = out.query_view[0] == 0
    assert view0.any() and not view0.all()
    off = torch.ones(1, len(rig), dtype=torch.bool)
    off[0, 0] = False
    cams = geo.camera_batch([rig], off)
    out.query_valid[0, 1] = False
    with torch.no_grad():
        out.depth[0, 2] = -3.0
        out.log_dims[0, 3] = float("nan")
    cand = lift_camera_queries(out, cams, STRIDES)
    want = ~view0
    want[[1, 2, 3]] = False
    assert cand.valid[0].tolist() == want.tolist()
    assert torch.isfinite(cand.boxes).all()
    assert torch.equal(cand.boxes[0, ~want], torch.tensor(PLACEHOLDER_BOX).expand(int((~want).sum()), 9))
    with pytest.raises(ValueError, match="query_level"):
        lift_camera_queries(out, cams, STRIDES[:1])


def _setup(seed: int = 0, valid_views: torch.Tensor | None = None):
    torch.manual_seed(seed)
    boxes = geo.random_boxes(30, seed=6, radius=28.0).tensor[None]
    rig = geo.ring_rig()
    cams = geo.camera_batch([rig])
    out, g = _ideal_predictions(boxes, cams)
    if valid_views is not None:
        cams = geo.camera_batch([rig], valid_views)
    cand = lift_camera_queries(out, cams, STRIDES)
    vt = ViewTransformer(
        ViewTransformerConfig(dropout=0.0), hidden=C, num_classes=K, coder=_coder(), with_velocity=True
    )
    feats = torch.randn(1, cand.boxes.shape[1], C, requires_grad=True)
    return vt, feats, cand, out.query_view, cams, boxes, g


def test_zero_delta_decodes_to_the_lifted_boxes() -> None:
    vt, feats, cand, view, cams, boxes, g = _setup()
    last = vt.box_branch.layers[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    vt.eval()
    out = vt(feats, cand, view, cams)
    assert out.box_codes.shape == (1, feats.shape[1], 10) and out.cls_logits.shape == (1, feats.shape[1], K)
    inside = (boxes[0, g, :2].abs() < 32.0).all(dim=1)
    assert inside.sum() >= 5
    torch.testing.assert_close(vt.decode_boxes(out)[0, inside], cand.boxes[0, inside], atol=1e-3, rtol=1e-4)


def test_invalid_queries_are_masked_out_of_attention() -> None:
    """Changing an invalid query's feature and position leaves every valid query's output unchanged."""
    vt, feats, cand, view, cams, _, _ = _setup()
    vt.eval()
    cand.valid[0, :3] = False
    base = vt(feats, cand, view, cams)
    feats2 = feats.detach().clone()
    feats2[0, :3] += 10.0
    boxes2 = cand.boxes.clone()
    boxes2[0, :3, :2] += 7.0
    moved = vt(feats2, CameraCandidates(boxes2, cand.valid), view, cams)
    torch.testing.assert_close(moved.features[0, 3:], base.features[0, 3:])
    assert not torch.allclose(moved.features[0, :3], base.features[0, :3])


def test_camera_parameters_reach_the_queries_of_their_view() -> None:
    vt, feats, cand, view, cams, _, _ = _setup()
    vt.eval()
    base = vt(feats, cand, view, cams).features
    cams.intrinsics[0, 0, 0, 0] *= 1.5
    changed = vt(feats, cand, view, cams).features
    assert not torch.allclose(changed, base)


def test_loss_matches_only_visible_ground_truth_and_reaches_every_parameter() -> None:
    """Views 1 and 4 invalid: their queries are invalid and the ground truth only they see is never matched."""
    views = torch.ones(1, 6, dtype=torch.bool)
    views[0, [1, 4]] = False
    vt, feats, cand, view, cams, boxes, g = _setup(valid_views=views)
    vt.train()
    out = vt(feats, cand, view, cams)
    gt = [Boxes3D(boxes[0])]
    labels = [torch.arange(boxes.shape[1]) % K]
    visible = visible_ground_truth(gt, cams)
    assert visible[0].tolist() == [bool(((g == i) & cand.valid[0]).any()) for i in range(boxes.shape[1])]
    assert 5 <= int(visible[0].sum()) < boxes.shape[1]
    t = vt.targets(out, gt, labels, visible)
    matched = t.gt_index[t.positive]
    assert len(matched) == int(visible[0].sum())
    assert visible[0][matched].all() and cand.valid[t.positive].all()
    losses = vt.loss(out, gt, labels, visible)
    assert set(losses) == {"loss_view_cls", "loss_view_bbox"}
    sum(losses.values()).backward()
    missing = [n for n, p in vt.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    # nothing visible: no match, the box loss is zero and the class loss pushes every valid query to background
    none = [torch.zeros_like(visible[0])]
    losses = vt.loss(vt(feats, cand, view, cams), gt, labels, none)
    assert float(losses["loss_view_bbox"].detach()) == 0.0 and float(losses["loss_view_cls"].detach()) > 0.0


def test_invalid_queries_are_never_matched() -> None:
    vt, feats, cand, view, cams, boxes, g = _setup()
    vt.eval()
    cand.valid[0, ::2] = False
    out = vt(feats, cand, view, cams)
    gt = [Boxes3D(boxes[0])]
    labels = [torch.zeros(boxes.shape[1], dtype=torch.int64)]
    everything = [torch.ones(boxes.shape[1], dtype=torch.bool)]
    assert cand.valid[vt.targets(out, gt, labels, everything).positive].all()
    losses_all = vt.loss(out, gt, labels, everything)
    # An invalid query's predictions do not enter the loss: perturbing them changes nothing.
    out.box_codes = out.box_codes.detach().clone()
    out.cls_logits = out.cls_logits.detach().clone()
    out.box_codes[0, ::2] += 5.0
    out.cls_logits[0, ::2] += 5.0
    losses_moved = vt.loss(out, gt, labels, everything)
    for key in losses_all:
        torch.testing.assert_close(losses_moved[key], losses_all[key].detach())


def test_all_views_invalid_gives_finite_outputs_and_losses() -> None:
    views = torch.zeros(1, 6, dtype=torch.bool)
    vt, feats, cand, view, cams, boxes, _ = _setup(valid_views=views)
    assert not cand.valid.any()
    vt.train()
    out = vt(feats, cand, view, cams)
    for t in (out.features, out.box_codes, out.cls_logits):
        assert torch.isfinite(t).all()
    gt = [Boxes3D(boxes[0])]
    visible = visible_ground_truth(gt, cams)
    assert not visible[0].any()
    losses = vt.loss(out, gt, [torch.zeros(boxes.shape[1], dtype=torch.int64)], visible)
    assert all(float(v.detach()) == 0.0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in vt.parameters() if p.grad is not None)
