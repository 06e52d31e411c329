"""Pinhole cameras that render a synthetic scene: shaded, class-coloured boxes over sky, ground and road.

Rendering is a painter's algorithm: every camera-facing box face (objects and clutter) is clipped against the
near plane, projected, and filled as a PIL polygon from the farthest to the nearest. Camera frames follow the
nuScenes / OpenCV convention: x right, y down, z forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .classes import CLASSES
from .geometry import box_corners, make_pose, rot_z
from .scene import SIDEWALKS, WALL_FRONT, Scene

NEAR = 0.1
#: Camera axes (x right, y down, z forward) expressed in a forward-looking ego frame (x fwd, y left, z up).
CAM_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
#: Faces of :func:`box_corners` boxes (outward normals): front, back, left, right, bottom, top.
FACES = ((0, 4, 7, 3), (1, 2, 6, 5), (0, 1, 5, 4), (3, 7, 6, 2), (0, 3, 2, 1), (4, 5, 6, 7))
SUN = np.array([0.35, 0.55, 0.76]) / np.linalg.norm([0.35, 0.55, 0.76])
SKY_TOP, SKY_HORIZON = np.array([90, 140, 210]), np.array([200, 220, 240])
GROUND, ROAD, SIDEWALK, CLUTTER = (95, 110, 80), (70, 70, 75), (150, 150, 145), (175, 160, 140)


@dataclass(frozen=True)
class CameraSpec:
    """A camera: ``intrinsic`` (3, 3) pixels, image ``width`` x ``height``, ``mount`` (4, 4) ``T_ego_camera``."""

    name: str
    intrinsic: np.ndarray
    width: int
    height: int
    mount: np.ndarray


def _intrinsic(f: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


#: nuScenes-like rig: (channel, focal px, cx, cy, yaw deg, x, y, z in the ego frame).
_NUSCENES_RIG = (
    ("CAM_FRONT", 1266.4, 816.3, 491.5, 0.0, 1.70, 0.02, 1.51),
    ("CAM_FRONT_RIGHT", 1260.8, 807.9, 495.3, -55.0, 1.55, -0.49, 1.50),
    ("CAM_BACK_RIGHT", 1259.5, 807.3, 501.2, -110.0, 1.05, -0.48, 1.59),
    ("CAM_BACK", 809.2, 829.2, 481.8, 180.0, 0.05, -0.02, 1.57),
    ("CAM_BACK_LEFT", 1256.7, 817.8, 451.9, 110.0, 1.05, 0.48, 1.56),
    ("CAM_FRONT_LEFT", 1272.6, 826.6, 479.8, 55.0, 1.52, 0.49, 1.51),
)


def nuscenes_cameras(which: str = "all") -> list[CameraSpec]:
    """The six nuScenes-like 1600x900 cameras (``"all"``), only CAM_FRONT (``"front"``) or none (``"none"``)."""
    if which not in ("all", "front", "none"):
        raise ValueError(f"which must be 'all', 'front' or 'none', got {which!r}")
    rig = _NUSCENES_RIG if which == "all" else _NUSCENES_RIG[:1] if which == "front" else ()
    return [
        CameraSpec(
            name, _intrinsic(f, cx, cy), 1600, 900, make_pose(rot_z(np.deg2rad(yaw)) @ CAM_AXES, [x, y, z])
        )
        for name, f, cx, cy, yaw, x, y, z in rig
    ]


def clip_near(poly: np.ndarray, near: float = NEAR) -> np.ndarray:
    """Clip a (P, 3) camera-frame polygon to ``z >= near`` (Sutherland-Hodgman); may return (0, 3)."""
    out = []
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            out.append(a)
        if a_in != b_in:
            out.append(a + (b - a) * (near - a[2]) / (b[2] - a[2]))
    return np.array(out).reshape(-1, 3)


def project(intrinsic: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(P, 3) camera-frame points with z > 0 -> (P, 2) pixel coordinates."""
    uvw = points @ intrinsic.T
    return uvw[:, :2] / uvw[:, 2:3]


def box_image_extent(intrinsic: np.ndarray, corners_cam: np.ndarray) -> np.ndarray | None:
    """Unclipped 2D box ``[u_min, v_min, u_max, v_max]`` (pixels) of (8, 3) camera-frame corners, after
    clipping the box's faces to the near plane; None when the box is entirely behind the camera."""
    pts = [clip_near(corners_cam[list(f)]) for f in FACES]
    pts = [p for p in pts if len(p)]
    if not pts:
        return None
    uv = project(intrinsic, np.concatenate(pts))
    return np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])


def _background(width: int, height: int, intrinsic: np.ndarray, cam_from_global: np.ndarray) -> Image.Image:
    """Sky gradient down to the horizon row of the (level) camera."""
    up = cam_from_global[:3, :3] @ np.array([0.0, 0.0, 1.0])
    fy, cy = intrinsic[1, 1], intrinsic[1, 2]
    # Horizon where the viewing ray is horizontal: up . [., (v - cy) / fy, 1] = 0 (roll-free camera).
    horizon = cy - fy * (up[2] / up[1]) if abs(up[1]) > 1e-9 else cy
    rows = np.clip(np.arange(height)[:, None] / max(horizon, 1.0), 0.0, 1.0)
    sky = (SKY_TOP[None, :] * (1 - rows) + SKY_HORIZON[None, :] * rows).astype(np.uint8)
    return Image.fromarray(np.repeat(sky[:, None, :], width, axis=1), "RGB")


def _ground_polygons(scene: Scene, s_center: float) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """Ground, road and sidewalk quads (global frame, z = 0) around arc length ``s_center``."""
    polys: list[tuple[np.ndarray, tuple[int, int, int]]] = []
    bands = (
        (-60.0, 60.0, GROUND),
        (SIDEWALKS[0][0] - 0.8, WALL_FRONT[1], SIDEWALK),
        (SIDEWALKS[0][1] + 0.6, SIDEWALKS[1][0] - 1.0, ROAD),
    )
    for lo, hi, color in bands:
        for s in np.arange(s_center - 120.0, s_center + 120.0, 10.0):
            x0, y0, _ = scene.road.to_global(np.array([s, s + 10.0, s + 10.0, s]), np.array([lo, lo, hi, hi]))
            polys.append((np.stack([x0, y0, np.zeros(4)], axis=1), color))
    return polys


def render(
    camera_intrinsic: np.ndarray, width: int, height: int, cam_from_global: np.ndarray, scene: Scene, t: float
) -> Image.Image:
    """Render ``scene`` at time ``t`` for a camera with ``cam_from_global`` (4, 4) pose; returns an RGB image."""
    image = _background(width, height, camera_intrinsic, cam_from_global)
    draw = ImageDraw.Draw(image)
    rot, trans = cam_from_global[:3, :3], cam_from_global[:3, 3]
    cam_pos = -rot.T @ trans
    s_center = scene.ego_speed * t
    for poly, color in _ground_polygons(scene, s_center):
        clipped = clip_near(poly @ rot.T + trans)
        if len(clipped) >= 3:
            draw.polygon([tuple(p) for p in project(camera_intrinsic, clipped)], fill=color)
    centers, dims, yaws, _ = scene.boxes(t)
    colors = [CLASSES[o.cls].color for o in scene.objects]
    cl = scene.clutter
    centers = np.concatenate([centers, cl.centers]).reshape(-1, 3)
    dims = np.concatenate([dims, cl.dims]).reshape(-1, 3)
    yaws = np.concatenate([yaws, cl.yaws])
    colors += [CLUTTER] * len(cl.centers)
    near = np.linalg.norm(centers[:, :2] - cam_pos[:2], axis=1) < 150.0
    corners = box_corners(centers[near], dims[near], yaws[near])  # (B, 8, 3)
    colors_arr = np.asarray(colors, dtype=np.float64).reshape(-1, 3)[near]
    quads = corners[:, np.array(FACES)]  # (B, 6, 4, 3)
    c, s = np.cos(yaws[near]), np.sin(yaws[near])
    zero, one = np.zeros_like(c), np.ones_like(c)
    fwd, left, up = np.stack([c, s, zero], 1), np.stack([-s, c, zero], 1), np.stack([zero, zero, one], 1)
    normals = np.stack([fwd, -fwd, left, -left, -up, up], axis=1)  # (B, 6, 3), outward, order of FACES
    mids = quads.mean(axis=2)
    facing = np.einsum("bfk,bfk->bf", normals, mids - cam_pos) < 0
    cam_pts = quads @ rot.T + trans
    in_front = (cam_pts[..., 2] >= NEAR).any(axis=2)
    shade = 0.45 + 0.55 * np.clip(normals @ SUN, 0.0, None)
    dist = np.linalg.norm(mids - cam_pos, axis=2)
    b_idx, f_idx = np.nonzero(facing & in_front)
    for i in np.argsort(-dist[b_idx, f_idx], kind="stable"):
        b, f = b_idx[i], f_idx[i]
        clipped = clip_near(cam_pts[b, f])
        if len(clipped) >= 3:
            uv = project(camera_intrinsic, clipped)
            if uv[:, 0].max() < 0 or uv[:, 0].min() > width or uv[:, 1].max() < 0 or uv[:, 1].min() > height:
                continue
            fill = tuple(int(v) for v in colors_arr[b] * shade[b, f])
            draw.polygon([tuple(p) for p in uv], fill=fill, outline=tuple(int(0.6 * v) for v in fill))
    return image
