"""perception.io_atomic: content written, old file intact and no temporary files left on failure."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path
from typing import IO

import numpy as np
import pytest

import perception.io_atomic as io_atomic
from perception.io_atomic import (
    atomic_json_dump,
    atomic_pickle_dump,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    fsync_dir,
)


def test_content_written_and_parents_created(tmp_path: Path) -> None:
    p = atomic_write_bytes(tmp_path / "a" / "b" / "x.bin", b"\x00\x01abc")
    assert p == tmp_path / "a" / "b" / "x.bin" and p.read_bytes() == b"\x00\x01abc"
    t = atomic_write_text(str(tmp_path / "t.txt"), "héllo\nwörld\r\n")
    assert t.read_bytes() == "héllo\nwörld\r\n".encode()  # utf-8, no newline translation
    j = atomic_json_dump(tmp_path / "j.json", {"k": [1, 2.5, "s"]}, indent=1, sort_keys=True)
    assert json.loads(j.read_text()) == {"k": [1, 2.5, "s"]} and j.read_text().startswith("{\n")
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    k = atomic_pickle_dump(tmp_path / "k.pkl", {"arr": arr})
    with open(k, "rb") as f:
        np.testing.assert_array_equal(pickle.load(f)["arr"], arr)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["a", "j.json", "k.pkl", "t.txt"]


def test_overwrite_replaces_whole_file(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    atomic_write_text(p, "a long first version\n" * 10)
    atomic_write_text(p, "short")
    assert p.read_text() == "short"
    atomic_write_bytes(p, b"", sync_dir=False)
    assert p.read_bytes() == b""


def test_streaming_writer_and_tmp_prefix(tmp_path: Path) -> None:
    seen: list[str] = []

    def write(f: IO[bytes]) -> None:
        seen.extend(q.name for q in tmp_path.iterdir())
        f.write(b"part1,")
        f.write(b"part2")

    p = atomic_write(tmp_path / "s.dat", write, tmp_prefix=".tmp-")
    assert p.read_bytes() == b"part1,part2"
    assert len(seen) == 1 and seen[0].startswith(".tmp-s.dat.") and seen[0].endswith(".tmp")
    assert [q.name for q in tmp_path.iterdir()] == ["s.dat"]


def test_writer_failure_keeps_old_file_and_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "x.bin"
    atomic_write_bytes(p, b"old")

    def failing(f: IO[bytes]) -> None:
        f.write(b"half of the new cont")
        raise KeyboardInterrupt  # BaseException too: Ctrl-C mid-write must clean up

    with pytest.raises(KeyboardInterrupt):
        atomic_write(p, failing)
    assert p.read_bytes() == b"old"
    assert [q.name for q in tmp_path.iterdir()] == ["x.bin"]


def test_rename_failure_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.json"
    atomic_json_dump(p, {"v": 1})

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_json_dump(p, {"v": 2})
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(tmp_path / "new.bin", b"data")  # no old file: nothing appears
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"v": 1}
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]


def test_fsync_failure_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")

    def boom(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write_text(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old" and [q.name for q in tmp_path.iterdir()] == ["x.txt"]


def test_unserialisable_input_touches_nothing(tmp_path: Path) -> None:
    p = tmp_path / "x.json"
    atomic_json_dump(p, [1])
    with pytest.raises(ValueError):
        atomic_json_dump(p, [math.nan], allow_nan=False)
    with pytest.raises(TypeError):
        atomic_json_dump(p, {"f": object()})
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        atomic_pickle_dump(tmp_path / "y.pkl", lambda: 0)
    with pytest.raises(TypeError, match="data must be bytes"):
        atomic_write_bytes(p, "not bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text must be a str"):
        atomic_write_text(p, b"bytes")  # type: ignore[arg-type]
    assert json.loads(p.read_text()) == [1] and [q.name for q in tmp_path.iterdir()] == ["x.json"]


def test_directory_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = io_atomic.fsync_dir
    monkeypatch.setattr(io_atomic, "fsync_dir", lambda d: calls.append(str(d)) or real(d))
    atomic_write_bytes(tmp_path / "a.bin", b"1")
    atomic_write_bytes(tmp_path / "b.bin", b"2", sync_dir=False)
    assert calls == [str(tmp_path)]
    fsync_dir(tmp_path / "does-not-exist")  # best effort: no error
    fsync_dir(tmp_path)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_new_files_honour_the_umask_and_replaced_files_keep_their_mode(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        assert io_atomic._umask() == umask
        p = atomic_write_bytes(tmp_path / "new.bin", b"x")
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask
        with open(tmp_path / "plain.bin", "wb") as f:  # what ordinary creation gives
            f.write(b"x")
        assert (tmp_path / "plain.bin").stat().st_mode & 0o777 == p.stat().st_mode & 0o777
    finally:
        os.umask(old)
    os.chmod(p, 0o640)
    atomic_pickle_dump(p, {"a": 1})
    assert p.stat().st_mode & 0o777 == 0o640
