"""Points of a moving box in a multi-sweep cloud: each point tested at its own time (GT database crops, GT
sampling's point removal), against the reference of moving the box back to each point's time."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.datasets.box_motion import points_in_moving_box
from perception.datasets.gt_database import GTDatabase, GTObject, write_index, write_sample_objects
from perception.datasets.prep_runner import crop_box_points
from perception.datasets.transforms import GTSampling
from perception.ops.points_in_boxes import points_in_boxes
from perception.structures import Boxes3D, Points, Sample

CHANNELS = ("x", "y", "z", "intensity", "time_lag")


def moved_back_reference(xyz: np.ndarray, lag: np.ndarray, box: np.ndarray) -> np.ndarray:
    """bool (N,): point i inside the box moved back by v * lag_i (one box per point, plain points_in_boxes)."""
    v = np.nan_to_num(box[7:9], nan=0.0)
    boxes = np.repeat(box[None, :7], len(xyz), axis=0).astype(np.float32)
    boxes[:, :2] -= lag[:, None] * v[None, :]
    out = np.zeros(len(xyz), dtype=bool)
    for i in range(len(xyz)):
        index, _ = points_in_boxes(torch.from_numpy(xyz[i : i + 1]), torch.from_numpy(boxes[i : i + 1]))
        out[i] = bool(index[0] == 0)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_moving_the_box_back(seed: int) -> None:
    rng = np.random.default_rng(seed)
    box = np.array([1.0, -2.0, -0.5, 4.5, 1.9, 1.6, rng.uniform(-math.pi, math.pi), *rng.uniform(-9, 9, 2)],
                   np.float32)  # fmt: skip
    xyz = (rng.uniform(-7, 7, (2000, 3)) * [1, 1, 0.1] + box[:3]).astype(np.float32)
    lag = rng.choice([0.0, 0.05, 0.25, 0.45], 2000).astype(np.float32)
    got = points_in_moving_box(xyz, lag, box)
    np.testing.assert_array_equal(got, moved_back_reference(xyz, lag, box))
    assert got.sum() > 10 and (got & (lag > 0)).sum() > 0  # the test sees trail points


def test_static_box_lag_zero_and_nan_velocity_are_the_plain_test() -> None:
    rng = np.random.default_rng(3)
    xyz = rng.uniform(-3, 3, (500, 3)).astype(np.float32)
    lag = rng.uniform(0, 0.5, 500).astype(np.float32)
    box7 = np.array([0.2, 0.1, 0.0, 3.0, 2.0, 2.0, 0.4], np.float32)
    index, _ = points_in_boxes(torch.from_numpy(xyz), torch.from_numpy(box7[None]))
    plain = index.numpy() == 0
    np.testing.assert_array_equal(points_in_moving_box(xyz, lag, box7), plain)
    np.testing.assert_array_equal(points_in_moving_box(xyz, None, np.r_[box7, 5.0, 1.0]), plain)
    np.testing.assert_array_equal(points_in_moving_box(xyz, lag, np.r_[box7, 0.0, 0.0]), plain)
    np.testing.assert_array_equal(points_in_moving_box(xyz, lag, np.r_[box7, np.nan, np.nan]), plain)
    np.testing.assert_array_equal(points_in_moving_box(xyz, np.zeros(500), np.r_[box7, 5.0, 1.0]), plain)
    assert points_in_moving_box(np.zeros((0, 3), np.float32), np.zeros(0), np.r_[box7, 1.0, 0.0]).shape == (
        0,
    )


def test_bad_shapes() -> None:
    box = np.zeros(9, np.float32)
    with pytest.raises(ValueError, match=r"xyz must be \(N, 3\)"):
        points_in_moving_box(np.zeros((4, 2), np.float32), None, box)
    with pytest.raises(ValueError, match=r"time_lag must be \(4,\)"):
        points_in_moving_box(np.zeros((4, 3), np.float32), np.zeros(3), box)


def moving_car_cloud() -> tuple[np.ndarray, np.ndarray]:
    """A car at x = 10 moving +8 m/s along x seen now and 0.45 s earlier (3.6 m behind), plus a parked car just
    behind it: float32 (N, 5) points and its two (9,) boxes."""
    rng = np.random.default_rng(0)
    car = np.array([10.0, 0.0, -0.8, 4.0, 1.8, 1.5, 0.0, 8.0, 0.0], np.float32)
    parked = np.array([10.0, 4.0, -0.8, 4.0, 1.8, 1.5, 0.0, 0.0, 0.0], np.float32)
    parts = []
    for b in (car, parked):
        for lag in (0.0, 0.45):
            local = (rng.random((50, 3)) - 0.5) * 0.9 * b[3:6]
            centre = b[:3] - np.r_[b[7:9] * lag, 0.0]
            parts.append(np.concatenate([local + centre, rng.random((50, 1)), np.full((50, 1), lag)], 1))
    return np.concatenate(parts).astype(np.float32), np.stack([car, parked])


def test_crops_keep_a_moving_objects_trail() -> None:
    pts, boxes = moving_car_cloud()
    car, parked = crop_box_points(pts, boxes, time_lag_column=4)
    assert len(car) == 100 and len(parked) == 100  # each its own 50 + 50, nothing of the other
    np.testing.assert_allclose(
        car, np.concatenate([pts[:100, :3] - boxes[0, :3], pts[:100, 3:]], 1), atol=1e-6
    )
    plain_car, plain_parked = crop_box_points(pts, boxes)  # keyframe box only: the trail is cut off
    assert len(plain_car) < 100 and len(plain_parked) == 100
    assert (plain_car[:, 4] == 0).sum() == 50  # all of the keyframe's, part of the older sweep's


def test_gt_sampling_clears_the_scene_under_a_pasted_trail(tmp_path: Path) -> None:
    pts, boxes = moving_car_cloud()
    (car,) = crop_box_points(pts[:100], boxes[:1], time_lag_column=4)
    write_index(tmp_path, write_sample_objects(tmp_path, "src", [GTObject("car", boxes[0], car, 0, "src")]),
                CHANNELS)  # fmt: skip
    rng = np.random.default_rng(0)
    background = np.concatenate([rng.uniform([2, -1.5, -1.5], [14, 1.5, 0.0], (3000, 3)), rng.random((3000, 1)),
                                 rng.choice([0.0, 0.45], (3000, 1))], 1).astype(np.float32)  # fmt: skip
    scene = Sample("s", Points(torch.from_numpy(background), CHANNELS), Boxes3D(torch.zeros(0, 9)),
                   torch.zeros(0, dtype=torch.int64), ("car",))  # fmt: skip
    out = GTSampling(GTDatabase(tmp_path), ("car",), {"car": 1})(scene, np.random.default_rng(0))
    assert len(out.boxes) == 1
    trail = points_in_moving_box(background[:, :3], background[:, 4], boxes[0])
    index, _ = points_in_boxes(torch.from_numpy(background), torch.from_numpy(boxes[:1, :7]))
    cleared = trail | (index.numpy() == 0)
    assert (trail & ~(index.numpy() == 0)).sum() > 0  # scene points in the trail outside the keyframe box
    assert len(out.points) == int((~cleared).sum()) + 100
    np.testing.assert_array_equal(out.points.tensor[: int((~cleared).sum())].numpy(), background[~cleared])
