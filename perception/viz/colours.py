"""Colours shared by every picture of the project: classes, ground truth vs predictions, and point colour maps.

Class colours are fixed per class name, so a class has the same colour in the BEV plot, the camera views and the
open3d renders. Ground truth drawn in a single colour is white (:data:`GT_COLOUR`: in no class colour and in none of
the point colour maps); predictions in a single colour are red (:data:`PRED_COLOUR`).
"""

from __future__ import annotations

from typing import Literal

import matplotlib
import numpy as np

from perception.structures import Points

CLASS_COLOURS: dict[str, str] = {
    "car": "#e6194b",
    "truck": "#f58231",
    "construction_vehicle": "#9a6324",
    "bus": "#ffe119",
    "trailer": "#808000",
    "barrier": "#a9a9a9",
    "motorcycle": "#f032e6",
    "bicycle": "#911eb4",
    "pedestrian": "#3cb44b",
    "traffic_cone": "#42d4f4",
    "Car": "#e6194b",
    "Pedestrian": "#3cb44b",
    "Cyclist": "#911eb4",
}
#: Classes without an entry in :data:`CLASS_COLOURS`.
UNKNOWN_CLASS_COLOUR = "#4363d8"


def class_colour(name: str) -> str:
    """Hex colour of a class (blue ``#4363d8`` for unknown names)."""
    return CLASS_COLOURS.get(name, UNKNOWN_CLASS_COLOUR)


ColourBy = Literal["height", "intensity", "time_lag", "uniform"]
BoxColourBy = Literal["class", "single"]
COLOUR_MODES: tuple[ColourBy, ...] = ("height", "intensity", "time_lag", "uniform")
_CMAPS = {"height": "viridis", "intensity": "plasma", "time_lag": "cool"}

#: Ground-truth boxes when drawn in a single colour (white: in no class colour and not in the point colour maps).
GT_COLOUR: tuple[float, float, float] = (1.0, 1.0, 1.0)
#: Predictions when drawn in a single colour.
PRED_COLOUR: tuple[float, float, float] = (1.0, 0.0, 0.0)
#: :data:`GT_COLOUR` and :data:`PRED_COLOUR` in words (legends, help texts).
GT_COLOUR_NAME, PRED_COLOUR_NAME = "white", "red"
#: Points in ``uniform`` mode.
UNIFORM_POINT_COLOUR: tuple[float, float, float] = (0.6, 0.6, 0.6)


def hex_to_rgb(colour: str) -> tuple[float, float, float]:
    """``"#rrggbb"`` -> float RGB in ``[0, 1]``."""
    r, g, b = matplotlib.colors.to_rgb(colour)
    return (float(r), float(g), float(b))


def point_colours(
    points: Points, colour_by: ColourBy = "height", value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Colour every point by a channel.

    Args:
        points: ``(N, C)`` points; ``colour_by`` names ``z`` (``height``), ``intensity`` or ``time_lag``.
        colour_by: one of :data:`COLOUR_MODES`.
        value_range: ``(low, high)`` of the channel mapped to the ends of the colour map (values outside are
            clipped); default the finite min / max of the channel.

    Returns:
        float64 ``(N, 3)`` RGB in ``[0, 1]`` (non-finite values get the low end).

    Raises:
        ValueError: unknown ``colour_by``, or a ``value_range`` that is not finite with ``low < high``.
        KeyError: the points lack the channel (the message lists the channels they have).
    """
    n = len(points)
    if colour_by == "uniform":
        return np.tile(np.asarray(UNIFORM_POINT_COLOUR, np.float64), (n, 1))
    if colour_by not in _CMAPS:
        raise ValueError(f"colour_by must be one of {COLOUR_MODES}, got {colour_by!r}")
    values = points.channel("z" if colour_by == "height" else colour_by).detach().cpu().double().numpy()
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"value_range must be finite (low, high) with low < high, got {value_range}")
    else:
        finite = values[np.isfinite(values)]
        lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    t = np.full(n, 0.5) if hi <= lo else (values - lo) / (hi - lo)
    t = np.clip(np.nan_to_num(t, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    return np.asarray(matplotlib.colormaps[_CMAPS[colour_by]](t)[:, :3], dtype=np.float64)
