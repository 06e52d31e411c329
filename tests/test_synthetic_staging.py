"""Synthetic data sets are written atomically (``datasets/synthetic/staging.py``): into a hidden sibling folder,
moved into place when complete. A generation killed half-way (SIGKILL in a subprocess, or an exception in the
writer) leaves no folder that looks like a data set, and the next run -- ``generate`` or the training tool's
``prepare_data`` -- removes the leftover and succeeds, with files identical to an uninterrupted generation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from perception.config import load_config
from perception.datasets.synthetic import SyntheticParams, dataset_marker, generate, kitti_writer
from perception.datasets.synthetic.staging import PARTIAL_INFIX, remove_partial_leftovers, write_staged
from perception.engine.data import build_dataset, prepare_data

REPO = Path(__file__).resolve().parents[1]
KITTI = SyntheticParams(format="kitti", scenes=3, samples=2, sweeps=0, cameras="none", seed=7)
OVERRIDES = [
    "synthetic.scenes=3",
    "synthetic.samples=2",
    "synthetic.cameras=front",
    "synthetic.seed=7",
]  # infos need images


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _partials(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}{PARTIAL_INFIX}*"))


@pytest.fixture(scope="module")
def clean_kitti(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of an uninterrupted generation of ``KITTI``."""
    out = tmp_path_factory.mktemp("clean") / "kitti"
    generate(KITTI, out)
    return _files(out)


def _kill_during_generation(code: str, frames_before_kill: int = 2) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter whose KITTI writer SIGKILLs the process at frame
    ``frames_before_kill + 1`` (files of earlier frames are written by then)."""
    prelude = f"""
        import os, signal
        from perception.datasets.synthetic import kitti_writer
        _frame_for, _calls = kitti_writer.frame_for, [0]
        def frame_for(*args):
            _calls[0] += 1
            if _calls[0] > {frames_before_kill}:
                os.kill(os.getpid(), signal.SIGKILL)
            return _frame_for(*args)
        kitti_writer.frame_for = frame_for
    """
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(prelude) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
    )
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    return run


def test_kill_during_generate_leaves_nothing_that_looks_complete(
    tmp_path: Path, clean_kitti: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "kitti"
    _kill_during_generation(
        f"""
        from perception.datasets.synthetic import SyntheticParams, generate
        generate(SyntheticParams(**{KITTI.model_dump()!r}), {str(out)!r})
        """
    )
    assert not out.exists()  # not even training/: nothing a later run could take for the data set
    (leftover,) = _partials(out)
    assert (leftover / "training" / "velodyne" / "000000.bin").is_file()  # the killed run had written frames
    with caplog.at_level("WARNING"):
        summary = generate(KITTI, out)
    assert f"removing {leftover}: a partial data set left by an interrupted generation" in caplog.text
    assert summary["root"] == str(out) and _partials(out) == []
    assert _files(out) == clean_kitti


def test_kill_while_train_tool_generates_then_rerun_trains(tmp_path: Path) -> None:
    """The reported case: tools/train.py's prepare_data killed while generating; the rerun works."""
    root = tmp_path / "data" / "kitti"
    overrides = [f"data.root={root}", *OVERRIDES]
    _kill_during_generation(
        f"""
        from perception.config import load_config
        from perception.engine.data import prepare_data
        prepare_data(load_config({str(REPO / "configs" / "demo_kitti.yaml")!r}, {overrides!r}))
        """,
        frames_before_kill=3,
    )
    assert not root.exists() and len(_partials(root)) == 1
    cfg = load_config(REPO / "configs" / "demo_kitti.yaml", overrides)
    prepare_data(cfg)  # before: training/ existed, so every rerun failed with "KITTI split file not found"
    assert _partials(root) == []
    train = build_dataset(cfg, "train", "val")
    assert len(train) == len((root / "ImageSets" / "train.txt").read_text().split()) == 2  # type: ignore[arg-type]


def test_exception_in_writer_removes_partial_folder(
    tmp_path: Path, clean_kitti: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "kitti"
    calls = [0]
    frame_for = kitti_writer.frame_for

    def failing(*args: object) -> kitti_writer.KittiFrame:
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt  # Ctrl-C mid-generation
        return frame_for(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(kitti_writer, "frame_for", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(KITTI, out)
    assert not out.exists() and _partials(out) == []
    monkeypatch.setattr(kitti_writer, "frame_for", frame_for)
    generate(KITTI, out)
    assert _files(out) == clean_kitti


def test_into_an_existing_folder_marker_last(tmp_path: Path) -> None:
    """A root that holds other things (another nuScenes version, info files) gets the entries moved in."""
    out = tmp_path / "root"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "other.bin").write_bytes(b"kept")
    (out / "infos.pkl").write_bytes(b"kept too")
    order: list[str] = []
    replace = os.replace

    def recording(src: object, dst: object) -> None:
        order.append("/".join(Path(str(dst)).relative_to(out).parts[:1]) or "<root>")
        replace(src, dst)  # type: ignore[arg-type]

    def write(folder: Path) -> str:
        (folder / "samples").mkdir()
        (folder / "samples" / "new.bin").write_bytes(b"new")
        (folder / "v1.0-mini").mkdir()
        (folder / "v1.0-mini" / "scene.json").write_text("[]")
        (folder / "maps").mkdir()
        return "done"

    os.replace = recording  # type: ignore[assignment]
    try:
        assert write_staged(out, write, marker="v1.0-mini") == "done"
    finally:
        os.replace = replace
    assert order[0] == "<root>"  # the whole folder first (refused: out is not empty), then entry by entry
    assert order[-1] == "v1.0-mini" and "v1.0-mini" not in order[:-1] and "samples" in order
    assert _files(out) == {
        "infos.pkl": b"kept too",
        "samples/new.bin": b"new",
        "samples/other.bin": b"kept",
        "v1.0-mini/scene.json": b"[]",
    }
    assert (out / "maps").is_dir() and _partials(out) == []


def test_into_an_empty_folder_and_a_missing_marker(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    write_staged(out, lambda folder: (folder / "training").mkdir(), marker="training")
    assert (out / "training").is_dir() and _partials(out) == []
    (tmp_path / "plain").mkdir()
    write_staged(tmp_path / "new", lambda folder: (folder / "training").mkdir(), marker="training")
    assert (tmp_path / "new").stat().st_mode == (tmp_path / "plain").stat().st_mode  # the umask's, not 0700
    with pytest.raises(FileNotFoundError, match="wrote no 'v1.0-mini'"):
        write_staged(tmp_path / "other", lambda folder: None, marker="v1.0-mini")
    assert not (tmp_path / "other").exists() and _partials(tmp_path / "other") == []


def test_partial_folder_of_a_running_generation_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "kitti"
    running = tmp_path / f".kitti{PARTIAL_INFIX}{os.getpid()}-abc"  # this process: alive
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    gone = tmp_path / f".kitti{PARTIAL_INFIX}{int(dead.stdout)}-xyz"
    unrelated = tmp_path / ".kitti-notes"
    for folder in (running, gone, unrelated):
        folder.mkdir()
    assert remove_partial_leftovers(out) == [gone]
    assert running.is_dir() and unrelated.is_dir() and not gone.exists()


def test_dataset_marker() -> None:
    assert dataset_marker("kitti") == "training" and dataset_marker("nuscenes", "v1.0-mini") == "v1.0-mini"
    with pytest.raises(ValueError, match="needs its version"):
        dataset_marker("nuscenes")


def test_folder_left_by_the_old_non_atomic_writer_is_named(tmp_path: Path) -> None:
    """training/ without ImageSets (what an interrupted generation left before): a message, not a traceback
    deep in info creation."""
    root = tmp_path / "kitti"
    (root / "training" / "velodyne").mkdir(parents=True)
    cfg = load_config(REPO / "configs" / "demo_kitti.yaml", [f"data.root={root}", *OVERRIDES])
    with pytest.raises(FileNotFoundError, match=r"holds training/ but not ImageSets/train.txt: .* delete"):
        prepare_data(cfg)


def test_nuscenes_generation_is_staged_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from perception.datasets.synthetic import nuscenes_writer

    params = SyntheticParams(format="nuscenes", scenes=2, samples=2, sweeps=1, cameras="none", seed=3)
    out = tmp_path / "nuscenes"
    write_scene = nuscenes_writer._write_scene

    def failing(tables: object, p: object, folder: Path, index: int, *args: object) -> None:
        if index == 1:
            assert (folder / "samples" / "LIDAR_TOP").is_dir() and any(
                (folder / "samples" / "LIDAR_TOP").iterdir()
            )
            raise OSError("disk full")
        write_scene(tables, p, folder, index, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(nuscenes_writer, "_write_scene", failing)
    with pytest.raises(OSError, match="disk full"):
        generate(params, out)
    assert not out.exists() and _partials(out) == []
    monkeypatch.setattr(nuscenes_writer, "_write_scene", write_scene)
    summary = generate(params, out)
    assert summary["dataroot"] == str(out) and (out / "v1.0-mini" / "sample.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["maps", "samples", "sweeps", "v1.0-mini"]
