"""Point columns: what a model reads, what an input holds, and the mapping from one to the other.

A model reads the point channels of the data set it was trained on (the one definition per format:
:data:`perception.formats.nuscenes_names.NUSCENES_POINT_CHANNELS` ``x, y, z, intensity, time_lag``,
:data:`perception.datasets.kitti_infos.KITTI_POINT_CHANNELS` ``x, y, z, intensity``). An input declares its own
columns by name (e.g. a nuScenes ``.pcd.bin``: ``x, y, z, intensity, ring``); :func:`map_columns` picks the
model's channels out of it by name, drops the others (the ring index) and fills ``time_lag`` with a constant (0
for a keyframe, the sweep's lag for an earlier sweep) when the input has no such column. Any other channel the
model reads and the input lacks is a ``ValueError`` naming both layouts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from perception.config_schema import DataConfig
from perception.structures import TIME_LAG

__all__ = ["DEFAULT_COLUMNS", "TIME_LAG", "check_columns", "map_columns", "model_point_channels"]

#: The column layout assumed for an array when none is declared (KITTI's, and the first four of every format).
DEFAULT_COLUMNS: tuple[str, ...] = ("x", "y", "z", "intensity")


def model_point_channels(data: DataConfig) -> tuple[str, ...]:
    """The point channels a model trained on ``data`` reads, in order (the data set's own definition)."""
    if data.dataset == "nuscenes":
        from perception.formats.nuscenes_names import NUSCENES_POINT_CHANNELS

        return NUSCENES_POINT_CHANNELS
    from perception.datasets.kitti_infos import KITTI_POINT_CHANNELS

    return KITTI_POINT_CHANNELS


def check_columns(columns: Sequence[str], num_columns: int, source: str) -> tuple[str, ...]:
    """``columns`` as a tuple after checking it names ``num_columns`` unique, non-empty columns with x, y, z.

    Raises:
        ValueError: a count mismatch, a duplicate or empty name, or no x / y / z (the message names ``source``).
    """
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",")]
    cols = tuple(str(c) for c in columns)
    if len(cols) != num_columns:
        raise ValueError(
            f"{source}: the points have {num_columns} columns but {len(cols)} column names were given "
            f"{list(cols)}; declare every column, e.g. columns=('x', 'y', 'z', 'intensity', 'ring')"
        )
    if any(not c for c in cols) or len(set(cols)) != len(cols):
        raise ValueError(f"{source}: column names must be unique and non-empty, got {list(cols)}")
    missing = [c for c in ("x", "y", "z") if c not in cols]
    if missing:
        raise ValueError(f"{source}: the columns {list(cols)} lack {missing}")
    return cols


def map_columns(
    points: np.ndarray,
    columns: Sequence[str],
    channels: Sequence[str],
    source: str,
    *,
    time_lag: float = 0.0,
    model_channels: Sequence[str] | None = None,
) -> np.ndarray:
    """The model's ``channels`` picked from ``points`` by column name.

    Args:
        points: float ``(N, len(columns))``.
        columns: the names of ``points``' columns (checked by :func:`check_columns`).
        channels: what the model reads, e.g. ``("x", "y", "z", "intensity", "time_lag")``.
        time_lag: the value of ``time_lag`` when the model reads it and ``columns`` lacks it.
        model_channels: all the model reads, for the error message (default ``channels``).

    Returns:
        float32 ``(N, len(channels))``.

    Raises:
        ValueError: the input lacks a channel the model reads (other than ``time_lag``); the message names the
            model's channels and the input's columns.
    """
    cols = check_columns(columns, points.shape[1], source)
    missing = [c for c in channels if c not in cols and c != TIME_LAG]
    if missing:
        raise ValueError(
            f"{source}: the model reads the point channels {list(model_channels or channels)}, the input's columns {list(cols)} "
            f"lack {missing} (declare the input's columns, e.g. columns=('x', 'y', 'z', 'intensity'))"
        )
    out = np.empty((len(points), len(channels)), dtype=np.float32)
    for i, c in enumerate(channels):
        out[:, i] = points[:, cols.index(c)] if c in cols else time_lag
    return out
