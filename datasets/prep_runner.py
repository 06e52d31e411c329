"""Run per-sample data-preparation work in parallel, atomically and resumably.

Model: the work is a list of string keys (sample tokens, frame ids) and a picklable function ``task(key)`` that
returns a picklable result. :func:`run_tasks` stores each result as its own *part* file
``cache_dir/<key>.pkl`` the moment it is computed (in the worker process, atomically), reuses a key's part when
it is still valid, and only then returns all results for the caller to merge into the final output (which it
writes with :func:`atomic_pickle_dump`). An interrupted run (killed, a worker raising, the final dump failing)
therefore loses at most the samples in flight: re-running recomputes only the missing parts. Part files are kept
after the merge (they make re-running after deleting an output cheap).

Cache keying: a part is reused only when everything it was computed from is unchanged. Callers put a
fingerprint of the run's settings into ``cache_dir``'s name (changed settings never look at another setting's
parts), and the result of each key records what that key read (table records, file contents, point-file size
and mtime; :mod:`perception.datasets.info_split`) with their digest; the caller's ``still_valid(key, result)``
recomputes that digest from the current inputs, so a changed input means the key is computed again
(:attr:`PrepStats.changed`) and an unchanged one means its part is reused.

Corrupt parts: a part that cannot be read (truncated, not a pickle, another structure, another key) is logged
as a warning naming the folder and the keys, and recomputed (:attr:`PrepStats.corrupt`); it never stops a run.

Atomic write: :func:`atomic_pickle_dump` and :func:`atomic_write_bytes` are re-exported from
:mod:`perception.io_atomic` (temporary file in the destination's folder, ``fsync``, ``os.replace``, folder
``fsync``): a reader sees either the old complete file or the new complete file, never a partial one.

Workers: ``workers=0`` runs in the calling process; ``workers >= 1`` uses a ``concurrent.futures`` process pool
(a worker that dies, e.g. killed for memory, raises ``BrokenProcessPool`` instead of hanging) with the ``fork``
start method where that is safe (so large read-only state built before the call, such as a devkit ``NuScenes``
object held in a module global, is shared copy-on-write instead of being rebuilt per worker), else ``spawn``
(then every worker builds that state itself). Fork is not safe once numba's OpenMP threading layer has run in
the calling process. Workers end with the process that started them, also when it is killed with SIGKILL
(:func:`end_with_parent`: ``PR_SET_PDEATHSIG`` on Linux, and a thread watching the parent pid everywhere). A
``tqdm`` progress bar shows finished / total keys.

Pickle files: written with protocol 4 and read back by :func:`safe_pickle_load` (re-exported from
:mod:`perception.formats.info_pickle`), which only accepts builtin containers, numbers, strings and numpy arrays,
so a tampered info file cannot execute code when loaded.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import multiprocessing as mp
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from perception.formats.box_checks import name_some
from perception.formats.info_pickle import safe_pickle_load
from perception.io_atomic import atomic_pickle_dump, atomic_write_bytes

__all__ = [
    "PrepStats",
    "crop_box_points",
    "atomic_pickle_dump",
    "atomic_write_bytes",
    "end_with_parent",
    "fingerprint",
    "part_path",
    "run_tasks",
    "safe_pickle_load",
    "watch_parent",
]

logger = logging.getLogger(__name__)

_SAFE_KEY = re.compile(r"[A-Za-z0-9_.\-]+\Z")
#: The ``"format"`` tag of a part file: ``{"format": _PART_FORMAT, "key": key, "result": result}``.
_PART_FORMAT = "perception.prep_part/1"
#: ``prctl`` option: the signal the kernel sends this process when its parent thread dies (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
#: Seconds between two looks of :func:`watch_parent` at the parent pid.
_WATCH_INTERVAL_S = 0.5


def fingerprint(settings: dict[str, Any]) -> str:
    """12 hex digits identifying ``settings`` (a JSON-serialisable dict), for cache folder names."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def part_path(cache_dir: Path, key: str) -> Path:
    """The part file of ``key`` (keys are tokens / frame ids: letters, digits, ``_.-``)."""
    if not _SAFE_KEY.match(key) or key.startswith("."):
        raise ValueError(f"key {key!r} must be letters, digits, '_', '.', '-' (and not start with '.')")
    return cache_dir / f"{key}.pkl"


@dataclass(frozen=True)
class PrepStats:
    """What :func:`run_tasks` did.

    Attributes:
        computed: keys run now (all of ``changed`` and ``corrupt`` included).
        reused: keys loaded from existing, still valid parts.
        changed: keys whose part existed but whose inputs changed since (``still_valid`` said no).
        corrupt: keys whose part existed but could not be read (recomputed, with a warning).
    """

    computed: tuple[str, ...]
    reused: tuple[str, ...]
    changed: tuple[str, ...] = ()
    corrupt: tuple[str, ...] = ()


def _start_method() -> str:
    """``fork`` unless numba's parallel threading layer already runs in this process (forking a process that
    uses GNU OpenMP kills the child), or the platform has no fork; then ``spawn``."""
    if "fork" not in mp.get_all_start_methods():
        return "spawn"
    try:
        import numba

        numba.threading_layer()  # ValueError while no parallel kernel has run here
    except (ImportError, ValueError):
        return "fork"
    return "spawn"


def watch_parent(parent_pid: int, interval_s: float = _WATCH_INTERVAL_S) -> threading.Thread:
    """Start a daemon thread that ends this process (``os._exit(1)``) once its parent is no longer
    ``parent_pid`` (the parent died and the process was re-parented); the portable half of
    :func:`end_with_parent`. Returns the thread."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="watch-parent", daemon=True)
    thread.start()
    return thread


def end_with_parent(parent_pid: int) -> None:
    """Pool initializer: make this worker end when ``parent_pid`` (the process that started the pool) dies, also
    when it is killed with SIGKILL and cannot shut the pool down.

    On Linux the kernel sends the worker SIGKILL at once (``prctl(PR_SET_PDEATHSIG)``); everywhere a
    :func:`watch_parent` thread ends it within :data:`_WATCH_INTERVAL_S` seconds. A parent that already died
    before this ran ends the worker here.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl: the watcher thread still ends the worker
            pass
    if os.getppid() != parent_pid:
        os._exit(1)
    watch_parent(parent_pid)


def _run_one(job: tuple[Callable[[str], Any], Path, str]) -> str:
    task, cache_dir, key = job
    try:
        result = task(key)
    except Exception as e:
        e.add_note(f"while preparing {key!r}")
        raise
    atomic_pickle_dump(part_path(cache_dir, key), {"format": _PART_FORMAT, "key": key, "result": result})
    return key


def _read_part(path: Path, key: str) -> Any:
    """The result stored in ``path``; ``ValueError`` (or what unpickling raises) if it is not a part of ``key``."""
    data = safe_pickle_load(path)
    if not isinstance(data, dict) or data.get("format") != _PART_FORMAT or "result" not in data:
        raise ValueError(f"{path}: not a cache part of this version (expected format {_PART_FORMAT!r})")
    if data.get("key") != key:
        raise ValueError(f"{path}: cache part of key {data.get('key')!r}, expected {key!r}")
    return data["result"]


def _existing_parts(
    keys: Sequence[str], cache: Path, still_valid: Callable[[str, Any], bool] | None, desc: str
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The still valid parts ``{key: result}``, the keys whose inputs changed and the keys with corrupt parts
    (logged as one warning)."""
    valid: dict[str, Any] = {}
    changed: list[str] = []
    corrupt: dict[str, str] = {}
    for k in keys:
        path = part_path(cache, k)
        if not path.is_file():
            continue
        # an unreadable / malformed part is a cache miss: recompute it, never fail the run
        try:
            result = _read_part(path, k)
            ok = still_valid is None or still_valid(k, result)
        except Exception as e:
            corrupt[k] = f"{type(e).__name__}: {e}"
            continue
        if ok:
            valid[k] = result
        else:
            changed.append(k)
    if corrupt:
        first = next(iter(corrupt.values()))
        logger.warning(
            "%s%d corrupt cache part(s) in %s, recomputing them: %s (first: %s)",
            f"{desc}: " if desc else "",
            len(corrupt),
            cache,
            name_some(list(corrupt)),
            first,
        )
    return valid, changed, list(corrupt)


def run_tasks(
    keys: Sequence[str],
    task: Callable[[str], Any],
    cache_dir: str | os.PathLike[str],
    *,
    workers: int = 0,
    desc: str = "",
    progress: bool = True,
    still_valid: Callable[[str, Any], bool] | None = None,
) -> tuple[dict[str, Any], PrepStats]:
    """Compute ``task(key)`` for every key without a valid part, in parallel, with one atomic part file per key.

    Args:
        keys: unique keys (letters, digits, ``_.-``).
        task: picklable function (module level, or ``functools.partial`` of one) ``key -> result``; its result
            must pickle to builtins and numpy arrays only.
        cache_dir: folder of the part files (created).
        workers: worker processes; 0 runs in this process.
        desc: progress bar label (and the start of warnings).
        progress: show the tqdm bar (on stderr).
        still_valid: optional check ``(key, stored result) -> bool`` of a key whose part exists, e.g. "the inputs
            it records are unchanged and its GT-database files are still there"; a key failing it is recomputed
            (:attr:`PrepStats.changed`), one raising counts as a corrupt part (recomputed, with a warning).

    Returns:
        ``{key: result}`` in the order of ``keys``, and the :class:`PrepStats`.

    Raises:
        whatever ``task`` raised, with the key in a note; finished parts stay on disk for the next run.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    have, changed, corrupt = _existing_parts(keys, cache, still_valid, desc)
    done = [k for k in keys if k in have]
    todo = [k for k in keys if k not in have]
    bar = tqdm(total=len(keys), initial=len(done), desc=desc, disable=not progress, unit="sample")
    jobs = [(task, cache, k) for k in todo]
    try:
        if workers == 0 or len(todo) <= 1:
            for job in jobs:
                _run_one(job)
                bar.update(1)
        else:
            ctx = mp.get_context(_start_method())
            with ProcessPoolExecutor(
                min(workers, len(todo)), mp_context=ctx, initializer=end_with_parent, initargs=(os.getpid(),)
            ) as pool:
                futures = [pool.submit(_run_one, job) for job in jobs]
                try:
                    for fut in as_completed(futures):
                        fut.result()
                        bar.update(1)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    results = {k: have[k] if k in have else _read_part(part_path(cache, k), k) for k in keys}
    stats = PrepStats(
        computed=tuple(todo), reused=tuple(done), changed=tuple(changed), corrupt=tuple(corrupt)
    )
    return results, stats


def crop_box_points(
    points: np.ndarray, boxes: np.ndarray, time_lag_column: int | None = None
) -> list[np.ndarray]:
    """The points inside each box, with ``xyz`` made relative to the box centre (for the GT database).

    A point inside several overlapping boxes belongs to each of them. Membership is
    :func:`perception.ops.points_in_boxes` (closed boxes, float32); with ``time_lag_column`` and boxes with
    velocity, each point is tested at its own time (:func:`perception.datasets.box_motion.points_in_moving_box`),
    so a moving object's older sweeps -- its trail behind the keyframe box -- are part of its crop.

    Args:
        points: float32 ``(N, C)`` finite points, ``C >= 3``, LiDAR frame.
        boxes: float ``(K, 7+)`` boxes ``[x, y, z, dx, dy, dz, yaw, ...]`` in the same frame (``(K, 9)``: with
            ``[vx, vy]``).
        time_lag_column: the column of ``points`` holding each point's seconds before the keyframe, or None.

    Returns:
        ``K`` float32 arrays ``(n_k, C)``.
    """
    from .box_motion import points_in_moving_box

    pts = np.ascontiguousarray(points, dtype=np.float32)
    lag = None if time_lag_column is None else pts[:, time_lag_column]
    out = []
    for box in np.asarray(boxes, dtype=np.float32).reshape(-1, boxes.shape[-1] if boxes.ndim == 2 else 7):
        inside = pts[points_in_moving_box(pts[:, :3], lag, box[:9] if len(box) >= 9 else box[:7])].copy()
        inside[:, :3] -= box[:3]
        out.append(inside)
    return out
