"""Names of the nuScenes format that several layers use: the camera order, the detection classes, the point
columns. Defined once here; the dataset, info creation, the demo and the CenterPoint head import them."""

from __future__ import annotations

__all__ = ["CAMERA_ORDER", "NUSCENES_CLASSES", "NUSCENES_POINT_CHANNELS"]

CAMERA_ORDER: tuple[str, ...] = (
    "CAM_FRONT_LEFT",
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_BACK_LEFT",
    "CAM_BACK",
    "CAM_BACK_RIGHT",
)
"""The six cameras in the order samples, infos and camera rigs list them."""

NUSCENES_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
"""The 10 detection classes in the order of CenterPoint's / OpenPCDet's nuScenes configs (label ``i`` is
``NUSCENES_CLASSES[i]``)."""

NUSCENES_POINT_CHANNELS: tuple[str, ...] = ("x", "y", "z", "intensity", "time_lag")
"""Columns of the points a nuScenes sample carries (keyframe + sweeps, ``time_lag`` in seconds)."""
