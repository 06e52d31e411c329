"""nuScenes infos and dataset against the official devkit: boxes, velocities, sweeps, cameras, point counts."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from nuscenes import NuScenes
from nuscenes.utils.data_classes import LidarPointCloud
from pyquaternion import Quaternion
from scipy.spatial import cKDTree

from perception.datasets.gt_database import GTDatabase
from perception.datasets.nuscenes import NuScenesDataset
from perception.datasets.nuscenes_infos import create_nuscenes_infos
from perception.datasets.synthetic import SyntheticParams, generate
from perception.datasets.synthetic.classes import CLASSES
from perception.formats.nuscenes_infos import gt_database_dir, infos_path
from perception.formats.nuscenes_points import load_lidar_points
from perception.grid import VoxelGrid
from perception.ops.points_in_boxes import points_in_boxes
from perception.structures import Batch

VERSION = "v1.0-mini"
SWEEPS = 3
NAMES = tuple(c.name for c in CLASSES)
RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
WIDE = (-200.0, -200.0, -50.0, 200.0, 200.0, 50.0)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nuscenes")
    params = SyntheticParams(
        format="nuscenes", scenes=2, samples=3, sweeps=2, cameras="front", objects_per_scene=10, seed=7
    )
    generate(params, out)
    create_nuscenes_infos(out, VERSION, max_sweeps=SWEEPS, workers=0, progress=False)
    return out


@pytest.fixture(scope="module")
def nusc(root: Path) -> NuScenes:
    return NuScenes(version=VERSION, dataroot=str(root), verbose=False)


def _dataset(root: Path, **kw: object) -> NuScenesDataset:
    args: dict[str, object] = dict(
        root=root,
        version=VERSION,
        split="train",
        info_sweeps=SWEEPS,
        class_names=NAMES,
        grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)),
    )
    args.update(kw)
    return NuScenesDataset(**args)  # type: ignore[arg-type]


def test_infos_match_devkit(root: Path, nusc: NuScenes) -> None:
    ds = _dataset(root, mode="val")
    assert len(ds) == 3
    for info in ds.infos:
        sample = nusc.get("sample", info.token)
        assert info.lidar_token == sample["data"]["LIDAR_TOP"]
        path, boxes, _ = nusc.get_sample_data(info.lidar_token)
        assert Path(path) == root / info.lidar_path
        assert len(boxes) == len(info.gt_boxes) > 0
        sd = nusc.get("sample_data", info.lidar_token)
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        rot = Quaternion(cs["rotation"]).inverse * Quaternion(pose["rotation"]).inverse
        for k, box in enumerate(boxes):
            row = info.gt_boxes[k]
            np.testing.assert_allclose(row[:3], box.center, atol=1e-4)
            np.testing.assert_allclose(row[3:6], box.wlh[[1, 0, 2]], atol=1e-5)
            assert abs(np.cos(row[6] - box.orientation.yaw_pitch_roll[0]) - 1) < 1e-6
            v = nusc.box_velocity(box.token)
            assert info.velocity_valid[k] == np.isfinite(v[:2]).all()
            np.testing.assert_allclose(row[7:9], rot.rotate(np.nan_to_num(v))[:2], atol=1e-4)
            ann = nusc.get("sample_annotation", box.token)
            assert info.num_lidar_pts[k] == ann["num_lidar_pts"] and info.annotation_tokens[k] == box.token
        np.testing.assert_array_equal(info.valid_flag, info.num_lidar_pts + info.num_radar_pts > 0)
        assert set(info.gt_names) <= set(NAMES) | {"ignore"}
    # first keyframe of a scene: its two earlier sweeps; later keyframes: SWEEPS - 1 sweeps
    assert [len(i.sweeps) for i in ds.infos] == [2, 2, 2]
    np.testing.assert_allclose([s.time_lag for s in ds.infos[1].sweeps], [0.05, 0.10], atol=1e-6)


def test_keyframe_points_in_boxes_equal_num_lidar_pts(root: Path) -> None:
    ds = _dataset(root, max_sweeps=1, grid=VoxelGrid(WIDE, (0.1, 0.1, 0.2)), mode="val")
    for i, info in enumerate(ds.infos):
        s = ds[i]
        assert (s.points.channel("time_lag") == 0).all()
        _, counts = points_in_boxes(s.points.tensor, torch.from_numpy(info.gt_boxes))
        np.testing.assert_array_equal(counts.numpy(), info.num_lidar_pts)


def test_multisweep_points_match_devkit(root: Path, nusc: NuScenes) -> None:
    ds = _dataset(root, max_sweeps=SWEEPS, grid=VoxelGrid(WIDE, (0.1, 0.1, 0.2)))
    info = ds.infos[2]
    ours = load_lidar_points(root, info, SWEEPS)
    pc, times = LidarPointCloud.from_file_multisweep(
        nusc, nusc.get("sample", info.token), "LIDAR_TOP", "LIDAR_TOP", nsweeps=SWEEPS, min_distance=1.0
    )
    ref = np.concatenate([pc.points[:4].T, times.T], axis=1)
    # the devkit also removes the keyframe's close points; we keep the keyframe whole
    key = ours[:, 4] == 0
    close = (np.abs(ours[:, 0]) < 1) & (np.abs(ours[:, 1]) < 1)
    ours = ours[~(key & close)]
    assert ours.shape == ref.shape
    scale = np.array([1.0, 1.0, 1.0, 0.0, 100.0])  # match on xyz and time lag (0.05 s apart -> 5 m apart)
    dist, idx = cKDTree(ref * scale).query(ours * scale)
    assert dist.max() < 2e-3 and len(np.unique(idx)) == len(ref)
    np.testing.assert_array_equal(ours[:, 3], ref[idx, 3])
    np.testing.assert_allclose(np.unique(ours[:, 4]), [0.0, 0.05, 0.1], atol=1e-6)


def test_dataset_range_boxes_labels_cameras(root: Path, nusc: NuScenes) -> None:
    ds = _dataset(root, max_sweeps=2, use_cameras=True, mode="val")
    s = ds[0]
    xyz = s.points.xyz
    lo, hi = torch.tensor(RANGE[:3]), torch.tensor(RANGE[3:])
    assert bool(((xyz >= lo) & (xyz < hi)).all())
    np.testing.assert_allclose(s.points.channel("time_lag").unique().numpy(), [0.0, 0.05], atol=1e-6)
    info = ds.infos[0]
    keep = np.isin(info.gt_names, NAMES) & (
        (info.gt_boxes[:, :3] >= RANGE[:3]) & (info.gt_boxes[:, :3] < RANGE[3:])
    ).all(1)
    assert keep.sum() < len(keep)  # the fixture has boxes outside the range
    np.testing.assert_array_equal(s.boxes.tensor.numpy(), info.gt_boxes[keep])
    assert [NAMES[i] for i in s.labels] == list(info.gt_names[keep])
    assert ds.info_class_names(0) == set(info.gt_names[keep])
    # cameras: the rig projects like the devkit (sensor -> global -> camera -> pixels)
    assert s.cameras is not None and s.images is not None and s.cameras.names == ("CAM_FRONT",)
    cam_sd = nusc.get("sample_data", nusc.get("sample", info.token)["data"]["CAM_FRONT"])
    assert tuple(s.images.shape) == (1, 3, cam_sd["height"], cam_sd["width"])
    ccs = nusc.get("calibrated_sensor", cam_sd["calibrated_sensor_token"])
    cpose = nusc.get("ego_pose", cam_sd["ego_pose_token"])
    pts = s.points.xyz[::50].numpy().astype(np.float64)
    g = (
        pts @ (info.ego_to_global @ info.lidar_to_ego)[:3, :3].T
        + (info.ego_to_global @ info.lidar_to_ego)[:3, 3]
    )
    e = Quaternion(cpose["rotation"]).inverse.rotation_matrix @ (g - cpose["translation"]).T
    c = Quaternion(ccs["rotation"]).inverse.rotation_matrix @ (e.T - ccs["translation"]).T
    front = c[2] > 1.0
    assert front.sum() > 50
    pix = np.asarray(ccs["camera_intrinsic"]) @ c[:, front]
    uv, depth, _ = s.cameras.project(torch.from_numpy(pts[front]).float())
    np.testing.assert_allclose(depth[0].numpy(), c[2, front], atol=1e-3)
    np.testing.assert_allclose(uv[0].numpy(), (pix[:2] / pix[2]).T, atol=0.05)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=Batch.collate)))
    assert batch.batch_size == 2 and batch.point_channels[-1] == "time_lag"


def test_modes_epoch_and_gt_database(root: Path) -> None:
    class Recorder:
        def __init__(self) -> None:
            self.epochs: list[int] = []
            self.seen: list[float] = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

        def __call__(self, sample, rng):  # noqa: ANN001, ANN204
            self.seen.append(float(rng.random()))
            return sample

    rec = Recorder()
    ds = _dataset(root, transforms=[rec], min_points_in_gt=1)
    ds.set_epoch(2)
    ds[0]
    ds[0]
    assert rec.epochs == [2] and rec.seen[0] == rec.seen[1]  # reproducible per (seed, epoch, index)
    ds.set_epoch(3)
    ds[0]
    assert rec.seen[2] != rec.seen[0]
    info = ds.infos[0]
    assert (info.num_lidar_pts[np.isin(info.gt_names, NAMES)] == 0).any(), "fixture should have an empty box"
    assert len(ds[0].boxes) < len(_dataset(root, mode="val")[0].boxes)  # empty boxes dropped in train mode
    test = _dataset(root, mode="test", split="val")
    assert len(test[0].boxes) == 0 and test.info_class_names(0) == set()
    with pytest.raises(ValueError, match="built with --max-sweeps 3"):
        _dataset(root, max_sweeps=4)
    # GT database: detection-class objects of the train split, multi-sweep points relative to the box centre
    db = GTDatabase(gt_database_dir(root, VERSION, SWEEPS))
    assert db.point_channels == ("x", "y", "z", "intensity", "time_lag")
    train = _dataset(root, mode="val")
    assert len(db) == sum(int(np.isin(i.gt_names, NAMES).sum()) for i in train.infos)
    for e in db.entries("car")[:5]:
        obj = db.load(e)
        info = next(i for i in train.infos if i.token == e.sample_token)
        k = int(np.flatnonzero((info.gt_boxes == obj.box).all(1))[0])
        assert int((obj.points[:, 4] == 0).sum()) == info.num_lidar_pts[k]


def test_missing_sweeps_and_bad_files(root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "nus_bad"
    bad.mkdir()
    shutil.copytree(root / "samples" / "LIDAR_TOP", bad / "samples" / "LIDAR_TOP")
    path = infos_path(root, VERSION, SWEEPS, "train")
    ds = NuScenesDataset(
        infos_path=path, root=bad, class_names=NAMES, grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)), max_sweeps=3
    )
    with pytest.raises(FileNotFoundError, match=r"sweep file not found: .*sweeps/LIDAR_TOP"):
        ds[0]
    skip = NuScenesDataset(
        infos_path=path,
        root=bad,
        class_names=NAMES,
        grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)),
        max_sweeps=3,
        missing_sweeps="skip",
    )
    with caplog.at_level(logging.WARNING, logger="perception.datasets.nuscenes"):
        s = skip[0]
    assert (s.points.channel("time_lag") == 0).all() and len(s.points) > 0
    assert sum("is missing; skipped" in r.getMessage() for r in caplog.records) == 2
    one = NuScenesDataset(
        infos_path=path, root=bad, class_names=NAMES, grid=VoxelGrid(WIDE, (0.1, 0.1, 0.2)), max_sweeps=1
    )
    key = bad / one.infos[0].lidar_path
    n = len(one[0].points)
    pts = np.fromfile(key, dtype="<f4").reshape(-1, 5)
    pts[:4, 2] = np.nan
    pts.tofile(key)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert len(one[0].points) == n - 4
    assert any(f"dropped 4 of {n}" in r.getMessage() for r in caplog.records)
    key.write_bytes(b"")
    s = one[0]
    assert len(s.points) == 0 and len(s.boxes) == len(
        one.infos[0].gt_boxes[np.isin(one.infos[0].gt_names, NAMES)]
    )
    key.write_bytes(b"\x00" * 24)
    with pytest.raises(ValueError, match=r"24 bytes is not a multiple of 20"):
        one[0]
    with pytest.raises(ValueError, match="not a nuScenes info file"):
        NuScenesDataset(infos_path=_junk(tmp_path), class_names=NAMES, grid=VoxelGrid(RANGE, (0.1, 0.1, 0.2)))


def _junk(tmp_path: Path) -> Path:
    from perception.datasets.prep_runner import atomic_pickle_dump

    p = tmp_path / "junk.pkl"
    atomic_pickle_dump(p, {"format": "something else"})
    return p


def test_missing_sweeps_is_a_config_key(root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``data.missing_sweeps`` reaches the dataset through ``build_dataset``, and the error names that key."""
    from perception.config import ConfigError, load_config
    from perception.engine.data import build_dataset
    from perception.train_config import TrainConfig

    bad = tmp_path / "no_sweeps"
    shutil.copytree(root, bad, ignore=shutil.ignore_patterns("sweeps"))
    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_centerpoint_spconv.yaml"

    def dataset(*overrides: str) -> NuScenesDataset:
        cfg = load_config(config, [f"data.root={bad}", f"data.max_sweeps={SWEEPS}", *overrides])
        ds = build_dataset(cfg, "train", "train", train=TrainConfig())
        assert isinstance(ds, NuScenesDataset)
        return ds

    strict = dataset()
    first = strict.infos[0].sweeps[0].path
    with pytest.raises(FileNotFoundError) as err:
        strict[0]
    assert str(err.value) == (
        f"sample {strict.infos[0].token}: sweep file not found: {bad / first} (download the sweeps, or set "
        "data.max_sweeps: 1, or data.missing_sweeps: skip to leave missing sweeps out, e.g. "
        "--set data.missing_sweeps=skip)"
    )
    skip = dataset("data.missing_sweeps=skip")
    with caplog.at_level(logging.WARNING, logger="perception.datasets.nuscenes"):
        s = skip[0]
    assert len(s.points) > 0 and (s.points.channel("time_lag") == 0).all()
    assert sum("is missing; skipped" in r.getMessage() for r in caplog.records) == SWEEPS - 1
    with pytest.raises(ConfigError, match="missing_sweeps"):
        dataset("data.missing_sweeps=sometimes")
    (bad / strict.infos[0].lidar_path).unlink()
    with pytest.raises(FileNotFoundError, match="LiDAR file not found"):  # a keyframe: no setting helps
        skip[0]
