"""Simulated LiDAR: ray-cast geometry against analytic references, make_lidar_scan contract, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from perception.datasets.synthetic import (
    LidarSpec,
    cast_scan,
    generate_scene,
    hdl32e,
    hdl64e,
    make_lidar_scan,
)
from perception.datasets.synthetic.geometry import invert_pose, make_pose, rot_z, transform_points
from perception.datasets.synthetic.lidar import NUSCENES_LIDAR_MOUNT, scan_scene

NO_CLUTTER = (np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros(0))


def _exact(spec: LidarSpec) -> LidarSpec:
    return spec.model_copy(update={"range_noise_std": 0.0, "dropout": 0.0, "intensity_noise_std": 0.0})


def test_ground_only_matches_analytic_ranges() -> None:
    spec = _exact(hdl32e(azimuth_steps=90))
    pose = make_pose(rot_z(0.3), [10.0, -4.0, 1.84])
    empty = (np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    scan = cast_scan(spec, pose, empty, NO_CLUTTER, np.zeros(0), np.random.default_rng(0))
    pts = scan.points
    assert pts.dtype == np.float32 and pts.shape[1] == 5
    np.testing.assert_allclose(pts[:, 2], -1.84, atol=1e-4)  # every return lies on the ground
    elev = np.sort(np.deg2rad(spec.elevations_deg))
    ring = pts[:, 4].astype(int)
    expected = 1.84 / np.tan(-elev[ring])
    np.testing.assert_allclose(np.linalg.norm(pts[:, :2], axis=1), expected, rtol=1e-5)
    # Downward beams within max range return once per azimuth step; upward beams never.
    slant = 1.84 / np.sin(-elev[elev < 0])
    n_down = int(np.count_nonzero((slant <= spec.max_range) & (slant >= spec.min_range)))
    assert len(pts) == n_down * spec.azimuth_steps
    assert (scan.object_index == -1).all()


def test_box_hits_lie_inside_box_and_face_the_sensor() -> None:
    spec = _exact(hdl64e(azimuth_steps=720))
    pose = make_pose(np.eye(3), [0.0, 0.0, 1.73])
    centre, dims, yaw = np.array([[8.0, 1.0, 1.0]]), np.array([[4.0, 2.0, 2.0]]), np.array([0.4])
    scan = cast_scan(spec, pose, (centre, dims, yaw), NO_CLUTTER, np.array([0.5]), np.random.default_rng(1))
    hit = scan.object_index == 0
    assert hit.sum() == scan.hits[0] > 50
    assert scan.potential[0] == scan.hits[0]  # nothing occludes it
    local = transform_points(
        invert_pose(make_pose(rot_z(0.4), centre[0] - [0, 0, 1.73])), scan.points[hit, :3].astype(np.float64)
    )
    depth = dims[0] / 2 - np.abs(local)
    assert (depth > 0).all(), "object returns must lie strictly inside the box"
    # Moved spec.surface_inset along the ray, clamped into the box: at most ~2 cm deep on the entry face.
    assert depth.min(axis=1).max() <= spec.surface_inset + 1e-6
    # No ground return is behind the box: the segment sensor -> ground point never crosses the box.
    ground = scan.points[scan.object_index == -1, :3].astype(np.float64)
    box_from_sensor = invert_pose(make_pose(rot_z(0.4), centre[0] - [0, 0, 1.73]))
    o = box_from_sensor[:3, 3]
    d = ground @ box_from_sensor[:3, :3].T
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-dims[0] / 2 - o) / d, (dims[0] / 2 - o) / d
    t_near, t_far = np.minimum(t1, t2).max(axis=1), np.maximum(t1, t2).min(axis=1)
    crosses = (t_near <= t_far) & (t_near > 0) & (t_near < 1)
    assert not crosses.any()
    assert len(ground) > 1000


def test_occlusion_counts_potential_hits() -> None:
    spec = _exact(hdl32e(azimuth_steps=720))
    pose = make_pose(np.eye(3), [0.0, 0.0, 1.84])
    centres = np.array([[6.0, 0.0, 1.0], [14.0, 0.0, 1.0]])
    dims = np.array([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    scan = cast_scan(
        spec, pose, (centres, dims, np.zeros(2)), NO_CLUTTER, np.full(2, 0.5), np.random.default_rng(0)
    )
    assert scan.hits[0] == scan.potential[0] > 0
    assert scan.potential[1] > scan.hits[1]  # partly hidden behind the first box


def test_dropout_and_noise_are_seeded() -> None:
    spec = hdl32e(azimuth_steps=200, dropout=0.3)
    pose = make_pose(np.eye(3), [0.0, 0.0, 1.84])
    empty = (np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    a = cast_scan(spec, pose, empty, NO_CLUTTER, np.zeros(0), np.random.default_rng(5)).points
    b = cast_scan(spec, pose, empty, NO_CLUTTER, np.zeros(0), np.random.default_rng(5)).points
    full = cast_scan(_exact(spec), pose, empty, NO_CLUTTER, np.zeros(0), np.random.default_rng(5)).points
    np.testing.assert_array_equal(a, b)
    assert 0.6 < len(a) / len(full) < 0.8
    assert ((a[:, 3] >= 0) & (a[:, 3] <= 255)).all() and (a[:, 3] == np.round(a[:, 3])).all()


def test_sensor_must_be_level() -> None:
    tilted = make_pose(np.array([[1.0, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]]), [0, 0, 2])
    empty = (np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="level"):
        cast_scan(hdl32e(), tilted, empty, NO_CLUTTER, np.zeros(0), np.random.default_rng(0))


def test_scene_scan_labels_match_boxes() -> None:
    rng = np.random.default_rng(3)
    scene = generate_scene(rng, (0.0, 1.0), num_objects=30)
    spec = hdl32e()
    scan = scan_scene(scene, 0.5, spec, NUSCENES_LIDAR_MOUNT, rng)
    centres, dims, yaws, _ = scene.boxes(0.5)
    sensor = scene.ego_pose(0.5) @ NUSCENES_LIDAR_MOUNT
    glob = transform_points(sensor, scan.points[:, :3].astype(np.float64))
    for k in np.nonzero(scan.hits)[0]:
        local = transform_points(invert_pose(make_pose(rot_z(yaws[k]), centres[k])), glob)
        inside = (np.abs(local) < dims[k] / 2).all(axis=1)
        assert np.array_equal(np.nonzero(inside)[0], np.nonzero(scan.object_index == k)[0])
    # Every class is guaranteed with points in the first keyframe.
    first = scan_scene(scene, 0.0, spec, NUSCENES_LIDAR_MOUNT, rng)
    assert all(first.hits[i] > 0 for i in scene.guaranteed)
    assert sorted(scene.objects[i].cls for i in scene.guaranteed) == list(range(10))


def test_make_lidar_scan_contract() -> None:
    pts = make_lidar_scan(num_sweeps=3, beams=32, seed=4)
    assert pts.dtype == np.float32 and pts.ndim == 2 and pts.shape[1] == 5
    assert np.isfinite(pts).all()
    lags = np.unique(pts[:, 4])
    np.testing.assert_allclose(lags, [0.0, 0.05, 0.1], atol=1e-6)
    per_sweep = np.bincount(np.round(pts[:, 4] / 0.05).astype(int))
    assert ((per_sweep > 30_000) & (per_sweep < 38_000)).all()  # nuScenes-like ~34k points per sweep
    assert (pts[:, 4] == 0).argmin() == per_sweep[0]  # keyframe points come first
    np.testing.assert_array_equal(pts, make_lidar_scan(num_sweeps=3, beams=32, seed=4))
    assert not np.array_equal(pts[:1000], make_lidar_scan(num_sweeps=3, beams=32, seed=5)[:1000])
    # Earlier sweeps are registered into the keyframe frame: static ground stays at the same height.
    ground = np.abs(pts[:, 2] + 1.84) < 0.1
    assert ground[pts[:, 4] > 0].mean() > 0.3


def test_make_lidar_scan_64_beams() -> None:
    pts = make_lidar_scan(beams=64, seed=1)
    assert 90_000 < len(pts) < 140_000
    assert (pts[:, 4] == 0).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_sweeps": 0}, ValueError, "num_sweeps"),
        ({"num_sweeps": 2.0}, TypeError, "num_sweeps"),
        ({"num_sweeps": True}, TypeError, "num_sweeps"),
        ({"beams": 16}, ValueError, "beams"),
        ({"beams": 48}, ValueError, "beams must be 32"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": "0"}, TypeError, "seed"),
    ],
)
def test_make_lidar_scan_bad_input(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make_lidar_scan(**kwargs)


def test_lower_front_section_shows_the_heading() -> None:
    """A car-like front (30% of the length at 60% of the height): returns stay in the annotated box, none fall in
    the cut-away upper front, the front's roof returns are lower than the rear's, and potential counts the box."""
    spec = _exact(hdl64e(azimuth_steps=1440))
    pose = make_pose(np.eye(3), [0.0, 0.0, 1.73])
    centre, dims, yaw = np.array([[7.0, 3.0, 0.9]]), np.array([[4.6, 1.9, 1.8]]), np.array([2.5])
    box = (centre, dims, yaw)
    plain = cast_scan(spec, pose, box, NO_CLUTTER, np.array([0.5]), np.random.default_rng(2))
    shaped = cast_scan(
        spec, pose, box, NO_CLUTTER, np.array([0.5]), np.random.default_rng(2), np.array([[0.3, 0.6]])
    )
    assert shaped.potential[0] == plain.potential[0]  # rays crossing the annotated box, either shape
    hit = shaped.object_index == 0
    assert shaped.hits[0] == hit.sum() > 50
    local = transform_points(
        invert_pose(make_pose(rot_z(2.5), centre[0] - [0, 0, 1.73])),
        shaped.points[hit, :3].astype(np.float64),
    )
    assert (np.abs(local) < dims[0] / 2).all()
    front = local[:, 0] > dims[0, 0] / 2 - 0.3 * dims[0, 0]
    top_of_front = -dims[0, 2] / 2 + 0.6 * dims[0, 2]
    assert front.any() and (~front).any()
    assert (local[front, 2] < top_of_front).all(), "no return in the cut-away upper front"
    assert local[~front, 2].max() > top_of_front + 0.5
    # Plain boxes are unchanged by the default (no fronts); a fronts row count that does not match is refused.
    same = cast_scan(
        spec, pose, box, NO_CLUTTER, np.array([0.5]), np.random.default_rng(2), np.array([[0.0, 1.0]])
    )
    np.testing.assert_array_equal(same.points, plain.points)
    with pytest.raises(ValueError, match="one row per object"):
        cast_scan(spec, pose, box, NO_CLUTTER, np.array([0.5]), np.random.default_rng(2), np.zeros((2, 2)))
    for bad in ([[1.0, 0.5]], [[0.3, 0.0]], [[np.nan, 0.5]], [[-0.1, 0.5]]):
        with pytest.raises(ValueError, match="fronts rows"):
            cast_scan(spec, pose, box, NO_CLUTTER, np.array([0.5]), np.random.default_rng(2), np.array(bad))
