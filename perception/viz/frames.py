"""Which way the ego vehicle faces in each data set's LiDAR frame, for labelling pictures (one definition).

Both frames are right-handed with z up; they differ in the horizontal axes:

* nuScenes ``LIDAR_TOP``: x to the right of the ego vehicle, y forward (the sensor is mounted turned by 90
  degrees; the synthetic nuScenes data mounts it the same way).
* KITTI Velodyne: x forward, y to the left.

The picture code takes a :class:`LidarAxes` (from :func:`lidar_axes` with the config's ``data.dataset``) and
labels the BEV axes with it; without one it labels them ``x (m)`` / ``y (m)`` and claims no direction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["LIDAR_AXES", "UNKNOWN_AXIS_LABELS", "LidarAxes", "lidar_axes"]

#: BEV axis labels when the frame is not known.
UNKNOWN_AXIS_LABELS: tuple[str, str] = ("x (m)", "y (m)")


@dataclass(frozen=True)
class LidarAxes:
    """The horizontal axes of a right-handed, z-up LiDAR frame.

    Attributes:
        forward: the axis the ego vehicle drives along, ``"x"`` or ``"y"`` (positive direction). The other
            horizontal axis points left (``forward="x"``) or right (``forward="y"``), as z is up.
    """

    forward: Literal["x", "y"]

    def __post_init__(self) -> None:
        if self.forward not in ("x", "y"):
            raise ValueError(f"LidarAxes.forward must be 'x' or 'y', got {self.forward!r}")

    @property
    def directions(self) -> tuple[str, str]:
        """Where +x and +y point relative to the ego vehicle: ``("forward", "left")`` or ``("right",
        "forward")``."""
        return ("forward", "left") if self.forward == "x" else ("right", "forward")

    @property
    def axis_labels(self) -> tuple[str, str]:
        """Labels of the BEV picture's horizontal (x) and vertical (y) axes, e.g. ``("x (m, right)", "y (m,
        forward)")``."""
        dx, dy = self.directions
        return (f"x (m, {dx})", f"y (m, {dy})")


#: The LiDAR frame of each data set format (the config's ``data.dataset``).
LIDAR_AXES: dict[str, LidarAxes] = {
    "nuscenes": LidarAxes(forward="y"),
    "kitti": LidarAxes(forward="x"),
}


def lidar_axes(dataset: str) -> LidarAxes:
    """The LiDAR frame of data set format ``dataset`` (``"nuscenes"`` or ``"kitti"``).

    Raises:
        ValueError: an unknown format (the message lists the known ones).
    """
    try:
        return LIDAR_AXES[dataset]
    except KeyError:
        raise ValueError(
            f"no LiDAR frame convention for data set format {dataset!r}; known: {sorted(LIDAR_AXES)}"
        ) from None
