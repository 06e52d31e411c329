"""A synthetic street scene: a road, the moving ego vehicle, annotated objects and static clutter.

Everything is laid out in *road coordinates* ``(s, l)``: ``s`` is the arc length along the ego's path (a
circular arc or a straight line), ``l`` the lateral offset to the left of it. The ego drives along ``l = 0``
at constant speed; objects keep their lane ``l`` and move along ``s`` at a constant signed speed (0 = static).
Layout (metres): oncoming lanes ``l = +7, +3.5``; ego lane ``0``; same-direction lane ``-3.5``; bike lane
``-5.9``; parking ``-7.8`` / ``+10.0``; curb ``-9.6`` / ``+11.6``; sidewalks ``[-13, -10.3]`` / ``[12.2, 15]``;
building fronts ``-13.8`` / ``+15.8``. The global frame is the nuScenes one (x east, y north, z up, ground
at z = 0); times are seconds from the first keyframe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .classes import CLASS_INDEX, CLASSES, CYCLES, VEHICLES
from .geometry import make_pose, rot_z

LANES_SAME = (-3.5,)
LANES_ONCOMING = (3.5, 7.0)
BIKE_LANE = -5.9
PARKING = (-7.8, 10.0)
CURB = (-9.6, 11.6)
SIDEWALKS = ((-13.0, -10.3), (12.2, 15.0))
WALL_FRONT = (-13.8, 15.8)
EGO_SIZE = (4.9, 2.0, 1.8)


@dataclass(frozen=True)
class Road:
    """Path of the ego: starts at ``origin`` (global x, y) with ``heading0`` (rad) and constant curvature (1/m)."""

    origin: tuple[float, float]
    heading0: float
    curvature: float

    def frame(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global ``(x, y, heading)`` of the path at arc length(s) ``s``."""
        s = np.asarray(s, dtype=np.float64)
        k, h0 = self.curvature, self.heading0
        heading = h0 + k * s
        if abs(k) < 1e-9:
            x = self.origin[0] + s * np.cos(h0)
            y = self.origin[1] + s * np.sin(h0)
        else:
            x = self.origin[0] + (np.sin(heading) - np.sin(h0)) / k
            y = self.origin[1] - (np.cos(heading) - np.cos(h0)) / k
        return x, y, heading

    def to_global(
        self, s: np.ndarray | float, lat: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global ``(x, y, road heading)`` of road coordinates ``(s, l)``."""
        x, y, heading = self.frame(s)
        lat = np.asarray(lat, dtype=np.float64)
        return x - lat * np.sin(heading), y + lat * np.cos(heading), heading


@dataclass(frozen=True)
class SceneObject:
    """One annotated object track.

    Attributes:
        cls: index into :data:`~perception.datasets.synthetic.classes.CLASSES`.
        category: nuScenes category name (e.g. ``human.pedestrian.child``).
        size: ``(length, width, height)`` metres.
        s0, lat: road coordinates at t = 0.
        speed: signed speed along ``s`` (m/s); 0 = static.
        yaw_offset: heading relative to the road direction (rad).
        attribute: nuScenes attribute name, ``""`` for classes without attributes.
    """

    cls: int
    category: str
    size: tuple[float, float, float]
    s0: float
    lat: float
    speed: float
    yaw_offset: float
    attribute: str

    @property
    def class_name(self) -> str:
        """Detection class name."""
        return CLASSES[self.cls].name


@dataclass
class Clutter:
    """Static unannotated boxes (building fronts, walls, poles) in the global frame.

    Attributes: ``centers`` (C, 3), ``dims`` (C, 3) ``[l, w, h]``, ``yaws`` (C,), ``reflectivity`` (C,).
    """

    centers: np.ndarray
    dims: np.ndarray
    yaws: np.ndarray
    reflectivity: np.ndarray


@dataclass
class Scene:
    """A generated scene; query object boxes and ego poses at any time ``t`` (seconds)."""

    road: Road
    ego_speed: float
    objects: list[SceneObject]
    clutter: Clutter
    t_range: tuple[float, float]
    guaranteed: list[int] = field(default_factory=list)

    def ego_pose(self, t: float) -> np.ndarray:
        """(4, 4) ``T_global_ego`` at time ``t``; the ego frame is x forward, y left, z up, on the ground."""
        x, y, heading = self.road.frame(self.ego_speed * t)
        return make_pose(rot_z(float(heading)), [float(x), float(y), 0.0])

    def boxes(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Global object boxes at time ``t``.

        Returns:
            centers (K, 3), dims (K, 3) ``[l, w, h]``, yaws (K,) rad, velocities (K, 2) m/s in x, y.
        """
        if not self.objects:
            z = np.zeros((0, 3))
            return z, z.copy(), np.zeros(0), np.zeros((0, 2))
        s = np.array([o.s0 + o.speed * t for o in self.objects])
        lat = np.array([o.lat for o in self.objects])
        dims = np.array([o.size for o in self.objects], dtype=np.float64)
        x, y, heading = self.road.to_global(s, lat)
        yaws = heading + np.array([o.yaw_offset for o in self.objects])
        speed = np.array([o.speed for o in self.objects])
        # d(position)/ds for a lane at offset l on an arc scales by (1 - kappa * l).
        scale = speed * (1.0 - self.road.curvature * lat)
        vel = np.stack([scale * np.cos(heading), scale * np.sin(heading)], axis=1)
        centers = np.stack([x, y, dims[:, 2] / 2.0], axis=1)
        return centers, dims, np.asarray(yaws), vel


def _sample_size(rng: np.random.Generator, cls: int, scale: float = 1.0) -> tuple[float, float, float]:
    spec = CLASSES[cls]
    mean, std = np.asarray(spec.size_mean) * scale, np.asarray(spec.size_std) * scale
    size = mean + np.clip(rng.standard_normal(3), -2.0, 2.0) * std
    return tuple(float(v) for v in np.round(np.maximum(size, 0.25 * mean), 3))  # type: ignore[return-value]


def _extent(obj: SceneObject) -> tuple[float, float]:
    """Half extents of the object's footprint along ``s`` and ``l``."""
    c, s = abs(np.cos(obj.yaw_offset)), abs(np.sin(obj.yaw_offset))
    return 0.5 * (obj.size[0] * c + obj.size[1] * s), 0.5 * (obj.size[0] * s + obj.size[1] * c)


class _Placer:
    """Rejects objects whose footprint (with margins) meets another object or the ego at any time."""

    def __init__(self, times: np.ndarray, ego_speed: float) -> None:
        self.times = times
        # Per track: s(t), lateral offset, half extents along s and l, s at t = 0.
        self.tracks: list[tuple[np.ndarray, float, float, float, float]] = []
        self.tracks.append((ego_speed * times, 0.0, EGO_SIZE[0] / 2 + 0.5, EGO_SIZE[1] / 2, 0.0))
        self.sight_lines: list[tuple[float, float]] = []

    @staticmethod
    def _blocks(target: tuple[float, float], s0: float, lat: float, half_s: float, half_l: float) -> bool:
        """Does a footprint at (s0, lat) cut the segment from the LiDAR (s = 0.9, l = 0) to ``target``?"""
        u = np.linspace(0.0, 1.0, 60)
        ps, pl = 0.9 + u * (target[0] - 0.9), u * target[1]
        return bool(np.any((np.abs(ps - s0) < half_s + 0.3) & (np.abs(pl - lat) < half_l + 0.3)))

    def try_add(self, obj: SceneObject, keep_sight: bool = False) -> bool:
        half_s, half_l = _extent(obj)
        s = obj.s0 + obj.speed * self.times
        for ts, tl, hs, hl, _ in self.tracks:
            if abs(tl - obj.lat) < hl + half_l + 0.2 and np.any(np.abs(ts - s) < hs + half_s + 0.6):
                return False
        for target in self.sight_lines:
            if self._blocks(target, obj.s0, obj.lat, half_s, half_l):
                return False
        if keep_sight:
            for _, tl, hs, hl, ts0 in self.tracks[1:]:
                if self._blocks((obj.s0, obj.lat), ts0, tl, hs, hl):
                    return False
            self.sight_lines.append((obj.s0, obj.lat))
        self.tracks.append((s, obj.lat, half_s, half_l, obj.s0))
        return True


def _propose(
    rng: np.random.Generator,
    cls: int,
    s_range: tuple[float, float],
    lane_speed: dict[float, float],
    ego_speed: float,
) -> SceneObject:
    """A random object of class ``cls`` at a plausible place with a plausible motion."""
    name = CLASSES[cls].name
    category = CLASSES[cls].category
    s0 = float(rng.uniform(*s_range))
    side = int(rng.integers(2))
    yaw_jitter = float(rng.normal(0.0, 0.04))
    size_scale = 1.0
    if name in VEHICLES:
        where = rng.choice(
            ["lane", "parking"], p=[0.55, 0.45] if name in ("car", "truck", "bus") else [0.25, 0.75]
        )
        if where == "lane":
            lat = float(rng.choice(LANES_SAME + LANES_ONCOMING + ((0.0,) if name == "car" else ())))
            speed = ego_speed if lat == 0.0 else lane_speed[lat]
            yaw, attr = (
                (0.0 if speed >= 0 and lat <= 0 else np.pi),
                ("vehicle.moving" if speed else "vehicle.stopped"),
            )
            if lat == 0.0:
                s0 = float(rng.uniform(10.0, 35.0))
        else:
            lat, speed, attr = PARKING[side], 0.0, "vehicle.parked"
            yaw = (0.0 if side == 0 else np.pi) + yaw_jitter
    elif name in CYCLES:
        if rng.random() < 0.5:
            lat = BIKE_LANE if name == "bicycle" else float(rng.choice(LANES_SAME))
            speed = float(rng.uniform(3.0, 6.0)) if name == "bicycle" else lane_speed[lat]
            yaw, attr = 0.0, ("cycle.with_rider" if speed else "cycle.without_rider")
        else:
            lo, hi = SIDEWALKS[side]
            lat, speed, attr = float(rng.uniform(lo + 0.5, hi - 0.5)), 0.0, "cycle.without_rider"
            yaw = float(rng.choice([0.0, np.pi / 2, np.pi])) + 4 * yaw_jitter
    elif name == "pedestrian":
        lo, hi = SIDEWALKS[side]
        lat = float(rng.uniform(lo + 0.4, hi - 0.4))
        u = rng.random()
        if u < 0.1:
            category, size_scale = "human.pedestrian.child", 0.75
        elif u < 0.15:
            category = "human.pedestrian.construction_worker"
        mode = rng.choice(["moving", "standing", "sitting"], p=[0.6, 0.35, 0.05])
        if mode == "moving":
            speed = float(rng.uniform(0.8, 1.7)) * (1 if rng.random() < 0.5 else -1)
            yaw, attr = (0.0 if speed > 0 else np.pi) + yaw_jitter, "pedestrian.moving"
        else:
            speed, yaw = 0.0, float(rng.uniform(-np.pi, np.pi))
            attr = "pedestrian.standing" if mode == "standing" else "pedestrian.sitting_lying_down"
    else:  # traffic_cone, barrier: static at the curb
        lat = CURB[side] + float(rng.uniform(-0.4, 0.4))
        speed, attr = 0.0, ""
        yaw = (np.pi / 2 if name == "barrier" else float(rng.uniform(-np.pi, np.pi))) + yaw_jitter
    size = _sample_size(rng, cls, size_scale)
    if attr == "pedestrian.sitting_lying_down":
        size = (size[0] * 1.4, size[1], size[2] * 0.6)
    return SceneObject(cls, category, size, s0, lat, float(speed), float(yaw), attr)


def _clutter(rng: np.random.Generator, road: Road, s_lo: float, s_hi: float) -> Clutter:
    """Building fronts with gaps on both sides and street-light poles at the curbs."""
    centers, dims, yaws, refl = [], [], [], []
    for side, front in enumerate(WALL_FRONT):
        sign = 1.0 if front > 0 else -1.0
        s = s_lo + float(rng.uniform(0.0, 10.0))
        while s < s_hi:
            length, gap = float(rng.uniform(8.0, 30.0)), float(rng.uniform(3.0, 15.0))
            depth, height = float(rng.uniform(4.0, 10.0)), float(rng.uniform(4.0, 18.0))
            sc, lc = s + length / 2, front + sign * depth / 2
            x, y, h = road.to_global(sc, lc)
            centers.append([float(x), float(y), height / 2])
            dims.append([length, depth, height])
            yaws.append(float(h))
            refl.append(float(rng.uniform(0.15, 0.35)))
            s += length + gap
        s = s_lo + float(rng.uniform(0.0, 20.0))
        while s < s_hi:
            x, y, h = road.to_global(s, CURB[side] + sign * 0.3)
            height = float(rng.uniform(5.0, 8.0))
            centers.append([float(x), float(y), height / 2])
            dims.append([0.25, 0.25, height])
            yaws.append(float(h))
            refl.append(0.5)
            s += float(rng.uniform(18.0, 35.0))
    return Clutter(np.array(centers), np.array(dims), np.array(yaws), np.array(refl))


def generate_scene(
    rng: np.random.Generator,
    t_range: tuple[float, float],
    num_objects: int = 40,
    origin: tuple[float, float] = (1000.0, 1000.0),
    guarantee_all_classes: bool = True,
) -> Scene:
    """Generate a scene valid (no collisions) for times in ``t_range`` (seconds).

    Args:
        rng: the only source of randomness.
        t_range: ``(t_min, t_max)`` the scene is sampled in; objects are spread over the road the ego covers.
        num_objects: random objects to try to place (placements that collide are dropped after retries).
        origin: global (x, y) of the ego at t = 0.
        guarantee_all_classes: place one object of every class 6-22 m from the ego at t = 0 with a free line
            of sight from the LiDAR, so every class has LiDAR points in the first keyframe.
    """
    ego_speed = float(rng.uniform(3.0, 9.0))
    road = Road(
        (float(origin[0]), float(origin[1])),
        float(rng.uniform(-np.pi, np.pi)),
        float(rng.uniform(-0.004, 0.004)),
    )
    t_min, t_max = t_range
    times = np.linspace(t_min, t_max, max(2, int(np.ceil((t_max - t_min) / 0.1)) + 1))
    lane_speed = {lat: float(rng.uniform(3.0, 12.0)) for lat in LANES_SAME}
    lane_speed.update(
        {lat: -float(rng.uniform(3.0, 12.0)) * float(rng.random() > 0.1) for lat in LANES_ONCOMING}
    )
    placer = _Placer(times, ego_speed)
    objects: list[SceneObject] = []
    guaranteed: list[int] = []
    if guarantee_all_classes:
        for cls in rng.permutation(len(CLASSES)):
            for _ in range(200):
                s_ahead = float(rng.uniform(6.0, 20.0)) * (1 if rng.random() < 0.6 else -1)
                obj = _propose(rng, int(cls), (s_ahead, s_ahead), lane_speed, ego_speed)
                if obj.lat == 0.0:
                    continue
                if placer.try_add(obj, keep_sight=True):
                    guaranteed.append(len(objects))
                    objects.append(obj)
                    break
    s_lo = min(0.0, ego_speed * t_min) - 50.0
    s_hi = ego_speed * t_max + 60.0
    weights = np.array([0.30, 0.07, 0.04, 0.04, 0.04, 0.22, 0.05, 0.06, 0.09, 0.09])
    for _ in range(num_objects):
        cls = int(rng.choice(len(CLASSES), p=weights / weights.sum()))
        for _ in range(20):
            if placer.try_add(obj := _propose(rng, cls, (s_lo, s_hi), lane_speed, ego_speed)):
                objects.append(obj)
                break
    clutter = _clutter(rng, road, s_lo - 60.0, s_hi + 60.0)
    return Scene(road, ego_speed, objects, clutter, (t_min, t_max), guaranteed)


__all__ = ["CLASS_INDEX", "Clutter", "Road", "Scene", "SceneObject", "generate_scene"]
