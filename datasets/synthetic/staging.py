"""Write a data set folder all at once: into a hidden sibling, moved into place when complete.

A generator killed half-way (kill -9, a power cut) must not leave a folder that looks like a data set: the
training tool would take it for one and fail on every later run (e.g. "split file not found"). A data set counts
as present when its *marker* entry exists (:func:`dataset_marker`: ``training/`` for KITTI, the version folder for
nuScenes). :func:`write_staged` lets ``write(folder)`` fill a fresh hidden sibling of ``out``,
``.<name>.partial-<pid>-<random>``, ``fsync``-s its files, then moves it into place:

* ``out`` missing or an empty folder: one ``os.replace`` of the whole folder (atomic);
* ``out`` holding other things (another nuScenes version, info files): each entry is moved in (folders merged
  file by file, files replaced), the marker last, so ``out`` does not count as holding this data set before
  everything else is in place.

On an exception (Ctrl-C included) the partial folder is removed at once. One left by a killed run (its process
is gone) is removed, with a warning, when the next run starts.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from perception.io_atomic import fsync_dir

__all__ = ["PARTIAL_INFIX", "dataset_marker", "remove_partial_leftovers", "write_staged"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: A partial folder of ``out`` is named ``.<out.name><PARTIAL_INFIX><pid>-<random>``.
PARTIAL_INFIX = ".partial-"


def dataset_marker(dataset: Literal["nuscenes", "kitti"], version: str | None = None) -> str:
    """The entry of a data set root whose presence means the data set is there (written last by
    :func:`write_staged`): ``training`` for KITTI, the version folder (e.g. ``v1.0-mini``) for nuScenes."""
    if dataset == "kitti":
        return "training"
    if dataset == "nuscenes":
        if not version:
            raise ValueError("a nuScenes data set needs its version (e.g. 'v1.0-mini')")
        return version
    raise ValueError(f"unknown data set {dataset!r}: expected 'nuscenes' or 'kitti'")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_partial_leftovers(out: str | os.PathLike[str]) -> list[Path]:
    """Remove the partial folders of ``out`` left by generations that were killed (their process is gone).

    Returns:
        the folders removed (each logged as a warning).
    """
    out = Path(out).absolute()
    pattern = re.compile(re.escape(f".{out.name}{PARTIAL_INFIX}") + r"(\d+)-")
    removed = []
    for path in sorted(out.parent.glob(f".{out.name}{PARTIAL_INFIX}*")):
        m = pattern.match(path.name)
        if m is None or not path.is_dir() or _pid_alive(int(m.group(1))):
            continue  # not ours, or a generation still running
        logger.warning("removing %s: a partial data set left by an interrupted generation", path)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _fsync_tree(folder: Path) -> None:
    """``fsync`` every file and folder under ``folder`` (so the rename publishes complete files)."""
    for dirpath, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)


def _move_into(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``: a folder onto an existing folder is merged entry by entry; anything else is one
    ``os.replace`` (a file replaces a file)."""
    if src.is_dir() and dst.is_dir() and not dst.is_symlink():
        for child in sorted(src.iterdir()):
            _move_into(child, dst / child.name)
        fsync_dir(dst)
    else:
        os.replace(src, dst)


def _new_partial(out: Path) -> Path:
    """A fresh partial folder of ``out``, with the mode an ordinary ``mkdir`` gives (the umask's, which
    ``tempfile.mkdtemp``'s 0700 would not be: the data set must stay readable to whom it would be)."""
    while True:
        path = out.parent / f".{out.name}{PARTIAL_INFIX}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def write_staged(out: str | os.PathLike[str], write: Callable[[Path], T], *, marker: str) -> T:
    """Run ``write(folder)`` on a fresh partial folder beside ``out`` and move its content into ``out``.

    Args:
        out: the data set root (created; its parent too).
        write: fills the folder it is given; its return value is returned.
        marker: the top-level entry ``write`` makes that marks the data set as present (:func:`dataset_marker`);
            moved last.

    Raises:
        FileNotFoundError: ``write`` made no ``marker`` entry (nothing is moved).
    """
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_partial_leftovers(out)
    partial = _new_partial(out)
    try:
        result = write(partial)
        if not (partial / marker).exists():
            raise FileNotFoundError(f"the generator wrote no {marker!r} into {partial}")
        _fsync_tree(partial)
        try:
            os.replace(partial, out)  # out missing, or an empty folder
        except OSError:
            if not out.is_dir():
                raise
            entries = sorted(partial.iterdir(), key=lambda p: (p.name == marker, p.name))
            for entry in entries:
                _move_into(entry, out / entry.name)
            shutil.rmtree(partial)
        fsync_dir(out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return result
