"""One split of an info-file run, shared by the KITTI and nuScenes info builders.

Per-sample tasks (run by :func:`perception.datasets.prep_runner.run_tasks`, resumably) return
:func:`task_result`: ``{"info": <info dict>, "gt": [<GT-database record JSON>, ...], "dropped": [<name>, ...],
"inputs": <what the sample was computed from, and its digest>}``; :func:`build_split` runs them, writes the
info file (``header`` + ``"infos"`` in key order, atomically) and, with a GT database, its ``index.json``.

Cache keying: a sample's part is reused only while what it was computed from is unchanged. Its
:class:`SampleInputs` list the files it read (by content: label and calib text; by size and mtime: point clouds
and images) and the devkit table records it read (``(table, token)``, hashed as the devkit holds them, so the
annotations, poses, calibrations, sweeps and neighbouring annotations of the velocity estimate all count);
:func:`inputs_digest` of them is stored with the result and compared with the current one on the next run. The
settings (sweeps, GT database or not, format version) name the cache folder. A recomputed sample rewrites its
GT-database folder and the index is rebuilt from the results, so no stale object stays in it.

Bad boxes (:mod:`perception.formats.box_checks`): the tasks drop zero-size boxes from the info and the GT
database and list them in ``"dropped"`` (nuScenes annotation tokens, KITTI ``label_file:line``);
:func:`build_split` logs one warning per split that counts and names them (also when the samples are reused),
and returns them in :attr:`SplitStats.dropped`. Non-finite boxes are refused by the tasks (``ValueError``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perception.formats.box_checks import name_some
from perception.io_atomic import atomic_pickle_dump

from .gt_database import GTDatabaseEntry, read_sample_entries, write_index
from .prep_runner import PrepStats, run_tasks

__all__ = ["SampleInputs", "SplitStats", "build_split", "inputs_digest", "record_digester", "task_result"]

logger = logging.getLogger(__name__)

#: ``(table, token) -> digest`` of one devkit record (:func:`record_digester`).
RecordDigest = Callable[[str, str], str]


@dataclass(frozen=True)
class SampleInputs:
    """What one sample's result was computed from.

    Attributes:
        content: files (relative to the root) that count by their bytes (KITTI label and calib text).
        stat: files (relative to the root) that count by size and modification time (point clouds, images).
        records: devkit table records ``(table, token)`` that were read.
    """

    content: tuple[str, ...] = ()
    stat: tuple[str, ...] = ()
    records: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "content": list(self.content),
            "stat": list(self.stat),
            "records": [list(r) for r in self.records],
        }

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> SampleInputs:
        records = tuple((str(t), str(k)) for t, k in d["records"])
        return SampleInputs(tuple(map(str, d["content"])), tuple(map(str, d["stat"])), records)


def record_digester(lookup: Callable[[str, str], Any]) -> RecordDigest:
    """A memoised ``(table, token) -> sha1 hex`` of ``lookup(table, token)`` (a JSON-able record, e.g. the
    devkit's ``NuScenes.get``); a record ``lookup`` has no more (``KeyError``) digests as ``"missing"``."""

    @functools.cache
    def digest(table: str, token: str) -> str:
        try:
            record = lookup(table, token)
        except KeyError:
            return "missing"
        return hashlib.sha1(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()

    return digest


def inputs_digest(root: Path, inputs: SampleInputs, record: RecordDigest | None = None) -> str:
    """sha1 hex of everything in ``inputs`` as it is now (a missing file or record digests as ``"missing"``,
    so the task that reads it raises its own clear error)."""
    h = hashlib.sha1()
    for rel in inputs.content:
        try:
            text = hashlib.sha1((root / rel).read_bytes()).hexdigest()
        except OSError:
            text = "missing"
        h.update(f"content\0{rel}\0{text}\n".encode())
    for rel in inputs.stat:
        try:
            st = (root / rel).stat()
            text = f"{st.st_size} {st.st_mtime_ns}"
        except OSError:
            text = "missing"
        h.update(f"stat\0{rel}\0{text}\n".encode())
    if inputs.records and record is None:
        raise ValueError("inputs list table records but no record digest was given")
    for table, token in inputs.records:
        h.update(f"record\0{table}\0{token}\0{record(table, token) if record else ''}\n".encode())
    return h.hexdigest()


def task_result(
    info: Mapping[str, Any],
    entries: Sequence[GTDatabaseEntry],
    *,
    inputs: SampleInputs,
    digest: str,
    dropped: Sequence[str] = (),
) -> dict[str, Any]:
    """What a per-sample task returns: the sample's info dict, its GT-database records (JSON form), the names of
    the zero-size boxes it dropped, and its inputs with their :func:`inputs_digest` (taken when they were read)."""
    return {
        "info": info,
        "gt": [e.to_json() for e in entries],
        "dropped": [str(d) for d in dropped],
        "inputs": {**inputs.to_json(), "digest": digest},
    }


@dataclass(frozen=True)
class SplitStats(PrepStats):
    """:class:`~perception.datasets.prep_runner.PrepStats` of a split plus ``dropped``: the names of the zero-size
    boxes left out of its infos and GT database (annotation tokens / ``label_file:line``)."""

    dropped: tuple[str, ...] = ()


def build_split(
    keys: Sequence[str],
    task: Callable[[str], dict[str, Any]],
    cache_dir: str | os.PathLike[str],
    *,
    root: Path,
    info_path: str | os.PathLike[str],
    header: Mapping[str, Any],
    db_dir: Path | None,
    point_channels: Sequence[str],
    key_kind: str,
    dropped_what: str,
    workers: int,
    progress: bool,
    desc: str,
    record: RecordDigest | None = None,
) -> SplitStats:
    """Run ``task`` over ``keys`` and write the split's info file (and GT-database index when ``db_dir``).

    Args:
        keys: sample tokens / frame ids, in the order the info file lists them.
        task: picklable ``key -> task_result(...)``; it writes the key's GT objects when ``db_dir`` is set.
        cache_dir: folder of the resumable part files (named by the settings).
        root: the data set root the tasks' input paths are relative to.
        info_path: the info file to write (pickle, protocol 4, atomic).
        header: the info file's keys before ``"infos"`` (format name, version, split, ...).
        db_dir: GT-database folder of this split, or None for none; a finished part whose GT files are gone is
            recomputed.
        point_channels: names of the GT objects' point columns (for the index).
        key_kind: ``"sample"`` / ``"frame"``, names the key in errors about a record.
        dropped_what: what the dropped names are, for the warning (``"annotation tokens"``, ...).
        workers, progress, desc: passed to :func:`~perception.datasets.prep_runner.run_tasks`.
        record: digest of a devkit record (:func:`record_digester`), for tasks whose inputs list records.

    Returns:
        The run's :class:`SplitStats`.
    """

    def still_valid(key: str, result: Mapping[str, Any]) -> bool:
        stored = result["inputs"]
        if inputs_digest(root, SampleInputs.from_json(stored), record) != stored["digest"]:
            return False
        return db_dir is None or read_sample_entries(db_dir, key) is not None

    results, stats = run_tasks(
        keys, task, cache_dir, workers=workers, desc=desc, progress=progress, still_valid=still_valid
    )
    atomic_pickle_dump(info_path, {**header, "infos": [results[k]["info"] for k in keys]})
    if db_dir is not None:
        entries = [GTDatabaseEntry.from_json(r, f"{key_kind} {k}") for k in keys for r in results[k]["gt"]]
        write_index(db_dir, entries, point_channels)
    dropped = tuple(d for k in keys for d in results[k]["dropped"])
    if dropped:
        logger.warning(
            "%s: dropped %d zero-size box%s (a size <= 0) from the infos%s; %s: %s",
            desc,
            len(dropped),
            "" if len(dropped) == 1 else "es",
            "" if db_dir is None else " and the GT database",
            dropped_what,
            name_some(dropped),
        )
    return SplitStats(stats.computed, stats.reused, stats.changed, stats.corrupt, dropped=dropped)
