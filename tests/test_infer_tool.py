"""``tools/infer.py`` on a folder of point files (per-frame JSON equal to the Python API, KITTI-format ``.txt``
in the LiDAR frame or, with a calib, the camera frame of ``tools/test.py``, pictures), its one-line errors, and
``tools/visualize.py --points FILE`` / ``--ckpt PATH`` headless."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import perception
from perception.formats.kitti_labels import read_label_file

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "demo_detector.pth"


def _matplotlib_pictures(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Headless pictures as matplotlib BEV files: renderer switched off, and the status an earlier test of this
    process cached forgotten (it is probed once per process)."""
    from perception.viz import o3d_render

    monkeypatch.setenv("PERCEPTION_OFFSCREEN", "off")
    monkeypatch.setattr(o3d_render, "_status", None)


def _tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_infer_tool_{name}", REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scan(seed: int, n: int = 4000) -> np.ndarray:
    """A scan with two car-sized clusters in the nuScenes layout ``x, y, z, intensity, ring``."""
    rng = np.random.default_rng(seed)
    ground = np.c_[rng.uniform(-40, 40, (n, 2)), rng.uniform(-1.9, -1.7, n)]
    cars = np.concatenate([c + rng.uniform([-2.2, -0.9, -1.7], [2.2, 0.9, 0.0], (600, 3)) for c in
                           ((8.0, 12.0, 0.0), (-10.0, 20.0, 0.0))])  # fmt: skip
    xyz = np.concatenate([ground, cars])
    return np.c_[xyz, rng.uniform(0, 60, len(xyz)), rng.integers(0, 32, len(xyz))].astype(np.float32)


@pytest.fixture(scope="module")
def detector() -> perception.Detector:
    return perception.load_detector(CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("scans")
    _scan(0).tofile(d / "000001.pcd.bin")
    _scan(1).tofile(d / "000002.pcd.bin")
    _scan(2)[:, :4].tofile(d / "000003.bin")
    (d / "notes.txt").write_text("not a scan")
    return d


def test_folder_of_nuscenes_scans(
    scans: Path, tmp_path: Path, detector: perception.Detector, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(
        "PERCEPTION_OFFSCREEN", "off"
    )  # matplotlib pictures only: fast and machine-independent
    out = tmp_path / "out"
    argv = ["--ckpt", str(CHECKPOINT), "--data_path", str(scans), "--ext", ".pcd.bin", "--out", str(out),
            "--device", "cpu", "--score_thr", "0.2"]  # fmt: skip
    assert _tool("infer").main(argv) == 0
    assert sorted(p.name for p in out.glob("*.json")) == ["000001.json", "000002.json"]  # --ext: no .bin
    for stem in ("000001", "000002"):
        data = json.loads((out / f"{stem}.json").read_text())
        want = detector.detect(scans / f"{stem}.pcd.bin").above(0.2)
        assert data["columns"] == ["x", "y", "z", "intensity", "ring"]
        assert data["point_channels"] == ["x", "y", "z", "intensity", "time_lag"]
        assert data["names"] == want.names and len(want) > 0
        np.testing.assert_allclose(np.array(data["boxes"]), want.boxes, rtol=0, atol=1e-6)
        assert min(data["scores"]) >= 0.2
        objs = read_label_file(out / "kitti_lidar" / f"{stem}.txt")
        assert list(objs.names) == want.names
        b = want.boxes.astype(np.float64)
        np.testing.assert_allclose(objs.dimensions, b[:, [5, 4, 3]], atol=1e-6)  # h w l
        np.testing.assert_allclose(objs.location, np.c_[b[:, :2], b[:, 2] - b[:, 5] / 2], atol=1e-6)
        np.testing.assert_allclose(objs.rotation_y, b[:, 6], atol=1e-6)
        assert (objs.alpha == -10).all() and (objs.bbox == 0).all()
        bev = np.asarray(Image.open(out / f"{stem}_bev.png").convert("RGB"))
        assert bev.shape[0] > 300 and len(np.unique(bev.reshape(-1, 3), axis=0)) > 20


def test_kitti_bin_with_calib_writes_the_camera_frame(
    scans: Path, tmp_path: Path, detector: perception.Detector
) -> None:
    from perception.datasets.kitti_calib import read_calib_file
    from perception.engine.inference import kitti_objects
    from perception.inference_api.outputs import CameraInfo

    calib = tmp_path / "calib.txt"
    calib.write_text(
        "P0: 721.5 0 609.6 0 0 721.5 172.9 0 0 0 1 0\nP1: 721.5 0 609.6 -387.6 0 721.5 172.9 0 0 0 1 0\n"
        "P2: 721.5 0 609.6 44.9 0 721.5 172.9 0.2 0 0 1 0.003\nP3: 721.5 0 609.6 -339.5 0 721.5 172.9 2.2 0 0 1 0.005\n"
        "R0_rect: 1 0 0 0 1 0 0 0 1\nTr_velo_to_cam: 0 -1 0 0 0 0 -1 -0.08 1 0 0 -0.27\n"
        "Tr_imu_to_velo: 1 0 0 -0.8 0 1 0 0.3 0 0 1 -0.9\n"
    )
    out = tmp_path / "out"
    argv = ["--ckpt", str(CHECKPOINT), "--data-path", str(scans / "000003.bin"), "--out", str(out),
            "--calib", str(calib), "--no-pictures", "--score-thr", "0.1"]  # fmt: skip
    assert _tool("infer").main(argv) == 0
    assert not list(out.glob("*.png")) and not (out / "kitti_lidar").exists()
    result = detector.detect(scans / "000003.bin").above(0.1)
    assert json.loads((out / "000003.json").read_text())["columns"] == ["x", "y", "z", "intensity"]
    want = kitti_objects(
        result.detections, CameraInfo(read_calib_file(calib), (375, 1242)), result.class_names
    )
    got = read_label_file(out / "kitti" / "000003.txt")
    assert list(got.names) == list(want.names)
    np.testing.assert_allclose(got.location, want.location)
    np.testing.assert_allclose(got.bbox, want.bbox)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--data-path", "MISSING"], "does not exist"),
        (["--data-path", "SCANS/notes.txt"], "unknown point file type"),
        (
            ["--data-path", "SCANS/000001.pcd.bin", "--columns", "x,y,z,intensity"],
            "5 columns but 4 column names",
        ),
        (["--data-path", "SCANS/000003.bin", "--columns", "x,y,z,w"], r"lack \['intensity'\]"),
        (["--data-path", "SCANS", "--ext", ".npy"], "holds no .npy file"),
        (["--data-path", "SCANS", "--set", "data.max_sweeps=1"], "--set overrides --cfg-file"),
    ],
)
def test_errors_are_one_line(scans: Path, tmp_path: Path, capsys, extra: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    extra = [e.replace("SCANS", str(scans)).replace("MISSING", str(tmp_path / "none")) for e in extra]
    argv = ["--ckpt", str(CHECKPOINT), "--out", str(tmp_path / "o"), "--no-pictures", *extra]
    assert _tool("infer").main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("infer.py: error: ")
    assert re.search(message, err[0]), err[0]


def test_bad_checkpoint_is_one_line(scans: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    argv = ["--ckpt", str(bad), "--data-path", str(scans), "--out", str(tmp_path / "o")]
    assert _tool("infer").main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("infer.py: error: ") and "cannot be loaded" in err and "\n" not in err


def test_visualize_points_file_with_and_without_checkpoint(scans: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _matplotlib_pictures(monkeypatch)
    viz = _tool("visualize")
    plain, with_ckpt = tmp_path / "plain", tmp_path / "ckpt"
    assert viz.main(["--points", str(scans / "000001.pcd.bin"), "--headless", str(plain)]) == 0
    assert viz.main(["--points", str(scans / "000001.pcd.bin"), "--ckpt", str(CHECKPOINT), "--device", "cpu",
                     "--headless", str(with_ckpt), "--score-threshold", "0.2"]) == 0  # fmt: skip
    a = np.asarray(Image.open(plain / "000001_bev.png").convert("RGB"))
    b = np.asarray(Image.open(with_ckpt / "000001_bev.png").convert("RGB"))
    assert a.std() > 5 and b.std() > 5
    assert a.shape != b.shape or not np.array_equal(a, b)  # the predictions (and the model's range) are drawn


def test_visualize_checkpoint_on_a_dataset(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """``--data CONFIG --ckpt PATH``: a picture per sample with the model's predictions."""
    import subprocess
    import sys

    _matplotlib_pictures(monkeypatch)
    root = tmp_path / "nusc"
    run = [sys.executable, str(REPO / "tools" / "create_data.py")]
    subprocess.run([*run, "synthetic", "--format", "nuscenes", "--out", str(root), "--scenes", "2", "--samples", "2",
                    "--sweeps", "9", "--cameras", "none", "--seed", "2"], check=True, capture_output=True)  # fmt: skip
    subprocess.run([*run, "nuscenes", "--root", str(root), "--version", "v1.0-mini", "--max-sweeps", "2",
                    "--sweep-stride", "9", "--no-gt-database", "--quiet"], check=True, capture_output=True)  # fmt: skip
    out = tmp_path / "pics"
    argv = ["--data", str(REPO / "checkpoints" / "demo_detector.yaml"), "--set", f"data.root={root}",
            "data.version=v1.0-mini", "synthetic=null", "--ckpt", str(CHECKPOINT), "--device", "cpu", "--headless", str(out), "--limit", "1"]  # fmt: skip
    assert _tool("visualize").main(argv) == 0
    pics = sorted(out.glob("*_bev.png"))
    assert len(pics) == 1 and np.asarray(Image.open(pics[0]).convert("RGB")).std() > 5
