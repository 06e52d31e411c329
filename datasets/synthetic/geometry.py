"""Small rigid-transform helpers shared by the synthetic scene, LiDAR, camera and writers.

All functions are plain numpy, float64. Poses are 4x4 homogeneous matrices ``T_parent_child`` that map points
from the child frame into the parent frame: ``p_parent = T[:3, :3] @ p_child + T[:3, 3]``.
"""

from __future__ import annotations

import numpy as np
from pyquaternion import Quaternion


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """Wrap angles (radians) into ``[-pi, pi)``."""
    return (np.asarray(angle) + np.pi) % (2.0 * np.pi) - np.pi


def rot_z(yaw: float) -> np.ndarray:
    """(3, 3) rotation matrix of ``yaw`` radians counter-clockwise about +z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def make_pose(rotation: np.ndarray, translation: np.ndarray | list[float]) -> np.ndarray:
    """(4, 4) homogeneous transform from a (3, 3) rotation and a (3,) translation."""
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = np.asarray(translation, dtype=np.float64)
    return pose


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform."""
    inv = np.eye(4)
    inv[:3, :3] = pose[:3, :3].T
    inv[:3, 3] = -pose[:3, :3].T @ pose[:3, 3]
    return inv


def transform_points(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) pose to (N, 3) points; returns (N, 3) float64."""
    return points @ pose[:3, :3].T + pose[:3, 3]


def yaw_quaternion(yaw: float) -> list[float]:
    """[w, x, y, z] unit quaternion of a rotation by ``yaw`` radians about +z (nuScenes order)."""
    return [float(np.cos(yaw / 2.0)), 0.0, 0.0, float(np.sin(yaw / 2.0))]


def matrix_quaternion(rotation: np.ndarray) -> list[float]:
    """[w, x, y, z] unit quaternion of a (3, 3) rotation matrix, with w >= 0."""
    q = Quaternion(matrix=rotation, atol=1e-9).normalised
    w = q.elements
    if w[0] < 0:
        w = -w
    return [float(v) for v in w]


def box_corners(centers: np.ndarray, dims: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """Corners of oriented boxes.

    Args:
        centers: (K, 3) box centres.
        dims: (K, 3) ``[length (along heading), width, height]`` in metres.
        yaws: (K,) heading, radians CCW about +z.

    Returns:
        (K, 8, 3) corners; 0-3 bottom face and 4-7 top face, each counter-clockwise seen from above starting
        at front-left.
    """
    signs = np.array(
        [[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1], [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]],
        dtype=np.float64,
    )
    local = signs[None, :, :] * (np.asarray(dims, dtype=np.float64)[:, None, :] / 2.0)
    c, s = np.cos(yaws)[:, None], np.sin(yaws)[:, None]
    x = c * local[..., 0] - s * local[..., 1]
    y = s * local[..., 0] + c * local[..., 1]
    return np.stack([x, y, local[..., 2]], axis=-1) + np.asarray(centers, dtype=np.float64)[:, None, :]
