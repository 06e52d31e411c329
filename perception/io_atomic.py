"""Atomic file writes: a reader sees the old complete file or the new complete file, never a partial one.

Every writer here goes the same way: the content is written to a temporary file in the destination's folder
(so the rename never crosses a filesystem), flushed and ``fsync``-ed, renamed over the destination with
``os.replace`` (atomic on POSIX), then the folder itself is ``fsync``-ed so the rename survives a power loss.
On any error (including ``KeyboardInterrupt``) the temporary file is removed, the error re-raised and an
existing destination is left untouched. Parent folders are created.

Temporary files are named ``<tmp_prefix><name>.<random>.tmp`` (default prefix ``"."``, i.e. hidden); a process
killed mid-write can leave one behind, which callers that care (the checkpoint manager) clean up by prefix.

Permissions: as with ordinary file creation, a new file gets ``0o666`` minus the process umask (``tempfile``
alone would make every file ``0o600``, unreadable to the other users of a shared machine), and a file that is
replaced keeps its permission bits, as ``open(path, "w")`` keeps them.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_json_dump",
    "atomic_pickle_dump",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
]


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """``fsync`` a folder so renames inside it are durable; best effort (a no-op where folders cannot be
    opened or synced, e.g. some network filesystems or Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (``/proc/self/status``), else by the
    classic set-and-restore."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """Permission bits for ``path``: those of the file it replaces, else ``0o666 & ~umask``."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[bytes]], object],
    *,
    tmp_prefix: str = ".",
    sync_dir: bool = True,
) -> Path:
    """Create ``path`` atomically from ``write(f)``, which writes the content to the binary file object ``f``.

    Args:
        path: destination file; its parent folders are created.
        write: called once with the open temporary file (binary mode); for streaming writers such as
            ``torch.save``.
        tmp_prefix: prefix of the temporary file's name (it is followed by ``path``'s name).
        sync_dir: ``fsync`` the folder after the rename. Pass ``False`` when writing many files into one
            folder and call :func:`fsync_dir` once afterwards.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{tmp_prefix}{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, sync_dir: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return atomic_write(path, lambda f: f.write(data), sync_dir=sync_dir)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", sync_dir: bool = True
) -> Path:
    """Write the string ``text`` to ``path`` atomically, encoded with ``encoding`` (no newline changes)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding), sync_dir=sync_dir)


def atomic_json_dump(
    path: str | os.PathLike[str], obj: Any, *, sync_dir: bool = True, **json_kwargs: Any
) -> Path:
    """Serialise ``obj`` with ``json.dumps(obj, **json_kwargs)`` and write it to ``path`` atomically (UTF-8).

    The object is serialised before anything touches the disk, so an unserialisable object (or NaN with
    ``allow_nan=False``) raises ``TypeError`` / ``ValueError`` and leaves ``path`` as it was.
    """
    return atomic_write_text(path, json.dumps(obj, **json_kwargs), sync_dir=sync_dir)


def atomic_pickle_dump(path: str | os.PathLike[str], obj: Any, *, protocol: int = 4) -> Path:
    """Pickle ``obj`` (default protocol 4) to ``path`` atomically; it is pickled before any file is made."""
    return atomic_write_bytes(path, pickle.dumps(obj, protocol=protocol))
