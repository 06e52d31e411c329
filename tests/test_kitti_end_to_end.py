"""KITTI end to end with the tools: ``tools/train.py`` trains the tiny KITTI config on a small synthetic KITTI set,
``tools/test.py`` scores the val split (the devkit's AP blocks on the console and in ``kitti_ap.txt``, the same
numbers in ``metrics.json`` and from ``tools/eval_kitti.py`` on the written result files) and writes submission
files for the test split (no labels, one file per frame, camera frame, nothing scored)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "kitti_tiny_centerpoint_spconv.yaml"
FULL = REPO / "configs" / "kitti_centerpoint_spconv.yaml"
CLASSES = ("Car", "Pedestrian", "Cyclist")
STRICT = {"Car": "0.70, 0.70, 0.70", "Pedestrian": "0.50, 0.50, 0.50", "Cyclist": "0.50, 0.50, 0.50"}
LOOSE = {"Car": "0.70, 0.50, 0.50", "Pedestrian": "0.50, 0.25, 0.25", "Cyclist": "0.50, 0.25, 0.25"}


def _run(
    tmp: Path, tool: str, *args: str, extra_set: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``tools/<tool> TINY *args`` on the synthetic set under ``tmp`` (3 scenes: train / val / test, 2 frames)."""
    overrides = [
        f"data.root={tmp / 'data'}",
        f"output_root={tmp / 'out'}",
        "synthetic.scenes=3",
        "synthetic.samples=2",
        *extra_set,
    ]
    cmd = [sys.executable, str(REPO / "tools" / tool), str(TINY), *args, "--no-progress", "--set", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(tmp folder, checkpoint) after 2 iterations of tools/train.py (1 epoch, batch 1)."""
    tmp = tmp_path_factory.mktemp("kitti_e2e")
    _run(tmp, "train.py", "--epochs", "1", "--batch-size", "1")
    ckpt = tmp / "out" / TINY.stem / "default" / "ckpt" / "checkpoint_epoch_1.pth"
    assert ckpt.is_file()
    return tmp, ckpt


def _block_values(lines: list[str], header: str) -> dict[str, list[float]]:
    """``{"bbox": [e, m, h], "bev": ..., "3d": ..., "aos": ...}`` of the block under ``header``."""
    at = lines.index(header)
    out = {}
    for line in lines[at + 1 : at + 5]:
        m = re.fullmatch(r"(bbox|bev |3d  |aos ) AP:(\S+), (\S+), (\S+)", line)
        if m is None:
            break
        out[m.group(1).strip()] = [float(v) for v in m.groups()[1:]]
    return out


@pytest.mark.slow
def test_val_prints_the_ap_blocks_and_keeps_metrics_json(trained: tuple[Path, Path], tmp_path: Path) -> None:
    tmp, ckpt = trained
    res = _run(tmp, "test.py", "--ckpt", str(ckpt))
    out = Path(res.stdout.strip().splitlines()[-1].removeprefix("results in "))
    assert out.parent.parent.name == "eval" and out.name == "val"
    report = (out / "kitti_ap.txt").read_text()
    assert report in res.stderr.replace("\r", "")  # logged as it is written
    lines = report.splitlines()
    metrics = json.loads((out / "metrics.json").read_text())
    kinds = {"bbox": "image", "bev": "bev", "3d": "3d", "aos": "aos"}
    headers = []
    for c in CLASSES:
        for suffix, iou in (("", STRICT[c]), ("_loose", LOOSE[c])):
            for sampling, title in (("R11", "AP"), ("R40", "AP_R40")):
                header = f"{c} {title}@{iou}:"
                headers.append(header)
                values = _block_values(lines, header)
                assert list(values) == ["bbox", "bev", "3d", "aos"], header
                for printed, kind in kinds.items():
                    for d, v in zip(("easy", "moderate", "hard"), values[printed], strict=True):
                        ref = metrics[f"{c}_{kind}_{sampling}_{d}{suffix}"]
                        decimals = 2 if kind == "aos" else 4
                        assert (math.isnan(v) and ref is None) or v == round(ref, decimals), (
                            header,
                            printed,
                            d,
                        )
    assert [
        line for line in lines if line.endswith(":")
    ] == headers  # order: class, strict / loose, R11 / R40
    assert lines[-2].startswith("Ground-truth objects counted (easy/moderate/hard): Car ")
    # the same numbers from the written result files through the stand-alone evaluator
    ref_json = tmp_path / "eval_kitti.json"
    root = tmp / "data"
    cmd = [sys.executable, str(REPO / "tools" / "eval_kitti.py"), str(root / "training" / "label_2"),
           str(out / "data"), "--ids", str(root / "ImageSets" / "val.txt"), "--loose", "--json", str(ref_json)]  # fmt: skip
    cli = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(ref_json.read_text()) == metrics
    summary = res.stdout.strip().splitlines()[-2]
    assert summary.startswith(f"{ckpt}: Car_3d_R40_moderate ") and "_loose" not in summary


def _test_split(tmp: Path, ckpt: Path, *extra_set: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    res = _run(tmp, "test.py", "--ckpt", str(ckpt), "--split", "test", "--save-dets", extra_set=extra_set)
    m = re.search(r"KITTI split 'test' has no labels, nothing scored; (\d+) result files \(KITTI format, one per "
                  r"frame\) in (\S+)$", res.stdout.strip())  # fmt: skip
    assert m is not None, res.stdout
    return res, Path(m.group(2))


@pytest.mark.slow
def test_test_split_writes_submission_files(trained: tuple[Path, Path]) -> None:
    from perception.datasets.kitti_calib import boxes_camera_to_lidar, read_calib_file
    from perception.engine.inference import load_detections
    from perception.formats.kitti_labels import read_label_file

    tmp, ckpt = trained
    res, data = _test_split(tmp, ckpt)
    assert "use mode='test'" not in res.stderr
    assert data.name == "data" and data.parent.name == "test"
    assert not (data.parent / "metrics.json").exists() and not (data.parent / "kitti_ap.txt").exists()
    ids = (tmp / "data" / "ImageSets" / "test.txt").read_text().split()
    assert sorted(p.stem for p in data.iterdir()) == sorted(ids) and len(ids) == 2
    dets, names = load_detections(data.parent / "detections.pth")
    assert names == CLASSES and sorted(dets) == sorted(ids)
    written = 0
    for fid in ids:
        objs = read_label_file(data / f"{fid}.txt")  # 16 columns: the score is there
        assert objs.score is not None and set(objs.names) <= set(CLASSES)
        written += len(objs)
        if not len(objs):
            continue
        # camera frame: in front of the camera, and back in the LiDAR frame the boxes are among the detections
        assert (objs.location[:, 2] > 0).all()
        calib = read_calib_file(tmp / "data" / "testing" / "calib" / f"{fid}.txt")
        back = boxes_camera_to_lidar(objs.location, objs.dimensions, objs.rotation_y, calib)
        lidar = dets[fid].boxes.tensor.double().numpy()
        dist = np.abs(back[:, None, :6] - lidar[None, :, :6]).max(axis=2)
        assert (dist.min(axis=1) < 1e-4).all()
        np.testing.assert_allclose(
            np.sort(objs.score),
            np.sort(dets[fid].scores.double().numpy()[dist.min(axis=0) < 1e-4]),
            rtol=1e-6,
        )
    assert written > 0  # the untrained model's low-score boxes (score threshold 0.1)


@pytest.mark.slow
def test_test_split_frames_without_detections_get_empty_files(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """One file per frame of the split, also for a frame without detections (the benchmark needs them all)."""
    from perception.config import load_config
    from perception.engine.inference import write_kitti_results
    from perception.formats.kitti_labels import read_label_file
    from perception.structures import Boxes3D, Detections

    tmp, _ = trained
    cfg = load_config(TINY, [f"data.root={tmp / 'data'}"])
    first, second = (tmp / "data" / "ImageSets" / "test.txt").read_text().split()
    car = Boxes3D(torch.tensor([[12.0, 1.0, -0.8, 4.0, 1.7, 1.5, 0.3]]))
    none = Boxes3D(torch.zeros(0, 7))
    dets = {
        first: Detections(none, torch.zeros(0), torch.zeros(0, dtype=torch.int64)),
        second: Detections(car, torch.tensor([0.5]), torch.tensor([0])),
    }
    data = write_kitti_results(cfg, dets, "test", tmp_path)
    assert sorted(p.name for p in data.iterdir()) == [f"{first}.txt", f"{second}.txt"]
    assert (data / f"{first}.txt").read_text() == ""
    objs = read_label_file(data / f"{second}.txt")
    assert list(objs.names) == ["Car"] and objs.score is not None and objs.score.tolist() == [0.5]
    np.testing.assert_allclose(objs.dimensions, [[1.5, 1.7, 4.0]], atol=1e-6)  # h, w, l
    with pytest.raises(ValueError, match="1 missing"):
        write_kitti_results(cfg, {first: dets[first]}, "test", tmp_path)


def test_kitti_configs_shapes() -> None:
    """KITTI's range and voxel sizes, the three classes, 4 point columns, and the shapes the config plans."""
    from perception.config import load_config

    for path, voxel, grid, bev in (
        (FULL, (0.05, 0.05, 0.1), (40, 1600, 1408), (512, (200, 176))),
        (TINY, (0.2, 0.2, 0.1), (40, 400, 352), (64, (50, 44))),
    ):
        cfg = load_config(path)
        assert cfg.data.dataset == "kitti" and cfg.data.class_names == CLASSES
        assert cfg.data.point_cloud_range == (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)
        assert cfg.data.voxel_size == voxel and cfg.synthetic is not None and cfg.synthetic.format == "kitti"
        assert cfg.model is not None and cfg.model.num_point_features == 4
        plan = cfg.model.plan(cfg.data)
        assert plan.grid.shape == grid and (plan.head_input.channels, plan.head_input.size) == bev
        assert plan.feature_stride == 8
        head = cfg.model.head.centerpoint
        assert (
            head is not None
            and not head.with_velocity
            and head.tasks == (("Car",), ("Pedestrian",), ("Cyclist",))
        )
    real = load_config(FULL, ["data.root=/nonexistent/kitti", "synthetic=null"])  # as its comment says
    assert real.synthetic is None


@pytest.mark.slow
def test_full_kitti_config_trains_one_step(trained: tuple[Path, Path]) -> None:
    """The full-size KITTI detector (40 x 1600 x 1408 voxels) on one synthetic frame: finite losses of every
    task, and gradients reach the parameters (the first sparse conv included). Eval-mode inference is the tiny
    config's (same head, same decode), scored by the tests above."""
    from perception.config import load_config
    from perception.engine.data import build_dataset
    from perception.models.build import build_detector
    from perception.models.detector import total_loss
    from perception.structures import Batch

    root = trained[0] / "data"  # the synthetic set the tiny model trained on
    cfg = load_config(FULL, [f"data.root={root}"])
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.data)
    batch = Batch.collate([build_dataset(cfg, "train", "val")[0]])
    assert len(batch.boxes[0]) > 0
    model.train()
    losses = model.loss(batch)
    assert {f"task{i}.{k}" for i in range(3) for k in ("heatmap", "bbox")} <= set(losses), sorted(losses)
    assert all(torch.isfinite(v).all() for v in losses.values())
    total_loss(losses).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert [n for n, g in grads.items() if g is None or not torch.isfinite(g).all()] == []
    # a class without an object in the frame gives its regression branch no gradient; everything else has one
    zero = [n for n, g in grads.items() if g is not None and not g.abs().sum() > 0]
    assert all(".rot." in n or ".reg." in n or ".height." in n or ".dim." in n for n in zero), zero
    first = next(n for n in grads if n.startswith("backbone_3d."))
    assert grads[first] is not None and grads[first].abs().sum() > 0, first
