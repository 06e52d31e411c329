"""Reading raw LiDAR scans (``.bin`` / ``.pcd.bin``) with size checks, and dropping non-finite points.

Both formats are headerless little-endian float32 records:

* KITTI ``velodyne/*.bin``: 4 values per point ``[x, y, z, reflectance]``;
* nuScenes ``LIDAR_TOP/*.pcd.bin``: 5 values per point ``[x, y, z, intensity, ring]``.

A file whose size is not a multiple of ``4 * num_channels`` bytes is truncated or of another format; reading it
raises a ``ValueError`` naming the file, its size and the expected multiple instead of silently reshaping the
bytes into garbage. An empty file is a valid scan with 0 points. Points with a NaN / inf value are dropped by
:func:`drop_nonfinite`, which logs how many it dropped (logger ``perception.formats.points``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

__all__ = ["KITTI_CHANNELS", "NUSCENES_CHANNELS", "drop_nonfinite", "load_scan", "read_points_bin"]

logger = logging.getLogger(__name__)

#: Channels stored per point in a KITTI velodyne file.
KITTI_CHANNELS = 4
#: Channels stored per point in a nuScenes LiDAR file.
NUSCENES_CHANNELS = 5


def read_points_bin(path: str | os.PathLike[str], num_channels: int) -> np.ndarray:
    """Read a headerless float32 point file.

    Args:
        path: the ``.bin`` / ``.pcd.bin`` file.
        num_channels: float32 values per point (4 for KITTI, 5 for nuScenes).

    Returns:
        float32 ``(N, num_channels)`` array (``N`` may be 0), native byte order.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: ``num_channels < 3``, or the file size is not a multiple of ``4 * num_channels`` bytes.
    """
    if not isinstance(num_channels, int) or num_channels < 3:
        raise ValueError(f"num_channels must be an int >= 3 (x, y, z, ...), got {num_channels!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LiDAR file not found: {path}")
    size = path.stat().st_size
    record = 4 * num_channels
    if size % record:
        raise ValueError(
            f"{path}: size {size} bytes is not a multiple of {record} bytes ({num_channels} float32 values per "
            f"point); the file is truncated or not a {num_channels}-channel scan"
        )
    data = np.fromfile(path, dtype="<f4")
    if data.size * 4 != size:  # the file changed between stat and read
        raise ValueError(f"{path}: read {data.size * 4} bytes but the file has {size}")
    return data.reshape(-1, num_channels).astype(np.float32, copy=False)


def drop_nonfinite(points: np.ndarray, source: str) -> tuple[np.ndarray, int]:
    """Remove points with a NaN or inf in any column; logs a warning with the count when any is dropped.

    Args:
        points: float ``(N, C)``.
        source: what the points are (file name), for the log message.

    Returns:
        the finite points ``(M, C)`` (the input itself when all are finite) and the number dropped ``N - M``.
    """
    if points.ndim != 2:
        raise ValueError(f"points must be (N, C), got shape {points.shape}")
    finite = np.isfinite(points).all(axis=1)
    dropped = int(len(points) - finite.sum())
    if dropped:
        logger.warning("%s: dropped %d of %d points with NaN/inf values", source, dropped, len(points))
        return points[finite], dropped
    return points, 0


def load_scan(path: str | os.PathLike[str], num_channels: int, keep: int | None = None) -> np.ndarray:
    """:func:`read_points_bin` then :func:`drop_nonfinite`; optionally keep the first ``keep`` columns.

    Returns:
        float32 ``(N, keep or num_channels)`` finite points.
    """
    pts = read_points_bin(path, num_channels)
    if keep is not None:
        if not 3 <= keep <= num_channels:
            raise ValueError(f"keep must be in [3, {num_channels}], got {keep}")
        pts = pts[:, :keep]
    pts, _ = drop_nonfinite(pts, str(path))
    return np.ascontiguousarray(pts)
