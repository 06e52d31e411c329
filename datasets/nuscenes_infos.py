"""Writing the nuScenes info files: what ``tools/create_data.py nuscenes`` runs.

Output inside the dataroot, for ``version``, ``M = max_sweeps`` and ``S = sweep_stride`` (``N = 1 + (M - 1) S``
scans of the chain, ``N = M`` at stride 1; file names, the record and the file format:
:mod:`perception.formats.nuscenes_infos`):

* ``nuscenes_infos_<version>_<N>sweeps_train.pkl`` and ``..._val.pkl``;
* ``nuscenes_gt_database_<version>_<M>sweeps/`` (``..._<M>sweeps_stride<S>/`` when S > 1) -- GT database
  (:mod:`perception.datasets.gt_database`) of the train split. As OpenPCDet does, each object's points are cut
  from the **multi-sweep** cloud (keyframe plus up to ``M - 1`` earlier sweeps, every S-th, moved into the
  keyframe's LiDAR frame, channels ``x y z intensity time_lag``), so
  pasted objects look like the scans they are pasted into; unlike OpenPCDet, each point is tested against the box
  moved back along its velocity to the point's time (:mod:`perception.datasets.box_motion`), so a moving object
  keeps the trail its older sweeps leave behind the keyframe box (the cue its velocity is learned from).
  Annotations of categories outside the ten detection classes are not stored;
* ``.perception_cache/`` -- per-sample part files that make an interrupted run resumable (safe to delete),
  one folder per split and settings (version, sweeps, GT database or not). A sample's part is reused only while
  every devkit record its info was built from is unchanged -- the sample, the LiDAR, sweep and camera
  sample_data with their calibrated_sensor and ego_pose, the scene, its annotations (with the category the devkit
  resolves through the instance) and the neighbouring annotations of the velocity estimate -- and, with a GT
  database, its point files have the same size and mtime (:mod:`perception.datasets.info_split`). The task
  records the reads by wrapping the devkit object's ``get`` while it builds the info.

Bad boxes (the rule of :mod:`perception.formats.box_checks`): a zero-size annotation is dropped from the infos
and the GT database, with one warning per split that counts them and names their tokens; a NaN / inf one stops
the run with a ``ValueError`` naming the token. A missing dataroot or version folder is a
``FileNotFoundError`` naming the path (before the devkit's own assertion).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from nuscenes import NuScenes
from nuscenes.utils.splits import create_splits_scenes

from perception.formats.nuscenes_infos import (
    FORMAT_VERSION,
    IGNORE,
    INFO_FORMAT,
    gt_database_dir,
    infos_path,
    make_nuscenes_info,
    split_names,
)
from perception.formats.nuscenes_names import NUSCENES_POINT_CHANNELS
from perception.formats.nuscenes_points import load_lidar_points, pick_sweeps, sweep_chain
from perception.structures import TIME_LAG

from .gt_database import GTDatabaseEntry, GTObject, write_sample_objects
from .info_split import SampleInputs, SplitStats, build_split, inputs_digest, record_digester, task_result
from .prep_runner import crop_box_points, fingerprint

__all__ = ["create_nuscenes_infos"]

#: Version of the cache parts' layout (part of the cache folder's name; bump when a part's content changes).
_CACHE_VERSION = 2


# The devkit object of the current run; worker processes forked from the parent share it copy-on-write. Keyed by
# the root, the version and the size + mtime of every table file, so edited tables are loaded again.
_NUSC: dict[tuple[str, str, tuple[tuple[str, int, int], ...]], NuScenes] = {}


def _devkit(root: str, version: str) -> NuScenes:
    tables = sorted((Path(root) / version).glob("*.json"))
    key = (root, version, tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in tables))
    if key not in _NUSC:
        _NUSC.clear()
        _NUSC[key] = NuScenes(version=version, dataroot=root, verbose=False)
    return _NUSC[key]


@contextmanager
def _recording_reads(nusc: NuScenes) -> Iterator[set[tuple[str, str]]]:
    """Within the block, every ``nusc.get(table, token)`` (the devkit's own calls included: they go through
    ``self.get``) is added to the yielded set."""
    reads: set[tuple[str, str]] = set()
    get = nusc.get

    def recording_get(table: str, token: str) -> dict[str, Any]:
        reads.add((table, token))
        return get(table, token)

    nusc.get = recording_get  # type: ignore[method-assign]  # shadows the method on this instance only
    try:
        yield reads
    finally:
        del nusc.get


def _sample_task(
    root: str, version: str, max_sweeps: int, sweep_stride: int, db_dir: str | None, token: str
) -> dict[str, Any]:
    nusc = _devkit(root, version)
    with _recording_reads(nusc) as reads:
        info, dropped = make_nuscenes_info(nusc, token, sweep_chain(max_sweeps, sweep_stride))
    picked = pick_sweeps(info.sweeps, max_sweeps, sweep_stride)
    points = (info.lidar_path, *(s.path for s in picked)) if db_dir is not None else ()
    inputs = SampleInputs(stat=points, records=tuple(sorted(reads)))
    digest = inputs_digest(Path(root), inputs, record_digester(nusc.get))  # before the points are read
    entries: list[GTDatabaseEntry] = []
    if db_dir is not None:
        keep = info.gt_names != IGNORE
        points = load_lidar_points(Path(root), info, max_sweeps, sweep_stride=sweep_stride)
        crops = crop_box_points(points, info.gt_boxes[keep], NUSCENES_POINT_CHANNELS.index(TIME_LAG))
        objects = [
            GTObject(str(name), box.copy(), pts, 0, token)
            for name, box, pts in zip(info.gt_names[keep], info.gt_boxes[keep], crops, strict=True)
        ]
        entries = write_sample_objects(db_dir, token, objects)
    return task_result(info.to_dict(), entries, inputs=inputs, digest=digest, dropped=dropped)


def _check_dataroot(root: Path, version: str) -> None:
    """``FileNotFoundError`` naming the path when ``root`` or ``root/version`` is not a folder."""
    if not root.is_dir():
        raise FileNotFoundError(f"nuScenes dataroot not found: {root}")
    if not (root / version).is_dir():
        have = sorted(p.name for p in root.glob("v1.0-*") if p.is_dir())
        found = f"it holds {', '.join(have)}" if have else "it holds no v1.0-* folder"
        raise FileNotFoundError(
            f"nuScenes version folder not found: {root / version} ({found}; the version folder holds the "
            "devkit's .json tables)"
        )


def create_nuscenes_infos(
    root: str | os.PathLike[str],
    version: str,
    *,
    max_sweeps: int = 10,
    sweep_stride: int = 1,
    workers: int = 0,
    progress: bool = True,
    with_gt_database: bool = True,
) -> dict[str, SplitStats]:
    """Write the train / val info files and the train GT database inside ``root``; resumable, and a sample whose
    inputs changed is computed again.

    ``max_sweeps`` scans (keyframe included) are merged per sample, every ``sweep_stride``-th of the 20 Hz chain
    (:func:`~perception.formats.nuscenes_points.pick_sweeps`); the infos list the whole chain this needs
    (:func:`~perception.formats.nuscenes_points.sweep_chain` scans, the ``N`` of their file names) and the GT
    database holds the objects cut from the picked clouds (:func:`gt_database_dir` of both settings).

    Returns:
        ``{"train" | "val": SplitStats}`` (samples computed now / reused from an earlier run / computed because
        their inputs changed, and the zero-size annotations dropped).

    Raises:
        FileNotFoundError: no such dataroot or version folder (named).
        ValueError: bad settings, or an annotation with a NaN / inf value (token named, with the sample in a note).
    """
    if not isinstance(max_sweeps, int) or not 1 <= max_sweeps <= 30:
        raise ValueError(f"max_sweeps must be an int in [1, 30] (keyframe included), got {max_sweeps!r}")
    chain = sweep_chain(max_sweeps, sweep_stride)
    if chain > 30:
        raise ValueError(
            f"max_sweeps {max_sweeps} at sweep_stride {sweep_stride} needs a chain of {chain} scans; at most 30"
        )
    names = split_names(version)
    root = Path(root).resolve()
    _check_dataroot(root, version)
    nusc = _devkit(str(root), version)
    record = record_digester(nusc.get)
    splits = create_splits_scenes()
    db_dir = gt_database_dir(root, version, max_sweeps, sweep_stride)
    stats: dict[str, SplitStats] = {}
    for split, devkit_split in zip(("train", "val"), names, strict=True):
        wanted = set(splits[devkit_split])
        tokens = []
        for scene in sorted(nusc.scene, key=lambda s: s["name"]):
            if scene["name"] not in wanted:
                continue
            tok = scene["first_sample_token"]
            while tok:
                tokens.append(tok)
                tok = nusc.get("sample", tok)["next"]
        with_db = with_gt_database and split == "train"
        key = fingerprint(
            {
                "kind": "nuscenes",
                "v": FORMAT_VERSION,
                "cache": _CACHE_VERSION,
                "ver": version,
                "s": chain,
                "db": with_db,
                **({"stride": sweep_stride} if sweep_stride != 1 else {}),
            }
        )
        task = partial(
            _sample_task, str(root), version, max_sweeps, sweep_stride, str(db_dir) if with_db else None
        )
        header = {
            "format": INFO_FORMAT,
            "format_version": FORMAT_VERSION,
            "version": version,
            "split": split,
            "max_sweeps": chain,
        }
        stats[split] = build_split(
            tokens,
            task,
            root / ".perception_cache" / f"nuscenes_{split}_{key}",
            root=root,
            info_path=infos_path(root, version, chain, split),
            header=header,
            db_dir=db_dir if with_db else None,
            point_channels=NUSCENES_POINT_CHANNELS,
            key_kind="sample",
            dropped_what="annotation tokens",
            workers=workers,
            progress=progress,
            desc=f"nuScenes {devkit_split}",
            record=record,
        )
    return stats
