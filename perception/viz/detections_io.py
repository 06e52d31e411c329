"""Read saved detections back into each sample's LiDAR frame, for the viewer (``tools/visualize.py --dets``).

nuScenes: the devkit's results JSON that :func:`perception.evaluation.nuscenes_results.write_results_json`
writes -- ``{"meta": ..., "results": {sample_token: [box, ...]}}`` with each box's ``translation`` (global centre,
m), ``size`` ``[w, l, h]`` (m), ``rotation`` (global quaternion ``[w, x, y, z]``), ``velocity`` ``[vx, vy]``
(global, m/s), ``detection_name`` and ``detection_score``. A box goes back with the inverse of the sample's
``ego_to_global @ lidar_to_ego`` (from the info records): the centre is moved and rotated, the orientation and
velocity only rotated; ``yaw`` is the heading of the rotated box's x axis in the LiDAR x-y plane (the LiDAR frame
is level to within the ego vehicle's pitch and roll, as in the forward conversion). Result boxes become
``(N, 9)`` ``[x, y, z, dx = l, dy = w, dz = h, yaw, vx, vy]``.

KITTI: a folder of result files ``<frame_id>.txt`` (16 columns, the last the score; the format of
:mod:`perception.formats.kitti_labels`), converted with the frame's calibration by
:func:`perception.datasets.kitti_calib.boxes_camera_to_lidar` into ``(N, 7)`` boxes. Class names match
``class_names`` case-insensitively, as the KITTI evaluation does.

Nothing is dropped silently: tokens of the file that are not in the dataset, samples without results, and
objects of classes outside ``class_names`` (e.g. ``DontCare``, or ``Van`` for a Car/Pedestrian/Cyclist model) are
counted in :class:`LoadedDetections` and logged at WARNING level. Malformed records raise ``ValueError`` naming the
file, sample and field.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyquaternion import Quaternion

from perception.structures import Boxes3D, Detections

logger = logging.getLogger(__name__)


@dataclass
class LoadedDetections:
    """Detections by sample token plus what could not be matched.

    Attributes:
        by_token: sample token (nuScenes) / frame id (KITTI) -> :class:`Detections` in that sample's LiDAR frame.
        unknown_tokens: tokens of the file that are not samples of the dataset (their boxes are not loaded).
        missing_tokens: samples of the dataset without results.
        skipped_classes: class name -> number of objects whose class is not in ``class_names``.
    """

    by_token: dict[str, Detections]
    unknown_tokens: list[str] = field(default_factory=list)
    missing_tokens: list[str] = field(default_factory=list)
    skipped_classes: dict[str, int] = field(default_factory=dict)

    def log_summary(self, path: str | os.PathLike[str]) -> None:
        """Log the unmatched counts (WARNING) and the loaded totals (INFO)."""
        n = sum(len(d) for d in self.by_token.values())
        logger.info("%s: %d detections for %d samples", path, n, len(self.by_token))
        if self.unknown_tokens:
            logger.warning(
                "%s: %d sample tokens are not in the dataset split (e.g. %s); their boxes are not shown",
                path,
                len(self.unknown_tokens),
                self.unknown_tokens[:3],
            )
        if self.missing_tokens:
            logger.warning("%s: %d samples have no results", path, len(self.missing_tokens))
        if self.skipped_classes:
            logger.warning(
                "%s: objects of classes outside class_names not shown: %s", path, self.skipped_classes
            )


def _class_index(names: Sequence[str]) -> dict[str, int]:
    return {n.lower(): i for i, n in enumerate(names)}


def global_boxes_to_lidar(records: Sequence[Mapping[str, Any]], lidar_to_global: np.ndarray) -> np.ndarray:
    """nuScenes result box records (global frame) -> float64 ``(N, 9)`` LiDAR-frame boxes (see the module doc).

    Args:
        records: dicts with ``translation`` (3), ``size`` (3, ``[w, l, h]``), ``rotation`` (4, ``[w, x, y, z]``)
            and optionally ``velocity`` (2; missing -> 0).
        lidar_to_global: float64 ``(4, 4)`` rigid transform.
    """
    g = np.linalg.inv(np.asarray(lidar_to_global, np.float64))
    rot, shift = g[:3, :3], g[:3, 3]
    out = np.zeros((len(records), 9))
    for i, r in enumerate(records):
        t = np.asarray(r["translation"], np.float64)
        wlh = np.asarray(r["size"], np.float64)
        q = np.asarray(r["rotation"], np.float64)
        v = np.asarray(r.get("velocity", (0.0, 0.0)), np.float64)
        for name, arr, n in (("translation", t, 3), ("size", wlh, 3), ("rotation", q, 4), ("velocity", v, 2)):
            if arr.shape != (n,) or not np.isfinite(arr).all():
                raise ValueError(f"box {i}: {name} must be {n} finite numbers, got {r.get(name)!r}")
        if (wlh < 0).any() or np.linalg.norm(q) < 1e-9:
            raise ValueError(f"box {i}: size must be >= 0 and rotation a non-zero quaternion, got {r}")
        heading = rot @ Quaternion(q).normalised.rotation_matrix[:, 0]
        vel = rot @ np.array([v[0], v[1], 0.0])
        out[i] = [
            *(rot @ t + shift),
            wlh[1],
            wlh[0],
            wlh[2],
            np.arctan2(heading[1], heading[0]),
            vel[0],
            vel[1],
        ]
    return out


def load_nuscenes_results(
    path: str | os.PathLike[str], lidar_to_global: Mapping[str, np.ndarray], class_names: Sequence[str]
) -> LoadedDetections:
    """Read a nuScenes results JSON into per-sample LiDAR-frame detections.

    Args:
        path: the JSON file.
        lidar_to_global: sample token -> float64 ``(4, 4)`` ``ego_to_global @ lidar_to_ego`` of the samples to
            load (e.g. from :class:`~perception.datasets.nuscenes_infos.NuScenesInfo`).
        class_names: the label order; ``detection_name`` is looked up in it.

    Raises:
        ValueError: not JSON, no ``results`` mapping, a box without the fields above, a non-finite score.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not a JSON file: {e}") from None
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict):
        raise ValueError(
            f"{path} must hold a nuScenes results object {{'meta': ..., 'results': {{token: [...]}}}}"
        )
    index = _class_index(class_names)
    out = LoadedDetections({})
    out.unknown_tokens = sorted(t for t in results if t not in lidar_to_global)
    out.missing_tokens = sorted(t for t in lidar_to_global if t not in results)
    for token, pose in lidar_to_global.items():
        recs = results.get(token)
        if recs is None:
            continue
        if not isinstance(recs, list):
            raise ValueError(f"{path}: results[{token!r}] must be a list of boxes")
        keep, labels, scores = [], [], []
        for r in recs:
            name = str(r.get("detection_name", ""))
            if name.lower() not in index:
                out.skipped_classes[name] = out.skipped_classes.get(name, 0) + 1
                continue
            score = float(r.get("detection_score", float("nan")))
            if not np.isfinite(score):
                raise ValueError(f"{path}: sample {token!r} has a box without a finite detection_score")
            keep.append(r)
            labels.append(index[name.lower()])
            scores.append(score)
        try:
            boxes = global_boxes_to_lidar(keep, pose)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{path}: sample {token!r}: {e}") from None
        out.by_token[token] = Detections(
            Boxes3D(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 9)),
            torch.tensor(scores, dtype=torch.float32),
            torch.tensor(labels, dtype=torch.int64),
        )
    return out


def load_kitti_results(
    folder: str | os.PathLike[str], calibs: Mapping[str, Any], class_names: Sequence[str]
) -> LoadedDetections:
    """Read KITTI result files ``<frame_id>.txt`` into per-frame LiDAR-frame detections.

    Args:
        folder: the folder of result files.
        calibs: frame id -> :class:`~perception.datasets.kitti_calib.KittiCalib` of the frames to load.
        class_names: the label order (matched case-insensitively).

    Raises:
        ValueError: ``folder`` is not a folder, or a file is malformed or has no score column.
    """
    from perception.datasets.kitti_calib import boxes_camera_to_lidar
    from perception.formats.kitti_labels import read_label_file

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"KITTI results must be a folder of <frame_id>.txt files, got {root}")
    index = _class_index(class_names)
    out = LoadedDetections({})
    present = {p.stem for p in root.glob("*.txt")}
    out.unknown_tokens = sorted(present - set(calibs))
    out.missing_tokens = sorted(set(calibs) - present)
    for frame, calib in calibs.items():
        if frame not in present:
            continue
        objs = read_label_file(root / f"{frame}.txt")
        if objs.score is None and len(objs):
            raise ValueError(f"{root / f'{frame}.txt'} has no score column (a label file, not results?)")
        known = np.array([str(n).lower() in index for n in objs.names], dtype=bool)
        for n in objs.names[~known]:
            out.skipped_classes[str(n)] = out.skipped_classes.get(str(n), 0) + 1
        objs = objs.select(known)
        boxes = boxes_camera_to_lidar(objs.location, objs.dimensions, objs.rotation_y, calib)
        scores = np.zeros(0) if objs.score is None else objs.score
        out.by_token[frame] = Detections(
            Boxes3D(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 7)),
            torch.tensor(scores, dtype=torch.float32),
            torch.tensor([index[str(n).lower()] for n in objs.names], dtype=torch.int64),
        )
    return out
