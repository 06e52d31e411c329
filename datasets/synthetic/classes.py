"""The ten nuScenes detection classes as the synthetic generator models them.

Sizes are ``(length, width, height)`` in metres (length along the heading): means and standard deviations close
to the published nuScenes per-class statistics. ``reflectivity`` (0-1) drives LiDAR intensity, ``color`` (RGB)
the camera rendering. ``front`` gives vehicles a front that differs from their back (a lower bonnet or cab), so
that the LiDAR sees which way they face: a box of the same heading-free shape would leave the heading ambiguous
by 180 degrees, which real scans are not.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClassSpec:
    """One detection class: devkit detection name, default nuScenes category, size model, looks."""

    name: str
    category: str
    size_mean: tuple[float, float, float]
    size_std: tuple[float, float, float]
    reflectivity: float
    color: tuple[int, int, int]
    #: ``(length fraction, height fraction)``: the front ``front[0]`` of the length (along the heading) is only
    #: ``front[1]`` of the height, standing on the box's floor; the rest is full height. ``(0, 1)``: a plain box.
    #: The annotated box is the whole object, front section included.
    front: tuple[float, float] = (0.0, 1.0)


#: In the devkit's class order (``nuscenes.eval.detection.constants.DETECTION_NAMES``).
CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("car", "vehicle.car", (4.62, 1.95, 1.73), (0.45, 0.18, 0.22), 0.45, (200, 40, 40), (0.3, 0.6)),
    ClassSpec(
        "truck", "vehicle.truck", (6.9, 2.5, 2.85), (1.6, 0.25, 0.5), 0.40, (230, 130, 20), (0.3, 0.75)
    ),
    ClassSpec("bus", "vehicle.bus.rigid", (11.2, 2.94, 3.47), (1.5, 0.12, 0.25), 0.40, (240, 210, 30)),
    ClassSpec("trailer", "vehicle.trailer", (12.3, 2.9, 3.87), (3.5, 0.25, 0.45), 0.35, (140, 90, 50)),
    ClassSpec(
        "construction_vehicle",
        "vehicle.construction",
        (6.5, 2.8, 3.2),
        (1.8, 0.4, 0.6),
        0.30,
        (250, 170, 0),
        (0.35, 0.6),
    ),
    ClassSpec(
        "pedestrian", "human.pedestrian.adult", (0.73, 0.67, 1.77), (0.12, 0.1, 0.12), 0.25, (40, 90, 220)
    ),
    ClassSpec(
        "motorcycle", "vehicle.motorcycle", (2.11, 0.77, 1.47), (0.2, 0.12, 0.15), 0.45, (170, 40, 200)
    ),
    ClassSpec("bicycle", "vehicle.bicycle", (1.70, 0.60, 1.29), (0.12, 0.1, 0.15), 0.35, (40, 200, 80)),
    ClassSpec(
        "traffic_cone",
        "movable_object.trafficcone",
        (0.42, 0.41, 1.07),
        (0.05, 0.05, 0.2),
        0.90,
        (255, 110, 0),
    ),
    ClassSpec(
        "barrier", "movable_object.barrier", (0.50, 2.53, 0.98), (0.1, 0.35, 0.08), 0.55, (230, 230, 230)
    ),
)

CLASS_INDEX: dict[str, int] = {c.name: i for i, c in enumerate(CLASSES)}

#: Vehicle-like detection classes (attributes vehicle.moving / parked / stopped).
VEHICLES = ("car", "truck", "bus", "trailer", "construction_vehicle")
#: Two-wheelers (attributes cycle.with_rider / without_rider).
CYCLES = ("motorcycle", "bicycle")
