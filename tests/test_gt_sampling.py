"""GT sampling: no collisions, target counts, point removal, channels, determinism and the epoch fade."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.datasets.box_motion import points_in_moving_box
from perception.datasets.gt_database import GTDatabase, GTObject, write_index, write_sample_objects
from perception.datasets.transforms import Compose, GTSampling, PointShuffle
from perception.ops.iou3d import boxes_iou_bev
from perception.ops.points_in_boxes import points_in_boxes
from perception.structures import Boxes3D, Points, Sample

CLASSES = ("car", "pedestrian", "bicycle")
CHANNELS = ("x", "y", "z", "intensity", "time_lag")
CAR, PED = (4.0, 1.8, 1.6), (0.8, 0.6, 1.8)


def object_at(
    cls: str, token: str, xy: tuple[float, float], size: tuple, yaw: float, n: int, seed: int
) -> GTObject:
    """An object whose ``n`` points lie strictly inside its box; intensity random, time_lag 0.25."""
    rng = np.random.default_rng(seed)
    box = np.array([xy[0], xy[1], -0.8, *size, yaw, 1.5, -0.5], dtype=np.float32)
    local = (rng.random((n, 3)) - 0.5) * 0.9 * np.asarray(size)
    c, s = math.cos(yaw), math.sin(yaw)
    rel = np.stack([c * local[:, 0] - s * local[:, 1], s * local[:, 0] + c * local[:, 1], local[:, 2]], 1)
    pts = np.concatenate([rel, rng.random((n, 1)), np.full((n, 1), 0.25)], axis=1).astype(np.float32)
    return GTObject(cls, box, pts, 0, token)


def grid_database(tmp_path: Path) -> GTDatabase:
    """20 cars on a 10 m grid, 10 pedestrians on the same grid shifted by 5 m in y; no two overlap."""
    entries = []
    for i in range(20):
        xy = (10.0 * (i % 5) - 20, 10.0 * (i // 5) - 20)
        cars = [object_at("car", f"c{i}", xy, CAR, 0.3 * i, 30 + i, i)]
        entries += write_sample_objects(tmp_path, f"c{i}", cars)
    for i in range(10):
        xy = (10.0 * (i % 5) - 20, 10.0 * (i // 5) - 15)
        entries += write_sample_objects(
            tmp_path, f"p{i}", [object_at("pedestrian", f"p{i}", xy, PED, i, 10, 100 + i)]
        )
    write_index(tmp_path, entries, CHANNELS)
    return GTDatabase(tmp_path)


def scene(
    boxes: list[list[float]], labels: list[int], channels: tuple[str, ...] = CHANNELS, width: int = 9
) -> Sample:
    """Dense background points on [-25, 25]^2 plus the given ground-truth boxes."""
    gen = torch.Generator().manual_seed(0)
    n = 4000
    xyz = torch.rand(n, 3, generator=gen) * torch.tensor([50.0, 50.0, 2.0]) - torch.tensor([25.0, 25.0, 1.8])
    extra = torch.rand(n, len(channels) - 3, generator=gen)
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 9)[:, :width]
    labs = torch.tensor(labels, dtype=torch.int64)
    return Sample("scene", Points(torch.cat([xyz, extra], 1), channels), Boxes3D(t), labs, CLASSES)


SCENE_CAR = [5.0, 5.0, -0.8, 4.0, 1.8, 1.6, 0.0, 0.0, 0.0]  # between the grid cells


def pairwise_overlap(boxes: torch.Tensor) -> float:
    iou = boxes_iou_bev(boxes[:, :7], boxes[:, :7])
    return float((iou - torch.diag(torch.diag(iou))).max()) if len(boxes) > 1 else 0.0


def test_reaches_target_counts(tmp_path: Path) -> None:
    db = grid_database(tmp_path)
    aug = GTSampling(db, CLASSES, {"car": 5, "pedestrian": 3})
    s = scene([SCENE_CAR], [0])
    out = aug(s, np.random.default_rng(0))
    assert out.labels.tolist() == [0] + [0] * 4 + [1] * 3  # 1 car present: 4 pasted
    assert torch.equal(out.boxes.tensor[:1], s.boxes.tensor)
    assert pairwise_overlap(out.boxes.tensor) == 0.0
    # target already met: nothing pasted, the sample is returned as is
    full = scene([[5.0, 5.0 + 3 * k, -0.8, *CAR, 0, 0, 0] for k in range(5)], [0] * 5)
    assert GTSampling(db, CLASSES, {"car": 5})(full, np.random.default_rng(0)) is full


def test_never_creates_overlapping_boxes(tmp_path: Path) -> None:
    rng = np.random.default_rng(42)
    entries = []
    for i in range(40):  # crowded: many candidates overlap each other and the scene's boxes
        xy = tuple(rng.uniform(-8, 8, 2))
        size = CAR if i % 2 else PED
        cls = "car" if i % 2 else "pedestrian"
        entries += write_sample_objects(
            tmp_path, f"s{i}", [object_at(cls, f"s{i}", xy, size, rng.uniform(-3, 3), 8, i)]
        )
    write_index(tmp_path, entries, CHANNELS)
    db = GTDatabase(tmp_path)
    gt = [
        [0.0, 0.0, -0.8, *CAR, 0.5, 0, 0],
        [-5.0, 3.0, -0.8, *CAR, -1.0, 0, 0],
        [4.0, -4.0, -0.8, *PED, 0, 0, 0],
    ]
    s = scene(gt, [0, 0, 1])
    aug = GTSampling(db, CLASSES, {"car": 15, "pedestrian": 15}, rounds=3)
    pasted = []
    for seed in range(6):
        out = aug(s, np.random.default_rng(seed))
        assert pairwise_overlap(out.boxes.tensor) == 0.0
        pasted.append(len(out.boxes) - 3)
    assert min(pasted) > 0 and max(pasted) < 27  # some pasted, some rejected by the overlap check
    # the candidates do overlap: pasting all of them would collide
    assert pairwise_overlap(torch.cat([s.boxes.tensor, torch.from_numpy(db.boxes("car"))])) > 0


def test_removes_scene_points_inside_pasted_boxes(tmp_path: Path) -> None:
    db = grid_database(tmp_path)
    s = scene([SCENE_CAR], [0])
    out = GTSampling(db, CLASSES, {"car": 4, "pedestrian": 2})(s, np.random.default_rng(1))
    new_boxes = out.boxes.tensor[1:]
    idx, counts = points_in_boxes(out.points.tensor, new_boxes)
    by_box = {tuple(e.box): e for c in ("car", "pedestrian") for e in db.entries(c)}
    stored = [by_box[tuple(b.tolist())] for b in new_boxes]
    assert counts.tolist() == [e.num_points for e in stored]  # only the pasted object's own points remain
    scene_idx, scene_counts = points_in_boxes(s.points.tensor, new_boxes)
    assert int(scene_counts.sum()) > 0  # there were scene points to remove
    # removed: those inside a pasted box, and (multi-sweep cloud, boxes with velocity) those inside one at their
    # own time, the trail of an object moving at 1.5, -0.5 m/s (box_motion)
    xyz, lag = s.points.tensor[:, :3].numpy(), s.points.channel("time_lag").numpy()
    trail = np.logical_or.reduce([points_in_moving_box(xyz, lag, b) for b in new_boxes.numpy()])
    cleared = torch.from_numpy(trail) | (scene_idx >= 0)
    assert int((cleared & (scene_idx < 0)).sum()) > 0  # the trails reach beyond the boxes
    assert len(out.points) == len(s.points) - int(cleared.sum()) + sum(e.num_points for e in stored)
    # the pasted points are the stored ones moved to the box centre, with their stored channels (time_lag 0.25)
    first = db.load(stored[0])
    expected = first.points.copy()
    expected[:, :3] += first.box[:3]
    got = out.points.tensor[idx == 0].numpy()
    np.testing.assert_allclose(got[np.lexsort(got.T)], expected[np.lexsort(expected.T)], atol=1e-6)
    assert set(out.points.channel("time_lag")[idx >= 0].tolist()) == {0.25}
    # the other scene points are unchanged and keep their order
    assert torch.equal(out.points.tensor[: int((~cleared).sum())], s.points.tensor[~cleared])


def test_remove_extra_width(tmp_path: Path) -> None:
    db = grid_database(tmp_path)
    s = scene([SCENE_CAR], [0])
    plain = GTSampling(db, CLASSES, {"car": 4})(s, np.random.default_rng(1))
    wide = GTSampling(db, CLASSES, {"car": 4}, remove_extra_width=(1.0, 1.0, 0.0))(
        s, np.random.default_rng(1)
    )
    assert torch.equal(plain.boxes.tensor, wide.boxes.tensor)
    enlarged = wide.boxes.tensor[1:, :7].clone()
    enlarged[:, 3:5] += 1.0
    _, counts_plain = points_in_boxes(plain.points.tensor, enlarged)
    _, counts_wide = points_in_boxes(wide.points.tensor, enlarged)
    assert counts_wide.tolist() == [
        e for e in points_in_boxes(wide.points.tensor, wide.boxes.tensor[1:])[1].tolist()
    ]
    assert int(counts_plain.sum()) > int(counts_wide.sum())


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    db = grid_database(tmp_path)
    aug = Compose([GTSampling(db, CLASSES, {"car": 6, "pedestrian": 4}), PointShuffle()])
    s = scene([SCENE_CAR], [0])
    a, b = aug(s, np.random.default_rng(7)), aug(s, np.random.default_rng(7))
    assert torch.equal(a.points.tensor, b.points.tensor) and torch.equal(a.boxes.tensor, b.boxes.tensor)
    c = aug(s, np.random.default_rng(8))
    assert not torch.equal(a.boxes.tensor, c.boxes.tensor)


def test_fade_switches_off(tmp_path: Path) -> None:
    db = grid_database(tmp_path)
    s = scene([SCENE_CAR], [0])
    aug = GTSampling(db, CLASSES, {"car": 3}, fade_last_epochs=2, total_epochs=10)
    pipeline = Compose([aug])
    assert aug.stop_epoch == 8
    for epoch, on in [(0, True), (7, True), (8, False), (9, False)]:
        pipeline.set_epoch(epoch)
        out = pipeline(s, np.random.default_rng(0))
        assert aug.active is on
        assert (len(out.boxes) == 3) is on
        if not on:
            assert out is s
    aug = GTSampling(db, CLASSES, {"car": 3}, stop_epoch=0)
    assert aug(s, np.random.default_rng(0)) is s
    with pytest.raises(ValueError, match="either stop_epoch or fade_last_epochs"):
        GTSampling(db, CLASSES, {"car": 3}, stop_epoch=3, fade_last_epochs=1, total_epochs=5)
    with pytest.raises(ValueError, match="needs total_epochs"):
        GTSampling(db, CLASSES, {"car": 3}, fade_last_epochs=1)


def test_point_channels_by_name_and_box_width(tmp_path: Path) -> None:
    db = grid_database(tmp_path)
    s = scene([], [], channels=("x", "y", "z", "intensity"), width=7)
    out = GTSampling(db, CLASSES, {"pedestrian": 1})(s, np.random.default_rng(0))
    assert out.points.channels == ("x", "y", "z", "intensity") and out.boxes.tensor.shape == (1, 7)
    entry = next(e for e in db.entries("pedestrian") if np.allclose(e.box[:7], out.boxes.tensor[0].numpy()))
    obj = db.load(entry)
    np.testing.assert_array_equal(
        np.sort(out.points.tensor[-obj.num_points :, 3].numpy()), np.sort(obj.points[:, 3])
    )
    with pytest.raises(ValueError, match=r"include \['elongation'\]"):
        GTSampling(db, CLASSES, {"car": 1})(
            scene([], [], ("x", "y", "z", "elongation")), np.random.default_rng(0)
        )


def test_min_points_and_errors(tmp_path: Path) -> None:
    db = grid_database(tmp_path)  # cars have 30..49 points
    aug = GTSampling(db, CLASSES, {"car": 20}, min_points={"car": 45})
    out = aug(scene([], []), np.random.default_rng(0))
    _, counts = points_in_boxes(out.points.tensor, out.boxes.tensor)
    assert len(out.boxes) == 5 and bool((counts >= 45).all())  # only 5 cars have >= 45 points
    with pytest.raises(ValueError, match="no database objects of class 'bicycle'"):
        GTSampling(db, CLASSES, {"bicycle": 2})
    assert (
        len(GTSampling(db, CLASSES, {"bicycle": 0, "car": 1})(scene([], []), np.random.default_rng(0)).boxes)
        == 1
    )
    with pytest.raises(ValueError, match="'truck' not in class_names"):
        GTSampling(db, CLASSES, {"truck": 2})
    with pytest.raises(ValueError, match="int >= 0"):
        GTSampling(db, CLASSES, {"car": -1})
    with pytest.raises(ValueError, match="built for class_names"):
        aug(Sample("t", Points(torch.zeros((0, 5))), Boxes3D.empty(), torch.zeros(0, dtype=torch.int64), ("car",)),
            np.random.default_rng(0))  # fmt: skip


def test_velocity_boxes_need_a_velocity_database(tmp_path: Path) -> None:
    obj = object_at("car", "t", (0.0, 0.0), CAR, 0.0, 5, 0)
    obj7 = GTObject("car", obj.box[:7].copy(), obj.points, 0, "t")
    write_index(tmp_path, write_sample_objects(tmp_path, "t", [obj7]), CHANNELS)
    aug = GTSampling(GTDatabase(tmp_path), CLASSES, {"car": 1})
    with pytest.raises(ValueError, match="stores 7-column boxes"):
        aug(scene([], []), np.random.default_rng(0))


def test_empty_scene(tmp_path: Path) -> None:
    db = grid_database(tmp_path)
    s = Sample(
        "e", Points(torch.zeros((0, 5))), Boxes3D.empty(True), torch.zeros(0, dtype=torch.int64), CLASSES
    )
    out = GTSampling(db, CLASSES, {"car": 3, "pedestrian": 2})(s, np.random.default_rng(0))
    assert out.labels.tolist() == [0, 0, 0, 1, 1] and out.boxes.tensor.shape == (5, 9)
    _, counts = points_in_boxes(out.points.tensor, out.boxes.tensor)
    assert int(counts.sum()) == len(out.points) > 0  # every point belongs to a pasted object
