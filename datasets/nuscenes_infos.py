"""Writing the nuScenes info files: what ``tools/create_data.py nuscenes`` runs.

Output inside the dataroot, for ``version`` and ``N = max_sweeps`` (file names, the record and the file format:
:mod:`perception.formats.nuscenes_infos`):

* ``nuscenes_infos_<version>_<N>sweeps_train.pkl`` and ``..._val.pkl``;
* ``nuscenes_gt_database_<version>_<N>sweeps/`` -- GT database (:mod:`perception.datasets.gt_database`) of the
  train split. As OpenPCDet does, each object's points are cut from the **multi-sweep** cloud (keyframe plus up to
  ``N - 1`` earlier sweeps moved into the keyframe's LiDAR frame, channels ``x y z intensity time_lag``), so
  pasted objects look like the scans they are pasted into. Annotations of categories outside the ten detection
  classes are not stored;
* ``.perception_cache/`` -- per-sample part files that make an interrupted run resumable (safe to delete).
"""

from __future__ import annotations

import os
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
from perception.formats.nuscenes_points import load_lidar_points

from .gt_database import GTDatabaseEntry, GTObject, write_sample_objects
from .info_split import build_split, task_result
from .prep_runner import PrepStats, crop_box_points, fingerprint

__all__ = ["create_nuscenes_infos"]


# The devkit object of the current run; worker processes forked from the parent share it copy-on-write.
_NUSC: dict[tuple[str, str], NuScenes] = {}


def _devkit(root: str, version: str) -> NuScenes:
    if (root, version) not in _NUSC:
        _NUSC.clear()
        _NUSC[(root, version)] = NuScenes(version=version, dataroot=root, verbose=False)
    return _NUSC[(root, version)]


def _sample_task(root: str, version: str, max_sweeps: int, db_dir: str | None, token: str) -> dict[str, Any]:
    info = make_nuscenes_info(_devkit(root, version), token, max_sweeps)
    entries: list[GTDatabaseEntry] = []
    if db_dir is not None:
        keep = info.gt_names != IGNORE
        points = load_lidar_points(Path(root), info, max_sweeps)
        crops = crop_box_points(points, info.gt_boxes[keep])
        objects = [
            GTObject(str(name), box.copy(), pts, 0, token)
            for name, box, pts in zip(info.gt_names[keep], info.gt_boxes[keep], crops, strict=True)
        ]
        entries = write_sample_objects(db_dir, token, objects)
    return task_result(info.to_dict(), entries)


def create_nuscenes_infos(
    root: str | os.PathLike[str],
    version: str,
    *,
    max_sweeps: int = 10,
    workers: int = 0,
    progress: bool = True,
    with_gt_database: bool = True,
) -> dict[str, PrepStats]:
    """Write the train / val info files and the train GT database inside ``root``; resumable.

    Returns:
        ``{"train" | "val": PrepStats}`` (samples computed now / reused from an earlier run).
    """
    if not isinstance(max_sweeps, int) or not 1 <= max_sweeps <= 30:
        raise ValueError(f"max_sweeps must be an int in [1, 30] (keyframe included), got {max_sweeps!r}")
    names = split_names(version)
    root = Path(root).resolve()
    nusc = _devkit(str(root), version)
    splits = create_splits_scenes()
    db_dir = gt_database_dir(root, version, max_sweeps)
    stats: dict[str, PrepStats] = {}
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
            {"kind": "nuscenes", "v": FORMAT_VERSION, "ver": version, "s": max_sweeps, "db": with_db}
        )
        task = partial(_sample_task, str(root), version, max_sweeps, str(db_dir) if with_db else None)
        header = {
            "format": INFO_FORMAT,
            "format_version": FORMAT_VERSION,
            "version": version,
            "split": split,
            "max_sweeps": max_sweeps,
        }
        stats[split] = build_split(
            tokens,
            task,
            root / ".perception_cache" / f"nuscenes_{split}_{key}",
            info_path=infos_path(root, version, max_sweeps, split),
            header=header,
            db_dir=db_dir if with_db else None,
            point_channels=NUSCENES_POINT_CHANNELS,
            key_kind="sample",
            workers=workers,
            progress=progress,
            desc=f"nuScenes {devkit_split}",
        )
    return stats
