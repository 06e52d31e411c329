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
from .params import (
    PARAMS_RECORD,
    LidarSpec,
    SyntheticParams,
    hdl32e,
    hdl64e,
    read_params_record,
    with_beams,
    write_params_record,
)
from .scene import Scene, SceneObject, generate_scene
from .staging import dataset_marker, write_staged


def generate(params: SyntheticParams, out: str | Path) -> dict[str, Any]:
    """Write a synthetic data set in ``params.format`` under ``out``; returns the writer's summary dict.

    The files are written into a hidden sibling of ``out`` and moved into place when complete
    (:func:`~perception.datasets.synthetic.staging.write_staged`): a generation killed half-way leaves ``out``
    as it was, and its partial folder is removed by the next one. The parameters are recorded in the marker
    folder (:data:`~.params.PARAMS_RECORD`, read back by :func:`~.params.read_params_record`) so that a later run
    with other settings does not take this data set for its own.
    """
    if not isinstance(params, SyntheticParams):
        raise TypeError(f"params must be a SyntheticParams, got {type(params).__name__}")
    out = Path(out).absolute()
    marker = dataset_marker(params.format, params.version)
    if params.format == "nuscenes":
        from .nuscenes_writer import write_nuscenes

        summary = write_staged(
            out,
            lambda folder: _recorded(write_nuscenes(params, folder), params, folder / marker),
            marker=marker,
        )
        return {**summary, "dataroot": str(out)}
    from .kitti_writer import write_kitti

    summary = write_staged(
        out, lambda folder: _recorded(write_kitti(params, folder), params, folder / marker), marker=marker
    )
    return {**summary, "root": str(out)}


def _recorded(summary: dict[str, Any], params: SyntheticParams, marker_dir: Path) -> dict[str, Any]:
    write_params_record(params, marker_dir)
    return summary


__all__ = [
    "PARAMS_RECORD",
    "LidarScan",
    "LidarSpec",
    "Scene",
    "SceneObject",
    "SyntheticParams",
    "cast_scan",
    "dataset_marker",
    "generate",
    "generate_scene",
    "hdl32e",
    "hdl64e",
    "make_lidar_scan",
    "read_params_record",
    "scan_scene",
    "with_beams",
    "write_params_record",
]
