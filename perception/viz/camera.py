"""Pinhole view cameras for rendered pictures: a top-down (bird's-eye) view, a chase view and any look-at view.

The same model drives the open3d renderer (:mod:`perception.viz.o3d_render`) and the tests that check where boxes
land in the picture, and converts to a :class:`~perception.structures.CameraRig` so that
:meth:`CameraRig.project` predicts the pixel of any LiDAR point.

Camera frame (OpenCV): x right, y down, z forward (the viewing direction). Pixel ``(u, v)`` = (column, row) from
the top-left corner of the image: ``u = fx * x / z + cx``, ``v = fy * y / z + cy``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from perception.structures import CameraRig


@dataclass(frozen=True)
class ViewCamera:
    """A pinhole camera looking at the LiDAR-frame scene.

    Attributes:
        intrinsics: float64 ``(3, 3)`` ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels.
        lidar_to_camera: float64 ``(4, 4)`` rigid transform LiDAR frame -> camera frame (OpenCV axes).
        width, height: image size in pixels.
    """

    intrinsics: np.ndarray
    lidar_to_camera: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        k = np.asarray(self.intrinsics, np.float64)
        t = np.asarray(self.lidar_to_camera, np.float64)
        if k.shape != (3, 3) or not np.isfinite(k).all():
            raise ValueError(f"ViewCamera.intrinsics must be a finite (3, 3) matrix, got shape {k.shape}")
        if t.shape != (4, 4) or not np.isfinite(t).all() or not np.allclose(t[3], [0, 0, 0, 1]):
            raise ValueError(
                "ViewCamera.lidar_to_camera must be a finite (4, 4) transform with last row [0, 0, 0, 1]"
            )
        if int(self.width) < 1 or int(self.height) < 1:
            raise ValueError(f"ViewCamera size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "intrinsics", k)
        object.__setattr__(self, "lidar_to_camera", t)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    def project(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LiDAR points float ``(N, 3)`` -> pixel coordinates float64 ``(N, 2)`` ``[u, v]`` and depth ``(N,)`` (m)."""
        pts = np.asarray(xyz, np.float64).reshape(-1, 3)
        cam = pts @ self.lidar_to_camera[:3, :3].T + self.lidar_to_camera[:3, 3]
        pix = cam @ self.intrinsics.T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = pix[:, :2] / cam[:, 2:3]
        return uv, cam[:, 2]

    def to_camera_rig(self, name: str = "view") -> CameraRig:
        """The same camera as a one-camera :class:`CameraRig` (float32 tensors)."""
        return CameraRig(
            (name,),
            torch.tensor(self.intrinsics[None], dtype=torch.float32),
            torch.tensor(np.linalg.inv(self.lidar_to_camera)[None], dtype=torch.float32),
            torch.tensor([[self.height, self.width]], dtype=torch.int64),
        )


def _vec3(name: str, v: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(v, np.float64)
    if a.shape != (3,) or not np.isfinite(a).all():
        raise ValueError(f"{name} must be 3 finite numbers (x, y, z), got {v!r}")
    return a


def look_at(
    eye: Sequence[float],
    target: Sequence[float],
    up: Sequence[float] = (0.0, 0.0, 1.0),
    *,
    fov_deg: float = 60.0,
    width: int = 640,
    height: int = 480,
) -> ViewCamera:
    """A camera at ``eye`` looking at ``target`` with ``up`` pointing up in the image.

    Args:
        eye, target, up: LiDAR-frame points / direction (m); ``up`` must not be parallel to ``target - eye``.
        fov_deg: vertical field of view in degrees, in ``(0, 180)``; square pixels, principal point at the centre.
        width, height: pixels.
    """
    e, t, u = _vec3("eye", eye), _vec3("target", target), _vec3("up", up)
    if not 0.0 < fov_deg < 180.0:
        raise ValueError(f"fov_deg must lie in (0, 180), got {fov_deg}")
    forward = t - e
    if np.linalg.norm(forward) < 1e-9:
        raise ValueError("eye and target must differ")
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, u)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError(f"up {tuple(u)} is parallel to the viewing direction {tuple(forward)}")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])  # rows: camera axes in LiDAR coordinates
    ext = np.eye(4)
    ext[:3, :3] = rot
    ext[:3, 3] = -rot @ e
    f = 0.5 * height / math.tan(math.radians(fov_deg) / 2)
    k = np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return ViewCamera(k, ext, width, height)


def bev_camera(
    point_range: Sequence[float], width: int = 640, height: int = 640, fov_deg: float = 40.0
) -> ViewCamera:
    """Top-down view of ``point_range`` ``(x0, y0, z0, x1, y1, z1)``: forward (+x) up in the image, left (+y) left.

    The camera sits above the centre of the range, high enough that the whole x-y extent at ``z0`` fits.
    """
    r = np.asarray(point_range, np.float64)
    if r.shape != (6,) or not np.isfinite(r).all() or not (r[:3] < r[3:]).all():
        raise ValueError(
            f"point_range must be finite (x0, y0, z0, x1, y1, z1) with min < max, got {point_range}"
        )
    cx, cy = (r[0] + r[3]) / 2, (r[1] + r[4]) / 2
    half_v = math.tan(math.radians(fov_deg) / 2)
    half_h = half_v * width / height
    dist = max((r[3] - r[0]) / 2 / half_v, (r[4] - r[1]) / 2 / half_h) * 1.02
    eye = (cx, cy, r[2] + dist)
    return look_at(eye, (cx, cy, r[2]), up=(1.0, 0.0, 0.0), fov_deg=fov_deg, width=width, height=height)


def chase_camera(point_range: Sequence[float], width: int = 640, height: int = 480) -> ViewCamera:
    """A perspective view from behind and above the centre of ``point_range``, looking forward and down at about
    45 degrees (the default render)."""
    r = np.asarray(point_range, np.float64)
    if r.shape != (6,) or not np.isfinite(r).all() or not (r[:3] < r[3:]).all():
        raise ValueError(
            f"point_range must be finite (x0, y0, z0, x1, y1, z1) with min < max, got {point_range}"
        )
    span = max(r[3] - r[0], r[4] - r[1])
    cx, cy = (r[0] + r[3]) / 2, (r[1] + r[4]) / 2
    eye = (cx - 0.45 * span, cy, r[2] + 0.55 * span)
    target = (cx + 0.1 * span, cy, r[2])
    return look_at(eye, target, up=(0.0, 0.0, 1.0), fov_deg=50.0, width=width, height=height)
