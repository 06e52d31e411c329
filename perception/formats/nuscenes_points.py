"""nuScenes point loading: a keyframe scan plus its sweeps, merged into the keyframe's LiDAR frame.

Used by the dataset (:mod:`perception.datasets.nuscenes`) and by info creation
(:mod:`perception.datasets.nuscenes_infos`, for the GT database). Reads the record's ``lidar_path`` / ``sweeps`` /
``token`` (:class:`~perception.formats.nuscenes_infos.NuScenesInfo`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np

from .nuscenes_infos import NuScenesInfo
from .points import NUSCENES_CHANNELS, load_scan, sweep_to_keyframe

__all__ = ["EGO_RADIUS", "load_lidar_points", "pick_sweeps", "sweep_chain"]

logger = logging.getLogger("perception.datasets.nuscenes")  # the dataset's logger: users filter on it

#: Sweep points with ``|x| < EGO_RADIUS`` and ``|y| < EGO_RADIUS`` (sensor frame, m) are the ego vehicle's own.
EGO_RADIUS = 1.0

T = TypeVar("T")


def sweep_chain(max_sweeps: int, sweep_stride: int = 1) -> int:
    """Scans of the 20 Hz chain (keyframe included) an info must list so that :func:`pick_sweeps` finds
    ``max_sweeps - 1`` sweeps at ``sweep_stride``: ``1 + (max_sweeps - 1) * sweep_stride`` (the ``N`` of the info
    file names; ``max_sweeps`` itself for stride 1)."""
    if not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise ValueError(f"max_sweeps must be an int >= 1 (keyframe included), got {max_sweeps!r}")
    if not isinstance(sweep_stride, int) or sweep_stride < 1:
        raise ValueError(f"sweep_stride must be an int >= 1, got {sweep_stride!r}")
    return 1 + (max_sweeps - 1) * sweep_stride


def pick_sweeps(sweeps: Sequence[T], max_sweeps: int, sweep_stride: int = 1) -> list[T]:
    """The sweeps merged into a keyframe: of ``sweeps`` (newest first, the 20 Hz chain), every
    ``sweep_stride``-th one -- ``sweeps[stride - 1]``, ``sweeps[2 * stride - 1]``, ... -- at most
    ``max_sweeps - 1`` of them. Stride 1 takes the newest ``max_sweeps - 1`` (OpenPCDet's and mmdet3d's test-time
    choice); stride 9 with ``max_sweeps`` 2 takes the scan 0.45 s before the keyframe (nuScenes' 9th sweep)."""
    sweep_chain(max_sweeps, sweep_stride)  # validates both
    return list(sweeps[sweep_stride - 1 :: sweep_stride][: max_sweeps - 1])


def load_lidar_points(
    root: Path,
    info: NuScenesInfo,
    max_sweeps: int,
    missing_sweeps: Literal["error", "skip"] = "error",
    sweep_stride: int = 1,
) -> np.ndarray:
    """Keyframe + up to ``max_sweeps - 1`` sweeps (:func:`pick_sweeps` at ``sweep_stride``) in the keyframe LiDAR
    frame: float32 ``(N, 5)`` ``[x, y, z, intensity, time_lag]``, keyframe points first, then sweeps newest
    first."""
    key = load_scan(root / info.lidar_path, NUSCENES_CHANNELS, keep=4)
    parts = [np.concatenate([key, np.zeros((len(key), 1), np.float32)], axis=1)]
    for sweep in pick_sweeps(info.sweeps, max_sweeps, sweep_stride):
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
