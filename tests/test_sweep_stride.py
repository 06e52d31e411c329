"""``data.sweep_stride``: every S-th sweep of the 20 Hz chain, through the infos, the GT database, the dataset,
the config and the inference API (against the stride-1 cloud of the whole chain, filtered to the picked lags)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import perception
from perception.config import ConfigError, load_config
from perception.datasets.gt_database import GTDatabase
from perception.datasets.nuscenes import NuScenesDataset
from perception.datasets.nuscenes_infos import create_nuscenes_infos
from perception.datasets.synthetic import SyntheticParams, generate
from perception.datasets.synthetic.classes import CLASSES
from perception.formats.nuscenes_infos import gt_database_dir, infos_path, load_nuscenes_infos
from perception.formats.nuscenes_points import load_lidar_points, pick_sweeps, sweep_chain
from perception.grid import VoxelGrid
from perception.structures import Batch

REPO = Path(__file__).resolve().parents[1]
VERSION = "v1.0-mini"
NAMES = tuple(c.name for c in CLASSES)
GRID = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.8, 0.8, 8.0))
MAX_SWEEPS, STRIDE = 3, 2  # keyframe + the sweeps 0.10 s and 0.20 s before it; the infos list a chain of 5


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stride")
    generate(SyntheticParams(format="nuscenes", scenes=2, samples=2, sweeps=4, cameras="none", seed=3), out)
    create_nuscenes_infos(out, VERSION, max_sweeps=MAX_SWEEPS, sweep_stride=STRIDE, progress=False)
    return out


def test_pick_sweeps_and_chain() -> None:
    chain = list(range(9))  # sweep indices, newest first
    assert pick_sweeps(chain, 10) == chain and pick_sweeps(chain, 3) == [0, 1]
    assert pick_sweeps(chain, 2, 9) == [8] and pick_sweeps(chain, 3, 4) == [3, 7]
    assert pick_sweeps(chain, 4, 4) == [3, 7]  # a short chain gives fewer
    assert pick_sweeps(chain, 1, 5) == [] and pick_sweeps(chain[:3], 2, 9) == []
    assert [sweep_chain(m, s) for m, s in ((1, 1), (10, 1), (2, 9), (3, 2))] == [1, 10, 10, 5]
    for bad in ((0, 1), (2, 0), (2, 1.5), (2, -1)):
        with pytest.raises(ValueError, match="must be an int"):
            sweep_chain(*bad)  # type: ignore[arg-type]


def test_infos_hold_the_chain_and_the_database_the_picked_clouds(root: Path) -> None:
    chain = sweep_chain(MAX_SWEEPS, STRIDE)
    for split in ("train", "val"):
        infos, built = load_nuscenes_infos(infos_path(root, VERSION, chain, split))
        assert built == chain and infos and all(len(i.sweeps) == chain - 1 for i in infos)
        np.testing.assert_allclose([s.time_lag for s in infos[0].sweeps], [0.05, 0.1, 0.15, 0.2], atol=1e-6)
    assert not gt_database_dir(root, VERSION, MAX_SWEEPS).exists()
    db = GTDatabase(gt_database_dir(root, VERSION, MAX_SWEEPS, STRIDE))
    assert gt_database_dir(root, VERSION, MAX_SWEEPS, STRIDE).name.endswith("_3sweeps_stride2")
    entries = [e for c in db.classes for e in db.entries(c) if e.num_points]
    lags = np.unique(
        np.concatenate([np.round(db.load(e).points[:, 4].astype(np.float64), 4) for e in entries])
    )
    assert set(lags.tolist()) <= {0.0, 0.1, 0.2} and len(lags) == 3


def test_database_objects_keep_their_trails(root: Path) -> None:
    """Each object's crop is the multi-sweep cloud's points inside its box moved back to each point's time
    (box_motion); moving objects keep points of the older sweeps outside their keyframe box."""
    from perception.datasets.box_motion import points_in_moving_box
    from perception.ops.points_in_boxes import points_in_boxes

    db = GTDatabase(gt_database_dir(root, VERSION, MAX_SWEEPS, STRIDE))
    infos, _ = load_nuscenes_infos(infos_path(root, VERSION, sweep_chain(MAX_SWEEPS, STRIDE), "train"))
    by_token = {i.token: i for i in infos}
    outside = 0
    for e in (e for c in db.classes for e in db.entries(c)):
        info = by_token[e.sample_token]
        cloud = load_lidar_points(root, info, MAX_SWEEPS, "error", STRIDE)
        box = np.asarray(e.box, np.float32)
        expected = cloud[points_in_moving_box(cloud[:, :3], cloud[:, 4], box)]
        expected[:, :3] -= box[:3]
        np.testing.assert_array_equal(db.load(e).points, expected)
        index, _ = points_in_boxes(
            torch.from_numpy(expected[:, :3] + box[:3]), torch.from_numpy(box[None, :7])
        )
        outside += int((index < 0).sum())
    assert outside > 0  # trail points the keyframe box alone would have cut off


def test_dataset_merges_every_strided_sweep(root: Path) -> None:
    wide = VoxelGrid((-200.0, -200.0, -50.0, 200.0, 200.0, 50.0), (0.8, 0.8, 100.0))
    chain = sweep_chain(MAX_SWEEPS, STRIDE)
    common = dict(root=root, version=VERSION, split="train", class_names=NAMES, grid=wide, mode="val")
    strided = NuScenesDataset(max_sweeps=MAX_SWEEPS, sweep_stride=STRIDE, **common)  # type: ignore[arg-type]
    whole = NuScenesDataset(max_sweeps=chain, **common)  # type: ignore[arg-type]
    for i in range(len(strided)):
        ours = strided[i].points.tensor.numpy()
        every = whole[i].points.tensor.numpy()
        keep = np.isin(np.round(every[:, 4].astype(np.float64), 4), [0.0, 0.1, 0.2])
        np.testing.assert_array_equal(ours, every[keep])  # same order: keyframe, then sweeps newest first
        np.testing.assert_array_equal(
            ours, load_lidar_points(root, strided.infos[i], MAX_SWEEPS, "error", STRIDE)
        )
    with pytest.raises(ValueError, match=r"sweep_stride 3 \(a chain of 7 scans\).*--max-sweeps 5"):
        NuScenesDataset(max_sweeps=MAX_SWEEPS, sweep_stride=3, info_sweeps=chain, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sweep_stride must be an int >= 1"):
        NuScenesDataset(max_sweeps=MAX_SWEEPS, sweep_stride=0, **common)  # type: ignore[arg-type]


def test_config_key(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "tiny_dsvt_pillar_centerpoint.yaml", ["data.sweep_stride=9"])
    assert cfg.data.sweep_stride == 9
    with pytest.raises(ConfigError, match="sweep_stride"):
        load_config(REPO / "configs" / "tiny_dsvt_pillar_centerpoint.yaml", ["data.sweep_stride=0"])
    with pytest.raises(ConfigError, match="sweep_stride must be 1 for kitti"):
        load_config(REPO / "configs" / "kitti_tiny_centerpoint_spconv.yaml", ["data.sweep_stride=2"])


def test_api_picks_the_models_sweeps_from_the_chain(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    detector = perception.load_detector(
        REPO / "checkpoints" / "demo_detector.pth",
        device="cpu",
        config=REPO / "checkpoints" / "demo_detector.yaml",
        overrides=[f"data.max_sweeps={MAX_SWEEPS}", f"data.sweep_stride={STRIDE}"],
    )
    ds = NuScenesDataset(
        root=root, version=VERSION, split="val", class_names=NAMES, grid=detector.config.data.grid,
        max_sweeps=MAX_SWEEPS, sweep_stride=STRIDE, mode="val",
    )  # fmt: skip
    info, sample = ds.infos[0], ds[0]
    (det,) = detector.model.eval().predict(Batch.collate([sample]))
    sweeps = [perception.Sweep(root / s.path, s.time_lag, s.sensor_to_lidar) for s in info.sweeps]
    with caplog.at_level(logging.WARNING):
        result = detector.detect(root / info.lidar_path, sweeps=sweeps)
    assert (
        "4 sweeps given" in caplog.text
        and "one in every 2 of the chain" in caplog.text
        and "[1, 3]" in caplog.text
    )
    assert result.num_sweeps == MAX_SWEEPS and result.points is not None
    assert torch.equal(result.points.tensor, sample.points.tensor)
    assert torch.equal(result.detections.boxes.tensor, det.boxes.tensor)
