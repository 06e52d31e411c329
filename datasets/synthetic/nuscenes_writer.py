"""Write synthetic scenes in the nuScenes v1.0 layout, loadable by the official devkit unmodified.

Layout under ``out``: ``<version>/*.json`` (all 13 tables), ``maps/<token>.png`` (drivable-area mask, 0.1 m per
pixel), ``samples/LIDAR_TOP/*.pcd.bin`` (float32 x5: x, y, z, intensity, ring) and ``samples/CAM_*/*.jpg`` at
2 Hz keyframes, ``sweeps/LIDAR_TOP/*.pcd.bin`` (20 Hz, ``sweeps`` before each keyframe, ``is_key_frame`` false).

Differences from the real data, by design: radar is not simulated (``num_radar_pts`` is 0, no radar sensors),
cameras are written at keyframes only (no 12 Hz camera sweeps), ``visibility`` is the LiDAR-visible fraction of
the object, and each scene has its own log. ``num_lidar_pts`` is the devkit's own ``points_in_box`` count on
the keyframe points as written (float32), moved sensor -> ego -> global exactly as the devkit does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes.utils.data_classes import Box, LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from PIL import Image, ImageDraw
from pyquaternion import Quaternion

from .camera import nuscenes_cameras, render
from .geometry import invert_pose, matrix_quaternion, yaw_quaternion
from .lidar import NUSCENES_LIDAR_MOUNT, scan_scene
from .nuscenes_tables import ATTRIBUTES, CATEGORIES, VISIBILITY, scene_names, token, visibility_token
from .params import SyntheticParams
from .scene import PARKING, Scene, generate_scene

KEYFRAME_DT = 0.5
SWEEP_DT = 0.05
ANNOTATION_RANGE = 80.0
MAP_RESOLUTION = 0.1
LOCATION = "boston-seaport"
BASE_TIMESTAMP = 1_533_000_000_000_000  # microseconds


def _pose_record(tok: str, pose: np.ndarray, timestamp: int) -> dict[str, Any]:
    return {
        "token": tok,
        "timestamp": timestamp,
        "rotation": matrix_quaternion(pose[:3, :3]),
        "translation": [float(v) for v in pose[:3, 3]],
    }


def _calibration(
    tok: str, sensor_token: str, mount: np.ndarray, intrinsic: np.ndarray | None
) -> dict[str, Any]:
    return {
        "token": tok,
        "sensor_token": sensor_token,
        "translation": [float(v) for v in mount[:3, 3]],
        "rotation": matrix_quaternion(mount[:3, :3]),
        "camera_intrinsic": [] if intrinsic is None else [[float(v) for v in row] for row in intrinsic],
    }


def count_points_in_boxes(
    points: np.ndarray, calib: dict[str, Any], pose: dict[str, Any], annotations: list[dict[str, Any]]
) -> list[int]:
    """The devkit's count of ``points`` (N, >=3 float32, sensor frame) in each annotation box (global frame).

    The points go sensor -> ego -> global with the devkit's ``LidarPointCloud`` rotate/translate (float32
    storage, as when loading from file) using the JSON records' values.
    """
    pc = LidarPointCloud(np.ascontiguousarray(points.T[:4]).astype(np.float32))
    pc.rotate(Quaternion(calib["rotation"]).rotation_matrix)
    pc.translate(np.array(calib["translation"]))
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
    pc.translate(np.array(pose["translation"]))
    counts = []
    for ann in annotations:
        box = Box(ann["translation"], ann["size"], Quaternion(ann["rotation"]))
        counts.append(int(points_in_box(box, pc.points[:3]).sum()))
    return counts


def _link(records: list[dict[str, Any]]) -> None:
    """Fill ``prev`` / ``next`` of an ordered chain of records."""
    for i, rec in enumerate(records):
        rec["prev"] = records[i - 1]["token"] if i > 0 else ""
        rec["next"] = records[i + 1]["token"] if i + 1 < len(records) else ""


class _Tables:
    def __init__(self) -> None:
        self.t: dict[str, list[dict[str, Any]]] = {
            n: []
            for n in (
                "attribute",
                "calibrated_sensor",
                "category",
                "ego_pose",
                "instance",
                "log",
                "map",
                "sample",
                "sample_annotation",
                "sample_data",
                "scene",
                "sensor",
                "visibility",
            )
        }

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, rows in self.t.items():
            with open(folder / f"{name}.json", "w") as f:
                json.dump(rows, f, indent=0)


def _write_scene(
    tables: _Tables,
    params: SyntheticParams,
    out: Path,
    index: int,
    name: str,
    scene: Scene,
    seed_key: tuple[int, ...],
) -> None:
    p = params
    spec = p.lidar_spec
    cams = nuscenes_cameras(p.cameras)
    t = tables.t
    scene_tok, log_tok = token(p.seed, "scene", name), token(p.seed, "log", name)
    logfile = f"n{100 + index % 900:03d}-2018-08-{1 + index % 28:02d}-10-{index % 60:02d}-00-0400"
    t["log"].append(
        {
            "token": log_tok,
            "logfile": logfile,
            "vehicle": "n100",
            "date_captured": f"2018-08-{1 + index % 28:02d}",
            "location": LOCATION,
        }
    )
    cs_tok = {c: token(p.seed, "calibrated_sensor", name, c) for c in ["LIDAR_TOP"] + [c.name for c in cams]}
    lidar_calib = _calibration(cs_tok["LIDAR_TOP"], token("sensor", "LIDAR_TOP"), NUSCENES_LIDAR_MOUNT, None)
    t["calibrated_sensor"].append(lidar_calib)
    for cam in cams:
        t["calibrated_sensor"].append(
            _calibration(cs_tok[cam.name], token("sensor", cam.name), cam.mount, cam.intrinsic)
        )
    base_ts = BASE_TIMESTAMP + index * 3_600_000_000
    cat_tok = {n: token("category", n) for n, _ in CATEGORIES}
    attr_tok = {n: token("attribute", n) for n, _ in ATTRIBUTES}
    samples, lidar_chain = [], []
    cam_chains: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cams}
    tracks: dict[int, list[dict[str, Any]]] = {}
    for k in range(p.samples):
        t_key = k * KEYFRAME_DT
        ts_key = base_ts + int(round(t_key * 1e6))
        sample_tok = token(p.seed, "sample", name, k)
        samples.append({"token": sample_tok, "timestamp": ts_key, "scene_token": scene_tok})
        for j in range(p.num_sweeps, -1, -1):  # sweeps oldest first, then the keyframe
            time = t_key - j * SWEEP_DT
            ts = base_ts + int(round(time * 1e6))
            rng = np.random.default_rng(np.random.SeedSequence([*seed_key, k, j]))
            scan = scan_scene(scene, time, spec, NUSCENES_LIDAR_MOUNT, rng)
            folder = "samples" if j == 0 else "sweeps"
            fname = f"{folder}/LIDAR_TOP/{logfile}__LIDAR_TOP__{ts}.pcd.bin"
            scan.points.astype("<f4").tofile(out / fname)
            sd_tok = token(p.seed, "sample_data", name, "LIDAR_TOP", k, j)
            pose_rec = _pose_record(sd_tok, scene.ego_pose(time), ts)
            t["ego_pose"].append(pose_rec)
            lidar_chain.append(
                {
                    "token": sd_tok,
                    "sample_token": sample_tok,
                    "ego_pose_token": sd_tok,
                    "calibrated_sensor_token": cs_tok["LIDAR_TOP"],
                    "timestamp": ts,
                    "fileformat": "pcd",
                    "is_key_frame": j == 0,
                    "height": 0,
                    "width": 0,
                    "filename": fname,
                }
            )
        # Annotations of the keyframe.
        centers, dims, yaws, _ = scene.boxes(t_key)
        ego_xy = scene.ego_pose(t_key)[:2, 3]
        anns, objs = [], []
        for i, obj in enumerate(scene.objects):
            if np.linalg.norm(centers[i, :2] - ego_xy) > ANNOTATION_RANGE:
                continue
            frac = scan.hits[i] / scan.potential[i] if scan.potential[i] else 0.0
            anns.append(
                {
                    "token": token(p.seed, "sample_annotation", name, k, i),
                    "sample_token": sample_tok,
                    "instance_token": token(p.seed, "instance", name, i),
                    "visibility_token": visibility_token(frac),
                    "attribute_tokens": [attr_tok[obj.attribute]] if obj.attribute else [],
                    "translation": [float(v) for v in centers[i]],
                    "size": [float(dims[i, 1]), float(dims[i, 0]), float(dims[i, 2])],
                    "rotation": yaw_quaternion(float(yaws[i])),
                    "num_radar_pts": 0,
                }
            )
            objs.append(i)
        counts = count_points_in_boxes(scan.points, lidar_calib, pose_rec, anns)
        for i, ann, n in zip(objs, anns, counts, strict=True):
            ann["num_lidar_pts"] = n
            tracks.setdefault(i, []).append(ann)
        for cam in cams:
            ts = ts_key
            sd_tok = token(p.seed, "sample_data", name, cam.name, k)
            fname = f"samples/{cam.name}/{logfile}__{cam.name}__{ts}.jpg"
            pose = scene.ego_pose(t_key)
            image = render(cam.intrinsic, cam.width, cam.height, invert_pose(pose @ cam.mount), scene, t_key)
            image.save(out / fname, quality=90)
            t["ego_pose"].append(_pose_record(sd_tok, pose, ts))
            cam_chains[cam.name].append(
                {
                    "token": sd_tok,
                    "sample_token": sample_tok,
                    "ego_pose_token": sd_tok,
                    "calibrated_sensor_token": cs_tok[cam.name],
                    "timestamp": ts,
                    "fileformat": "jpg",
                    "is_key_frame": True,
                    "height": cam.height,
                    "width": cam.width,
                    "filename": fname,
                }
            )
    _link(samples)
    t["sample"].extend(samples)
    for chain in [lidar_chain, *cam_chains.values()]:
        _link(chain)
        t["sample_data"].extend(chain)
    for i, anns in sorted(tracks.items()):
        # Keep instances annotated in >= 2 keyframes, so the devkit can estimate their velocity.
        if len(anns) < 2:
            continue
        _link(anns)
        t["sample_annotation"].extend(anns)
        t["instance"].append(
            {
                "token": anns[0]["instance_token"],
                "category_token": cat_tok[scene.objects[i].category],
                "nbr_annotations": len(anns),
                "first_annotation_token": anns[0]["token"],
                "last_annotation_token": anns[-1]["token"],
            }
        )
    t["scene"].append(
        {
            "token": scene_tok,
            "log_token": log_tok,
            "nbr_samples": len(samples),
            "first_sample_token": samples[0]["token"],
            "last_sample_token": samples[-1]["token"],
            "name": name,
            "description": f"Synthetic street, ego {scene.ego_speed:.1f} m/s, "
            f"{len(scene.objects)} objects, seed {p.seed}",
        }
    )


def _draw_map(scenes: list[Scene], s_ranges: list[tuple[float, float]], size_m: float) -> Image.Image:
    """Drivable-area mask (255 = drivable), 0.1 m per pixel, origin at the image's bottom-left corner."""
    px = int(np.ceil(size_m / MAP_RESOLUTION))
    mask = Image.new("L", (px, px), 0)
    draw = ImageDraw.Draw(mask)
    for scene, (s_lo, s_hi) in zip(scenes, s_ranges, strict=True):
        s = np.arange(s_lo, s_hi + 5.0, 5.0)
        lat_lo, lat_hi = PARKING[0] - 1.3, PARKING[1] + 1.3  # road and parking lanes are drivable
        xl, yl, _ = scene.road.to_global(s, np.full_like(s, lat_lo))
        xh, yh, _ = scene.road.to_global(s[::-1], np.full_like(s, lat_hi))
        x, y = np.concatenate([xl, xh]), np.concatenate([yl, yh])
        draw.polygon(list(zip(x / MAP_RESOLUTION, px - y / MAP_RESOLUTION, strict=True)), fill=255)
    return mask


def write_nuscenes(params: SyntheticParams, out: str | Path) -> dict[str, Any]:
    """Generate ``params.scenes`` scenes and write them under ``out`` in the nuScenes v1.0 layout.

    Returns:
        a summary: ``{"version", "scenes": [(name, split)], "samples", "sample_annotations", "dataroot"}``.
    """
    if params.format != "nuscenes":
        raise ValueError(f"params.format must be 'nuscenes' for write_nuscenes, got {params.format!r}")
    out = Path(out)
    cams = nuscenes_cameras(params.cameras)
    for folder in ["samples/LIDAR_TOP", "sweeps/LIDAR_TOP", "maps"] + [f"samples/{c.name}" for c in cams]:
        (out / folder).mkdir(parents=True, exist_ok=True)
    tables = _Tables()
    t = tables.t
    t["category"] = [{"token": token("category", n), "name": n, "description": d} for n, d in CATEGORIES]
    t["attribute"] = [{"token": token("attribute", n), "name": n, "description": d} for n, d in ATTRIBUTES]
    t["visibility"] = [{"token": tk, "level": lv, "description": d} for tk, lv, d in VISIBILITY]
    t["sensor"] = [{"token": token("sensor", "LIDAR_TOP"), "channel": "LIDAR_TOP", "modality": "lidar"}] + [
        {"token": token("sensor", c.name), "channel": c.name, "modality": "camera"} for c in cams
    ]
    t_range = (-params.num_sweeps * SWEEP_DT, (params.samples - 1) * KEYFRAME_DT)
    reach = 9.0 * (t_range[1] - t_range[0]) + 150.0  # the ego drives at most 9 m/s
    names = scene_names(params.version, params.scenes)
    scenes, s_ranges = [], []
    for index, (name, _) in enumerate(names):
        seed_key = (params.seed, 1, index)
        rng = np.random.default_rng(np.random.SeedSequence(list(seed_key)))
        scene = generate_scene(rng, t_range, num_objects=params.objects_per_scene, origin=(reach, reach))
        _write_scene(tables, params, out, index, name, scene, seed_key)
        scenes.append(scene)
        s_ranges.append((scene.ego_speed * t_range[0] - 60.0, scene.ego_speed * t_range[1] + 60.0))
    map_tok = token(params.seed, "map", LOCATION)
    _draw_map(scenes, s_ranges, 2 * reach).save(out / "maps" / f"{map_tok}.png")
    t["map"] = [
        {
            "token": map_tok,
            "log_tokens": [rec["token"] for rec in t["log"]],
            "category": "semantic_prior",
            "filename": f"maps/{map_tok}.png",
        }
    ]
    tables.write(out / params.version)
    return {
        "dataroot": str(out),
        "version": params.version,
        "scenes": names,
        "samples": len(t["sample"]),
        "sample_annotations": len(t["sample_annotation"]),
    }
