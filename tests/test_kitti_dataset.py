"""KITTI: calib / label parsing, camera <-> LiDAR boxes against the simulator's truth, infos, dataset, bad input."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.datasets.kitti import KittiDataset
from perception.datasets.kitti_calib import boxes_camera_to_lidar, boxes_lidar_to_camera, read_calib_file
from perception.datasets.kitti_infos import create_kitti_infos, load_kitti_infos
from perception.datasets.synthetic import SyntheticParams, generate
from perception.datasets.synthetic import kitti_writer as kw
from perception.datasets.synthetic.geometry import invert_pose, transform_points
from perception.datasets.synthetic.lidar import KITTI_LIDAR_MOUNT
from perception.formats.kitti_labels import difficulty, meets_difficulty, read_label_file
from perception.grid import VoxelGrid
from perception.ops.points_in_boxes import points_in_boxes
from perception.structures import Batch

PARAMS = SyntheticParams(format="kitti", scenes=3, samples=2, cameras="front", objects_per_scene=12, seed=5)
CLASSES = ("Car", "Pedestrian", "Cyclist")
RANGE = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kitti")
    generate(PARAMS, out)
    create_kitti_infos(out, workers=0, progress=False)
    return out


def test_calib_matches_writer(root: Path) -> None:
    calib = read_calib_file(root / "training" / "calib" / "000000.txt")
    np.testing.assert_allclose(calib.rect_from_velo, kw.rect_from_velo(), atol=1e-9)
    np.testing.assert_allclose(calib.P[2], kw.projection(2), atol=1e-9)
    k, cam_to_velo = calib.camera(2)
    pts = np.array([[10.0, 1.0, -1.0], [30.0, -4.0, 0.5]])
    uv, depth = calib.project_velo(pts)
    cam = transform_points(np.linalg.inv(cam_to_velo), pts)
    np.testing.assert_allclose((cam @ k.T)[:, :2] / cam[:, 2:], uv, atol=1e-6)
    assert (depth > 0).all()


def test_box_round_trip_camera_lidar() -> None:
    calib = read_calib_file_from_text(kw.calib_text())
    rng = np.random.default_rng(0)
    n = 50
    boxes = np.concatenate(
        [
            rng.uniform([0, -30, -2], [60, 30, 1], (n, 3)),
            rng.uniform(0.3, 6, (n, 3)),
            rng.uniform(-3, 3, (n, 1)),
        ],
        axis=1,
    )
    loc, hwl, ry = boxes_lidar_to_camera(boxes, calib)
    back = boxes_camera_to_lidar(loc, hwl, ry, calib)
    np.testing.assert_allclose(back[:, :6], boxes[:, :6], atol=1e-9)
    np.testing.assert_allclose(np.cos(back[:, 6] - boxes[:, 6]), 1.0, atol=1e-12)
    # a box heading along LiDAR +x (yaw 0) has ry = -pi/2; along LiDAR +y (left) ry = pi (or -pi)
    _, _, ry0 = boxes_lidar_to_camera(
        np.array([[10, 0, 0, 4, 2, 1.5, 0.0], [10, 0, 0, 4, 2, 1.5, math.pi / 2]]), calib
    )
    np.testing.assert_allclose(ry0[0], -math.pi / 2)
    assert abs(abs(ry0[1]) - math.pi) < 1e-12


def read_calib_file_from_text(text: str):  # noqa: ANN201
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "calib.txt"
        path.write_text(text)
        return read_calib_file(path)


def test_labels_match_simulator_truth(root: Path) -> None:
    """The LiDAR boxes of the infos equal the simulated objects' boxes moved into the Velodyne frame."""
    infos = load_kitti_infos(root / "kitti_infos_train.pkl")
    scene = kw.scene_for(PARAMS, 0)
    frame = kw.frame_for(PARAMS, scene, 0, 0)
    centers, dims, yaws, _ = scene.boxes(0.0)
    velo_from_global = invert_pose(scene.ego_pose(0.0) @ KITTI_LIDAR_MOUNT)
    objs = [i for i in frame.label_objects if i >= 0]
    a = infos[0].annos
    assert a is not None and len(a) == len(objs) > 3
    for k, i in enumerate(objs):
        c = transform_points(velo_from_global, centers[i][None])[0]
        heading = velo_from_global[:3, :3] @ np.array([math.cos(yaws[i]), math.sin(yaws[i]), 0.0])
        np.testing.assert_allclose(a.boxes_lidar[k, :3], c, atol=0.02)  # labels have 2 decimals
        np.testing.assert_allclose(a.boxes_lidar[k, 3:6], dims[i], atol=0.006)
        assert math.cos(a.boxes_lidar[k, 6] - math.atan2(heading[1], heading[0])) > 1 - 1e-4
    # the label file read directly gives the same objects; the conversion inverts exactly
    labels = read_label_file(root / "training" / "label_2" / "000000.txt")
    care = labels.select(labels.names != "DontCare")
    loc, hwl, ry = boxes_lidar_to_camera(a.boxes_lidar.astype(np.float64), infos[0].calib)
    np.testing.assert_allclose(loc, care.location, atol=1e-5)
    np.testing.assert_allclose(hwl, care.dimensions, atol=1e-5)
    assert len(a.dontcare_bbox) == int((labels.names == "DontCare").sum())
    # the info record keeps the label fields as one KittiObjects (the one definition), read back from the file
    for field in ("names", "truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y"):
        np.testing.assert_array_equal(getattr(a.objects, field), getattr(care, field), err_msg=field)
    assert a.objects.score is None and a.names is a.objects.names


def test_difficulty_levels() -> None:
    bbox = np.array(
        [[0, 0, 10, 50], [0, 0, 10, 39], [0, 0, 10, 30], [0, 0, 10, 30], [0, 0, 10, 24], [0, 0, 10, 99]]
    )
    occ = np.array([0, 0, 1, 2, 0, 3])
    trunc = np.array([0.1, 0.1, 0.3, 0.5, 0.0, 0.0])
    np.testing.assert_array_equal(difficulty(bbox, occ, trunc), [0, 1, 1, 2, -1, -1])
    np.testing.assert_array_equal(difficulty(bbox[:1], [0], [0.16]), [1])
    # the evaluator's per-level rule (meets_difficulty) is cumulative and agrees with the info's difficulty
    d = difficulty(bbox, occ, trunc)
    for level in range(3):
        counted = meets_difficulty(bbox[:, 3] - bbox[:, 1], occ, trunc, level)
        np.testing.assert_array_equal(counted, (d >= 0) & (d <= level))


def test_dataset_points_boxes_fov_range(root: Path) -> None:
    ds = KittiDataset(
        root=root, split="train", class_names=CLASSES, grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)), mode="val"
    )
    assert len(ds) == 2
    s = ds[0]
    info = ds.infos[0]
    xyz = s.points.xyz.numpy()
    assert s.points.channels == ("x", "y", "z", "intensity") and len(xyz) > 1000
    assert info.calib.in_image(xyz, info.image_size).all()
    lo, hi = np.array(RANGE[:3]), np.array(RANGE[3:])
    assert ((xyz >= lo) & (xyz < hi)).all()
    a = info.annos
    keep = np.isin(a.names, CLASSES) & ((a.boxes_lidar[:, :3] >= lo) & (a.boxes_lidar[:, :3] < hi)).all(1)
    np.testing.assert_array_equal(s.boxes.tensor.numpy(), a.boxes_lidar[keep])
    assert [CLASSES[i] for i in s.labels] == list(a.names[keep])
    # num_points_in_gt are the FOV points in each box (range-unfiltered dataset points)
    full = KittiDataset(
        root=root,
        split="train",
        class_names=CLASSES,
        grid=VoxelGrid((-200, -200, -50, 200, 200, 50), (0.1, 0.1, 0.2)),
    )
    _, counts = points_in_boxes(full[0].points.tensor, torch.from_numpy(a.boxes_lidar))
    np.testing.assert_array_equal(counts.numpy(), a.num_points_in_gt)
    # without the FOV filter the scan has points behind the car
    nofov = KittiDataset(
        root=root,
        split="train",
        class_names=CLASSES,
        grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)),
        fov_filter=False,
    )
    assert len(nofov[0].points) > len(s.points)


def test_dataset_cameras_collate_modes_epoch(root: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

        def __call__(self, sample, rng):  # noqa: ANN001, ANN204
            return sample

    rec = Recorder()
    ds = KittiDataset(
        root=root,
        split="train",
        class_names=CLASSES,
        grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)),
        use_cameras=True,
        transforms=[rec],
    )
    ds.set_epoch(3)
    assert rec.epochs == [3]
    s = ds[1]
    assert s.images is not None and s.images.shape == (1, 3, 375, 1242) and s.cameras is not None
    info = ds.infos[1]
    pts = s.points.xyz[:200]
    uv, _, visible = s.cameras.project(pts)
    uv_ref, _ = info.calib.project_velo(pts.numpy())
    np.testing.assert_allclose(uv[0].numpy(), uv_ref, atol=1e-2)
    assert visible.all()
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=Batch.collate)))
    assert batch.batch_size == 2 and batch.images is not None
    assert ds.info_class_names(0) == {CLASSES[i] for i in ds[0].labels.tolist()} != set()
    test = KittiDataset(
        root=root, split="test", class_names=CLASSES, grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)), mode="test"
    )
    assert len(test[0].boxes) == 0 and len(test[0].points) > 0 and test.info_class_names(0) == set()
    with pytest.raises(ValueError, match=r"no labels .*mode='test' only.*tools/test.py --split test"):
        KittiDataset(
            root=root, split="test", class_names=CLASSES, grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)), mode="val"
        )
    with pytest.raises(ValueError, match="max_sweeps"):
        KittiDataset(
            root=root,
            split="train",
            class_names=CLASSES,
            grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)),
            max_sweeps=2,
        )


def test_min_points_filter_and_gt_database(root: Path) -> None:
    from perception.datasets.gt_database import GTDatabase

    ds = KittiDataset(
        root=root,
        split="train",
        class_names=CLASSES,
        grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)),
        min_points_in_gt=1,
    )
    a = ds.infos[0].annos
    assert (a.num_points_in_gt[np.isin(a.names, CLASSES)] == 0).any(), "fixture should have an empty box"
    _, counts = points_in_boxes(ds[0].points.tensor, ds[0].boxes.tensor)
    assert (counts > 0).all()
    db = GTDatabase(root / "kitti_gt_database")
    n_objects = sum(len(i.annos) for i in ds.infos)
    assert len(db) == n_objects and db.point_channels == ("x", "y", "z", "intensity")
    e = db.entries("Car")[0]
    obj = db.load(e)
    assert obj.points.shape[0] == e.num_points
    box = obj.box[None].copy()
    box[0, :3] = 0  # points are relative to the centre
    _, inside = points_in_boxes(torch.from_numpy(obj.points), torch.from_numpy(box))
    assert int(inside[0]) == e.num_points


def _bad_root(root: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "kitti_bad"
    shutil.copytree(
        root, bad, ignore=shutil.ignore_patterns("image_2", ".perception_cache", "kitti_gt_database")
    )
    return bad


def test_bad_input(root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = _bad_root(root, tmp_path)
    kw_ = dict(
        infos_path=root / "kitti_infos_train.pkl",
        root=bad,
        class_names=CLASSES,
        grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)),
    )
    velo = bad / "training" / "velodyne" / "000000.bin"
    pts = np.fromfile(velo, dtype="<f4").reshape(-1, 4)
    # NaN / inf points are dropped and counted in the log
    pts[:5, 0] = np.nan
    pts[5:7, 3] = np.inf
    pts.tofile(velo)
    with caplog.at_level(logging.WARNING):
        s = KittiDataset(**kw_, fov_filter=False)[0]
    assert len(s.points) == len(pts) - 7 - int((~_in_range(pts[7:], RANGE)).sum())
    assert any("dropped 7 of" in r.getMessage() for r in caplog.records)
    # an empty scan is a valid sample with 0 points (boxes still there)
    velo.write_bytes(b"")
    s = KittiDataset(**kw_)[0]
    assert len(s.points) == 0 and s.points.tensor.shape == (0, 4) and len(s.boxes) > 0
    # a truncated scan is an error naming the file, its size and the expected multiple
    velo.write_bytes(b"\x00" * 18)
    with pytest.raises(ValueError, match=r"000000\.bin.*18 bytes.*multiple of 16"):
        KittiDataset(**kw_)[0]
    # malformed calib and label lines: error with file and line
    calib = bad / "training" / "calib" / "000001.txt"
    lines = calib.read_text().splitlines()
    calib.write_text("\n".join(lines[:4] + ["R0_rect: 1 0 0 0 1 0 0 0"] + lines[5:]) + "\n")
    with pytest.raises(ValueError, match=r"000001\.txt:5: R0_rect needs 9 values, got 8"):
        read_calib_file(calib)
    calib.write_text("\n".join(lines[:2] + ["P2 1 2 3"] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"000001\.txt:3: expected 'KEY: v1 v2"):
        read_calib_file(calib)
    calib.write_text("\n".join(lines[:5] + ["Tr_velo_to_cam: 1 0 0 0 0 1 0 0 0 0 x 0"] + lines[6:]) + "\n")
    with pytest.raises(ValueError, match=r"000001\.txt:6: non-numeric"):
        read_calib_file(calib)
    calib.write_text("\n".join(line for line in lines if not line.startswith("P2")) + "\n")
    with pytest.raises(ValueError, match=r"missing calibration key\(s\) \['P2'\]"):
        read_calib_file(calib)
    label = bad / "training" / "label_2" / "000001.txt"
    rows = label.read_text().splitlines()
    label.write_text("\n".join(rows[:1] + ["Car 0.0 0 0.1 1 2 3 4 1.5 1.6"] + rows[1:]) + "\n")
    with pytest.raises(ValueError, match=r"000001\.txt:2: expected 15 columns"):
        read_label_file(label)
    # create_data on the broken root reports the bad file (and which frame) instead of writing infos
    (bad / "training" / "image_2").mkdir()
    for f in (root / "training" / "image_2").iterdir():
        shutil.copy(f, bad / "training" / "image_2" / f.name)
    with pytest.raises(ValueError, match=r"000000\.bin") as err:
        create_kitti_infos(bad, progress=False)
    assert "while preparing '000000'" in "".join(getattr(err.value, "__notes__", []))


def _in_range(pts: np.ndarray, r: tuple[float, ...]) -> np.ndarray:
    return ((pts[:, :3] >= r[:3]) & (pts[:, :3] < r[3:])).all(axis=1)
