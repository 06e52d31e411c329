"""Raw scan reading (size checks, NaN/inf, empty files), atomic writes, safe pickles and GT-object cropping."""

from __future__ import annotations

import logging
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from perception.datasets.prep_runner import (
    atomic_pickle_dump,
    atomic_write_bytes,
    crop_box_points,
    run_tasks,
    safe_pickle_load,
)
from perception.formats.points import drop_nonfinite, load_scan, read_points_bin


def test_read_round_trip_kitti_and_nuscenes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in (4, 5):
        pts = rng.normal(size=(37, c)).astype(np.float32)
        path = tmp_path / f"scan{c}.bin"
        pts.astype("<f4").tofile(path)
        out = read_points_bin(path, c)
        assert out.dtype == np.float32 and out.shape == (37, c)
        np.testing.assert_array_equal(out, pts)


def test_wrong_size_names_file_size_and_multiple(tmp_path: Path) -> None:
    path = tmp_path / "000001.bin"
    np.zeros(4 * 10 + 3, dtype="<f4").tofile(path)  # 172 bytes: not a multiple of 16
    with pytest.raises(ValueError) as err:
        read_points_bin(path, 4)
    msg = str(err.value)
    assert str(path) in msg and "172 bytes" in msg and "multiple of 16" in msg
    # a nuScenes file (5 channels) read as KITTI (4): 5 * 4 * 3 = 60 bytes, not a multiple of 16
    np.zeros(15, dtype="<f4").tofile(path)
    with pytest.raises(ValueError, match="60 bytes is not a multiple of 16"):
        read_points_bin(path, 4)
    path.write_bytes(b"\x00" * 7)  # truncated inside the first value
    with pytest.raises(ValueError, match="7 bytes"):
        read_points_bin(path, 5)


def test_missing_file_and_bad_channels(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        read_points_bin(tmp_path / "nope.bin", 4)
    with pytest.raises(ValueError, match="num_channels"):
        read_points_bin(tmp_path / "nope.bin", 2)


def test_empty_scan_is_zero_points(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    out = load_scan(path, 5, keep=4)
    assert out.shape == (0, 4) and out.dtype == np.float32


def test_nonfinite_points_dropped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pts = np.arange(40, dtype=np.float32).reshape(10, 4)
    pts[2, 0] = np.nan
    pts[5, 3] = np.inf
    pts[7, 1] = -np.inf
    path = tmp_path / "bad.bin"
    pts.tofile(path)
    with caplog.at_level(logging.WARNING, logger="perception.formats.points"):
        out = load_scan(path, 4)
    np.testing.assert_array_equal(out, pts[[0, 1, 3, 4, 6, 8, 9]])
    assert any("dropped 3 of 10" in r.getMessage() and "bad.bin" in r.getMessage() for r in caplog.records)
    same, n = drop_nonfinite(out, "x")
    assert n == 0 and same is out


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "out.pkl"
    atomic_pickle_dump(path, {"a": np.arange(3)})

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new contents")
    monkeypatch.undo()
    np.testing.assert_array_equal(safe_pickle_load(path)["a"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pkl"]  # no temp file left behind


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (os.getcwd, ())


def test_safe_pickle_refuses_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(ValueError, match="evil.pkl"):
        safe_pickle_load(path)
    good = {"s": "a", "f": 1.5, "arr": np.array(["ab", "c"]), "b": np.zeros(2, bool), "n": None}
    atomic_pickle_dump(path, good)
    back = safe_pickle_load(path)
    assert back["s"] == "a" and back["n"] is None
    np.testing.assert_array_equal(back["arr"], good["arr"])


def _square(key: str) -> dict[str, int]:
    return {"v": int(key) ** 2}


def test_run_tasks_in_process_and_pool(tmp_path: Path) -> None:
    keys = [str(i) for i in range(5)]
    res, st = run_tasks(keys, _square, tmp_path / "a", workers=0, progress=False)
    assert [res[k]["v"] for k in keys] == [0, 1, 4, 9, 16] and st.computed == tuple(keys)
    res2, st2 = run_tasks(keys, _square, tmp_path / "b", workers=2, progress=False)
    assert res2 == res and sorted(st2.computed) == keys
    (tmp_path / "b" / "3.pkl").unlink()
    _, st3 = run_tasks(keys, _square, tmp_path / "b", workers=2, progress=False)
    assert st3.computed == ("3",) and st3.reused == ("0", "1", "2", "4")
    with pytest.raises(ValueError, match="unique"):
        run_tasks(["1", "1"], _square, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="key"):
        run_tasks(["../x"], _square, tmp_path / "c", progress=False)


def test_crop_box_points_overlapping_boxes() -> None:
    pts = np.array(
        [[0.0, 0.0, 0.0, 1.0], [0.9, 0.0, 0.0, 2.0], [1.6, 0.0, 0.0, 3.0], [5.0, 5.0, 5.0, 4.0]], np.float32
    )
    boxes = np.array(
        [
            [0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0],
            [1.0, 0.0, 0.0, 2.0, 1.0, 1.0, math.pi / 2],
            [9, 9, 9, 1, 1, 1, 0],
        ],
        np.float32,
    )
    a, b, c = crop_box_points(pts, boxes)
    # box 0 holds points 0, 1; box 1 (rotated: 1 m along x, 2 m along y) holds point 1 only -- shared point kept
    np.testing.assert_allclose(a, pts[[0, 1]] - [0, 0, 0, 0])
    np.testing.assert_allclose(b, pts[[1]] - np.array([1.0, 0, 0, 0], np.float32))
    assert c.shape == (0, 4) and c.dtype == np.float32
