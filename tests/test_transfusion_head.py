"""TransFusion-L head: query selection, Hungarian matching, targets and losses, decoding, autocast, overfitting."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from perception.grid import VoxelGrid
from perception.models.heads.box_coder import CenterBoxCoder
from perception.models.heads.transfusion import TransFusionHead, TransFusionOutput
from perception.models.heads.transfusion_config import (
    MatchCosts,
    TransFusionConfig,
    TransFusionDecodeConfig,
    TransFusionLossConfig,
)
from perception.models.heads.transfusion_layers import select_queries
from perception.models.heads.transfusion_matching import hungarian_match, matching_cost
from perception.ops.iou3d import boxes_iou_3d
from perception.shapes import MapShape
from perception.structures import Boxes3D

PCR = (-8.0, -8.0, -3.0, 8.0, 8.0, 3.0)
VOXEL = (0.5, 0.5, 6.0)
STRIDE = 2  # 32 x 32 voxels -> 16 x 16 BEV map, 1 m cells
GRID = VoxelGrid(PCR, VOXEL)
CLASSES = ("car", "bicycle", "pedestrian")

GT = torch.tensor(
    [
        [1.3, 2.2, -1.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.5],
        [-4.1, -3.4, -0.5, 0.8, 0.7, 1.8, -1.0, 0.0, -0.3],
    ]
)
GT_LABELS = torch.tensor([0, 2])


def make_head(*, in_channels: int = 8, stride: int = STRIDE, **config: object) -> TransFusionHead:
    """A head for :data:`CLASSES` on :data:`GRID` reading an ``(in_channels, 16, 16)`` map of ``stride``;
    ``config`` as in the YAML (``model.head.transfusion``), over small defaults."""
    settings = dict(
        num_proposals=12, hidden_channels=32, num_heads=4, ffn_channels=64, dropout=0.0, branch_channels=16
    )
    settings.update(config)
    return TransFusionHead(
        TransFusionConfig.model_validate(settings),
        class_names=CLASSES,
        grid=GRID,
        input_shape=MapShape(in_channels, GRID.bev_size(stride), stride),
    )


# ------------------------------------------------------------------------------------------------------------
# query selection
# ------------------------------------------------------------------------------------------------------------


def _hand_heatmap() -> torch.Tensor:
    hm = torch.zeros(1, 2, 5, 5)
    hm[0, 0, 1, 1] = 0.9  # peak
    hm[0, 0, 1, 2] = 0.8  # its neighbour: suppressed
    hm[0, 0, 3, 3] = 0.5  # isolated peak
    hm[0, 0, 4, 0] = 0.3  # corner cell: a peak (border cells count)
    hm[0, 1, 2, 2] = 0.7
    hm[0, 1, 2, 3] = 0.6  # neighbour of 0.7 in class 1
    return hm


def test_select_queries_local_maxima() -> None:
    scores, labels, index = select_queries(_hand_heatmap(), 4)
    assert labels.tolist() == [[0, 1, 0, 0]]
    assert index.tolist() == [[1 * 5 + 1, 2 * 5 + 2, 3 * 5 + 3, 4 * 5 + 0]]
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.7, 0.5, 0.3]]))


def test_select_queries_exempt_class_keeps_neighbours() -> None:
    scores, labels, index = select_queries(_hand_heatmap(), 4, exempt_classes=(1,))
    assert labels.tolist() == [[0, 1, 1, 0]]
    assert index.tolist() == [[6, 12, 13, 18]]
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.7, 0.6, 0.5]]))
    # class 0 is still suppressed: 0.8 next to 0.9 never appears
    scores, _, _ = select_queries(_hand_heatmap(), 10, exempt_classes=(1,))
    assert not torch.isclose(scores, torch.tensor(0.8)).any()
    # kernel 1 disables suppression everywhere
    scores, _, _ = select_queries(_hand_heatmap(), 3, kernel_size=1)
    torch.testing.assert_close(scores, torch.tensor([[0.9, 0.8, 0.7]]))


def test_select_queries_errors() -> None:
    hm = _hand_heatmap()
    with pytest.raises(ValueError, match="kernel_size"):
        select_queries(hm, 4, kernel_size=2)
    with pytest.raises(ValueError, match="num_proposals"):
        select_queries(hm, 51)
    with pytest.raises(ValueError, match="exempt_classes"):
        select_queries(hm, 4, exempt_classes=(2,))
    with pytest.raises(ValueError, match="4-D"):
        select_queries(hm[0], 4)


def test_head_queries_follow_the_heatmap() -> None:
    torch.manual_seed(0)
    head = make_head(exempt_classes=["pedestrian"]).eval()
    assert head.exempt_classes == (2,)
    out = head(torch.randn(2, 8, 16, 16))
    prob = out.dense_heatmap.sigmoid()
    scores, labels, index = select_queries(prob, 12, exempt_classes=(2,))
    assert torch.equal(out.query_labels, labels) and torch.equal(out.query_index, index)
    torch.testing.assert_close(out.query_scores, scores)
    cells = CenterBoxCoder(GRID, STRIDE).cell_centers()
    torch.testing.assert_close(out.query_positions, cells[index])
    assert out.cls_logits.shape == (2, 12, 3) and out.box_codes.shape == (2, 12, 10) and out.iou is None


def _attention_reference(
    attn: torch.nn.MultiheadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
):
    """Multi-head attention written out: per-head softmax(q k^T / sqrt(d)) v, then the output projection."""
    c, h = attn.embed_dim, attn.num_heads
    wq, wk, wv = attn.in_proj_weight.split(c)
    bq, bk, bv = attn.in_proj_bias.split(c)

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], h, c // h).transpose(1, 2)

    qh, kh, vh = heads(q @ wq.T + bq), heads(k @ wk.T + bk), heads(v @ wv.T + bv)
    weights = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(c // h), dim=-1)
    out = (weights @ vh).transpose(1, 2).reshape(q.shape)
    return attn.out_proj(out)


def test_decoder_layer_matches_reference() -> None:
    torch.manual_seed(0)
    head = make_head().eval()
    layer = head.decoder
    query, key = torch.randn(2, 5, 32), torch.randn(2, 16, 32)
    qxy, kxy = torch.rand(2, 5, 2) * 16, torch.rand(2, 16, 2) * 16
    got = layer(query, key, qxy, kxy)
    with torch.no_grad():
        pq, pk = layer.query_pos(qxy), layer.key_pos(kxy)
        x = query + pq
        x = layer.norm1(query + _attention_reference(layer.self_attn, x, x, x))
        # cross-attention: queries and keys carry their position encodings, and so do the values (as the authors')
        x = layer.norm2(x + _attention_reference(layer.cross_attn, x + pq, key + pk, key + pk))
        ref = layer.norm3(x + layer.ffn(x))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# matching
# ------------------------------------------------------------------------------------------------------------


def _box(x: float, y: float = 0.0) -> list[float]:
    return [x, y, 0.0, 1.0, 1.0, 1.0, 0.0]


def test_matching_known_optimum_beats_greedy() -> None:
    # centre cost only: greedy would take p0-A (0.5) then p1-B (4.5) = 5.0; the optimum is p0-B + p1-A = 4.0
    pred = torch.tensor([_box(0.0), _box(3.0)])
    gt = torch.tensor([_box(0.5), _box(-1.5)])
    costs = MatchCosts(cls_weight=0.0, iou_weight=0.0, center_weight=1.0)
    rng = VoxelGrid((-10.0, -10.0, -5.0, 10.0, 10.0, 5.0), (0.5, 0.5, 10.0))  # extent 20 m: cost = |dx| / 20
    cost, _ = matching_cost(pred, torch.zeros(2, 1), gt, torch.tensor([0, 0]), rng, costs)
    torch.testing.assert_close(cost, torch.tensor([[0.5, 1.5], [2.5, 4.5]]) / 20)
    a = hungarian_match(pred, torch.zeros(2, 1), gt, torch.tensor([0, 0]), rng, costs)
    assert a.pred_index.tolist() == [0, 1] and a.gt_index.tolist() == [1, 0]


def test_matching_cost_terms_and_brute_force() -> None:
    torch.manual_seed(1)
    n, g, k = 5, 3, 4
    pred = torch.cat([torch.rand(n, 3) * 4, torch.rand(n, 3) + 1, torch.rand(n, 1)], dim=1)
    gt = torch.cat([torch.rand(g, 3) * 4, torch.rand(g, 3) + 1, torch.rand(g, 1)], dim=1)
    logits = torch.randn(n, k)
    labels = torch.tensor([0, 3, 1])
    costs = MatchCosts()
    cost, iou = matching_cost(pred, logits, gt, labels, GRID, costs)
    # reference, written out element by element
    for i, j in itertools.product(range(n), range(g)):
        p = torch.sigmoid(logits[i, labels[j]]).double()
        pos = -torch.log(p + 1e-12) * 0.25 * (1 - p) ** 2
        neg = -torch.log(1 - p + 1e-12) * 0.75 * p**2
        center = (pred[i, :2] - gt[j, :2]).abs().div(16.0).sum()
        ref_iou = boxes_iou_3d(pred[i : i + 1], gt[j : j + 1])[0, 0]
        ref = 0.15 * (pos - neg) + 0.25 * center - 0.25 * ref_iou
        assert math.isclose(float(cost[i, j]), float(ref), abs_tol=1e-5)
        assert math.isclose(float(iou[i, j]), float(ref_iou), abs_tol=1e-6)
    a = hungarian_match(pred, logits, gt, labels, GRID, costs)
    best = min(
        itertools.permutations(range(n), g),
        key=lambda rows: sum(float(cost[r, c]) for c, r in enumerate(rows)),
    )
    got = {int(c): int(r) for r, c in zip(a.pred_index, a.gt_index, strict=True)}
    assert [got[c] for c in range(g)] == list(best)
    torch.testing.assert_close(a.ious, iou[a.pred_index, a.gt_index])


def test_matching_edge_cases() -> None:
    pred = torch.tensor([_box(0.0), _box(3.0)])
    empty = hungarian_match(
        pred, torch.zeros(2, 2), torch.zeros(0, 7), torch.zeros(0, dtype=torch.int64), GRID
    )
    assert len(empty) == 0 and empty.pred_index.dtype == torch.int64
    # more ground truths than predictions: every prediction is matched, one ground truth is left out
    gt = torch.tensor([_box(0.1), _box(2.9), _box(-3.0)])
    a = hungarian_match(pred, torch.zeros(2, 2), gt, torch.tensor([0, 1, 0]), GRID)
    assert a.pred_index.tolist() == [0, 1] and a.gt_index.tolist() == [0, 1]
    with pytest.raises(ValueError, match="cls_logits contains NaN"):
        hungarian_match(pred, torch.full((2, 2), float("nan")), gt, torch.tensor([0, 1, 0]), GRID)
    with pytest.raises(ValueError, match="pred_boxes contains NaN"):
        bad = pred.clone()
        bad[0, 0] = float("inf")
        hungarian_match(bad, torch.zeros(2, 2), gt, torch.tensor([0, 1, 0]), GRID)
    with pytest.raises(ValueError, match="gt_labels must lie"):
        hungarian_match(pred, torch.zeros(2, 2), gt, torch.tensor([0, 1, 2]), GRID)
    with pytest.raises(ValueError, match="iou_mode"):
        MatchCosts(iou_mode="2d")


# ------------------------------------------------------------------------------------------------------------
# targets, losses and decoding on hand-made predictions
# ------------------------------------------------------------------------------------------------------------


def _perfect_output(head: TransFusionHead, logit: float = 12.0) -> TransFusionOutput:
    """4 queries: 0 and 2 predict the ground truth exactly (classes 0 and 2), 1 and 3 are confident background."""
    coder = head.coder
    cells = torch.tensor([[9, 10], [3, 3], [3, 4], [12, 1]])  # [col, row]
    positions = cells.float() + 0.5
    codes = torch.zeros(4, 10)
    codes[[0, 2]] = coder.encode(GT, reference=positions[[0, 2]]).codes
    codes[[1, 3], 3:6] = 0.0  # 1 m cubes at the cell centres, far from the objects
    codes[[1, 3], 7] = 1.0
    cls = torch.full((4, 3), -logit)
    cls[0, 0] = logit
    cls[2, 2] = logit
    target = head.targets(
        TransFusionOutput(
            dense_heatmap=torch.zeros(1, 3, 16, 16),
            query_index=(cells[:, 1] * 16 + cells[:, 0])[None],
            query_labels=torch.tensor([[0, 1, 2, 0]]),
            query_scores=torch.ones(1, 4),
            query_positions=positions[None],
            cls_logits=cls[None],
            box_codes=codes[None],
        ),
        [Boxes3D(GT)],
        [GT_LABELS],
    ).heatmap
    dense = torch.logit(target.clamp(1e-6, 1 - 1e-6))
    return TransFusionOutput(
        dense_heatmap=dense,
        query_index=(cells[:, 1] * 16 + cells[:, 0])[None],
        query_labels=torch.tensor([[0, 1, 2, 0]]),
        query_scores=torch.ones(1, 4),
        query_positions=positions[None],
        cls_logits=cls[None],
        box_codes=codes[None],
        iou=torch.ones(1, 4),
    )


def test_targets_of_hand_made_case() -> None:
    head = make_head(with_iou=True)
    out = _perfect_output(head)
    t = head.targets(out, [Boxes3D(GT)], [GT_LABELS])
    assert t.positive.tolist() == [[True, False, True, False]]
    assert t.assignments[0].pred_index.tolist() == [0, 2] and t.assignments[0].gt_index.tolist() == [0, 1]
    assert t.cls_targets[0].tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]]
    torch.testing.assert_close(t.box_targets[0, [0, 2]], out.box_codes[0, [0, 2]], atol=1e-5, rtol=0)
    assert torch.all(t.ious[0, [0, 2]] > 0.999) and t.matched_iou > 0.999
    # heatmap: one peak of exactly 1 per object, in its class channel, at the centre cell
    assert t.heatmap.shape == (1, 3, 16, 16) and int(t.heatmap.eq(1).sum()) == 2
    assert t.heatmap[0, 0, 10, 9] == 1 and t.heatmap[0, 2, 4, 3] == 1 and t.num_heatmap_ignored == 0


def test_loss_near_zero_for_perfect_predictions_positive_otherwise() -> None:
    head = make_head(with_iou=True)
    out = _perfect_output(head)
    perfect = head.loss(out, [Boxes3D(GT)], [GT_LABELS])
    assert set(perfect) == {"loss_heatmap", "loss_cls", "loss_bbox", "loss_iou"}
    for name in ("loss_cls", "loss_bbox", "loss_iou"):
        assert float(perfect[name]) < 1e-4, (name, float(perfect[name]))
    # the Gaussian focal loss is not 0 at p == target on the Gaussian's shoulders; it is small and minimal
    assert float(perfect["loss_heatmap"]) < 0.5

    wrong = _perfect_output(head)
    wrong.box_codes = wrong.box_codes + 0.3
    wrong.cls_logits = -wrong.cls_logits
    wrong.iou = -wrong.iou
    wrong.dense_heatmap = torch.zeros_like(wrong.dense_heatmap)
    bad = head.loss(wrong, [Boxes3D(GT)], [GT_LABELS])
    for name in perfect:
        assert float(bad[name]) > 10 * max(float(perfect[name]), 1e-4), name
    # only the boxes off by 0.3 in every code column (matching unchanged): the L1 with the default code weights is
    # (8 * 1 + 2 * 0.2) * 0.3 per object, averaged over the 2 objects, times bbox_weight 0.25
    shifted = _perfect_output(head)
    shifted.box_codes = shifted.box_codes + 0.3
    bad = head.loss(shifted, [Boxes3D(GT)], [GT_LABELS])
    assert math.isclose(float(bad["loss_bbox"]), 8.4 * 0.3 * 0.25, rel_tol=1e-4)
    assert math.isclose(float(bad["loss_cls"]), float(perfect["loss_cls"]), rel_tol=1e-4)


def test_decode_perfect_predictions_gives_ground_truth() -> None:
    head = make_head(with_iou=True, decode={"score_threshold": 0.1})
    (det,) = head.decode(_perfect_output(head))
    assert det.labels.tolist() == [0, 2] and det.boxes.tensor.shape == (2, 9)
    iou = boxes_iou_3d(det.boxes.tensor, GT).diagonal()
    assert torch.all(iou > 0.99)
    torch.testing.assert_close(det.boxes.tensor, GT, atol=1e-4, rtol=0)
    assert torch.all(det.scores > 0.99)


def test_decode_rectifier_threshold_range_and_nms() -> None:
    head = make_head(with_iou=True, decode={"iou_rectifier": (0.5, 0.2, 0.8)})
    out = _perfect_output(head, logit=0.0)  # sigmoid 0.5 everywhere
    out.iou = torch.tensor([[0.0, 1.0, -0.5, 0.6]])  # IoU 0.5, 1, 0.25, 0.8
    (det,) = head.decode(out)
    expected = {
        0: 0.5**0.5 * 0.5**0.5,
        1: 0.5**0.8 * 1.0**0.2,
        2: 0.5**0.2 * 0.25**0.8,
        3: 0.5**0.5 * 0.8**0.5,
    }
    want = sorted(expected.values(), reverse=True)
    torch.testing.assert_close(det.scores, torch.tensor(want))
    # the threshold applies to the rectified score: queries 1 (0.574) and 3 (0.632) pass 0.55, 0 and 2 do not
    (det,) = make_head(
        with_iou=True, decode={"iou_rectifier": (0.5, 0.2, 0.8), "score_threshold": 0.55}
    ).decode(out)
    torch.testing.assert_close(det.scores, torch.tensor([expected[3], expected[1]]))
    # the range filter keeps box centres inside it: only query 0 (1.3, 2.2, -1.0) of the four
    (det,) = make_head(
        with_iou=True, decode={"iou_rectifier": 0.5, "post_center_range": (0, 0, -5, 8, 8, 5)}
    ).decode(out)
    assert len(det) == 1 and det.labels.tolist() == [0]
    torch.testing.assert_close(det.boxes.tensor, GT[:1], atol=1e-4, rtol=0)
    # NMS within class 0: two overlapping class-0 boxes, keep the higher score
    head = make_head(decode={"nms_iou_thresholds": {"car": 0.1}})
    out = _perfect_output(head)
    out.box_codes[0, 3] = out.box_codes[0, 0]
    out.box_codes[0, 3, :2] += out.query_positions[0, 0] - out.query_positions[0, 3] + 0.1
    out.cls_logits[0, 3, 0] = 5.0
    (det,) = head.decode(out)
    assert det.labels.tolist().count(0) == 1 and len(det) == 3


# ------------------------------------------------------------------------------------------------------------
# the head end to end
# ------------------------------------------------------------------------------------------------------------


def test_empty_ground_truth() -> None:
    torch.manual_seed(0)
    head = make_head(with_iou=True)
    out = head(torch.randn(2, 8, 16, 16))
    empty = Boxes3D.empty(with_velocity=True)
    losses = head.loss(out, [empty, Boxes3D(GT)], [torch.zeros(0, dtype=torch.int64), GT_LABELS])
    t = head.targets(out, [empty, Boxes3D(GT)], [torch.zeros(0, dtype=torch.int64), GT_LABELS])
    assert not t.positive[0].any() and int(t.positive[1].sum()) == 2 and t.heatmap[0].eq(0).all()
    losses = head.loss(out, [empty, empty], [torch.zeros(0, dtype=torch.int64)] * 2)
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_iou"].item() == 0.0
    assert losses["loss_cls"].item() > 0 and losses["loss_heatmap"].item() > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.grad is not None)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    head = make_head(with_iou=True)
    out = head(torch.randn(2, 8, 16, 16))
    gt = [Boxes3D(GT), Boxes3D(GT[:1])]
    sum(head.loss(out, gt, [GT_LABELS, GT_LABELS[:1]]).values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bf16_autocast_forward_backward() -> None:
    torch.manual_seed(0)
    head = make_head(with_iou=True)
    bev = torch.randn(1, 8, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(bev)
        losses = head.loss(out, [Boxes3D(GT)], [GT_LABELS])
    assert out.box_codes.dtype == torch.bfloat16 and out.dense_heatmap.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    (det,) = head.decode(out)
    assert det.boxes.tensor.dtype == torch.float32


def test_input_validation() -> None:
    head = make_head()
    with pytest.raises(ValueError, match=r"bev must have shape \(B, 8, 16, 16\)"):
        head(torch.randn(1, 8, 15, 16))
    out = head(torch.randn(1, 8, 16, 16))
    with pytest.raises(ValueError, match="one per sample"):
        head.loss(out, [Boxes3D(GT), Boxes3D(GT)], [GT_LABELS, GT_LABELS])
    with pytest.raises(ValueError, match="velocity"):
        head.loss(out, [Boxes3D(GT[:, :7])], [GT_LABELS])
    with pytest.raises(ValueError, match="gt_labels"):
        head.loss(out, [Boxes3D(GT)], [torch.tensor([0, 3])])
    with pytest.raises(ValueError, match="iou_rectifier needs the IoU branch"):
        make_head(decode={"iou_rectifier": 0.5})
    with pytest.raises(ValueError, match="code_weights needs 10 values"):
        make_head(loss=TransFusionLossConfig(code_weights=(1.0,) * 8))
    with pytest.raises(ValueError, match="model.head.transfusion.num_proposals"):
        make_head(num_proposals=3 * 16 * 16 + 1)
    # a NaN in the BEV map reaches the outputs; loss and decode refuse them instead of dropping anything
    bev = torch.randn(1, 8, 16, 16)
    bev[0, :, 5, 5] = float("nan")
    out = head(bev)
    with pytest.raises(ValueError, match="contains NaN"):
        head.loss(out, [Boxes3D(GT)], [GT_LABELS])
    with pytest.raises(ValueError, match="contains NaN"):
        head.decode(out)
    # without velocity the head takes 7-column ground truth and decodes 7-column boxes
    head = make_head(with_velocity=False)
    out = head(torch.randn(1, 8, 16, 16))
    assert out.box_codes.shape[-1] == 8
    head.loss(out, [Boxes3D(GT[:, :7])], [GT_LABELS])
    assert head.decode(out)[0].boxes.tensor.shape[1] == 7


def test_built_from_config_grid_and_input_shape() -> None:
    head = make_head(feature_stride=STRIDE)
    assert head.input_shape() == MapShape(8, (16, 16), STRIDE) and head.num_classes == 3
    assert head.coder.feature_map_size == GRID.bev_size(STRIDE)
    with pytest.raises(
        ValueError, match="model.head.transfusion.feature_stride is 4 but the BEV map has stride 2"
    ):
        make_head(feature_stride=4)
    with pytest.raises(ValueError, match=r"input map would be \(8, 8\)"):
        TransFusionHead(
            TransFusionConfig(), class_names=CLASSES, grid=GRID, input_shape=MapShape(8, (8, 8), 2)
        )
    with pytest.raises(
        ValueError, match="exempt_classes names class 'cone', which is not in data.class_names"
    ):
        make_head(exempt_classes=["cone"])
    with pytest.raises(ValueError, match="nms_iou_thresholds names class 'van'"):
        make_head(decode={"nms_iou_thresholds": {"van": 0.2}})
    with pytest.raises(ValueError, match=r"iou_rectifier needs 1 or 3 values \(one per class\), got 2"):
        make_head(with_iou=True, decode={"iou_rectifier": (0.5, 0.5)})


def test_config_is_the_schema() -> None:
    """Rules the runtime classes used to check after the YAML had loaded are config errors now."""
    with pytest.raises(ValueError, match="focal_alpha"):
        MatchCosts(focal_alpha=1.5)
    with pytest.raises(ValueError, match="nms_kernel_size must be odd"):
        TransFusionConfig(nms_kernel_size=2)
    with pytest.raises(ValueError, match=r"num_heads \(3\) must divide hidden_channels \(128\)"):
        TransFusionConfig(num_heads=3)
    with pytest.raises(ValueError, match="nms_iou_thresholds"):
        TransFusionDecodeConfig(nms_iou_thresholds={"car": 1.5})
    with pytest.raises(ValueError, match="iou_rectifier"):
        TransFusionDecodeConfig(iou_rectifier=1.2)
    with pytest.raises(ValueError, match="Extra inputs"):
        TransFusionConfig.model_validate({"loss": {"match": {"iou_weigth": 1.0}}})
    assert TransFusionConfig(with_velocity=False).code_weight_values == (1.0,) * 8
    assert TransFusionDecodeConfig(nms_iou_thresholds={"pedestrian": 0.2}).nms_thresholds(CLASSES) == (
        None,
        None,
        0.2,
    )
    assert TransFusionDecodeConfig().nms_thresholds(CLASSES) is None


def test_post_center_range_rule_is_the_centerpoint_one() -> None:
    """The two heads' ``decode.post_center_range`` disagreed: CenterPoint refused min > max, TransFusion accepted
    it (and then filtered every box out). Both refuse it now."""
    from perception.models.heads.centerpoint_config import CenterPointDecodeConfig

    bad = (0.0, 0.0, -5.0, -8.0, 8.0, 5.0)
    for cls in (CenterPointDecodeConfig, TransFusionDecodeConfig):
        with pytest.raises(ValueError, match="post_center_range must be"):
            cls(post_center_range=bad)


def test_overfit_single_sample() -> None:
    """The head alone on a fixed random BEV map: the loss falls 10x and the decoded boxes match the ground truth."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster and does not suffer from a busy second core
    try:
        torch.manual_seed(0)
        head = make_head(with_iou=True, num_proposals=10, hidden_channels=16, num_heads=2, ffn_channels=32)
        bev = torch.randn(1, 8, 16, 16)
        gt, labels = [Boxes3D(GT)], [GT_LABELS]
        steps = 100
        opt = torch.optim.Adam(head.parameters(), lr=1e-2)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps, pct_start=0.2)
        first = None
        for _ in range(steps):
            total = sum(head.loss(head(bev), gt, labels).values())
            first = total.item() if first is None else first
            opt.zero_grad()
            total.backward()
            opt.step()
            sched.step()
        with torch.no_grad():
            final = sum(head.loss(head(bev), gt, labels).values()).item()
        assert final < first / 10, (first, final)
        head.eval()
        # decoding reads no parameters: a head with another decode config decodes this head's output
        decoder = make_head(
            with_iou=True,
            num_proposals=10,
            hidden_channels=16,
            num_heads=2,
            ffn_channels=32,
            decode={"score_threshold": 0.3},
        )
        (det,) = decoder.decode(head(bev))
    finally:
        torch.set_num_threads(threads)
    assert len(det) == 2 and sorted(det.labels.tolist()) == [0, 2]
    order = torch.argsort(det.labels)
    iou = boxes_iou_3d(det.boxes.tensor[order], GT).diagonal()
    assert torch.all(iou > 0.7), iou
