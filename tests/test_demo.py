"""The main job of `make demo`, end to end on a tiny synthetic set: generate -> devkit -> typed sample -> pictures
-> detection with the shipped checkpoint -> official devkit scores -> pictures of predictions vs ground truth."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _load_demo_module():  # tools/ is not a package
    spec = importlib.util.spec_from_file_location("perception_demo_tool", REPO / "tools" / "demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CLASS_NAMES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
               "pedestrian", "traffic_cone")  # fmt: skip
CHECKPOINT = REPO / "checkpoints" / "demo_detector.pth"
DETECTOR_CONFIG = REPO / "checkpoints" / "demo_detector.yaml"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """Runs the demo (with its detection step) on 2 scenes x 3 keyframes; returns data root, output, stdout."""
    tmp = tmp_path_factory.mktemp("demo")
    data, out = tmp / "data", tmp / "out"
    demo = _load_demo_module()
    argv = [
        "--out", str(out), "--set", f"data.root={data}", "data.max_sweeps=3", "synthetic.scenes=2",
        "synthetic.samples=3", "synthetic.sweeps=2", "synthetic.cameras=front", "synthetic.seed=5",
    ]  # fmt: skip
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert demo.main(argv) == 0
    return data, out, printed.getvalue()


def test_demo_writes_pictures(demo_run: tuple[Path, Path, str]) -> None:
    _, out, _ = demo_run
    bev = np.asarray(Image.open(out / "bev.png").convert("RGB"))
    assert bev.shape[0] > 400 and bev.shape[1] > 400
    assert len(np.unique(bev.reshape(-1, 3), axis=0)) > 50  # a real picture, not a blank canvas
    cams = np.asarray(Image.open(out / "cameras.png").convert("RGB"))
    assert cams.std() > 10


def _demo_grid(data: Path):
    from perception.config import load_config

    cfg = load_config(
        REPO / "configs" / "demo_nuscenes_mini.yaml", [f"data.root={data}", "data.max_sweeps=3"]
    )
    return cfg.data.grid


def test_demo_sample_agrees_with_the_devkit(demo_run: tuple[Path, Path, str]) -> None:
    from nuscenes import NuScenes
    from nuscenes.eval.detection.utils import category_to_detection_name

    from perception.demo_scene import load_demo_sample

    data, _, _ = demo_run
    grid = _demo_grid(data)
    loaded = load_demo_sample(data, "v1.0-mini", CLASS_NAMES, grid, max_sweeps=3)
    s = loaded.sample
    assert loaded.scene_name in ("scene-0103", "scene-0916")  # the devkit's mini_val scenes
    assert loaded.num_sweeps == 3 and s.points.tensor.shape[1] == 5
    assert loaded.num_keyframe_points == int((s.points.channel("time_lag") == 0).sum()) > 0
    assert bool(grid.contains(s.points.xyz).all())  # the dataset's sample: inside the grid
    lags = s.points.channel("time_lag")
    assert float(lags.min()) == 0.0 and 0.05 < float(lags.max()) < 0.2  # 20 Hz sweeps: 0.05 s apart
    assert len(s.boxes) > 0 and s.cameras is not None and s.cameras.names == ("CAM_FRONT",)
    assert s.images is not None and tuple(s.images.shape[:2]) == (1, 3)

    # The boxes in our convention describe the devkit's boxes in the LiDAR frame: same corners as point sets;
    # every devkit box of the detector's classes whose centre lies in the grid is there.
    nusc = NuScenes("v1.0-mini", str(data), verbose=False)
    sample_rec = nusc.get("sample", s.token)
    _, dk_boxes, _ = nusc.get_sample_data(sample_rec["data"]["LIDAR_TOP"])
    expected = [
        b.token
        for b in dk_boxes
        if category_to_detection_name(b.name) in CLASS_NAMES
        and bool(grid.contains(np.asarray(b.center, np.float32)[None]).all())
    ]
    assert loaded.annotation_tokens == expected
    by_token = {b.token: b for b in dk_boxes}
    ours = s.boxes.corners().double().numpy()
    for i, token in enumerate(loaded.annotation_tokens):
        dk = by_token[token].corners().T
        np.testing.assert_allclose(np.sort(ours[i], axis=0), np.sort(dk, axis=0), atol=2e-3)
    assert sum(loaded.skipped.values()) == len(dk_boxes) - len(expected)

    # Keyframe points inside each box equal the annotation's num_lidar_pts (independent inside test).
    key = s.points.select(s.points.channel("time_lag") == 0).xyz.double()
    for i, box in enumerate(s.boxes.tensor.double()):
        d = key - box[:3]
        c, sn = math.cos(float(box[6])), math.sin(float(box[6]))
        lx, ly = d[:, 0] * c + d[:, 1] * sn, -d[:, 0] * sn + d[:, 1] * c
        inside = (lx.abs() <= box[3] / 2) & (ly.abs() <= box[4] / 2) & (d[:, 2].abs() <= box[5] / 2)
        assert int(inside.sum()) == loaded.num_lidar_pts[i]
    assert torch.isfinite(s.boxes.tensor).all()


def test_demo_sweeps_agree_with_the_devkit_merge(demo_run: tuple[Path, Path, str]) -> None:
    """The earlier sweeps of the dataset's sample are the devkit's ``from_file_multisweep`` points (inside the
    grid), sweep by sweep. (The keyframe differs by design: the devkit drops its points within 1 m of the
    sensor, the dataset keeps the keyframe whole, as OpenPCDet does.)"""
    from nuscenes import NuScenes
    from nuscenes.utils.data_classes import LidarPointCloud
    from scipy.spatial import cKDTree

    from perception.demo_scene import load_demo_sample

    data, _, _ = demo_run
    grid = _demo_grid(data)
    s = load_demo_sample(data, "v1.0-mini", CLASS_NAMES, grid, max_sweeps=3).sample
    nusc = NuScenes("v1.0-mini", str(data), verbose=False)
    pc, times = LidarPointCloud.from_file_multisweep(
        nusc, nusc.get("sample", s.token), "LIDAR_TOP", "LIDAR_TOP", nsweeps=3
    )
    dk = np.concatenate([pc.points[:4].T, times.T], axis=1).astype(np.float32)
    dk = dk[grid.contains(dk[:, :3])]
    ours = s.points.tensor.numpy()
    sweep_lags = sorted(set(np.unique(dk[:, 4]).tolist()) - {0.0})
    assert len(sweep_lags) == 2
    for lag in sweep_lags:
        a, b = ours[np.isclose(ours[:, 4], lag)], dk[np.isclose(dk[:, 4], lag)]
        assert len(a) == len(b) > 0
        dist, nearest = cKDTree(b[:, :3]).query(a[:, :3])
        assert float(dist.max()) < 1e-3 and len(np.unique(nearest)) == len(b)  # one to one
        np.testing.assert_allclose(a[:, 3], b[nearest, 3])


def test_shipped_checkpoint_is_small_and_documented() -> None:
    from perception.config import load_config

    assert CHECKPOINT.is_file() and CHECKPOINT.stat().st_size <= 20 * 2**20
    cfg = load_config(DETECTOR_CONFIG)
    assert cfg.model is not None and tuple(cfg.data.class_names) == CLASS_NAMES
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert tuple(state["class_names"]) == CLASS_NAMES
    assert "tools/train.py configs/demo_detector.yaml" in DETECTOR_CONFIG.read_text()
    assert "tools/train.py" in (REPO / "checkpoints" / "demo_detector.log").read_text()


def test_demo_detects_and_scores_with_the_devkit(demo_run: tuple[Path, Path, str]) -> None:
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.common.loaders import add_center_dist, filter_eval_boxes, load_gt, load_prediction
    from nuscenes.eval.detection.algo import accumulate, calc_ap
    from nuscenes.eval.detection.data_classes import DetectionBox

    data, out, printed = demo_run
    summary = json.loads((out / "metrics_summary.json").read_text())
    found = re.search(r"mAP ([0-9.]+), NDS ([0-9.]+)", printed)
    assert found is not None, printed[-2000:]
    assert float(found.group(1)) == pytest.approx(summary["mean_ap"], abs=1e-4)
    assert float(found.group(2)) == pytest.approx(summary["nd_score"], abs=1e-4)
    assert "| car |" in printed and "| traffic_cone |" in printed  # the per-class table

    # The results file covers every mini_val sample, and re-scoring the car class with the devkit's own
    # building blocks (outside our wrapper) gives the AP the summary reports.
    nusc = NuScenes("v1.0-mini", str(data), verbose=False)
    cfg = config_factory("detection_cvpr_2019")
    preds, _ = load_prediction(str(out / "results_nusc.json"), cfg.max_boxes_per_sample, DetectionBox, False)
    gts = load_gt(nusc, "mini_val", DetectionBox, verbose=False)
    assert set(preds.sample_tokens) == set(gts.sample_tokens)
    preds = filter_eval_boxes(nusc, add_center_dist(nusc, preds), cfg.class_range, verbose=False)
    gts = filter_eval_boxes(nusc, add_center_dist(nusc, gts), cfg.class_range, verbose=False)
    aps = [
        calc_ap(accumulate(gts, preds, "car", cfg.dist_fcn_callable, d), cfg.min_recall, cfg.min_precision)
        for d in cfg.dist_ths
    ]
    assert float(np.mean(aps)) == pytest.approx(summary["mean_dist_aps"]["car"], abs=1e-6)
    # the shipped detector finds the synthetic cars out of the box
    assert summary["mean_dist_aps"]["car"] > 0.3

    pictures = [out / "detections_render.png", out / "detections_bev.png"]
    assert any(p.is_file() for p in pictures)
    for p in pictures:
        if p.is_file():
            assert np.asarray(Image.open(p).convert("RGB")).std() > 10


def test_detect_and_score_rejects_bad_inputs(tmp_path: Path) -> None:
    from perception.demo_scene import detect_and_score

    with pytest.raises(FileNotFoundError, match="checkpoint"):
        detect_and_score(tmp_path / "none.pth", DETECTOR_CONFIG, tmp_path, tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no v1.0-trainval data set"):  # its own layout
        detect_and_score(CHECKPOINT, DETECTOR_CONFIG, tmp_path / "empty", tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no v1.0-mini data set"):  # as the demo calls it
        detect_and_score(CHECKPOINT, DETECTOR_CONFIG, tmp_path / "empty", tmp_path,
                         overrides=["data.version=v1.0-mini", "synthetic=null"])  # fmt: skip


def test_demo_sample_has_the_configs_sweep_count(demo_run: tuple[Path, Path, str]) -> None:
    """The demo hands ``data.max_sweeps`` on to the loader: the sample it prints holds that many sweeps (distinct
    time lags), and the shipped demo config writes data with that many (``synthetic.sweeps + 1``)."""
    from perception.config import load_config
    from perception.demo_scene import load_demo_sample

    data, _, printed = demo_run  # run with --set data.max_sweeps=3 synthetic.sweeps=2
    assert "| sweeps merged (keyframe + earlier) | 3 of data.max_sweeps 3 |" in printed
    assert "note:" not in printed
    loaded = load_demo_sample(data, "v1.0-mini", CLASS_NAMES, _demo_grid(data), max_sweeps=3)
    assert (loaded.num_sweeps, loaded.max_sweeps, loaded.sweeps_note) == (3, 3, None)
    assert loaded.frame.axis_labels == ("x (m, right)", "y (m, forward)")  # nuScenes LIDAR_TOP
    assert len(torch.unique(loaded.sample.points.channel("time_lag"))) == 3
    shipped = load_config(REPO / "configs" / "demo_nuscenes_mini.yaml")
    assert shipped.synthetic is not None and shipped.synthetic.sweeps == shipped.data.max_sweeps - 1


def test_demo_says_why_the_data_has_fewer_sweeps(demo_run: tuple[Path, Path, str]) -> None:
    """Data written with fewer sweeps than ``data.max_sweeps`` asks for (the README's old data command did so)
    gives fewer sweeps, and the summary and the note say so instead of a silent 3 under a config saying 10."""
    from perception.demo_scene import load_demo_sample, summarize

    data, _, _ = demo_run  # 2 sweeps before each keyframe on disk
    loaded = load_demo_sample(data, "v1.0-mini", CLASS_NAMES, _demo_grid(data), max_sweeps=5)
    assert (loaded.num_sweeps, loaded.max_sweeps) == (3, 5)
    assert "| sweeps merged (keyframe + earlier) | 3 of data.max_sweeps 5 |" in summarize(loaded, 0.0, 0.0)
    note = loaded.sweeps_note
    assert note is not None
    assert "data.max_sweeps is 5 but this keyframe has only 2 earlier sweep(s)" in note
    assert "synthetic.sweeps" in note and "data.max_sweeps=3" in note
