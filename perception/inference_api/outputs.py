"""Per-frame files of ``tools/infer.py``: the detections JSON and the KITTI-format ``.txt``.

KITTI ``.txt`` (16 columns ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y score``,
:func:`perception.formats.kitti_labels.write_result_file`):

* with a KITTI calibration (:func:`kitti_camera_objects`): the official result format in the rectified camera-2
  frame, exactly as ``tools/test.py`` writes it (:func:`perception.engine.inference.kitti_objects`: bottom centre,
  ``rotation_y``, the 2D box of the projected corners clipped to the image, ``alpha``; boxes behind the camera or
  outside the image are left out);
* without one (:func:`kitti_lidar_objects`): every box in the **LiDAR frame**, in KITTI's field order: ``h w l`` =
  ``dz dy dx``, ``x y z`` = the bottom centre ``(x, y, z - dz / 2)`` in the LiDAR frame, ``rotation_y`` = the LiDAR
  yaw (counter-clockwise about +z from +x), and the camera fields as KITTI's result format has them when unknown:
  ``truncated -1``, ``occluded -1``, ``alpha -10``, 2D box ``0 0 0 0``. Such files are not KITTI benchmark
  submissions; ``tools/infer.py`` writes them to ``kitti_lidar/`` (and calibrated ones to ``kitti/``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perception.formats.kitti_labels import KittiObjects, write_result_file

from .detector import Result

__all__ = ["CameraInfo", "kitti_camera_objects", "kitti_lidar_objects", "write_json", "write_kitti_txt"]


@dataclass(frozen=True)
class CameraInfo:
    """What the KITTI camera-frame conversion needs of a frame: its calibration and image size ``(H, W)``."""

    calib: Any  # perception.datasets.kitti_calib.KittiCalib
    image_size: tuple[int, int]


def kitti_lidar_objects(result: Result) -> KittiObjects:
    """LiDAR-frame boxes in KITTI's field order (see the module docstring)."""
    boxes = result.boxes.astype(np.float64)
    n = len(boxes)
    if n == 0:
        return KittiObjects.empty(with_score=True)
    bottom = boxes[:, :3].copy()
    bottom[:, 2] -= boxes[:, 5] / 2
    return KittiObjects(
        names=np.array(result.names, dtype=object),
        truncated=np.full(n, -1.0),
        occluded=np.full(n, -1),
        alpha=np.full(n, -10.0),
        bbox=np.zeros((n, 4)),
        dimensions=boxes[:, [5, 4, 3]],
        location=bottom,
        rotation_y=boxes[:, 6],
        score=result.scores.astype(np.float64),
    )


def kitti_camera_objects(result: Result, camera: CameraInfo) -> KittiObjects:
    """The official camera-frame result records of ``result`` (``tools/test.py``'s conversion)."""
    from perception.engine.inference import kitti_objects

    return kitti_objects(result.detections, camera, result.class_names)  # type: ignore[no-any-return]


def write_kitti_txt(path: str | os.PathLike[str], result: Result, camera: CameraInfo | None = None) -> Path:
    """Write ``result`` as a KITTI-format ``.txt``: camera frame with ``camera``, else LiDAR frame."""
    objs = kitti_lidar_objects(result) if camera is None else kitti_camera_objects(result, camera)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_result_file(path, objs)
    return path


def write_json(path: str | os.PathLike[str], result: Result, extra: dict[str, Any] | None = None) -> Path:
    """Write :meth:`Result.to_dict` (plus ``extra`` keys) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**result.to_dict(), **(extra or {})}
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return path


def frame_stem(path: str | os.PathLike[str], extensions: Sequence[str]) -> str:
    """The file name without its point-file extension (``000001.bin`` -> ``000001``, ``a.pcd.bin`` -> ``a``)."""
    name = Path(path).name
    for ext in extensions:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return Path(path).stem
