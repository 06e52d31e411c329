"""Synthetic driving scenes written in the real nuScenes and KITTI on-disk formats.

No real dataset can be downloaded on the project's machines, so the project simulates its own: a street with
objects of all ten nuScenes detection classes, a spinning LiDAR (ray cast) and pinhole cameras, written so the
official loaders and evaluators run on it unmodified. Entry points: :func:`generate` (what
``tools/create_data.py synthetic`` calls) and :func:`make_lidar_scan` (one multi-sweep scan as an array).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .lidar import LidarScan, cast_scan, make_lidar_scan, scan_scene
from .params import LidarSpec, SyntheticParams, hdl32e, hdl64e
from .scene import Scene, SceneObject, generate_scene


def generate(params: SyntheticParams, out: str | Path) -> dict[str, Any]:
    """Write a synthetic data set in ``params.format`` under ``out``; returns the writer's summary dict."""
    if not isinstance(params, SyntheticParams):
        raise TypeError(f"params must be a SyntheticParams, got {type(params).__name__}")
    if params.format == "nuscenes":
        from .nuscenes_writer import write_nuscenes

        return write_nuscenes(params, out)
    from .kitti_writer import write_kitti

    return write_kitti(params, out)


__all__ = [
    "LidarScan",
    "LidarSpec",
    "Scene",
    "SceneObject",
    "SyntheticParams",
    "cast_scan",
    "generate",
    "generate_scene",
    "hdl32e",
    "hdl64e",
    "make_lidar_scan",
    "scan_scene",
]
