"""One split of an info-file run, shared by the KITTI and nuScenes info builders.

Per-sample tasks (run by :func:`perception.datasets.prep_runner.run_tasks`, resumably) return
``{"info": <info dict>, "gt": [<GT-database record JSON>, ...]}``; :func:`build_split` runs them, writes the
info file (``header`` + ``"infos"`` in key order, atomically) and, with a GT database, its ``index.json``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from perception.io_atomic import atomic_pickle_dump

from .gt_database import GTDatabaseEntry, read_sample_entries, write_index
from .prep_runner import PrepStats, run_tasks

__all__ = ["build_split", "task_result"]


def task_result(info: Mapping[str, Any], entries: Sequence[GTDatabaseEntry]) -> dict[str, Any]:
    """What a per-sample task returns: the sample's info dict and its GT-database records (JSON form)."""
    return {"info": info, "gt": [e.to_json() for e in entries]}


def build_split(
    keys: Sequence[str],
    task: Callable[[str], dict[str, Any]],
    cache_dir: str | os.PathLike[str],
    *,
    info_path: str | os.PathLike[str],
    header: Mapping[str, Any],
    db_dir: Path | None,
    point_channels: Sequence[str],
    key_kind: str,
    workers: int,
    progress: bool,
    desc: str,
) -> PrepStats:
    """Run ``task`` over ``keys`` and write the split's info file (and GT-database index when ``db_dir``).

    Args:
        keys: sample tokens / frame ids, in the order the info file lists them.
        task: picklable ``key -> task_result(...)``; it writes the key's GT objects when ``db_dir`` is set.
        cache_dir: folder of the resumable part files.
        info_path: the info file to write (pickle, protocol 4, atomic).
        header: the info file's keys before ``"infos"`` (format name, version, split, ...).
        db_dir: GT-database folder of this split, or None for none; a finished part whose GT files are gone is
            recomputed.
        point_channels: names of the GT objects' point columns (for the index).
        key_kind: ``"sample"`` / ``"frame"``, names the key in errors about a record.
        workers, progress, desc: passed to :func:`~perception.datasets.prep_runner.run_tasks`.

    Returns:
        The run's :class:`~perception.datasets.prep_runner.PrepStats`.
    """
    valid = (lambda k: read_sample_entries(db_dir, k) is not None) if db_dir is not None else None
    results, stats = run_tasks(
        keys, task, cache_dir, workers=workers, desc=desc, progress=progress, still_valid=valid
    )
    atomic_pickle_dump(info_path, {**header, "infos": [results[k]["info"] for k in keys]})
    if db_dir is not None:
        entries = [GTDatabaseEntry.from_json(r, f"{key_kind} {k}") for k in keys for r in results[k]["gt"]]
        write_index(db_dir, entries, point_channels)
    return stats
