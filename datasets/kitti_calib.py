"""KITTI calibration files and camera <-> LiDAR box conversion.

Calibration (``training/calib/<id>.txt``, KITTI object devkit ``readme.txt``): lines ``KEY: v1 v2 ...`` with
``P0..P3`` (3x4 projection of rectified camera-0 coordinates into camera ``i``'s image), ``R0_rect`` (3x3
rectifying rotation) and ``Tr_velo_to_cam`` (3x4 Velodyne -> camera 0), optionally ``Tr_imu_to_velo``. The
tracking benchmark's spellings ``R_rect`` / ``Tr_velo_cam`` / ``Tr_imu_velo`` are accepted too. A point maps
Velodyne -> image 2 as ``P2 @ R0_rect @ Tr_velo_to_cam @ [x, y, z, 1]``.

Boxes: a KITTI label stores ``h w l`` and the **bottom centre** ``(x, y, z)`` in the rectified camera frame
(x right, y down, z forward) and ``rotation_y`` about the camera's y axis (0 = facing camera x). In the LiDAR
frame (DESIGN.md) the box is ``[x, y, z, dx, dy, dz, yaw]`` with the centre ``rect_to_velo(bottom) + h/2`` up,
``dx = l, dy = w, dz = h`` and ``yaw = -ry - pi/2`` (the LiDAR and the rectified camera are assumed level with
each other, as KITTI and every toolkit assume; only the heading is kept).

Label files, their record (:class:`~perception.formats.kitti_labels.KittiObjects`) and the difficulty levels
live in :mod:`perception.formats.kitti_labels`, shared with the evaluation.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["KittiCalib", "boxes_camera_to_lidar", "boxes_lidar_to_camera", "read_calib_file"]

_ALIASES = {"R_rect": "R0_rect", "Tr_velo_cam": "Tr_velo_to_cam", "Tr_imu_velo": "Tr_imu_to_velo"}
_SIZES = {"P0": 12, "P1": 12, "P2": 12, "P3": 12, "R0_rect": 9, "Tr_velo_to_cam": 12, "Tr_imu_to_velo": 12}
_REQUIRED = ("P2", "R0_rect", "Tr_velo_to_cam")


def _pose(m34: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :] = m34
    return out


@dataclass
class KittiCalib:
    """Calibration of one KITTI frame (float64).

    Attributes:
        P: ``{i: (3, 4)}`` projection matrices of the cameras present (at least camera 2).
        R0_rect: ``(3, 3)`` rectifying rotation of camera 0.
        Tr_velo_to_cam: ``(3, 4)`` Velodyne -> (unrectified) camera 0.
        Tr_imu_to_velo: ``(3, 4)`` or None.
    """

    P: dict[int, np.ndarray]
    R0_rect: np.ndarray
    Tr_velo_to_cam: np.ndarray
    Tr_imu_to_velo: np.ndarray | None = None

    @property
    def rect_from_velo(self) -> np.ndarray:
        """``(4, 4)`` Velodyne -> rectified camera 0 (``R0_rect @ Tr_velo_to_cam``)."""
        r0 = np.eye(4)
        r0[:3, :3] = self.R0_rect
        return r0 @ _pose(self.Tr_velo_to_cam)

    def velo_to_rect(self, xyz: np.ndarray) -> np.ndarray:
        """``(N, 3)`` Velodyne points -> ``(N, 3)`` float64 rectified camera-0 coordinates."""
        xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
        t = self.rect_from_velo
        return xyz @ t[:3, :3].T + t[:3, 3]

    def rect_to_velo(self, xyz: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`velo_to_rect` (exact matrix inverse, float64)."""
        xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
        t = np.linalg.inv(self.rect_from_velo)
        return xyz @ t[:3, :3].T + t[:3, 3]

    def project_velo(self, xyz: np.ndarray, cam: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Project Velodyne points into camera ``cam``: float64 ``(N, 2)`` pixels ``[u, v]`` and ``(N,)`` depth
        (rectified z, metres; pixels are meaningless where depth <= 0)."""
        rect = self.velo_to_rect(xyz)
        pix = np.concatenate([rect, np.ones((len(rect), 1))], axis=1) @ self.P[cam].T
        depth = pix[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = pix[:, :2] / depth[:, None]
        return uv, rect[:, 2]

    def in_image(self, xyz: np.ndarray, image_size: tuple[int, int], cam: int = 2) -> np.ndarray:
        """bool ``(N,)``: the Velodyne point lies in front of camera ``cam`` and projects inside its image of
        ``image_size = (height, width)`` pixels (``0 <= u < width``, ``0 <= v < height``)."""
        uv, depth = self.project_velo(xyz, cam)
        h, w = image_size
        with np.errstate(invalid="ignore"):
            return (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)

    def camera(self, cam: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Pinhole model of camera ``cam``: ``(3, 3)`` intrinsics ``K`` and ``(4, 4)`` camera -> Velodyne.

        ``P_cam = K [I | b]``: the camera's frame is the rectified frame shifted by ``b = K^-1 P[:, 3]``.
        """
        p = self.P[cam]
        k = p[:, :3].copy()
        b = np.linalg.solve(k, p[:, 3])
        cam_from_rect = np.eye(4)
        cam_from_rect[:3, 3] = b
        return k, np.linalg.inv(cam_from_rect @ self.rect_from_velo)


def read_calib_file(path: str | os.PathLike[str]) -> KittiCalib:
    """Parse a KITTI calibration file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line without ``KEY:``, a non-numeric / non-finite value, a known key with the wrong number
            of values (message: file, 1-based line, the line), or a required key (P2, R0_rect, Tr_velo_to_cam)
            missing (message: file and key).
    """
    path = Path(path)
    values: dict[str, np.ndarray] = {}
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            key, sep, rest = line.partition(":")
            key = _ALIASES.get(key.strip(), key.strip())
            if not sep or not key or any(c.isspace() for c in key):
                raise ValueError(f"{where}: expected 'KEY: v1 v2 ...', got {line.strip()!r}")
            try:
                nums = np.array([float(v) for v in rest.split()], dtype=np.float64)
            except ValueError as e:
                raise ValueError(f"{where}: non-numeric value ({e}): {line.strip()!r}") from None
            if not np.all(np.isfinite(nums)):
                raise ValueError(f"{where}: non-finite value in {line.strip()!r}")
            want = _SIZES.get(key)
            if want is not None and nums.size != want:
                raise ValueError(f"{where}: {key} needs {want} values, got {nums.size}: {line.strip()!r}")
            values[key] = nums
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise ValueError(f"{path}: missing calibration key(s) {missing}")
    proj = {i: values[f"P{i}"].reshape(3, 4) for i in range(4) if f"P{i}" in values}
    imu = values.get("Tr_imu_to_velo")
    return KittiCalib(
        P=proj,
        R0_rect=values["R0_rect"].reshape(3, 3),
        Tr_velo_to_cam=values["Tr_velo_to_cam"].reshape(3, 4),
        Tr_imu_to_velo=None if imu is None else imu.reshape(3, 4),
    )


def _wrap(angle: np.ndarray) -> np.ndarray:
    return angle - np.floor(angle / (2 * math.pi) + 0.5) * 2 * math.pi


def boxes_camera_to_lidar(
    location: np.ndarray, dimensions: np.ndarray, rotation_y: np.ndarray, calib: KittiCalib
) -> np.ndarray:
    """KITTI label boxes -> LiDAR-frame boxes.

    Args:
        location: ``(N, 3)`` bottom centres in the rectified camera frame, metres.
        dimensions: ``(N, 3)`` ``[h, w, l]`` (the label's column order), metres.
        rotation_y: ``(N,)`` radians.
        calib: the frame's calibration.

    Returns:
        float64 ``(N, 7)`` ``[x, y, z, dx, dy, dz, yaw]`` (centre; ``yaw = -ry - pi/2`` wrapped to [-pi, pi)).
    """
    loc = np.asarray(location, np.float64).reshape(-1, 3)
    hwl = np.asarray(dimensions, np.float64).reshape(-1, 3)
    ry = np.asarray(rotation_y, np.float64).reshape(-1)
    if not len(loc) == len(hwl) == len(ry):
        raise ValueError(
            f"location, dimensions, rotation_y lengths differ: {len(loc)}, {len(hwl)}, {len(ry)}"
        )
    xyz = calib.rect_to_velo(loc)
    xyz[:, 2] += hwl[:, 0] / 2
    size = hwl[:, [2, 1, 0]]
    return np.concatenate([xyz, size, _wrap(-ry - math.pi / 2)[:, None]], axis=1)


def boxes_lidar_to_camera(boxes: np.ndarray, calib: KittiCalib) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of :func:`boxes_camera_to_lidar`: ``(N, 7+)`` LiDAR boxes -> float64 bottom-centre ``location``
    ``(N, 3)``, ``dimensions`` ``(N, 3)`` ``[h, w, l]`` and ``rotation_y`` ``(N,)`` wrapped to [-pi, pi)."""
    b = np.asarray(boxes, np.float64)
    if b.ndim != 2 or b.shape[1] < 7:
        raise ValueError(f"boxes must be (N, 7+) [x, y, z, dx, dy, dz, yaw, ...], got shape {b.shape}")
    bottom = b[:, :3].copy()
    bottom[:, 2] -= b[:, 5] / 2
    return calib.velo_to_rect(bottom), b[:, [5, 4, 3]].copy(), _wrap(-b[:, 6] - math.pi / 2)
