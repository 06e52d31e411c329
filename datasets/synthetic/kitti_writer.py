"""Write synthetic scenes in the KITTI 3D object layout.

``out/training/{velodyne,label_2,calib,image_2}``, ``out/testing/{velodyne,calib,image_2}`` and
``out/ImageSets/{train,val,test}.txt``. Velodyne scans are float32 x4 ``[x, y, z, reflectance (0-1)]`` from a
simulated HDL-64E 1.73 m above the ground; images are 1242x375 PNGs from camera 2. Labels follow the KITTI
devkit: ``type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry`` with the location at the bottom centre of
the box in the rectified camera-0 frame. ``occluded`` comes from the LiDAR-visible fraction (>= 0.8: 0,
>= 0.4: 1, otherwise 2; 3 when no LiDAR ray reaches the object). Traffic cones and barriers (no KITTI class)
and objects farther than 80 m are written as ``DontCare`` regions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .camera import box_image_extent, render
from .geometry import box_corners, invert_pose, make_pose, transform_points, wrap_angle
from .lidar import KITTI_LIDAR_MOUNT, LidarScan, scan_scene
from .params import SyntheticParams
from .scene import Scene, generate_scene

WIDTH, HEIGHT = 1242, 375
INTRINSIC = np.array([[721.5377, 0.0, 609.5593], [0.0, 721.5377, 172.854], [0.0, 0.0, 1.0]])
#: Camera i centre offsets in the rectified frame: P_i = K [I | b_i].
CAMERA_OFFSETS = {0: (0.0, 0.0, 0.0), 1: (-0.537, 0.0, 0.0), 2: (0.06, 0.0, 0.0), 3: (-0.47, 0.0, 0.0)}
#: Velodyne -> camera 0: axes permutation; camera 0 is 0.27 m ahead of and 0.08 m below the Velodyne.
TR_VELO_TO_CAM = make_pose(
    np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]), [0.0, -0.08, -0.27]
)
#: Rectification: a small rotation about the (vertical) camera y axis.
_R0_ANGLE = 0.004
R0_RECT = np.array(
    [
        [np.cos(_R0_ANGLE), 0.0, np.sin(_R0_ANGLE)],
        [0.0, 1.0, 0.0],
        [-np.sin(_R0_ANGLE), 0.0, np.cos(_R0_ANGLE)],
    ]
)
TR_IMU_TO_VELO = make_pose(np.eye(3), [-0.81, 0.32, -0.80])
FRAME_DT = 0.5
MAX_LABEL_DISTANCE = 80.0


def projection(cam: int) -> np.ndarray:
    """(3, 4) ``P_cam`` mapping rectified camera-0 coordinates to camera ``cam`` pixels."""
    return INTRINSIC @ np.hstack([np.eye(3), np.array(CAMERA_OFFSETS[cam])[:, None]])


def rect_from_velo() -> np.ndarray:
    """(4, 4) transform Velodyne -> rectified camera 0 (``R0_rect @ Tr_velo_to_cam``)."""
    return make_pose(R0_RECT, [0.0, 0.0, 0.0]) @ TR_VELO_TO_CAM


def calib_text() -> str:
    """The calib file in KITTI's text format."""

    def row(name: str, m: np.ndarray) -> str:
        return f"{name}: " + " ".join(f"{v:.12e}" for v in np.asarray(m).ravel())

    lines = [row(f"P{i}", projection(i)) for i in range(4)]
    lines += [
        row("R0_rect", R0_RECT),
        row("Tr_velo_to_cam", TR_VELO_TO_CAM[:3]),
        row("Tr_imu_to_velo", TR_IMU_TO_VELO[:3]),
    ]
    return "\n".join(lines) + "\n"


def kitti_type(scene: Scene, index: int) -> str:
    """KITTI class of object ``index`` (``DontCare`` for classes KITTI does not label)."""
    obj = scene.objects[index]
    name = obj.class_name
    if name == "car":
        return "Van" if obj.size[0] > 5.2 or obj.size[2] > 2.0 else "Car"
    if name == "truck":
        return "Truck"
    if name == "pedestrian":
        return "Person_sitting" if obj.attribute == "pedestrian.sitting_lying_down" else "Pedestrian"
    if name in ("bicycle", "motorcycle"):
        return "Cyclist" if obj.attribute == "cycle.with_rider" else "Misc"
    if name in ("bus", "trailer", "construction_vehicle"):
        return "Misc"
    return "DontCare"


@dataclass
class KittiFrame:
    """One generated frame: the scan (sensor frame), label lines and the object index of each label line
    (-1 for DontCare), and the camera-2 pose ``cam_from_global`` (4, 4)."""

    scan: LidarScan
    labels: list[str]
    label_objects: list[int]
    cam_from_global: np.ndarray


def make_frame(params: SyntheticParams, scene: Scene, t: float, rng: np.random.Generator) -> KittiFrame:
    """Ray-cast and label ``scene`` at time ``t`` (s)."""
    scan = scan_scene(scene, t, params.lidar_spec, KITTI_LIDAR_MOUNT, rng)
    velo_pose = scene.ego_pose(t) @ KITTI_LIDAR_MOUNT
    rect_from_global = rect_from_velo() @ invert_pose(velo_pose)
    cam2_from_rect = make_pose(np.eye(3), list(CAMERA_OFFSETS[2]))
    centers, dims, yaws, _ = scene.boxes(t)
    labels, objects = [], []
    if len(centers):
        corners = box_corners(centers, dims, yaws)
    for i in range(len(centers)):
        cam2 = transform_points(cam2_from_rect @ rect_from_global, corners[i])
        full = box_image_extent(INTRINSIC, cam2)
        if full is None:
            continue
        clipped = np.array(
            [max(full[0], 0.0), max(full[1], 0.0), min(full[2], WIDTH - 1.0), min(full[3], HEIGHT - 1.0)]
        )
        if clipped[2] - clipped[0] < 1.0 or clipped[3] - clipped[1] < 1.0:
            continue
        area = (full[2] - full[0]) * (full[3] - full[1])
        trunc = float(np.clip(1.0 - (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]) / area, 0.0, 1.0))
        kind = kitti_type(scene, i)
        bottom = transform_points(rect_from_global, (centers[i] - [0.0, 0.0, dims[i, 2] / 2])[None])[0]
        if kind == "DontCare" or bottom[2] > MAX_LABEL_DISTANCE:
            labels.append(
                "DontCare -1 -1 -10 "
                + " ".join(f"{v:.2f}" for v in clipped)
                + " -1 -1 -1 -1000 -1000 -1000 -10"
            )
            objects.append(-1)
            continue
        heading = rect_from_global[:3, :3] @ np.array([np.cos(yaws[i]), np.sin(yaws[i]), 0.0])
        ry = float(wrap_angle(np.arctan2(-heading[2], heading[0])))
        alpha = float(wrap_angle(ry - np.arctan2(bottom[0], bottom[2])))
        if scan.potential[i] == 0:
            occ = 3
        else:
            frac = scan.hits[i] / scan.potential[i]
            occ = 0 if frac >= 0.8 else 1 if frac >= 0.4 else 2
        h, w, length = dims[i, 2], dims[i, 1], dims[i, 0]
        fields = [trunc, occ, alpha, *clipped, h, w, length, *bottom, ry]
        labels.append(f"{kind} {fields[0]:.2f} {fields[1]:d} " + " ".join(f"{v:.2f}" for v in fields[2:]))
        objects.append(i)
    return KittiFrame(scan, labels, objects, cam2_from_rect @ rect_from_global)


def kitti_splits(num_scenes: int) -> list[str]:
    """Split of each scene: a quarter val (>= 1), a fifth test (>= 1), the rest train (>= 1)."""
    if num_scenes < 3:
        raise ValueError(f"num_scenes must be >= 3 for KITTI (train, val and test), got {num_scenes}")
    n_val, n_test = max(1, num_scenes // 4), max(1, num_scenes // 5)
    n_train = num_scenes - n_val - n_test
    return ["train"] * n_train + ["val"] * n_val + ["test"] * n_test


def scene_for(params: SyntheticParams, index: int) -> Scene:
    """The scene number ``index`` of a KITTI data set made with ``params`` (as :func:`write_kitti` makes it)."""
    rng = np.random.default_rng(np.random.SeedSequence([params.seed, 2, index]))
    return generate_scene(rng, (0.0, (params.samples - 1) * FRAME_DT), num_objects=params.objects_per_scene)


def frame_for(params: SyntheticParams, scene: Scene, index: int, k: int) -> KittiFrame:
    """Frame ``k`` of scene number ``index`` (as :func:`write_kitti` makes it)."""
    return make_frame(
        params, scene, k * FRAME_DT, np.random.default_rng(np.random.SeedSequence([params.seed, 2, index, k]))
    )


def write_kitti(params: SyntheticParams, out: str | Path) -> dict[str, Any]:
    """Generate ``params.scenes`` scenes of ``params.samples`` frames each and write them under ``out``.

    Returns:
        a summary ``{"root", "train", "val", "test"}`` with the frame ids of each split.
    """
    if params.format != "kitti":
        raise ValueError(f"params.format must be 'kitti' for write_kitti, got {params.format!r}")
    out = Path(out)
    images = params.cameras != "none"
    for sub, folders in (("training", ["velodyne", "label_2", "calib"]), ("testing", ["velodyne", "calib"])):
        for folder in folders + (["image_2"] if images else []):
            (out / sub / folder).mkdir(parents=True, exist_ok=True)
    (out / "ImageSets").mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    counters = {"training": 0, "testing": 0}
    calib = calib_text()
    for index, split in enumerate(kitti_splits(params.scenes)):
        scene = scene_for(params, index)
        sub = "testing" if split == "test" else "training"
        for k in range(params.samples):
            t = k * FRAME_DT
            frame = frame_for(params, scene, index, k)
            fid = f"{counters[sub]:06d}"
            counters[sub] += 1
            ids[split].append(fid)
            velo = np.concatenate([frame.scan.points[:, :3], frame.scan.points[:, 3:4] / 255.0], axis=1)
            velo.astype("<f4").tofile(out / sub / "velodyne" / f"{fid}.bin")
            (out / sub / "calib" / f"{fid}.txt").write_text(calib)
            if split != "test":
                (out / sub / "label_2" / f"{fid}.txt").write_text(
                    "".join(line + "\n" for line in frame.labels)
                )
            if images:
                image = render(INTRINSIC, WIDTH, HEIGHT, frame.cam_from_global, scene, t)
                image.save(out / sub / "image_2" / f"{fid}.png")
    for split, frame_ids in ids.items():
        (out / "ImageSets" / f"{split}.txt").write_text("".join(f + "\n" for f in frame_ids))
    return {"root": str(out), **ids}


__all__ = [
    "KittiFrame",
    "calib_text",
    "kitti_splits",
    "make_frame",
    "projection",
    "rect_from_velo",
    "scene_for",
    "frame_for",
    "write_kitti",
]
