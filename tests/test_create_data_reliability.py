"""``tools/create_data.py`` on changed, bad and corrupt inputs, and when it is killed (issue 13).

Edited inputs are recomputed (and only they), zero-size boxes are dropped with a count and their names, NaN
annotations and missing folders end in one line, corrupt cache parts are recomputed, and pool workers end with a
parent killed by SIGKILL.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from nuscenes.utils.splits import create_splits_scenes

from perception.datasets.gt_database import GTDatabase
from perception.datasets.kitti_infos import create_kitti_infos, load_kitti_infos, read_image_set
from perception.datasets.nuscenes_infos import create_nuscenes_infos
from perception.datasets.prep_runner import atomic_pickle_dump, safe_pickle_load
from perception.datasets.synthetic import SyntheticParams, generate
from perception.formats.nuscenes_infos import gt_database_dir, infos_path, load_nuscenes_infos

_TOOLS = Path(__file__).parents[1] / "tools"
_spec = importlib.util.spec_from_file_location("create_data", _TOOLS / "create_data.py")
assert _spec is not None and _spec.loader is not None
_create_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_create_data)
create_data = _create_data.main

VERSION = "v1.0-mini"
SWEEPS = 2
NUS_CMD = ["--version", VERSION, "--max-sweeps", str(SWEEPS), "--quiet"]


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def nus_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 scenes (one train, one val) of 3 keyframes, 1 sweep each, no cameras."""
    out = tmp_path_factory.mktemp("nus_src")
    params = SyntheticParams(
        format="nuscenes", scenes=2, samples=3, sweeps=1, cameras="none", objects_per_scene=5, seed=4
    )
    generate(params, out)
    return out


@pytest.fixture(scope="module")
def kitti_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 scenes (train, val, test) of 3 frames."""
    out = tmp_path_factory.mktemp("kitti_src")
    params = SyntheticParams(
        format="kitti", scenes=3, samples=3, cameras="front", objects_per_scene=8, seed=2
    )
    generate(params, out)
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _equal(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def _db_summary(db_dir: Path) -> list[tuple[Any, ...]]:
    """Every object of the GT database: source sample, file, box, point count and the points' bytes."""
    db = GTDatabase(db_dir)
    return sorted(
        (e.sample_token, e.path, e.box, e.num_points, db.load(e).points.tobytes())
        for c in db.classes
        for e in db.entries(c)
    )


# ------------------------------------------------------------------------------------------------ nuScenes


def _nus_infos(root: Path, split: str) -> dict[str, dict[str, Any]]:
    """``{sample token: info dict}`` of a split's info file."""
    return {d["token"]: d for d in safe_pickle_load(infos_path(root, VERSION, SWEEPS, split))["infos"]}


def _edit_annotations(root: Path, edit: Callable[[dict[str, Any]], bool]) -> list[str]:
    """Apply ``edit`` to the rows of ``sample_annotation.json`` in place; returns the tokens it changed."""
    path = root / VERSION / "sample_annotation.json"
    rows = json.loads(path.read_text())
    changed = [r["token"] for r in rows if edit(r)]
    path.write_text(json.dumps(rows, indent=0))
    return changed


def _first_annotation_with_next(root: Path, sample_token: str) -> str:
    rows = json.loads((root / VERSION / "sample_annotation.json").read_text())
    return next(r["token"] for r in rows if r["sample_token"] == sample_token and r["next"])


def _tokens_of_split(root: Path, devkit_split: str) -> list[str]:
    """Sample tokens of the first scene of ``devkit_split`` (synthetic scenes name their split)."""
    scenes = {r["name"]: r for r in json.loads((root / VERSION / "scene.json").read_text())}
    name = sorted(set(create_splits_scenes()[devkit_split]) & set(scenes))[0]
    samples = {r["token"]: r for r in json.loads((root / VERSION / "sample.json").read_text())}
    out, tok = [], scenes[name]["first_sample_token"]
    while tok:
        out.append(tok)
        tok = samples[tok]["next"]
    return out


@pytest.mark.parametrize("delete_infos", [True, False])
def test_nuscenes_edited_annotation_is_recomputed(nus_src: Path, tmp_path: Path, delete_infos: bool) -> None:
    """Issue 13.1: an annotation edited in place (a train one and a val one) recomputes exactly the samples
    whose info it changes (its own, and its neighbours' through the velocity); the rest is reused, and the
    outputs equal a clean run on the edited data."""
    root = _copy(nus_src, tmp_path / "nus")
    create_nuscenes_infos(root, VERSION, max_sweeps=SWEEPS, progress=False)
    before = {s: _nus_infos(root, s) for s in ("train", "val")}
    edited = {s: _first_annotation_with_next(root, next(iter(before[s]))) for s in ("train", "val")}

    def move(row: dict[str, Any]) -> bool:
        if row["token"] not in edited.values():
            return False
        row["translation"][0] += 1.75
        return True

    assert len(_edit_annotations(root, move)) == 2
    if delete_infos:
        for split in ("train", "val"):
            infos_path(root, VERSION, SWEEPS, split).unlink()
    stats = create_nuscenes_infos(root, VERSION, max_sweeps=SWEEPS, progress=False)

    clean = _copy(nus_src, tmp_path / "clean")
    _edit_annotations(clean, move)
    create_nuscenes_infos(clean, VERSION, max_sweeps=SWEEPS, progress=False)
    for split in ("train", "val"):
        after = _nus_infos(root, split)
        assert _equal(after, _nus_infos(clean, split))
        differs = {t for t in after if not _equal(after[t], before[split][t])}
        (owner,) = [t for t, d in after.items() if edited[split] in d["annotation_tokens"]]
        st = stats[split]
        assert owner in differs and set(st.computed) == set(st.changed) == differs
        assert set(st.reused) == set(after) - differs and st.reused
        k = list(after[owner]["annotation_tokens"]).index(edited[split])
        assert not np.array_equal(after[owner]["gt_boxes"][k], before[split][owner]["gt_boxes"][k])
    db = gt_database_dir(root, VERSION, SWEEPS)
    assert _db_summary(db) == _db_summary(gt_database_dir(clean, VERSION, SWEEPS))
    # unchanged inputs: everything is reused
    again = create_nuscenes_infos(root, VERSION, max_sweeps=SWEEPS, progress=False)
    assert all(st.computed == () for st in again.values())


def test_nuscenes_zero_size_boxes_dropped(
    nus_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13.4: a zero-size annotation (train and val) is left out of the infos and the GT database, with a
    warning that counts and names the tokens and a count in the summary."""
    root = _copy(nus_src, tmp_path / "nus")
    train_sample, val_sample = (next(iter(_tokens_of_split(nus_src, s))) for s in ("mini_train", "mini_val"))
    targets = {
        _first_annotation_with_next(nus_src, train_sample),
        _first_annotation_with_next(nus_src, val_sample),
    }

    def flatten(row: dict[str, Any]) -> bool:
        if row["token"] not in targets:
            return False
        row["size"][2] = 0.0
        return True

    assert len(_edit_annotations(root, flatten)) == 2
    with caplog.at_level(logging.WARNING):
        assert create_data(["nuscenes", "--root", str(root), *NUS_CMD]) == 0
    out = capsys.readouterr().out
    assert "train: 3 samples computed, 0 reused, 1 zero-size box dropped ->" in out
    assert "val: 3 samples computed, 0 reused, 1 zero-size box dropped ->" in out
    warnings = [r.getMessage() for r in caplog.records if "zero-size" in r.getMessage()]
    assert len(warnings) == 2 and all("dropped 1 zero-size box" in w for w in warnings)
    assert {t for t in targets if any(t in w for w in warnings)} == targets
    for split in ("train", "val"):
        infos, _ = load_nuscenes_infos(infos_path(root, VERSION, SWEEPS, split))
        tokens = {str(t) for i in infos for t in i.annotation_tokens}
        assert tokens and not tokens & targets
        assert all((i.gt_boxes[:, 3:6] > 0).all() for i in infos)
    db = GTDatabase(gt_database_dir(root, VERSION, SWEEPS))
    assert len(db) > 0 and all((db.boxes(c)[:, 3:6] > 0).all() for c in db.classes)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nuscenes_nonfinite_annotation_is_one_line(
    nus_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], value: float
) -> None:
    """Issue 13.5: a NaN / inf translation ends in one error line naming the annotation token (not the
    devkit's bare AssertionError)."""
    root = _copy(nus_src, tmp_path / "nus")
    target = _first_annotation_with_next(nus_src, _tokens_of_split(nus_src, "mini_train")[1])

    def poison(row: dict[str, Any]) -> bool:
        if row["token"] != target:
            return False
        row["translation"][1] = value
        return True

    _edit_annotations(root, poison)
    assert create_data(["nuscenes", "--root", str(root), *NUS_CMD]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("create_data.py nuscenes: error: ")
    assert f"annotation {target}" in err[0] and "non-finite translation" in err[0]
    assert "sample_annotation.json" in err[0]


def test_nuscenes_missing_root_or_version_is_one_line(
    nus_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13.6: a missing dataroot / version folder names the path (not the devkit's AssertionError)."""
    missing = tmp_path / "nope"
    assert create_data(["nuscenes", "--root", str(missing), *NUS_CMD]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"create_data.py nuscenes: error: nuScenes dataroot not found: {missing}"]
    root = _copy(nus_src, tmp_path / "nus")
    cmd = ["nuscenes", "--root", str(root), "--version", "v1.0-trainval", "--max-sweeps", "2", "--quiet"]
    assert create_data(cmd) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"nuScenes version folder not found: {root / 'v1.0-trainval'}" in err[0]
    assert "it holds v1.0-mini" in err[0]


def _without(data: dict[str, Any], *path: str | int) -> dict[str, Any]:
    """A deep copy of ``data`` with the field at ``path`` (keys / list indices, the last one a key) removed."""
    out = pickle.loads(pickle.dumps(data))
    node = out
    for step in path[:-1]:
        node = node[step]
    del node[path[-1]]
    return out


def test_info_file_with_missing_field(nus_src: Path, kitti_src: Path, tmp_path: Path) -> None:
    """Issue 13.6: an info file with the right header whose record lacks a field is a ValueError naming the
    file, the record and the field (was a TypeError / KeyError)."""
    bad = tmp_path / "bad.pkl"
    root = _copy(nus_src, tmp_path / "nus")
    create_nuscenes_infos(root, VERSION, max_sweeps=SWEEPS, progress=False, with_gt_database=False)
    good = safe_pickle_load(infos_path(root, VERSION, SWEEPS, "train"))
    where = f"{bad}: infos[1] (sample {good['infos'][1]['token']})"
    cases = {
        ("infos", 1, "gt_boxes"): f"{where}: missing field 'gt_boxes'",
        ("infos", 1, "sweeps", 0, "time_lag"): f"{where}: sweeps[0]: missing field 'time_lag'",
    }
    for path, message in cases.items():
        atomic_pickle_dump(bad, _without(good, *path))
        with pytest.raises(ValueError) as err:
            load_nuscenes_infos(bad)
        assert str(err.value) == message

    kroot = _copy(kitti_src, tmp_path / "kitti")
    create_kitti_infos(kroot, progress=False, with_gt_database=False)
    good = safe_pickle_load(kroot / "kitti_infos_train.pkl")
    where = f"{bad}: infos[0] (frame {good['infos'][0]['frame_id']!r})"
    cases = {
        ("infos", 0, "calib"): f"{where}: missing field 'calib'",
        ("infos", 0, "annos", "difficulty"): f"{where}: annos: missing field 'difficulty'",
    }
    for path, message in cases.items():
        atomic_pickle_dump(bad, _without(good, *path))
        with pytest.raises(ValueError) as err:
            load_kitti_infos(bad)
        assert str(err.value) == message


# ------------------------------------------------------------------------------------------------ KITTI


def _edit_label(root: Path, frame: str, line: int, edit: Callable[[list[str]], None]) -> None:
    """Apply ``edit`` to the columns of the 1-based ``line`` of ``training/label_2/<frame>.txt``."""
    path = root / "training" / "label_2" / f"{frame}.txt"
    lines = path.read_text().splitlines()
    cols = lines[line - 1].split()
    edit(cols)
    lines[line - 1] = " ".join(cols)
    path.write_text("\n".join(lines) + "\n")


def _first_object_line(root: Path, frame: str) -> int:
    lines = (root / "training" / "label_2" / f"{frame}.txt").read_text().splitlines()
    return next(n for n, line in enumerate(lines, start=1) if line.split() and line.split()[0] != "DontCare")


def _shift_x(cols: list[str]) -> None:
    cols[11] = repr(float(cols[11]) + 0.9)


@pytest.mark.parametrize("delete_infos", [True, False])
def test_kitti_edited_label_is_recomputed(kitti_src: Path, tmp_path: Path, delete_infos: bool) -> None:
    """Issue 13.1: a label line edited in place (train and val), and a velodyne file touched, recompute exactly
    those frames; the outputs equal a clean run on the edited data."""
    root = _copy(kitti_src, tmp_path / "k")
    create_kitti_infos(root, progress=False)
    before = {i.frame_id: i for i in load_kitti_infos(root / "kitti_infos_train.pkl")}
    train, val = read_image_set(root, "train"), read_image_set(root, "val")
    edits = {"train": train[1], "val": val[0]}
    for frame in edits.values():
        _edit_label(root, frame, _first_object_line(root, frame), _shift_x)
    scan = root / "training" / "velodyne" / f"{train[2]}.bin"
    st = scan.stat()
    os.utime(scan, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    if delete_infos:
        for split in ("train", "val"):
            (root / f"kitti_infos_{split}.pkl").unlink()
    stats = create_kitti_infos(root, progress=False)
    assert set(stats["train"].computed) == set(stats["train"].changed) == {train[1], train[2]}
    assert stats["val"].computed == stats["val"].changed == (val[0],)
    assert stats["test"].computed == () and len(stats["train"].reused) == len(train) - 2

    clean = _copy(kitti_src, tmp_path / "clean")
    for frame in edits.values():
        _edit_label(clean, frame, _first_object_line(clean, frame), _shift_x)
    create_kitti_infos(clean, progress=False)
    for split in ("train", "val"):
        assert _equal(
            safe_pickle_load(root / f"kitti_infos_{split}.pkl"),
            safe_pickle_load(clean / f"kitti_infos_{split}.pkl"),
        )
    assert _db_summary(root / "kitti_gt_database") == _db_summary(clean / "kitti_gt_database")
    after = {i.frame_id: i for i in load_kitti_infos(root / "kitti_infos_train.pkl")}
    old, new = before[train[1]].annos, after[train[1]].annos
    assert old is not None and new is not None
    assert new.objects.location[0, 0] - old.objects.location[0, 0] == pytest.approx(0.9)
    np.testing.assert_array_equal(new.objects.location[1:], old.objects.location[1:])


def test_kitti_zero_size_box_dropped(
    kitti_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13.4: a label with a zero size is left out of the infos and the GT database, with a warning naming
    ``label_file:line`` and a count in the summary."""
    root = _copy(kitti_src, tmp_path / "k")
    frame = read_image_set(root, "train")[0]
    line = _first_object_line(root, frame)

    def flatten(cols: list[str]) -> None:
        cols[8:11] = ["0", "1.6", "3.9"]

    _edit_label(root, frame, line, flatten)
    empty = read_image_set(root, "train")[1]  # and a frame without objects: nothing to check, nothing dropped
    (root / "training" / "label_2" / f"{empty}.txt").write_text("")
    with caplog.at_level(logging.WARNING):
        assert create_data(["kitti", "--root", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train: 3 frames computed, 0 reused, 1 zero-size box dropped ->" in out
    assert "val: 3 frames computed, 0 reused ->" in out
    (warning,) = [r.getMessage() for r in caplog.records if "zero-size" in r.getMessage()]
    assert (
        "KITTI train: dropped 1 zero-size box" in warning
        and f"training/label_2/{frame}.txt:{line}" in warning
    )
    labels = (root / "training" / "label_2" / f"{frame}.txt").read_text().split("\n")
    care = sum(1 for s in labels if s.split() and s.split()[0] != "DontCare")
    info = next(i for i in load_kitti_infos(root / "kitti_infos_train.pkl") if i.frame_id == frame)
    assert info.annos is not None and len(info.annos) == care - 1
    assert (info.annos.objects.dimensions > 0).all()
    db = GTDatabase(root / "kitti_gt_database")
    assert sum(len([e for e in db.entries(c) if e.sample_token == frame]) for c in db.classes) == care - 1
    assert all((db.boxes(c)[:, 3:6] > 0).all() for c in db.classes)
    info = next(i for i in load_kitti_infos(root / "kitti_infos_train.pkl") if i.frame_id == empty)
    assert info.annos is not None and len(info.annos) == 0


def test_kitti_nonfinite_label_is_one_line(
    kitti_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13.5 for KITTI (the label reader already refuses it): one error line naming ``file:line``."""
    root = _copy(kitti_src, tmp_path / "k")
    frame = read_image_set(root, "train")[1]
    line = _first_object_line(root, frame)
    _edit_label(root, frame, line, lambda cols: cols.__setitem__(12, "nan"))
    assert create_data(["kitti", "--root", str(root), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"label_2/{frame}.txt:{line}: non-finite value(s) ['nan']" in err[0]


def test_corrupt_cache_parts_are_recomputed(
    kitti_src: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13.9: a truncated part, a non-pickle part and a part of another structure are each detected,
    named in a warning and recomputed; the outputs equal a clean run."""
    root = _copy(kitti_src, tmp_path / "k")
    create_kitti_infos(root, progress=False)
    (cache,) = (root / ".perception_cache").glob("kitti_train_*")
    a, b, c = read_image_set(root, "train")
    data = (cache / f"{a}.pkl").read_bytes()
    (cache / f"{a}.pkl").write_bytes(data[: len(data) // 2])
    (cache / f"{b}.pkl").write_bytes(b"not a pickle at all")
    atomic_pickle_dump(cache / f"{c}.pkl", {"info": 1})
    (root / "kitti_infos_train.pkl").unlink()
    with caplog.at_level(logging.WARNING):
        stats = create_kitti_infos(root, progress=False)
    assert set(stats["train"].corrupt) == set(stats["train"].computed) == {a, b, c}
    (warning,) = [r.getMessage() for r in caplog.records if "corrupt cache part" in r.getMessage()]
    assert f"KITTI train: 3 corrupt cache part(s) in {cache}, recomputing them: {a}, {b}, {c}" in warning
    clean = _copy(kitti_src, tmp_path / "clean")
    create_kitti_infos(clean, progress=False)
    assert _equal(
        safe_pickle_load(root / "kitti_infos_train.pkl"), safe_pickle_load(clean / "kitti_infos_train.pkl")
    )
    assert create_kitti_infos(root, progress=False)["train"].corrupt == ()


# ------------------------------------------------------------------------------------------------ kill -9


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has ended; only its parent has not reaped it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _kill_leftovers(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


_SLOW_CREATE_DATA = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {tools!r})
import create_data
from perception.datasets import kitti_infos

def slow_frame(root, split_dir, with_labels, db_dir, frame_id):
    (Path({pids!r}) / str(os.getpid())).touch()
    time.sleep(120)

if __name__ == "__main__":
    kitti_infos._frame_task = slow_frame  # every frame blocks, so both workers are busy when the parent dies
    sys.exit(create_data.main(["kitti", "--root", {root!r}, "--workers", "2", "--quiet"]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see the worker processes")
def test_workers_end_when_create_data_is_killed(kitti_src: Path, tmp_path: Path) -> None:
    """Issue 13.10: ``kill -9`` of ``create_data kitti --workers 2`` ends both pool workers within seconds."""
    root = _copy(kitti_src, tmp_path / "k")
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    script = tmp_path / "slow_create_data.py"
    script.write_text(_SLOW_CREATE_DATA.format(tools=str(_TOOLS), pids=str(pid_dir), root=str(root)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(pids) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            pids = [int(p.name) for p in pid_dir.iterdir()]
        assert len(pids) == 2, (
            proc.stderr.read().decode() if proc.poll() is not None else "workers did not start"
        )
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert _wait_gone(pids, 10) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
        _kill_leftovers(pids)


_WATCHED_CHILD = """
import multiprocessing as mp, os, sys, time
from perception.datasets.prep_runner import watch_parent

def child(parent):
    watch_parent(parent)
    time.sleep(120)

if __name__ == "__main__":
    p = mp.get_context("fork").Process(target=child, args=(os.getpid(),))
    p.start()
    print(p.pid, flush=True)
    time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to see the child process")
def test_parent_watch_fallback_ends_child(tmp_path: Path) -> None:
    """The portable half of ``end_with_parent`` alone (no ``prctl``): a child watching its parent ends once the
    parent is killed with SIGKILL."""
    script = tmp_path / "watched_child.py"
    script.write_text(_WATCHED_CHILD)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        pids = [int(proc.stdout.readline())]
        assert _alive(pids[0])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert _wait_gone(pids, 10) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        _kill_leftovers(pids)
