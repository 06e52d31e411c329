"""CenterPoint head: targets on hand-placed boxes, loss, decoding of perfect predictions, gradients, empty GT,
bf16 autocast and a small overfit."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from collections.abc import Sequence

import pytest
import torch

from perception.grid import VoxelGrid
from perception.models.heads.box_coder import CenterBoxCoder
from perception.models.heads.centerpoint import (
    NUSCENES_CLASSES,
    NUSCENES_TASKS,
    CenterPointHead,
    CenterPointOutput,
    CenterPointTaskOutput,
)
from perception.models.heads.centerpoint_config import (
    NUSCENES_CIRCLE_NMS_MIN_RADIUS,
    CenterPointConfig,
    CenterPointDecodeConfig,
    CircleNMS,
    NMSConfig,
    RotatedNMS,
)
from perception.models.heads.centerpoint_decode import TaskPeaks
from perception.models.heads.centerpoint_targets import (
    build_center_targets,
    draw_gaussians,
    gaussian_radius,
    heatmap_radius,
)
from perception.ops.iou3d import boxes_iou_3d
from perception.shapes import MapShape
from perception.structures import Boxes3D

RANGE = (-19.2, -19.2, -5.0, 19.2, 19.2, 3.0)  # 128 x 128 voxels of 0.3 m, stride 4 -> 32 x 32 cells of 1.2 m
VOXEL = (0.3, 0.3, 8.0)
STRIDE = 4
GRID = VoxelGrid(RANGE, VOXEL)


def make_head(*, in_channels: int = 8, stride: int = STRIDE, **config: object) -> CenterPointHead:
    """A head on :data:`GRID` reading an ``(in_channels, 32, 32)`` map of ``stride``; ``config`` as in the YAML
    (``model.head.centerpoint``), over small defaults."""
    settings = {"tasks": NUSCENES_TASKS, "shared_channels": 8, "head_channels": 8, **config}
    torch.manual_seed(0)
    return CenterPointHead(
        CenterPointConfig.model_validate(settings),
        class_names=NUSCENES_CLASSES,
        grid=GRID,
        input_shape=MapShape(in_channels, GRID.bev_size(stride), stride),
    )


def scene() -> tuple[list[Boxes3D], list[torch.Tensor]]:
    """One object of every task in sample 0 (well separated), two in sample 1."""
    b0 = torch.tensor(
        [
            [1.0, 2.0, -1.0, 4.5, 2.0, 1.6, 0.5, 3.0, 0.5],  # car
            [-10.0, 8.0, -0.5, 7.0, 2.6, 3.0, -2.0, 1.0, -1.0],  # truck
            [10.5, -10.0, -0.5, 6.0, 2.8, 3.0, 2.5, 0.0, 0.0],  # construction_vehicle
            [-12.0, -12.0, 0.0, 11.0, 2.9, 3.4, 1.2, -2.0, 4.0],  # bus
            [12.0, 12.0, -1.2, 0.5, 2.5, 1.0, 0.0, 0.0, 0.0],  # barrier
            [4.0, -14.0, -1.0, 2.0, 0.8, 1.5, 3.0, 1.0, 1.0],  # bicycle
            [-3.0, 13.0, -1.0, 0.7, 0.7, 1.8, -1.0, 0.5, 0.2],  # pedestrian
        ]
    )
    l0 = torch.tensor([0, 1, 2, 3, 5, 7, 8])
    b1 = torch.tensor(
        [[5.0, 5.0, -1.0, 4.0, 1.9, 1.5, -0.3, 0.0, 0.0], [-6.0, 1.0, -1.3, 0.4, 0.4, 0.8, 0.0, 0.0, 0.0]]
    )
    l1 = torch.tensor([0, 9])
    return [Boxes3D(b0), Boxes3D(b1)], [l0, l1]


# ------------------------------------------------------------------------------------------------------------
# Gaussian radius and heatmap drawing
# ------------------------------------------------------------------------------------------------------------


def test_gaussian_radius_hand_values() -> None:
    # bus 12 x 3 m on 0.3 m cells: l = 40, w = 10, overlap 0.1 -> r3 = (-2*0.1*50 + sqrt(4*0.01*2500 + 16*0.1*360)) / 2
    #                                                         = (-10 + sqrt(100 + 576)) / 2 = (-10 + 26) / 2 = 8
    r = gaussian_radius(torch.tensor([40.0]), torch.tensor([10.0]), 0.1)
    assert r.item() == pytest.approx(8.0, abs=1e-9)
    # car 4.5 x 2 m on 0.6 m cells: l = 7.5, w = 3.3333
    l, w, o = 7.5, 10 / 3, 0.1
    s, lw = l + w, l * w
    r1 = (s + math.sqrt(s * s - 4 * lw * (1 - o) / (1 + o))) / 2
    r2 = (2 * s + math.sqrt(4 * s * s - 16 * (1 - o) * lw)) / 2
    r3 = (-2 * o * s + math.sqrt(4 * o * o * s * s + 16 * o * (1 - o) * lw)) / 2
    got = gaussian_radius(torch.tensor([l], dtype=torch.float64), torch.tensor([w], dtype=torch.float64), o)
    assert got.item() == pytest.approx(min(r1, r2, r3), rel=1e-12)
    assert got.item() == pytest.approx(2.1064, abs=1e-3)
    # with flooring and the minimum radius 2
    radii = heatmap_radius(
        torch.tensor([40.0, 7.5, 1.0, 60.0]), torch.tensor([10.0, 10 / 3, 1.0, 20.0]), 0.1, 2
    )
    big = gaussian_radius(
        torch.tensor([60.0], dtype=torch.float64), torch.tensor([20.0], dtype=torch.float64), 0.1
    )
    assert radii.tolist() == [8, 2, 2, int(big.item())]
    assert int(big.item()) > 8
    with pytest.raises(ValueError, match="min_overlap"):
        gaussian_radius(torch.ones(1), torch.ones(1), 1.0)


def test_draw_gaussians_values_and_borders() -> None:
    hm = torch.zeros(2, 9, 10)
    draw_gaussians(
        hm, torch.tensor([0, 1, 1]), torch.tensor([[4, 4], [0, 8], [2, 2]]), torch.tensor([2, 2, 1])
    )
    sigma2 = (5 / 6) ** 2
    assert hm[0, 4, 4].item() == 1.0
    assert hm[0, 4, 5].item() == pytest.approx(math.exp(-1 / (2 * sigma2)), rel=1e-6)
    assert hm[0, 6, 6].item() == pytest.approx(math.exp(-8 / (2 * sigma2)), rel=1e-6)
    assert hm[0, 4, 7].item() == 0.0  # outside the radius
    assert int((hm[0] > 0).sum()) == 25
    assert hm[1, 8, 0].item() == 1.0  # clipped at the corner: 3 x 3 visible cells
    assert int((hm[1, 6:, :3] > 0).sum()) == 9
    sigma1 = (3 / 6) ** 2
    assert hm[1, 2, 3].item() == pytest.approx(math.exp(-1 / (2 * sigma1)), rel=1e-6)
    # overlapping Gaussians take the maximum
    two = torch.zeros(1, 5, 5)
    draw_gaussians(two, torch.tensor([0, 0]), torch.tensor([[1, 2], [3, 2]]), torch.tensor([2, 2]))
    assert two[0, 2, 1].item() == 1.0 and two[0, 2, 3].item() == 1.0
    assert two[0, 2, 2].item() == pytest.approx(math.exp(-1 / (2 * sigma2)), rel=1e-6)


# ------------------------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------------------------


def test_targets_hand_placed() -> None:
    head = make_head()
    boxes, labels = scene()
    targets = head.targets(boxes, labels)
    assert len(targets) == 6
    h, w = head.feature_map_size
    assert (h, w) == (32, 32)
    car = targets[0]
    assert car.heatmap.shape == (2, 1, 32, 32) and car.codes.shape == (2, 500, 10)
    # car in sample 0 at (1, 2): u = 20.2 / 1.2 = 16.83, v = 21.2 / 1.2 = 17.67 -> cell (16, 17)
    assert car.heatmap[0, 0, 17, 16].item() == 1.0
    assert int((car.heatmap[0] == 1).sum()) == 1
    assert car.mask[0].tolist()[:2] == [True, False] and int(car.mask.sum()) == 2
    assert car.indices[0, 0].item() == 17 * 32 + 16
    # radius: 4.5 x 2 m on 1.2 m cells -> 3.75 x 1.67 cells -> below 2 -> min radius 2: a 5 x 5 blob
    assert int((car.heatmap[0, 0] > 0).sum()) == 25
    assert car.heatmap[0, 0, 17, 18].item() == pytest.approx(math.exp(-4 / (2 * (5 / 6) ** 2)), rel=1e-6)
    decoded = head.coder.decode(car.codes[0, :1], torch.tensor([[16, 17]]))
    torch.testing.assert_close(decoded, boxes[0].tensor[:1], atol=1e-5, rtol=1e-5)
    # truck and construction vehicle share task 1 and land in channels 0 and 1
    t1 = targets[1]
    assert t1.heatmap.shape == (2, 2, 32, 32)
    assert int((t1.heatmap[0, 0] == 1).sum()) == 1 and int((t1.heatmap[0, 1] == 1).sum()) == 1
    assert int(t1.mask[0].sum()) == 2 and int(t1.mask[1].sum()) == 0
    assert float(t1.heatmap[1].abs().sum()) == 0.0
    # the bus is 11 x 2.9 m = 9.2 x 2.4 cells: radius from the formula
    bus = targets[2]
    expect_r = max(2, int(gaussian_radius(torch.tensor([11 / 1.2]), torch.tensor([2.9 / 1.2]), 0.1).item()))
    assert int((bus.heatmap[0, 0] > 0).sum()) == (2 * expect_r + 1) ** 2
    # every slot decodes back to its box
    for task, classes in zip(targets, head.task_classes, strict=True):
        for s in range(2):
            n = int(task.mask[s].sum())
            sel = torch.isin(labels[s], torch.tensor(classes))
            cells = torch.stack([task.indices[s, :n] % w, task.indices[s, :n] // w], dim=1)
            torch.testing.assert_close(
                head.coder.decode(task.codes[s, :n], cells), boxes[s].tensor[sel], atol=1e-5, rtol=1e-5
            )
        assert task.num_ignored == 0 and task.num_overflow == 0


def test_targets_ignored_overflow_and_empty() -> None:
    coder = CenterBoxCoder(GRID, STRIDE)
    boxes = Boxes3D(
        torch.tensor(
            [
                [30.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0],  # outside the map
                [0.0, 0.0, 0.0, 0.0, 2.0, 1.5, 0.0],  # zero length
                [1.0, 1.0, 0.0, 4.0, 2.0, 1.5, 0.0],
                [5.0, 5.0, 0.0, 4.0, 2.0, 1.5, 0.0],
            ]
        )
    )
    labels = torch.zeros(4, dtype=torch.int64)
    with pytest.warns(UserWarning, match="exceed max_objects=1"):
        (t,) = build_center_targets(coder, [boxes], [labels], [(0,)], with_velocity=False, max_objects=1)
    assert t.num_ignored == 2 and t.num_overflow == 1
    assert int(t.mask.sum()) == 1 and int((t.heatmap == 1).sum()) == 1
    assert t.codes.shape == (1, 1, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (e,) = build_center_targets(
            coder, [Boxes3D.empty(True)], [torch.zeros(0, dtype=torch.int64)], [(0,)], with_velocity=True
        )
    assert float(e.heatmap.sum()) == 0.0 and not bool(e.mask.any())


def test_target_errors() -> None:
    head = make_head()
    boxes, labels = scene()
    with pytest.raises(ValueError, match="belong to no task"):
        head.targets(boxes, [labels[0], torch.tensor([0, 10])])
    with pytest.raises(ValueError, match="no velocity columns"):
        head.targets([Boxes3D(boxes[0].tensor[:, :7])], [labels[0]])
    with pytest.raises(ValueError, match=r"gt_labels\[0\] must have shape"):
        head.targets([boxes[0]], [labels[1]])
    with pytest.raises(TypeError, match="must be a Boxes3D"):
        head.targets([boxes[0].tensor], [labels[0]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="same length"):
        head.targets(boxes, labels[:1])


# ------------------------------------------------------------------------------------------------------------
# Perfect predictions: loss and decoding
# ------------------------------------------------------------------------------------------------------------


def perfect_output(
    head: CenterPointHead, boxes: list[Boxes3D], labels: list[torch.Tensor], soft: bool
) -> CenterPointOutput:
    """Predictions that are exactly right: heatmap logits +-20 (one-hot at the centres) or, with ``soft``, the
    logit of the Gaussian target; dense box codes that decode to the box from every cell within 3 cells of it."""
    h, w = head.feature_map_size
    b = len(boxes)
    targets = head.targets(boxes, labels)
    tasks = []
    for t, classes in zip(targets, head.task_classes, strict=True):
        if soft:
            heat = torch.logit(t.heatmap.clamp(1e-6, 1 - 1e-6))
        else:
            heat = torch.where(t.heatmap == 1, 20.0, -20.0)
        codes = torch.zeros(b, 10, h, w)
        codes[:, 7] = 1.0
        for s in range(b):
            for box in boxes[s].tensor[torch.isin(labels[s], torch.tensor(classes))]:
                cell = head.coder.encode(box[None]).cells[0]
                rows, cols = torch.meshgrid(torch.arange(-3, 4), torch.arange(-3, 4), indexing="ij")
                ref = torch.stack([cols.reshape(-1) + cell[0], rows.reshape(-1) + cell[1]], dim=1)
                ref = ref[(ref[:, 0] >= 0) & (ref[:, 0] < w) & (ref[:, 1] >= 0) & (ref[:, 1] < h)]
                enc = head.coder.encode(box[None].expand(len(ref), 9), reference=ref.float())
                codes[s, :, ref[:, 1], ref[:, 0]] = enc.codes.T
        tasks.append(
            CenterPointTaskOutput(
                heatmap=heat,
                offset=codes[:, 0:2],
                height=codes[:, 2:3],
                log_dims=codes[:, 3:6],
                rot=codes[:, 6:8],
                velocity=codes[:, 8:10],
            )
        )
    return CenterPointOutput(tasks=tasks)


def test_loss_zero_for_perfect_positive_otherwise() -> None:
    head = make_head()
    boxes, labels = scene()
    perfect = perfect_output(head, boxes, labels, soft=False)
    losses = head.loss(perfect, boxes, labels)
    assert set(losses) == {f"task{i}.{k}" for i in range(6) for k in ("heatmap", "bbox")}
    for name, value in losses.items():
        assert value.dtype == torch.float32 and value.ndim == 0
        assert value.item() < 1e-5, name
    out = head(torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(1)))
    losses = head.loss(out, boxes, labels)
    assert all(v.item() > 0 for v in losses.values())
    # code weights and loss weights apply: velocity error counts 0.2, bbox weight 0.25, / number of objects
    shifted = perfect_output(head, boxes, labels, soft=False)
    shifted.tasks[0].velocity = shifted.tasks[0].velocity + 1.0  # type: ignore[operator]
    got = head.loss(shifted, boxes, labels)["task0.bbox"].item()
    assert got == pytest.approx(0.25 * (2 * 0.2 * 2) / (2 + 1e-4), rel=1e-5)


@pytest.mark.parametrize(
    "nms",
    [
        NMSConfig(rotated=RotatedNMS()),
        NMSConfig(circle=CircleNMS.from_squared(NUSCENES_CIRCLE_NMS_MIN_RADIUS)),
    ],
    ids=["rotated", "circle"],
)
def test_decode_perfect_predictions_gives_gt(nms: NMSConfig) -> None:
    head = make_head(decode={"nms": nms})
    boxes, labels = scene()
    dets = head.decode(perfect_output(head, boxes, labels, soft=True))
    assert len(dets) == 2
    for det, gt, lab in zip(dets, boxes, labels, strict=True):
        assert det.boxes.tensor.shape == (len(gt), 9)  # the Gaussian neighbours are suppressed
        assert det.boxes.tensor.dtype == torch.float32
        iou = boxes_iou_3d(det.boxes.tensor, gt.tensor)
        best, match = iou.max(dim=1)
        assert bool((best > 0.99).all())
        assert sorted(match.tolist()) == list(range(len(gt)))
        assert det.labels.tolist() == lab[match].tolist()
        torch.testing.assert_close(det.boxes.tensor[:, 7:], gt.tensor[match, 7:], atol=1e-5, rtol=1e-5)
        assert bool((det.scores > 0.99).all())


def test_decode_filters() -> None:
    boxes, labels = scene()
    base = make_head()
    out = perfect_output(base, boxes, labels, soft=True)
    no_nms = make_head(decode={"nms": None, "score_threshold": 0.3})
    many = no_nms.decode(out)[0]
    assert len(many) > len(boxes[0])  # Gaussian neighbours (0.49 next to a centre) survive without NMS
    assert bool((many.scores > 0.3).all())
    top1 = make_head(decode={"top_k": 1, "nms": None}).decode(out)[0]
    assert len(top1) == 6  # one peak per task
    ranged = make_head(decode={"post_center_range": (0, 0, -10, 20, 20, 10)})
    det = ranged.decode(out)[0]
    assert bool((det.boxes.tensor[:, :2] >= 0).all()) and len(det) == 2  # the car and the barrier
    assert sorted(det.labels.tolist()) == [0, 5]


def test_decode_rejects_nan() -> None:
    head = make_head()
    out = head(torch.randn(1, 8, 32, 32))
    out.tasks[2].log_dims = out.tasks[2].log_dims.detach().clone()
    out.tasks[2].log_dims.fill_(float("nan"))
    with pytest.raises(ValueError, match="task 2.*NaN or inf"):
        head.decode(out)


# ------------------------------------------------------------------------------------------------------------
# Training behaviour
# ------------------------------------------------------------------------------------------------------------


def test_gradients_reach_every_parameter() -> None:
    head = make_head()
    boxes, labels = scene()
    # exactly one object per task, so that no L1 sign can cancel in a bias gradient by chance
    one = torch.tensor([0, 1, 3, 4, 5, 6])
    boxes, labels = [boxes[0].select(one)], [labels[0][one]]
    out = head(torch.randn(1, 8, 32, 32, generator=torch.Generator().manual_seed(2)))
    assert len(out.tasks) == 6
    assert out.tasks[1].heatmap.shape == (1, 2, 32, 32) and out.tasks[0].box_codes().shape == (1, 10, 32, 32)
    sum(head.loss(out, boxes, labels).values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        assert p.grad.abs().sum().item() > 0, name


def test_empty_ground_truth() -> None:
    head = make_head()
    boxes, labels = scene()
    empty = Boxes3D.empty(True)
    no_labels = torch.zeros(0, dtype=torch.int64)
    out = head(torch.randn(2, 8, 32, 32))
    losses = head.loss(out, [boxes[0], empty], [labels[0], no_labels])
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    losses = head.loss(out, [empty, empty], [no_labels, no_labels])
    assert all(losses[f"task{i}.bbox"].item() == 0.0 for i in range(6))
    assert all(losses[f"task{i}.heatmap"].item() > 0.0 for i in range(6))
    sum(losses.values()).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in head.parameters() if p.grad is not None)


def test_bf16_autocast_forward_backward() -> None:
    head = make_head()
    boxes, labels = scene()
    bev = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(bev)
        losses = head.loss(out, boxes, labels)
    assert out.tasks[0].heatmap.dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v)) for v in losses.values())
    sum(losses.values()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name
    dets = head.decode(out)
    assert dets[0].boxes.tensor.dtype == torch.float32 and dets[0].scores.dtype == torch.float32
    # the bf16 loss is close to the fp32 loss
    fp32 = sum(head.loss(head(bev), boxes, labels).values()).item()
    assert sum(losses.values()).item() == pytest.approx(fp32, rel=0.05)


def test_overfit_single_sample() -> None:
    """Head alone on a fixed random BEV map, one sample with one object of every task: the loss (and, separately,
    the box-regression part) falls 10x and the decoded boxes match the ground truth.

    One intra-op thread: the tensors are tiny, and two threads on a busy 2-core machine spend most of the time
    waiting for each other (see ../shared/SETUP.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _overfit()
    finally:
        torch.set_num_threads(threads)


def _overfit() -> None:
    torch.manual_seed(0)
    head = make_head()
    boxes, labels = scene()
    boxes, labels = boxes[:1], labels[:1]
    bev = torch.randn(1, 8, 32, 32, generator=torch.Generator().manual_seed(4))
    steps = 150
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - s / steps)
    history = []
    for _ in range(steps):
        losses = head.loss(head(bev), boxes, labels)
        loss = sum(losses.values())
        history.append((loss.item(), sum(v.item() for k, v in losses.items() if k.endswith(".bbox"))))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    (first, first_bbox), (last, last_bbox) = history[0], history[-1]
    assert last < first / 10, history[::10]
    assert last_bbox < first_bbox / 10, history[::10]
    head.train(False)
    det = head.decode(head(bev))[0]
    gt = boxes[0].tensor
    iou = boxes_iou_3d(det.boxes.tensor, gt)  # (N, K)
    for k in range(len(gt)):
        # the best-scoring detection of the right class that touches the box matches it
        candidates = torch.nonzero((det.labels == labels[0][k]) & (iou[:, k] > 0.1)).squeeze(1)
        assert candidates.numel() > 0, k
        best = candidates[det.scores[candidates].argmax()]
        assert iou[best, k].item() > 0.7, (k, iou[best, k].item())
        assert det.scores[best].item() > 0.3, (k, det.scores[best].item())


# ------------------------------------------------------------------------------------------------------------
# Construction errors
# ------------------------------------------------------------------------------------------------------------


def test_construction_and_input_errors() -> None:
    with pytest.raises(ValueError, match=r"model.head.centerpoint.tasks\[0\] names 'van', which is not in"):
        make_head(tasks=[("car", "van")] + list(NUSCENES_TASKS[1:]))
    with pytest.raises(ValueError, match="belong to no task"):
        make_head(tasks=NUSCENES_TASKS[:5])
    with pytest.raises(ValueError, match="more than one task"):
        make_head(tasks=list(NUSCENES_TASKS) + [("car",)])
    with pytest.raises(ValueError, match="code_weights must be 10"):
        make_head(code_weights=[1.0] * 8)
    with pytest.raises(
        ValueError, match=r"decode.nms.circle.distances needs one radius per task \(6\), got 2"
    ):
        make_head(decode={"nms": {"circle": {"distances": [1.0, 2.0]}}})
    with pytest.raises(ValueError, match="top_k"):
        CenterPointDecodeConfig(top_k=0)
    with pytest.raises(ValueError, match="iou_threshold"):
        RotatedNMS(iou_threshold=1.5)
    head = make_head()
    with pytest.raises(ValueError, match=r"bev must have shape \(\*, 8, 32, 32\)"):
        head(torch.zeros(1, 8, 16, 16))
    no_vel = make_head(with_velocity=False)
    out = no_vel(torch.randn(1, 8, 32, 32))
    assert out.tasks[0].velocity is None and out.tasks[0].box_codes().shape == (1, 8, 32, 32)
    boxes, labels = scene()
    assert all(bool(torch.isfinite(v)) for v in no_vel.loss(out, boxes[:1], labels[:1]).values())
    assert no_vel.decode(out)[0].boxes.tensor.shape[1] == 7


def test_built_from_config_grid_and_input_shape() -> None:
    head = make_head(feature_stride=STRIDE)
    assert head.input_shape() == MapShape(8, (32, 32), STRIDE)
    assert head.coder.feature_map_size == GRID.bev_size(STRIDE) == (32, 32)
    assert head.coder.cell_size == pytest.approx((1.2, 1.2))
    with pytest.raises(
        ValueError, match="model.head.centerpoint.feature_stride is 8 but the BEV map has stride 4"
    ):
        make_head(feature_stride=8)
    config = CenterPointConfig(tasks=NUSCENES_TASKS)
    with pytest.raises(ValueError, match=r"input map would be \(16, 16\) but the head expects"):
        CenterPointHead(config, class_names=NUSCENES_CLASSES, grid=GRID, input_shape=MapShape(8, (16, 16), 4))
    with pytest.raises(ValueError, match="whole number"):
        CenterPointHead(
            config, class_names=NUSCENES_CLASSES, grid=GRID, input_shape=MapShape(8, (64, 64), 0.5)
        )
    with pytest.raises(TypeError, match="CenterPointConfig"):
        CenterPointHead(
            config.model_dump(), class_names=NUSCENES_CLASSES, grid=GRID, input_shape=head.input_shape()
        )  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty unique"):
        CenterPointHead(
            config, class_names=NUSCENES_CLASSES + ("car",), grid=GRID, input_shape=head.input_shape()
        )


def test_config_is_the_schema() -> None:
    """Rules the head used to check at build time are config errors now, naming the key."""
    with pytest.raises(ValueError, match="tasks.1"):  # an empty class group
        CenterPointConfig(tasks=[["car"], []])
    with pytest.raises(ValueError, match="post_center_range must be"):
        CenterPointDecodeConfig(post_center_range=(0, 0, 0, -1, 1, 1))
    with pytest.raises(ValueError, match="code_weights must be 8"):
        CenterPointConfig(tasks=NUSCENES_TASKS, with_velocity=False, code_weights=[1.0] * 10)
    with pytest.raises(ValueError, match="Extra inputs"):
        CenterPointConfig.model_validate({"tasks": NUSCENES_TASKS, "decode": {"topk": 5}})
    with pytest.raises(ValueError, match="set exactly one of: rotated, circle"):
        NMSConfig()
    cfg = CenterPointConfig(tasks=NUSCENES_TASKS)
    assert cfg.code_weight_values == (1.0,) * 8 + (0.2, 0.2)
    assert cfg.task_classes(NUSCENES_CLASSES) == ((0,), (1, 2), (3, 4), (5,), (6, 7), (8, 9))
    assert CenterPointConfig(tasks=NUSCENES_TASKS, with_velocity=False).code_weight_values == (1.0,) * 8


def test_head_configs_import_without_torch() -> None:
    """The config loader imports the head configs; they must not pull in torch."""
    code = (
        "import sys; import perception.models.heads.centerpoint_config, perception.models.heads.transfusion_config; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_top_k_matches_two_stage_reference() -> None:
    """Our single top-K over (class, cell) selects what CenterPoint's per-class top-K + top-K over classes does."""
    from perception.models.heads.centerpoint_decode import decode_task

    coder = CenterBoxCoder(GRID, STRIDE)
    g = torch.Generator().manual_seed(11)
    heat = torch.randn(2, 3, 32, 32, generator=g) * 3
    codes = torch.randn(2, 10, 32, 32, generator=g) * 0.5
    k = 40
    config = CenterPointDecodeConfig(top_k=k, score_threshold=-1.0, post_center_range=None, nms=None)
    got = decode_task(heat, codes, coder, config, 0)
    for s in range(2):
        scores = torch.sigmoid(heat[s]).reshape(3, -1)
        per_class, per_class_idx = scores.topk(k, dim=1)  # (3, K)
        best, which = per_class.reshape(-1).topk(k)
        cls = which // k
        cell = per_class_idx.reshape(-1)[which]
        ref_codes = codes[s].reshape(10, -1)[:, cell].T
        ref_boxes = coder.decode(ref_codes, torch.stack([cell % 32, cell // 32], dim=1))
        boxes, sc, ch = got[s]
        torch.testing.assert_close(sc, best)
        assert ch.tolist() == cls.tolist()
        torch.testing.assert_close(boxes, ref_boxes)


def test_defaults_follow_centerpoint() -> None:
    head = make_head()
    for task in head.task_heads:
        assert bool((task.heatmap.layers[-1].bias == -2.19).all())
        assert task.offset.layers[-1].bias.abs().sum().item() == 0.0
        assert len(task.heatmap.layers) == 4  # conv-BN-ReLU, conv
    assert head.code_weights.tolist() == pytest.approx([1.0] * 8 + [0.2, 0.2])
    c = head.config
    assert (c.heatmap_weight, c.bbox_weight, c.max_objects, c.min_overlap, c.min_radius) == (
        1.0,
        0.25,
        500,
        0.1,
        2,
    )
    cfg = head.config.decode
    assert (cfg.top_k, cfg.score_threshold) == (500, 0.1)
    assert cfg.post_center_range == (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    assert cfg.nms == NMSConfig(rotated=RotatedNMS(iou_threshold=0.2, pre_max=1000, post_max=83))
    circle = CircleNMS.from_squared(NUSCENES_CIRCLE_NMS_MIN_RADIUS)
    assert circle.distances == pytest.approx(
        [2.0, math.sqrt(12), math.sqrt(10), 1.0, math.sqrt(0.85), math.sqrt(0.175)]
    )
    assert head.task_classes == ((0,), (1, 2), (3, 4), (5,), (6, 7), (8, 9))


def test_branch_negative_slope_keeps_a_switched_off_branch_learning() -> None:
    """``branch_negative_slope``: LeakyReLU in the hidden layers of the regression branches (the heatmap keeps
    ReLU; 0, the default, is CenterPoint's ReLU everywhere). With every hidden unit of a velocity branch switched
    off at the object centres (here: batch norm's shift pushed far below zero), ReLU passes no gradient to the
    branch's hidden layer, so it can never learn; LeakyReLU still does. The same random initialisation, scaled by
    Kaiming's gain for the slope."""
    relu, leaky = make_head(), make_head(branch_negative_slope=0.1)
    for task in relu.task_heads:
        assert all(not isinstance(m, torch.nn.LeakyReLU) for m in task.modules())
    for task in leaky.task_heads:
        assert isinstance(task.heatmap.layers[2], torch.nn.ReLU)
        for branch in (task.offset, task.height, task.log_dims, task.rot, task.velocity):
            assert isinstance(branch.layers[2], torch.nn.LeakyReLU) and branch.layers[2].negative_slope == 0.1
    gain = math.sqrt(1.0 / (1.0 + 0.1**2))  # Kaiming's leaky_relu gain over ReLU's, the same random draws
    for (name, a), b in zip(relu.named_parameters(), leaky.parameters(), strict=True):
        scaled = name.startswith("task_heads.") and ".heatmap." not in name and a.dim() == 4
        torch.testing.assert_close(b, a * gain if scaled else a, rtol=1e-6, atol=0.0)
    assert isinstance(make_head(branch_negative_slope=0.1, shared_velocity=True).shared_velocity.layers[2],
                      torch.nn.LeakyReLU)  # fmt: skip
    boxes, labels = scene()
    bev = torch.randn(2, 8, 32, 32, generator=torch.Generator().manual_seed(3))
    grads = []
    for head in (relu, leaky):
        for task in head.task_heads:
            torch.nn.init.constant_(task.velocity.layers[1].bias, -100.0)  # every hidden unit off everywhere
        sum(head.loss(head(bev), boxes, labels).values()).backward()
        grads.append([task.velocity.layers[0].weight.grad for task in head.task_heads])
    assert all(g is None or float(g.abs().sum()) == 0.0 for g in grads[0])
    assert all(g is not None and float(g.abs().sum()) > 0.0 for g in grads[1])
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="branch_negative_slope"):
            make_head(branch_negative_slope=bad)


def test_initial_heatmap_loss_is_that_of_the_prior() -> None:
    # CenterPoint's initialisation: heatmap logits start near the -2.19 prior bias (sigmoid ~ 0.1), so the first
    # focal loss is a few units per task here (one or two objects per task), not 500-6500 as with Kaiming fan-out
    # weights on the last convolution
    head = make_head(in_channels=32, shared_channels=32, head_channels=32)
    boxes, labels = scene()
    bev = torch.relu(torch.randn(2, 32, 32, 32, generator=torch.Generator().manual_seed(5)))
    out = head(bev)
    for task in out.tasks:
        assert abs(task.heatmap.mean().item() + 2.19) < 0.5
        assert task.heatmap.std().item() < 1.0
    losses = head.loss(out, boxes, labels)
    hm = [v.item() for k, v in losses.items() if k.endswith(".heatmap")]
    assert len(hm) == len(NUSCENES_TASKS)
    assert all(0.0 < v < 30.0 for v in hm), hm


@pytest.mark.parametrize(
    ("num_head_convs", "shared_velocity", "slope"),
    [(1, False, 0.0), (2, False, 0.0), (3, False, 0.0), (2, True, 0.0), (3, True, 0.0), (3, False, 0.1),
     (2, True, 0.1)],
)  # fmt: skip
def test_predict_at_peaks_equals_decoding_the_dense_outputs(
    num_head_convs: int, shared_velocity: bool, slope: float
) -> None:
    """``predict`` runs the regression branches on patches around the peaks only: the same detections as
    ``decode(head(bev))``, including peaks on the map's borders and corners (every cell is a top-K peak here, and
    the batch norms have non-trivial running statistics); with one shared velocity branch too, and with LeakyReLU
    branches (``branch_negative_slope``)."""
    head = make_head(
        num_head_convs=num_head_convs,
        shared_velocity=shared_velocity,
        branch_negative_slope=slope,
        decode={"top_k": 32 * 32 * 2, "score_threshold": 0.0},
    )
    for m in head.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    head.eval()
    bev = torch.randn(2, 8, 32, 32)
    dense = head.decode(head(bev))
    sparse = head.predict(bev)
    peaks = head.peaks(bev)
    rows = torch.cat([p.rows for p, _ in peaks])
    cols = torch.cat([p.cols for p, _ in peaks])
    assert {0, 31} <= set(rows.tolist()) and {0, 31} <= set(cols.tolist())  # border cells are among the peaks
    for d, s in zip(dense, sparse, strict=True):
        assert len(d) > 20
        assert torch.equal(d.labels, s.labels)
        assert torch.equal(d.scores, s.scores)
        torch.testing.assert_close(s.boxes.tensor, d.boxes.tensor, atol=1e-5, rtol=1e-5)
    # the codes themselves, cell by cell, against the dense maps
    out = head(bev)
    for (p, codes), task in zip(peaks, out.tasks, strict=True):
        expected = task.box_codes()[p.sample, :, p.rows, p.cols]
        torch.testing.assert_close(codes, expected, atol=1e-5, rtol=1e-5)


def test_peaks_need_eval_mode_and_predict_decodes_densely_in_training() -> None:
    head = make_head()
    bev = torch.randn(1, 8, 32, 32)
    with pytest.raises(RuntimeError, match="eval mode"):
        head.peaks(bev)
    (det,) = head.predict(bev)  # training mode: the dense outputs decoded
    (dense,) = head.decode(head(bev))
    assert torch.equal(det.scores, dense.scores) and len(det) > 0


def test_predict_with_no_peak_above_the_threshold() -> None:
    head = make_head(decode={"score_threshold": 0.999}).eval()
    bev = torch.zeros(2, 8, 32, 32)
    dets = head.predict(bev)
    assert [len(d) for d in dets] == [0, 0] == [len(d) for d in head.decode(head(bev))]
    assert dets[0].boxes.tensor.shape == (0, 9)


@pytest.mark.parametrize("nms", ["rotated", "circle"])
def test_codes_only_for_the_peaks_nms_reads(nms: str) -> None:
    """With ``pre_max`` 6 and a centre range that rejects the best peaks of a sample, the codes are computed in
    rounds for the 6 best in-range peaks per sample (and the rejected ones before them), not for every peak above
    the threshold; the detections equal decoding the dense outputs."""
    nms_cfg = (
        {"rotated": {"iou_threshold": 0.2, "pre_max": 6, "post_max": 83}}
        if nms == "rotated"
        else {"circle": {"distances": [0.5] * 6, "pre_max": 6, "post_max": 83}}
    )
    settings = {
        "top_k": 400,
        "score_threshold": 0.0,
        "post_center_range": (-19.2, -19.2, -10.0, 0.0, 19.2, 10.0),
    }
    head = make_head(decode={**settings, "nms": nms_cfg}).eval()
    bev = torch.randn(2, 8, 32, 32)
    bev[1, :, :, 16:] += 3.0  # sample 1: the right half (x > 0, outside the range) scores differently
    dense = head.decode(head(bev))
    calls: list[int] = []
    original = head.task_heads[0].codes_at

    def counting(x: torch.Tensor, peaks: TaskPeaks, extra: Sequence[object] = ()) -> torch.Tensor:
        calls.append(len(peaks))
        return original(x, peaks, extra)  # type: ignore[arg-type]

    head.task_heads[0].codes_at = counting  # type: ignore[method-assign]
    peaks = head.peaks(bev)
    p0, codes0 = peaks[0]
    assert sum(calls) == len(p0) == len(codes0) < 2 * 400
    assert calls[0] == 12 and len(calls) >= 2  # the 6 best of each sample first, then the next ones
    boxes = head.coder.decode(codes0[None], torch.stack([p0.cols, p0.rows], -1)[None])[0]
    for s in (0, 1):
        assert int(((p0.sample == s) & (boxes[:, 0] <= 0.0)).sum()) == 6  # 6 in range per sample
    for d, s in zip(dense, head.decode_peaks(peaks), strict=True):
        assert torch.equal(d.labels, s.labels) and torch.equal(d.scores, s.scores)
        torch.testing.assert_close(s.boxes.tensor, d.boxes.tensor, atol=1e-5, rtol=1e-5)


def test_shared_velocity_is_one_branch_trained_by_every_task() -> None:
    """``shared_velocity``: one velocity branch on the shared features; every task outputs its map, and the loss
    of any one task's centres reaches it."""
    per_task, shared = make_head(), make_head(shared_velocity=True)
    assert all(h.velocity is not None for h in per_task.task_heads) and per_task.shared_velocity is None
    assert all(h.velocity is None for h in shared.task_heads) and shared.shared_velocity is not None
    n_branch = sum(p.numel() for p in shared.shared_velocity.parameters())
    assert sum(p.numel() for p in per_task.parameters()) - sum(p.numel() for p in shared.parameters()) == (
        n_branch * (len(NUSCENES_TASKS) - 1)
    )
    bev = torch.randn(2, 8, 32, 32)
    out = shared(bev)
    assert all(t.velocity is out.tasks[0].velocity for t in out.tasks) and out.tasks[0].velocity is not None
    assert out.tasks[3].box_codes().shape == (2, 10, 32, 32)
    # one bicycle (task 4) moving at 5 m/s: only task 4 has a positive; its velocity loss trains the shared branch
    boxes = [Boxes3D(torch.tensor([[-10.0, 5.0, 0.0, 1.8, 0.6, 1.4, 0.3, 5.0, -1.0]])), Boxes3D.empty(True)]
    labels = [torch.tensor([NUSCENES_CLASSES.index("bicycle")]), torch.zeros(0, dtype=torch.int64)]
    losses = shared.loss(out, boxes, labels)
    shared.zero_grad()
    losses["task4.bbox"].backward()
    grad = shared.shared_velocity.layers[-1].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="shared_velocity needs with_velocity"):
        make_head(shared_velocity=True, with_velocity=False)
