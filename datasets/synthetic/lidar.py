"""Simulated spinning LiDAR: vectorised numpy ray casting against the ground, clutter and oriented boxes.

Each sweep fires ``beams x azimuth_steps`` rays from the sensor origin (the whole revolution is treated as
instantaneous at the sweep's timestamp). A ray returns the nearest of: the ground plane (global z = 0), a clutter
box (walls, poles) or an object. An object is its annotated box, or, where the class has a lower front (bonnet,
cab: ``ClassSpec.front``), two boxes inside it: the full-height rear and the lower front. Object returns are
moved ``surface_inset`` metres along the ray into the box (clamped into the box), so every object return lies
strictly inside its box; other returns get Gaussian range noise. Rays beyond ``max_range`` (or closer than
``min_range``) and a random ``dropout`` fraction give no return. Intensity (0-255) follows the surface reflectivity, the incidence angle and the range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import invert_pose, make_pose, rot_z, transform_points, wrap_angle
from .params import LidarSpec, hdl32e, hdl64e
from .scene import Scene, generate_scene

#: nuScenes-like LIDAR_TOP mount in the ego frame (x forward, y left, z up): sensor x points right, y forward.
NUSCENES_LIDAR_MOUNT = make_pose(rot_z(-np.pi / 2), [0.943, 0.0, 1.84])
#: KITTI-like Velodyne mount: sensor x forward, y left, z up, 1.73 m above the ground.
KITTI_LIDAR_MOUNT = make_pose(np.eye(3), [0.0, 0.0, 1.73])
GROUND_REFLECTIVITY = 0.12
GROUND_ID, CLUTTER_ID, NO_RETURN = -1, -2, -3


@dataclass
class LidarScan:
    """One simulated sweep in the sensor frame.

    Attributes:
        points: (N, 5) float32 ``[x, y, z, intensity (0-255), ring index]``, metres.
        object_index: (N,) int32 index into ``scene.objects`` of the object each point hit; -1 ground,
            -2 clutter.
        hits: (K,) int64 returns per object.
        potential: (K,) int64 rays (not dropped, within range) that cross each object's box, occluded or not;
            ``hits / potential`` is the object's LiDAR visibility.
    """

    points: np.ndarray
    object_index: np.ndarray
    hits: np.ndarray
    potential: np.ndarray


def _check_level(pose: np.ndarray) -> None:
    if not np.allclose(pose[2, :3], [0.0, 0.0, 1.0], atol=1e-9):
        raise ValueError("sensor_pose must keep the sensor level (a rotation about +z only)")


def cast_scan(
    spec: LidarSpec,
    sensor_pose: np.ndarray,
    boxes: tuple[np.ndarray, np.ndarray, np.ndarray],
    clutter: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    reflectivity: np.ndarray,
    rng: np.random.Generator,
    fronts: np.ndarray | None = None,
) -> LidarScan:
    """Ray-cast one sweep.

    Args:
        spec: the LiDAR model.
        sensor_pose: (4, 4) ``T_global_sensor``; the sensor must be level.
        boxes: annotated objects in the global frame: centres (K, 3), dims (K, 3) ``[l, w, h]``, yaws (K,).
        clutter: static boxes: centres (C, 3), dims (C, 3), yaws (C,), reflectivity (C,).
        reflectivity: (K,) object reflectivity in [0, 1].
        rng: source of phase, dropout, range and intensity noise.
        fronts: (K, 2) per object ``(length fraction, height fraction)`` of a lower front section (see
            ``ClassSpec.front``); ``None`` or ``(0, 1)`` rows: plain boxes. ``potential`` counts rays crossing
            the annotated box either way.
    """
    _check_level(sensor_pose)
    num_obj = len(boxes[0])
    centers = np.concatenate([boxes[0], clutter[0]]).reshape(-1, 3)
    dims = np.concatenate([boxes[1], clutter[1]]).reshape(-1, 3)
    sensor_yaw = float(np.arctan2(sensor_pose[1, 0], sensor_pose[0, 0]))
    yaws = np.concatenate([boxes[2], clutter[2]]) - sensor_yaw
    refl = np.concatenate([reflectivity, clutter[3]])
    centers_s = transform_points(invert_pose(sensor_pose), centers)
    # What the rays are cast against: (centre, dims, yaw, owner, casts, counts potential) per box.
    shapes = [(centers_s[k], dims[k], yaws[k], k, True, k < num_obj) for k in range(len(centers))]
    if fronts is not None:
        fronts = np.asarray(fronts, dtype=np.float64).reshape(-1, 2)
        if len(fronts) != num_obj:
            raise ValueError(f"fronts must have one row per object ({num_obj}), got {len(fronts)}")
        if not ((fronts[:, 0] >= 0) & (fronts[:, 0] < 1) & (fronts[:, 1] > 0) & (fronts[:, 1] <= 1)).all():
            raise ValueError("fronts rows must be (length fraction in [0, 1), height fraction in (0, 1])")
        for k in np.nonzero((fronts[:, 0] > 0) & (fronts[:, 1] < 1))[0]:
            shapes[k] = shapes[k][:4] + (False, True)
            shapes.extend(_split_front(centers_s[k], dims[k], yaws[k], fronts[k], int(k)))
    height = float(sensor_pose[2, 3])

    elev = np.sort(np.deg2rad(np.asarray(spec.elevations_deg)))
    step = 2.0 * np.pi / spec.azimuth_steps
    phase = float(rng.uniform(0.0, step))
    az = phase + step * np.arange(spec.azimuth_steps)
    cos_el, sin_el = np.cos(elev)[:, None], np.sin(elev)[:, None]
    shape = (len(elev), spec.azimuth_steps)
    dropped = rng.random(shape) < spec.dropout

    best_t = np.full(shape, np.inf)
    with np.errstate(divide="ignore"):
        ground_t = np.where(sin_el < 0, -height / sin_el, np.inf) * np.ones(shape)
    best_t[:] = ground_t
    best_far = np.full(shape, np.inf)
    best_id = np.where(np.isfinite(best_t), GROUND_ID, NO_RETURN).astype(np.int64)
    best_cos = np.broadcast_to(np.abs(sin_el), shape).copy()
    potential = np.zeros(num_obj, dtype=np.int64)

    for (cx, cy, cz), box_dims, yaw, k, casts, counts in shapes:
        half = box_dims / 2.0
        c, s = np.cos(yaw), np.sin(yaw)
        ox, oy = -(c * cx + s * cy), -(-s * cx + c * cy)  # sensor origin in the box frame
        if abs(ox) <= half[0] and abs(oy) <= half[1]:
            cols = np.arange(spec.azimuth_steps)
        else:
            corners_x = cx + c * half[0] * np.array([1, 1, -1, -1]) - s * half[1] * np.array([1, -1, -1, 1])
            corners_y = cy + s * half[0] * np.array([1, 1, -1, -1]) + c * half[1] * np.array([1, -1, -1, 1])
            centre_az = np.arctan2(cy, cx)
            rel = np.asarray(wrap_angle(np.arctan2(corners_y, corners_x) - centre_az))
            lo = int(np.floor((centre_az + rel.min() - phase) / step))
            hi = int(np.ceil((centre_az + rel.max() - phase) / step))
            cols = np.arange(lo, min(hi, lo + spec.azimuth_steps - 1) + 1) % spec.azimuth_steps
        az_local = az[cols] - yaw
        d = (
            cos_el * np.cos(az_local),
            cos_el * np.sin(az_local),
            np.broadcast_to(sin_el, (len(elev), len(cols))),
        )
        origin = (ox, oy, -cz)
        with np.errstate(divide="ignore", invalid="ignore"):
            t_lo = [(-half[a] - origin[a]) / d[a] for a in range(3)]
            t_hi = [(half[a] - origin[a]) / d[a] for a in range(3)]
            near = np.stack([np.minimum(t_lo[a], t_hi[a]) for a in range(3)])
            far = np.minimum.reduce([np.maximum(t_lo[a], t_hi[a]) for a in range(3)])
        t_near = near.max(axis=0)
        hit = (t_near <= far) & (t_near > 0.0)
        if counts:
            potential[k] = int(np.count_nonzero(hit & (t_near <= spec.max_range) & ~dropped[:, cols]))
        if not casts:
            continue
        closer = hit & (t_near < best_t[:, cols])
        if not closer.any():
            continue
        rows, sub = np.nonzero(closer)
        cc = cols[sub]
        axis = near[:, rows, sub].argmax(axis=0)
        best_t[rows, cc] = t_near[rows, sub]
        best_far[rows, cc] = far[rows, sub]
        best_id[rows, cc] = k
        best_cos[rows, cc] = np.abs(np.stack(d)[axis, rows, sub])

    keep = (best_id != NO_RETURN) & (best_t >= spec.min_range) & (best_t <= spec.max_range) & ~dropped
    t = best_t[keep]
    ids = best_id[keep]
    far = best_far[keep]
    noise = (
        rng.normal(0.0, spec.range_noise_std, size=t.shape) if spec.range_noise_std > 0 else np.zeros_like(t)
    )
    is_obj = (ids >= 0) & (ids < num_obj)
    chord = far - t
    inside = np.clip(
        t + spec.surface_inset + noise, t + 0.25 * spec.surface_inset, far - 0.25 * spec.surface_inset
    )
    inside = np.where(chord > spec.surface_inset, inside, t + 0.5 * chord)
    t = np.where(is_obj, inside, t + noise)

    rows, cols_all = np.nonzero(keep)
    dirs = np.stack(
        [cos_el[rows, 0] * np.cos(az[cols_all]), cos_el[rows, 0] * np.sin(az[cols_all]), sin_el[rows, 0]],
        axis=1,
    )
    xyz = dirs * t[:, None]
    refl_ext = np.concatenate([refl, [GROUND_REFLECTIVITY]])
    surf_refl = refl_ext[np.where(ids >= 0, ids, len(refl))]
    falloff = np.clip(1.0 - t / (1.5 * spec.max_range), 0.2, 1.0)
    intensity = 255.0 * surf_refl * (0.25 + 0.75 * best_cos[keep]) * falloff
    if spec.intensity_noise_std > 0:
        intensity = intensity + rng.normal(0.0, spec.intensity_noise_std, size=t.shape)
    intensity = np.round(np.clip(intensity, 0.0, 255.0))

    # Velodyne firing order: azimuth-major, beams within a firing.
    order = np.lexsort((rows, cols_all))
    points = np.concatenate([xyz, intensity[:, None], rows[:, None].astype(np.float64)], axis=1)[order]
    obj_index = np.where(is_obj, ids, np.where(ids == GROUND_ID, GROUND_ID, CLUTTER_ID))[order].astype(
        np.int32
    )
    hits = np.bincount(obj_index[obj_index >= 0], minlength=num_obj).astype(np.int64)
    return LidarScan(points.astype(np.float32), obj_index, hits, potential)


def _split_front(
    center: np.ndarray, dims: np.ndarray, yaw: float, front: np.ndarray, owner: int
) -> list[tuple[np.ndarray, np.ndarray, float, int, bool, bool]]:
    """The full-height rear and the lower front of a box (sensor frame) as two boxes cast for ``owner``."""
    length, width, height = (float(v) for v in dims)
    f_len, f_height = float(front[0]) * length, float(front[1]) * height
    heading = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    rear_c = center - heading * (f_len / 2.0)
    front_c = center + heading * ((length - f_len) / 2.0) - np.array([0.0, 0.0, (height - f_height) / 2.0])
    return [
        (rear_c, np.array([length - f_len, width, height]), yaw, owner, True, False),
        (front_c, np.array([f_len, width, f_height]), yaw, owner, True, False),
    ]


def scan_scene(
    scene: Scene, t: float, spec: LidarSpec, mount: np.ndarray, rng: np.random.Generator
) -> LidarScan:
    """Ray-cast ``scene`` at time ``t`` (s) with a LiDAR mounted at ``mount`` (``T_ego_sensor``)."""
    from .classes import CLASSES

    centers, dims, yaws, _ = scene.boxes(t)
    refl = np.array([CLASSES[o.cls].reflectivity for o in scene.objects])
    fronts = np.array([CLASSES[o.cls].front for o in scene.objects], dtype=np.float64).reshape(-1, 2)
    cl = scene.clutter
    return cast_scan(
        spec,
        scene.ego_pose(t) @ mount,
        (centers, dims, yaws),
        (cl.centers, cl.dims, cl.yaws, cl.reflectivity),
        refl,
        rng,
        fronts,
    )


def _check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        raise ValueError(f"{name} must be in [{lo}, {hi if hi is not None else 'inf'}], got {value}")
    return int(value)


def make_lidar_scan(num_sweeps: int = 1, beams: int = 32, seed: int = 0) -> np.ndarray:
    """One simulated keyframe of a busy street with ``num_sweeps - 1`` earlier sweeps merged in.

    Args:
        num_sweeps: sweeps to merge (1-50); earlier sweeps are moved into the keyframe's LiDAR frame through the
            ego poses (objects moved in between, so they smear as in real multi-sweep nuScenes input).
        beams: 32 (HDL-32E, 20 Hz, nuScenes-like, about 34k points per sweep) or 64 (HDL-64E, 10 Hz,
            KITTI-like, about 120k points per sweep).
        seed: seed of the numpy Generator (>= 0); same arguments give identical arrays.

    Returns:
        (N, 5) float32 ``[x, y, z, intensity (0-255), time_lag (s)]`` in the keyframe LiDAR frame (metres);
        keyframe points first (time_lag 0), then older sweeps with time_lag = keyframe time - sweep time.
    """
    num_sweeps = _check_int("num_sweeps", num_sweeps, 1, 50)
    beams = _check_int("beams", beams, 32, 64)
    if beams not in (32, 64):
        raise ValueError(f"beams must be 32 (HDL-32E) or 64 (HDL-64E), got {beams}")
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    spec, mount = (hdl32e(), NUSCENES_LIDAR_MOUNT) if beams == 32 else (hdl64e(), KITTI_LIDAR_MOUNT)
    dt = 1.0 / spec.frequency_hz
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7, beams]))
    scene = generate_scene(rng, (-(num_sweeps - 1) * dt, 0.0), num_objects=60)
    key_from_global = invert_pose(scene.ego_pose(0.0) @ mount)
    parts = []
    for i in range(num_sweeps):
        t = -i * dt
        scan = scan_scene(scene, t, spec, mount, rng)
        xyz = transform_points(
            key_from_global @ scene.ego_pose(t) @ mount, scan.points[:, :3].astype(np.float64)
        )
        lag = np.full((len(xyz), 1), i * dt)
        parts.append(np.concatenate([xyz, scan.points[:, 3:4], lag], axis=1))
    return np.concatenate(parts).astype(np.float32)
