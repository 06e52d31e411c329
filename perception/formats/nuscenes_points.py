"""nuScenes point loading: a keyframe scan plus its sweeps, merged into the keyframe's LiDAR frame.

Used by the dataset (:mod:`perception.datasets.nuscenes`) and by info creation
(:mod:`perception.datasets.nuscenes_infos`, for the GT database). Reads the record's ``lidar_path`` / ``sweeps`` /
``token`` (:class:`~perception.formats.nuscenes_infos.NuScenesInfo`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from .nuscenes_infos import NuScenesInfo
from .points import NUSCENES_CHANNELS, load_scan, sweep_to_keyframe

__all__ = ["EGO_RADIUS", "load_lidar_points"]

logger = logging.getLogger("perception.datasets.nuscenes")  # the dataset's logger: users filter on it

#: Sweep points with ``|x| < EGO_RADIUS`` and ``|y| < EGO_RADIUS`` (sensor frame, m) are the ego vehicle's own.
EGO_RADIUS = 1.0


def load_lidar_points(
    root: Path, info: NuScenesInfo, max_sweeps: int, missing_sweeps: Literal["error", "skip"] = "error"
) -> np.ndarray:
    """Keyframe + up to ``max_sweeps - 1`` sweeps in the keyframe LiDAR frame: float32 ``(N, 5)``
    ``[x, y, z, intensity, time_lag]``, keyframe points first, then sweeps newest first."""
    key = load_scan(root / info.lidar_path, NUSCENES_CHANNELS, keep=4)
    parts = [np.concatenate([key, np.zeros((len(key), 1), np.float32)], axis=1)]
    for sweep in info.sweeps[: max_sweeps - 1]:
        path = root / sweep.path
        if not path.is_file():
            if missing_sweeps == "skip":
                logger.warning("sample %s: sweep file %s is missing; skipped", info.token, path)
                continue
            raise FileNotFoundError(
                f"sample {info.token}: sweep file not found: {path} (download the sweeps, or build infos with "
                "fewer sweeps: create_data.py nuscenes --max-sweeps 1)"
            )
        pts = load_scan(path, NUSCENES_CHANNELS, keep=4)
        parts.append(sweep_to_keyframe(pts, sweep.sensor_to_lidar, sweep.time_lag, EGO_RADIUS))
    return np.ascontiguousarray(np.concatenate(parts))
