"""GT database file format: round trip, atomic / idempotent writes, parallel writers, clear errors."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

from perception.datasets.gt_database import (
    FORMAT_VERSION,
    INDEX_NAME,
    GTDatabase,
    GTObject,
    read_sample_entries,
    write_index,
    write_sample_objects,
)

CHANNELS = ("x", "y", "z", "intensity", "time_lag")


def make_object(rng: np.random.Generator, cls: str, token: str, n: int, difficulty: int = 0) -> GTObject:
    box = np.concatenate([rng.uniform(-20, 20, 3), rng.uniform(0.5, 4, 3), rng.uniform(-3, 3, 1)])
    return GTObject(
        cls, box.astype(np.float32), rng.normal(size=(n, 5)).astype(np.float32), difficulty, token
    )


def build(tmp_path: Path, samples: dict[str, list[GTObject]]) -> GTDatabase:
    entries = []
    for token, objs in samples.items():
        entries += write_sample_objects(tmp_path, token, objs)
    write_index(tmp_path, entries, CHANNELS)
    return GTDatabase(tmp_path)


def assert_same_object(a: GTObject, b: GTObject) -> None:
    assert a.class_name == b.class_name and a.difficulty == b.difficulty and a.sample_token == b.sample_token
    np.testing.assert_array_equal(a.box, b.box)
    np.testing.assert_array_equal(a.points, b.points)
    assert a.points.dtype == np.float32 and a.box.dtype == np.float32


def test_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    samples = {
        "s0": [make_object(rng, "car", "s0", 7), make_object(rng, "pedestrian", "s0", 0, 1)],
        "s1": [make_object(rng, "car", "s1", 3, 2), make_object(rng, "traffic.cone", "s1", 12)],
    }
    db = build(tmp_path, samples)
    assert db.point_channels == CHANNELS
    assert db.classes == ("car", "pedestrian", "traffic.cone")
    assert len(db) == 4
    written = [o for objs in samples.values() for o in objs]
    loaded = [db.load(e) for c in db.classes for e in db.entries(c)]
    for obj in written:
        match = [o for o in loaded if o.sample_token == obj.sample_token and np.array_equal(o.box, obj.box)]
        assert len(match) == 1
        assert_same_object(match[0], obj)
    np.testing.assert_array_equal(db.boxes("car"), np.stack([samples["s0"][0].box, samples["s1"][0].box]))
    assert db.entries("bus") == [] and db.boxes("bus").shape == (0, 7)


def test_velocity_boxes_and_empty_object(tmp_path: Path) -> None:
    box = np.array([1, 2, 0, 4, 2, 1.5, 0.5, 3.0, -1.0], dtype=np.float32)
    obj = GTObject("car", box, np.zeros((0, 5), np.float32), 0, "t")
    db = build(tmp_path, {"t": [obj]})
    assert_same_object(db.load(db.entries("car")[0]), obj)
    assert db.boxes("car").shape == (1, 9)


def test_filter(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    objs = [make_object(rng, "car", "a", n, d) for n, d in [(1, 0), (5, 1), (10, 2), (20, -1)]]
    objs.append(make_object(rng, "pedestrian", "a", 2, 0))
    db = build(tmp_path, {"a": objs})
    f = db.filter(min_points={"car": 5})
    assert sorted(e.num_points for e in f.entries("car")) == [5, 10, 20]
    assert len(f.entries("pedestrian")) == 1  # class not listed: no minimum
    f = db.filter(min_points={"car": 5}, max_difficulty=1)
    assert sorted(e.num_points for e in f.entries("car")) == [5, 20]
    f = db.filter(drop_difficulties={-1}, min_points={"pedestrian": 3})
    assert sorted(e.num_points for e in f.entries("car")) == [1, 5, 10]
    assert f.classes == ("car",) and f.point_channels == CHANNELS
    assert len(db) == 5  # the original is unchanged
    with pytest.raises(ValueError, match="min_points"):
        db.filter(min_points={"car": -1})


def test_rewrite_is_idempotent_and_leaves_no_temp_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    objs = [make_object(rng, "car", "s", 4), make_object(rng, "bus", "s", 6), make_object(rng, "car", "s", 1)]
    first = write_sample_objects(tmp_path, "s", objs)
    snapshot = {p.name: p.read_bytes() for p in (tmp_path / "objects" / "s").iterdir()}
    second = write_sample_objects(tmp_path, "s", objs)
    assert first == second
    assert {p.name: p.read_bytes() for p in (tmp_path / "objects" / "s").iterdir()} == snapshot
    # a rerun producing fewer objects removes the files the earlier run left behind
    third = write_sample_objects(tmp_path, "s", objs[:1])
    assert sorted(p.name for p in (tmp_path / "objects" / "s").iterdir()) == ["0000_car.bin", "manifest.json"]
    write_index(tmp_path, third, CHANNELS)
    every = [p.name for p in tmp_path.rglob("*")]
    assert not [n for n in every if n.endswith(".tmp") or n.startswith(".")], every


def test_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)  # every atomic write goes through os.replace
    obj = make_object(np.random.default_rng(3), "car", "s", 4)
    with pytest.raises(OSError, match="disk full"):
        write_sample_objects(tmp_path, "s", [obj])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert read_sample_entries(tmp_path, "s") is None


def test_read_sample_entries_for_resume(tmp_path: Path) -> None:
    obj = make_object(np.random.default_rng(4), "car", "s", 4)
    assert read_sample_entries(tmp_path, "s") is None
    entries = write_sample_objects(tmp_path, "s", [obj])
    assert read_sample_entries(tmp_path, "s") == entries
    (tmp_path / "objects" / "s" / "0000_car.bin").unlink()
    assert read_sample_entries(tmp_path, "s") is None
    (tmp_path / "objects" / "s" / "manifest.json").write_text("{not json")
    assert read_sample_entries(tmp_path, "s") is None


def _write_one(args: tuple[str, str, int]) -> list:
    db_dir, token, seed = args
    rng = np.random.default_rng(seed)
    return write_sample_objects(db_dir, token, [make_object(rng, "car", token, 50 + i) for i in range(20)])


def test_parallel_writers(tmp_path: Path) -> None:
    jobs = [(str(tmp_path), f"tok{i}", i) for i in range(8)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_write_one, jobs)
    entries = [e for r in results for e in r]
    write_index(tmp_path, entries, CHANNELS)
    db = GTDatabase(tmp_path)
    assert len(db) == 160
    for job, res in zip(jobs, results, strict=True):
        rng = np.random.default_rng(job[2])
        for i, e in enumerate(res):
            assert_same_object(db.load(e), make_object(rng, "car", job[1], 50 + i))


def test_wrong_size_bin_names_file(tmp_path: Path) -> None:
    db = build(tmp_path, {"s": [make_object(np.random.default_rng(5), "car", "s", 4)]})
    path = tmp_path / "objects" / "s" / "0000_car.bin"
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"0000_car\.bin has 76 bytes, expected 80.*multiple of 20"):
        db.load(db.entries("car")[0])
    with pytest.raises(ValueError, match=r"0000_car\.bin has 76 bytes"):
        GTDatabase(tmp_path)
    assert len(GTDatabase(tmp_path, verify=False)) == 1  # only checked when read
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"0000_car\.bin is missing"):
        GTDatabase(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"0000_car\.bin"):
        write_index(tmp_path, db.entries("car"), CHANNELS)


def test_index_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="index.json not found"):
        GTDatabase(tmp_path)
    build(tmp_path, {"s": [make_object(np.random.default_rng(6), "car", "s", 4)]})
    index = tmp_path / INDEX_NAME
    good = json.loads(index.read_text())
    index.write_text('{"format_version": 1, "point_ch')
    with pytest.raises(ValueError, match="index.json is not valid JSON"):
        GTDatabase(tmp_path)
    index.write_text(json.dumps({**good, "format_version": 99}))
    with pytest.raises(ValueError, match=f"format_version 99, expected {FORMAT_VERSION}"):
        GTDatabase(tmp_path)
    index.write_text(json.dumps({k: v for k, v in good.items() if k != "entries"}))
    with pytest.raises(ValueError, match="malformed"):
        GTDatabase(tmp_path)
    bad = dict(good, entries=[dict(good["entries"][0], box=[1, 2, 3])])
    index.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="entry 0: malformed object record"):
        GTDatabase(tmp_path)
    index.write_text(json.dumps(dict(good, box_dim=9)))
    with pytest.raises(ValueError, match="box_dim = 9"):
        GTDatabase(tmp_path)
    bad = dict(good, entries=[dict(good["entries"][0], path="../../etc/passwd")])
    index.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="relative inside the database"):
        GTDatabase(tmp_path)


def test_bad_input() -> None:
    pts = np.zeros((2, 5), np.float32)
    box = np.ones(7, np.float32)
    with pytest.raises(TypeError, match="GTObject.box must be a float32"):
        GTObject("car", box.astype(np.float64), pts, 0, "t")
    with pytest.raises(ValueError, match=r"GTObject.box must have shape \(7,\)"):
        GTObject("car", np.ones(8, np.float32), pts, 0, "t")
    with pytest.raises(ValueError, match="NaN"):
        GTObject("car", np.full(7, np.nan, np.float32), pts, 0, "t")
    with pytest.raises(ValueError, match="negative size"):
        GTObject("car", np.array([0, 0, 0, -1, 1, 1, 0], np.float32), pts, 0, "t")
    with pytest.raises(TypeError, match="GTObject.points must be a float32"):
        GTObject("car", box, pts.astype(np.float64), 0, "t")
    with pytest.raises(ValueError, match=r"GTObject.points must have shape \(n, C>=3\)"):
        GTObject("car", box, np.zeros((2, 2), np.float32), 0, "t")
    with pytest.raises(ValueError, match="GTObject.points contains NaN"):
        GTObject("car", box, np.full((2, 5), np.inf, np.float32), 0, "t")
    with pytest.raises(TypeError, match="difficulty"):
        GTObject("car", box, pts, 0.5, "t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class_name"):
        GTObject("", box, pts, 0, "t")
    obj = GTObject("car", box, pts, 0, "t")
    with pytest.raises(ValueError, match="sample_token must be"):
        write_sample_objects("/nonexistent", "../escape", [obj])
    with pytest.raises(ValueError, match=r"objects\[0\].sample_token is 't', expected 'u'"):
        write_sample_objects("/nonexistent", "u", [obj])


def test_write_index_checks(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    entries = write_sample_objects(tmp_path, "s", [make_object(rng, "car", "s", 4)])
    with pytest.raises(ValueError, match="has 80 bytes, expected 64"):  # 4 points x 5 channels, not 4
        write_index(tmp_path, entries, ("x", "y", "z", "intensity"))
    with pytest.raises(ValueError, match="starting with"):
        write_index(tmp_path, entries, ("intensity", "x", "y", "z", "t"))
    box9 = GTObject("bus", np.zeros(9, np.float32), np.zeros((1, 5), np.float32), 0, "u")
    entries += write_sample_objects(tmp_path, "u", [box9])
    with pytest.raises(ValueError, match="same length"):
        write_index(tmp_path, entries, CHANNELS)
    assert not (tmp_path / INDEX_NAME).exists()
