"""Detections in a sample's LiDAR frame -> the nuScenes devkit's results JSON (global frame).

The devkit scores a JSON file of the form::

    {"meta": {"use_camera": false, "use_lidar": true, ...},
     "results": {sample_token: [{"sample_token", "translation", "size", "rotation", "velocity",
                                 "detection_name", "detection_score", "attribute_name"}, ...]}}

with ``translation`` the box centre in the global frame (m), ``size`` ``[w, l, h]`` (m), ``rotation`` the global
orientation quaternion ``[w, x, y, z]``, ``velocity`` ``[vx, vy]`` in the global frame (m/s). Boxes go
LiDAR -> ego with the LiDAR's ``calibrated_sensor`` record and ego -> global with the LiDAR sample_data's
``ego_pose`` record: centres are rotated then translated, orientations and velocities only rotated (a velocity
is a direction, not a position).

The attribute of each box is chosen from its class and global speed (``sqrt(vx^2 + vy^2)``, threshold
0.2 m/s), following the rule of the mmdetection3d / OpenPCDet nuScenes evaluation, unless the caller passes
the attributes (a detector with an attribute head, or ground truth fed back as detections):

==========================================  ===================  ======================
class                                       moving (> 0.2 m/s)   not moving
==========================================  ===================  ======================
car, truck, trailer, construction_vehicle   vehicle.moving       vehicle.parked
bus                                         vehicle.moving       vehicle.stopped
bicycle, motorcycle                         cycle.with_rider     cycle.without_rider
pedestrian                                  pedestrian.moving    pedestrian.standing
barrier, traffic_cone                       ""                   ""
==========================================  ===================  ======================
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES, DETECTION_NAMES
from pyquaternion import Quaternion

from perception.formats.nuscenes_boxes import boxes_to_devkit
from perception.io_atomic import atomic_write_text
from perception.structures import Detections

logger = logging.getLogger(__name__)

#: The devkit refuses result files with more boxes than this in one sample (``detection_cvpr_2019``).
MAX_BOXES_PER_SAMPLE = 500
#: Speed (m/s) above which an object counts as moving when its attribute is chosen.
MOVING_SPEED = 0.2
#: The ``meta`` block of a LiDAR-only submission.
LIDAR_META: dict[str, bool] = {
    "use_camera": False,
    "use_lidar": True,
    "use_radar": False,
    "use_map": False,
    "use_external": False,
}

_VEHICLES = ("car", "truck", "trailer", "construction_vehicle", "bus")
_CYCLES = ("bicycle", "motorcycle")


def default_attribute(name: str, speed: float) -> str:
    """The nuScenes attribute for a box of class ``name`` moving at ``speed`` m/s (table in the module doc).

    Raises:
        ValueError: ``name`` is not one of the devkit's ten detection classes, or ``speed`` is NaN.
    """
    if name not in DETECTION_NAMES:
        raise ValueError(f"name must be a nuScenes detection class {DETECTION_NAMES}, got {name!r}")
    if math.isnan(speed):
        raise ValueError(f"speed must be a number (m/s), got NaN for a {name}")
    moving = speed > MOVING_SPEED
    if name in _VEHICLES:
        if moving:
            return "vehicle.moving"
        return "vehicle.stopped" if name == "bus" else "vehicle.parked"
    if name in _CYCLES:
        return "cycle.with_rider" if moving else "cycle.without_rider"
    if name == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    return ""  # barrier, traffic_cone: the devkit scores no attribute for them


def lidar_to_global_records(
    nusc: Any, sample_token: str, lidar_channel: str = "LIDAR_TOP"
) -> tuple[dict, dict]:
    """The ``calibrated_sensor`` (LiDAR -> ego) and ``ego_pose`` (ego -> global) records of a sample's LiDAR.

    Raises:
        ValueError: the token is not a sample of ``nusc``, or the sample has no ``lidar_channel`` data.
    """
    try:
        sample = nusc.get("sample", sample_token)
    except KeyError:
        raise ValueError(
            f"sample token {sample_token!r} is not a sample of this NuScenes ({nusc.version}, {nusc.dataroot})"
        ) from None
    if lidar_channel not in sample["data"]:
        raise ValueError(
            f"sample {sample_token!r} has no {lidar_channel!r} data; it has {sorted(sample['data'])}"
        )
    sd = nusc.get("sample_data", sample["data"][lidar_channel])
    calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    return calib, nusc.get("ego_pose", sd["ego_pose_token"])


def detections_to_nusc_results(
    nusc: Any,
    dets_by_token: Mapping[str, Detections],
    class_names: Sequence[str],
    *,
    max_boxes_per_sample: int = MAX_BOXES_PER_SAMPLE,
    filter_range: bool = True,
    lidar_channel: str = "LIDAR_TOP",
    meta: Mapping[str, bool] | None = None,
    attributes_by_token: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Convert per-sample detections to the devkit's results dictionary (see the module doc).

    Args:
        nusc: a ``nuscenes.NuScenes`` database holding every sample token of ``dets_by_token``.
        dets_by_token: sample token -> :class:`Detections` in that sample's LiDAR frame; boxes ``(N, 9)``
            ``[x, y, z, dx, dy, dz, yaw, vx, vy]`` (m, rad, m/s) or ``(N, 7)`` (velocity then written as 0,
            as mmdetection3d does, so mAVE is meaningless), float32 scores ``(N,)``, int64 labels ``(N,)`` into
            ``class_names``. Any device. A sample with no detections gets an empty list, which the devkit
            needs: every sample of the evaluated split must be present.
        class_names: the detector's class list; every name must be a devkit detection class.
        max_boxes_per_sample: keep at most this many boxes per sample, the highest scores (the devkit refuses
            more than 500).
        filter_range: drop boxes the devkit would drop anyway before capping, so the cap keeps boxes that
            count: a box is kept when its global xy distance to the sample's ego pose is below its class's
            ``class_range`` of ``detection_cvpr_2019`` (the devkit's own ``ego_dist < range`` rule). The number
            dropped is logged at INFO level.
        lidar_channel: the sensor whose frame the boxes are in.
        meta: the results' ``meta`` block; default :data:`LIDAR_META`.
        attributes_by_token: optional sample token -> one attribute name per detection (a devkit attribute
            name or ``""``), used instead of :func:`default_attribute` for the samples it lists.

    Returns:
        ``{"meta": ..., "results": {token: [box dict, ...]}}``; each sample's boxes by descending score.

    Raises:
        ValueError: unknown sample token, a class name that is not a devkit class, a label out of range,
            non-finite boxes or scores, ``max_boxes_per_sample < 1``, attributes of the wrong count or name,
            attributes for a token that ``dets_by_token`` lacks.
        TypeError: a value of ``dets_by_token`` is not :class:`Detections`.
    """
    names = tuple(class_names)
    bad = [n for n in names if n not in DETECTION_NAMES]
    if bad:
        raise ValueError(f"class_names must be nuScenes detection classes {DETECTION_NAMES}; got {bad}")
    if max_boxes_per_sample < 1:
        raise ValueError(f"max_boxes_per_sample must be >= 1, got {max_boxes_per_sample}")
    attrs = dict(attributes_by_token or {})
    stray = sorted(set(attrs) - set(dets_by_token))
    if stray:
        raise ValueError(f"attributes_by_token has tokens without detections: {stray[:3]}")
    class_range = config_factory("detection_cvpr_2019").class_range
    results: dict[str, list[dict[str, Any]]] = {}
    dropped_range = dropped_cap = 0
    for token, dets in dets_by_token.items():
        if not isinstance(dets, Detections):
            raise TypeError(f"dets_by_token[{token!r}] must be Detections, got {type(dets).__name__}")
        cs, pose = lidar_to_global_records(nusc, token, lidar_channel)
        boxes = _sample_boxes(token, dets, names, cs, pose, attrs.get(token))
        if filter_range:
            kept = [b for b in boxes if _ego_dist(b, pose) < class_range[b["detection_name"]]]
            dropped_range += len(boxes) - len(kept)
            boxes = kept
        boxes.sort(key=lambda b: -b["detection_score"])  # stable: ties keep the detector's order
        dropped_cap += max(0, len(boxes) - max_boxes_per_sample)
        results[token] = boxes[:max_boxes_per_sample]
    if dropped_range or dropped_cap:
        logger.info(
            "nuScenes results: dropped %d boxes beyond the class ranges and %d beyond %d boxes per sample",
            dropped_range,
            dropped_cap,
            max_boxes_per_sample,
        )
    return {"meta": dict(LIDAR_META if meta is None else meta), "results": results}


def _sample_boxes(
    token: str,
    dets: Detections,
    names: tuple[str, ...],
    cs: dict,
    pose: dict,
    attributes: Sequence[str] | None,
) -> list[dict[str, Any]]:
    """One sample's detections as devkit box dicts in the global frame (unsorted, unfiltered)."""
    dets = dets.to("cpu")
    t = dets.boxes.tensor
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"detections of sample {token!r} have non-finite boxes")
    if not bool(torch.isfinite(dets.scores).all()):
        raise ValueError(f"detections of sample {token!r} have non-finite scores")
    labels = dets.labels.tolist()
    if labels and (min(labels) < 0 or max(labels) >= len(names)):
        raise ValueError(
            f"detections of sample {token!r} have labels {sorted(set(labels))} outside [0, {len(names)}) "
            f"for class_names {names}"
        )
    if attributes is not None:
        attributes = list(attributes)
        if len(attributes) != len(labels):
            raise ValueError(
                f"attributes_by_token[{token!r}] has {len(attributes)} names for {len(labels)} detections"
            )
        unknown = sorted({a for a in attributes if a != "" and a not in ATTRIBUTE_NAMES})
        if unknown:
            raise ValueError(
                f"attributes_by_token[{token!r}] has unknown attributes {unknown}; use {ATTRIBUTE_NAMES}"
            )
    boxes = dets.boxes
    if not boxes.has_velocity:
        boxes = type(boxes)(torch.cat([t, torch.zeros((len(t), 2), dtype=t.dtype)], dim=1))
    # LiDAR -> ego -> global composed into one rigid transform: x_g = R_p (R_c x + t_c) + t_p.
    pose_rot = Quaternion(pose["rotation"])
    rot = pose_rot * Quaternion(cs["rotation"])
    shift = pose_rot.rotate(np.asarray(cs["translation"], float)) + np.asarray(pose["translation"], float)
    out = []
    for i, (box, label, score) in enumerate(
        zip(boxes_to_devkit(boxes), labels, dets.scores.tolist(), strict=True)
    ):
        box.rotate(rot)  # centre, orientation and velocity
        box.translate(shift)  # centre only
        name = names[label]
        vx, vy = float(box.velocity[0]), float(box.velocity[1])
        out.append(
            {
                "sample_token": token,
                "translation": [float(v) for v in box.center],
                "size": [float(v) for v in box.wlh],
                "rotation": [float(v) for v in box.orientation.elements],
                "velocity": [vx, vy],
                "detection_name": name,
                "detection_score": float(score),
                "attribute_name": (
                    default_attribute(name, math.hypot(vx, vy)) if attributes is None else attributes[i]
                ),
            }
        )
    return out


def _ego_dist(box: Mapping[str, Any], pose: Mapping[str, Any]) -> float:
    """The devkit's ``ego_dist``: xy distance between the global box centre and the ego pose translation."""
    return math.hypot(
        box["translation"][0] - pose["translation"][0], box["translation"][1] - pose["translation"][1]
    )


def write_results_json(results: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a results dictionary as JSON atomically (:func:`perception.io_atomic.atomic_write_text`).

    An interrupted write never leaves a truncated file at ``path``. Parent folders are created. NaN values are
    refused (the devkit's JSON must be standard JSON).

    Returns:
        The path written.

    Raises:
        ValueError: ``results`` lacks ``"meta"`` or ``"results"``, or holds NaN/inf.
    """
    missing = [k for k in ("meta", "results") if k not in results]
    if missing:
        raise ValueError(f"results must have 'meta' and 'results' keys; missing {missing}")
    out = Path(path)
    try:
        text = json.dumps(results, allow_nan=False)
    except ValueError as e:
        raise ValueError(f"results hold NaN or inf, which the devkit's JSON cannot carry: {e}") from None
    atomic_write_text(out, text)
    return out
