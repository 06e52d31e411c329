"""The Python inference API (``perception.load_detector(...).detect``) against the dataset path, its column
mapping and error cases, the ``.npy`` / ``.pcd`` readers (open3d and the built-in reader), and the README's
snippet run as written."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import perception
from perception.formats.points import read_npy, read_pcd, read_point_file

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "demo_detector.pth"


@pytest.fixture(scope="module")
def detector() -> perception.Detector:
    return perception.load_detector(CHECKPOINT, device="cpu")


@pytest.fixture(scope="module")
def nusc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic nuScenes set (9 earlier sweeps per keyframe) with the info files of the shipped model's
    sweeps (keyframe + every 9th sweep: a chain of 10)."""
    root = tmp_path_factory.mktemp("api_nusc")
    run = [sys.executable, str(REPO / "tools" / "create_data.py")]
    subprocess.run(
        [*run, "synthetic", "--format", "nuscenes", "--out", str(root), "--scenes", "2", "--samples", "2",
         "--sweeps", "9", "--cameras", "none", "--seed", "4"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*run, "nuscenes", "--root", str(root), "--version", "v1.0-mini", "--max-sweeps", "2", "--sweep-stride",
         "9", "--no-gt-database", "--quiet"],
        check=True, capture_output=True,
    )  # fmt: skip
    return root


def _dataset_detections(detector: perception.Detector, root: Path, max_sweeps: int):  # type: ignore[no-untyped-def]
    """The dataset path: NuScenesDataset (val mode) -> Batch.collate -> model.predict, for every val sample."""
    from perception.datasets.nuscenes import NuScenesDataset, infos_path_for
    from perception.structures import Batch

    data = detector.config.data
    assert (data.max_sweeps, data.sweep_stride) == (2, 9), "the fixture's infos are the shipped model's"
    ds = NuScenesDataset(
        infos_path=infos_path_for(root, "v1.0-mini", 10, "val"), root=root, class_names=data.class_names,
        grid=data.grid, max_sweeps=max_sweeps, sweep_stride=data.sweep_stride, mode="val",
    )  # fmt: skip
    out = []
    for i in range(len(ds)):
        sample = ds[i]
        (det,) = detector.model.eval().predict(Batch.collate([sample]))
        out.append((ds.infos[i], sample, det))
    return out


def _assert_same(result: perception.Result, sample, det) -> None:  # type: ignore[no-untyped-def]
    assert result.num_points == len(sample.points)
    assert result.points is not None and torch.equal(result.points.tensor, sample.points.tensor)
    assert len(det) > 0
    assert torch.equal(result.detections.boxes.tensor, det.boxes.tensor)
    assert torch.equal(result.detections.scores, det.scores)
    assert torch.equal(result.detections.labels, det.labels)
    assert result.names == [result.class_names[i] for i in det.labels.tolist()]


def test_single_sweep_equals_the_dataset_path(detector: perception.Detector, nusc_root: Path) -> None:
    for info, sample, det in _dataset_detections(detector, nusc_root, max_sweeps=1):
        result = detector.detect(nusc_root / info.lidar_path)  # .pcd.bin: ring replaced by time_lag 0
        assert result.columns == ("x", "y", "z", "intensity", "ring") and result.num_sweeps == 1
        _assert_same(result, sample, det)
        raw = np.fromfile(nusc_root / info.lidar_path, dtype=np.float32).reshape(-1, 5)
        as_array = detector.detect(torch.from_numpy(raw), columns=("x", "y", "z", "intensity", "ring"))
        assert torch.equal(as_array.detections.boxes.tensor, det.boxes.tensor)


def test_multi_sweep_equals_the_dataset_path(detector: perception.Detector, nusc_root: Path) -> None:
    for info, sample, det in _dataset_detections(detector, nusc_root, max_sweeps=2):
        assert len(info.sweeps) == 9, "the fixture has 9 earlier sweeps per keyframe"
        sweeps = [perception.Sweep(nusc_root / s.path, s.time_lag, s.sensor_to_lidar) for s in info.sweeps]
        result = detector.detect(nusc_root / info.lidar_path, sweeps=sweeps)  # the chain: the 9th is merged
        assert result.num_sweeps == 2
        assert torch.allclose(result.points.channel("time_lag").unique(), torch.tensor([0.0, 0.45]))
        _assert_same(result, sample, det)
        alone = detector.detect(nusc_root / info.lidar_path, sweeps=sweeps[8:])  # only that one: as given
        assert torch.equal(alone.detections.boxes.tensor, result.detections.boxes.tensor)


def test_a_chain_too_short_for_the_stride_is_warned(
    detector: perception.Detector, nusc_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    info, sample, det = _dataset_detections(detector, nusc_root, max_sweeps=1)[0]
    sweeps = [perception.Sweep(nusc_root / s.path, s.time_lag, s.sensor_to_lidar) for s in info.sweeps[:5]]
    with caplog.at_level(logging.WARNING, logger="perception"):
        result = detector.detect(nusc_root / info.lidar_path, sweeps=sweeps)  # 0.05 .. 0.25 s: no 9th scan
    assert result.num_sweeps == 1
    _assert_same(result, sample, det)  # the keyframe alone, as the single-sweep dataset path
    assert "a 20 Hz chain needs 9 to reach the 1 earlier scan(s)" in caplog.text
    assert "sees 0 of them" in caplog.text


def test_nan_points_are_dropped_and_counted(detector: perception.Detector, nusc_root: Path) -> None:
    info, sample, det = _dataset_detections(detector, nusc_root, max_sweeps=1)[0]
    raw = np.fromfile(nusc_root / info.lidar_path, dtype=np.float32).reshape(-1, 5)
    bad = np.full((7, 5), np.nan, np.float32)
    bad[3:, :3] = (1.0, 2.0, np.inf)
    with_nan = np.concatenate([raw[:10], bad, raw[10:]])
    result = detector.detect(with_nan, columns=("x", "y", "z", "intensity", "ring"))
    assert result.num_nonfinite == 7
    _assert_same(result, sample, det)


def test_empty_scan_gives_no_detections(detector: perception.Detector) -> None:
    result = detector.detect(np.zeros((0, 4), np.float32))
    assert len(result) == 0 and result.num_points == 0
    assert result.boxes.shape == (0, 9) and result.to_dict()["boxes"] == []


def test_columns_map_by_name(detector: perception.Detector) -> None:
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-30, 30, (3000, 2)), rng.uniform(-2, 1, (3000, 1)),
                          rng.uniform(0, 100, (3000, 1))], axis=1).astype(np.float32)  # fmt: skip
    plain = detector.detect(pts)  # x, y, z, intensity by default
    shuffled = detector.detect(pts[:, [3, 2, 0, 1]], columns=["intensity", "z", "x", "y"])
    assert torch.equal(plain.detections.boxes.tensor, shuffled.detections.boxes.tensor)
    with_lag = detector.detect(np.concatenate([pts, np.zeros((3000, 1), np.float32)], 1),
                               columns=("x", "y", "z", "intensity", "time_lag"))  # fmt: skip
    assert torch.equal(plain.detections.scores, with_lag.detections.scores)


@pytest.mark.parametrize(
    ("points", "columns", "message"),
    [
        (np.zeros((5, 3), np.float32), ("x", "y", "z"), r"lack \['intensity'\]"),
        (np.zeros((5, 5), np.float32), None, r"5 columns but 4 column names"),
        (np.zeros(12, np.float32), None, r"numeric \(N, C\) array"),
        (np.zeros((5, 4), np.float32), ("x", "y", "y", "i"), r"unique"),
        (np.zeros((5, 4), np.float32), ("a", "b", "c", "intensity"), r"lack \['x', 'y', 'z'\]"),
    ],
)
def test_bad_inputs_are_clear_errors(
    detector: perception.Detector, points: np.ndarray, columns: tuple[str, ...] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        detector.detect(points, columns=columns)


def test_sweep_errors(detector: perception.Detector) -> None:
    pts = np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match="time_lag must be finite and >= 0"):
        detector.detect(pts, sweeps=[perception.Sweep(pts, -0.1)])
    with pytest.raises(ValueError, match="already merged sweeps"):
        detector.detect(np.zeros((5, 5), np.float32), columns=("x", "y", "z", "intensity", "time_lag"),
                        sweeps=[perception.Sweep(pts, 0.05)])  # fmt: skip
    with pytest.raises(TypeError, match="perception.Sweep"):
        detector.detect(pts, sweeps=[(pts, 0.05)])  # type: ignore[list-item]


def test_load_detector_errors(tmp_path: Path) -> None:
    from perception.engine.checkpoint import CheckpointError

    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        perception.load_detector(tmp_path / "missing.pth")
    bare = tmp_path / "bare.pth"
    torch.save({"a": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointError, match="format_version"):
        perception.load_detector(bare)
    with pytest.raises(ValueError, match="overrides apply to a config YAML"):
        perception.load_detector(CHECKPOINT, overrides=["data.max_sweeps=1"])


def test_import_perception_is_lazy() -> None:
    code = "import sys, perception; assert 'torch' not in sys.modules, 'torch imported'; print(perception.__all__)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "load_detector" in out


# ---------------------------------------------------------------------------------------------------------
# point files
# ---------------------------------------------------------------------------------------------------------


def _pcd_header(fields: list[str], types: str, n: int, data: str) -> bytes:
    sizes = " ".join("4" for _ in fields)
    return (
        f"# .PCD v0.7\nVERSION 0.7\nFIELDS {' '.join(fields)}\nSIZE {sizes}\nTYPE {types}\n"
        f"COUNT {' '.join('1' for _ in fields)}\nWIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n"
        f"DATA {data}\n"
    ).encode()


def _open3d_available() -> bool:
    from perception.formats.points import _open3d

    return _open3d() is not None


@pytest.mark.parametrize("backend", ["builtin", "open3d"])
def test_pcd_ascii_and_binary(tmp_path: Path, backend: str) -> None:
    if backend == "open3d" and not _open3d_available():
        pytest.skip("open3d cannot be imported here")
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(50, 4)).astype(np.float32)
    ring = rng.integers(0, 32, 50).astype(np.uint32)
    binary = tmp_path / "b.pcd"
    record = np.zeros(
        50, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4"), ("ring", "<u4")]
    )
    for i, f in enumerate(("x", "y", "z", "intensity")):
        record[f] = pts[:, i]
    record["ring"] = ring
    binary.write_bytes(_pcd_header(["x", "y", "z", "intensity", "ring"], "F F F F U", 50, "binary")
                       + record.tobytes())  # fmt: skip
    ascii_ = tmp_path / "a.pcd"
    body = "".join(
        f"{a!r} {b!r} {c!r} {d!r} {r}\n" for (a, b, c, d), r in zip(pts.tolist(), ring, strict=True)
    )
    ascii_.write_bytes(
        _pcd_header(["x", "y", "z", "intensity", "ring"], "F F F F U", 50, "ascii") + body.encode()
    )
    want = np.concatenate([pts, ring[:, None].astype(np.float32)], axis=1)
    for path in (binary, ascii_):
        got, cols = read_pcd(path, backend=backend)  # type: ignore[arg-type]
        assert cols == ("x", "y", "z", "intensity", "ring")
        np.testing.assert_array_equal(got, want)
    assert read_point_file(binary).columns == ("x", "y", "z", "intensity", "ring")


def test_pcd_errors(tmp_path: Path) -> None:
    short = tmp_path / "short.pcd"
    short.write_bytes(_pcd_header(["x", "y", "z"], "F F F", 10, "binary") + b"\0" * 12)
    with pytest.raises(ValueError, match="short.pcd: PCD binary data has 12 bytes"):
        read_pcd(short, backend="builtin")
    no_xyz = tmp_path / "no_xyz.pcd"
    no_xyz.write_bytes(_pcd_header(["a", "b", "c"], "F F F", 0, "ascii"))
    with pytest.raises(ValueError, match="lack x, y, z"):
        read_pcd(no_xyz, backend="builtin")
    compressed = tmp_path / "c.pcd"
    compressed.write_bytes(_pcd_header(["x", "y", "z"], "F F F", 0, "binary_compressed"))
    with pytest.raises(ValueError, match="binary_compressed' needs open3d"):
        read_pcd(compressed, backend="builtin")


def test_npy_reading_and_declared_columns(tmp_path: Path, detector: perception.Detector) -> None:
    pts = np.random.default_rng(2).uniform(-20, 20, (500, 4)).astype(np.float64)
    np.save(tmp_path / "s.npy", pts)
    np.testing.assert_array_equal(read_npy(tmp_path / "s.npy"), pts.astype(np.float32))
    with pytest.raises(ValueError, match="does not name its 4 columns"):
        detector.detect(tmp_path / "s.npy")
    from_file = detector.detect(tmp_path / "s.npy", columns=("x", "y", "z", "intensity"))
    assert torch.equal(from_file.detections.boxes.tensor, detector.detect(pts).detections.boxes.tensor)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="not a numeric .npy array"):
        read_npy(tmp_path / "obj.npy")
    with pytest.raises(ValueError, match="unknown point file type"):
        read_point_file(tmp_path / "s.txt")


# ---------------------------------------------------------------------------------------------------------
# the README's example
# ---------------------------------------------------------------------------------------------------------


def _readme_snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Your own scans: Python API and tools/infer.py", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "the README section has no python example"
    return match.group(1)


def test_readme_example_runs(tmp_path: Path, nusc_root: Path, detector: perception.Detector, capsys) -> None:  # type: ignore[no-untyped-def]
    code = _readme_snippet()
    assert len(code.strip().splitlines()) <= 12
    info = _dataset_detections(detector, nusc_root, max_sweeps=1)[0][0]
    (tmp_path / "scan.pcd.bin").write_bytes((nusc_root / info.lidar_path).read_bytes())
    (tmp_path / "sweep.pcd.bin").write_bytes((nusc_root / info.sweeps[8].path).read_bytes())
    (tmp_path / "checkpoints").symlink_to(REPO / "checkpoints")
    cwd = os.getcwd()
    namespace: dict[str, object] = {}
    try:
        os.chdir(tmp_path)
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    result = namespace["result"]
    assert isinstance(result, perception.Result) and result.num_sweeps == 2
    expected = detector.detect(
        tmp_path / "scan.pcd.bin", sweeps=[perception.Sweep(tmp_path / "sweep.pcd.bin", 0.45)]
    )
    assert torch.equal(result.detections.boxes.tensor, expected.detections.boxes.tensor)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(expected) > 0
    assert printed[0].split()[0] == expected.names[0]
