"""KITTI box overlaps: 2D image-box IoU, and exact BEV / 3D IoU of KITTI camera-frame boxes.

Camera boxes (bottom centre, ``hwl``, ``rotation_y``) are relabelled into the LiDAR box convention of
:mod:`perception.ops.iou3d` and scored with its exact convex-polygon clipping (:func:`perception.ops.iou3d_cpu.pair_iou`,
float64), frame by frame in one numba call over all frames. Layout of the per-frame blocks: see
:mod:`perception.evaluation.kitti_match`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from perception.formats.kitti_labels import KittiObjects
from perception.ops.iou3d_cpu import MAX_VERTS, pair_iou
from perception.ops.iou3d_torch import box_params

__all__ = [
    "image_overlap",
    "rotated_overlaps",
    "camera_boxes_to_lidar_convention",
    "box_overlaps",
    "BOX_KINDS",
]

#: Box kinds with an overlap definition.
BOX_KINDS = ("image", "bev", "3d")


@njit(cache=True)
def image_overlap(boxes: np.ndarray, query: np.ndarray, criterion: int) -> np.ndarray:
    """Overlap of 2D boxes float64 ``(D, 4)`` ``[x1, y1, x2, y2]`` with ``query`` ``(G, 4)`` -> float64 ``(D, G)``.

    ``criterion`` -1: intersection over union; 0: intersection over the area of ``boxes[d]``. A pair whose
    intersection has zero or negative width or height has overlap 0 (no ``+1`` pixel convention).
    """
    d = boxes.shape[0]
    g = query.shape[0]
    out = np.zeros((d, g), np.float64)
    for a in range(d):
        area_a = (boxes[a, 2] - boxes[a, 0]) * (boxes[a, 3] - boxes[a, 1])
        for b in range(g):
            w = min(boxes[a, 2], query[b, 2]) - max(boxes[a, 0], query[b, 0])
            h = min(boxes[a, 3], query[b, 3]) - max(boxes[a, 1], query[b, 1])
            if w <= 0.0 or h <= 0.0:
                continue
            inter = w * h
            if criterion == -1:
                area_b = (query[b, 2] - query[b, 0]) * (query[b, 3] - query[b, 1])
                out[a, b] = inter / (area_a + area_b - inter)
            else:
                out[a, b] = inter / area_a
    return out


@njit(cache=True)
def rotated_overlaps(
    dt_params: np.ndarray,
    gt_params: np.ndarray,
    dt_off: np.ndarray,
    gt_off: np.ndarray,
    ov_off: np.ndarray,
    mode_3d: bool,
) -> np.ndarray:
    """Per-frame BEV (or 3D) IoU blocks, float64 flat (see the module docstring for the layout).

    ``dt_params`` / ``gt_params`` are float64 ``(D, 8)`` / ``(G, 8)`` box rows of
    :func:`perception.ops.iou3d_torch.box_params`; each pair's IoU is the exact polygon-clipping IoU of
    :func:`perception.ops.iou3d_cpu.pair_iou` (what :func:`perception.ops.iou3d.boxes_iou_bev` / ``_3d`` compute),
    kept in float64. One call for all frames.
    """
    n_frames = gt_off.shape[0] - 1
    out = np.zeros(ov_off[n_frames], np.float64)
    for f in range(n_frames):
        px = np.empty(MAX_VERTS, np.float64)
        py = np.empty(MAX_VERTS, np.float64)
        qx = np.empty(MAX_VERTS, np.float64)
        qy = np.empty(MAX_VERTS, np.float64)
        n_gt = gt_off[f + 1] - gt_off[f]
        for j in range(dt_off[f], dt_off[f + 1]):
            row = ov_off[f] + (j - dt_off[f]) * n_gt
            for i in range(n_gt):
                out[row + i] = pair_iou(dt_params[j], gt_params[gt_off[f] + i], mode_3d, px, py, qx, qy)
    return out


def camera_boxes_to_lidar_convention(
    location: np.ndarray, dimensions: np.ndarray, rotation_y: np.ndarray
) -> np.ndarray:
    """KITTI camera-frame boxes as ``(N, 7)`` float64 ``[x, y, z, dx, dy, dz, yaw]`` in the LiDAR box convention.

    A relabelling of the rectified camera axes (x right, y down, z forward) as x forward, y left, z up -- not the
    calibrated LiDAR frame, but a rigid motion, so IoUs are unchanged: ``x = z_c``, ``y = -x_c``,
    ``z = -y_c + h / 2`` (bottom centre -> centre), ``dx = l``, ``dy = w``, ``dz = h``, ``yaw = -ry - pi / 2``.

    Args:
        location: float ``(N, 3)`` bottom centres ``[x, y, z]``, metres.
        dimensions: float ``(N, 3)`` ``[h, w, l]``, metres.
        rotation_y: float ``(N,)`` radians.
    """
    loc = np.asarray(location, np.float64).reshape(-1, 3)
    hwl = np.asarray(dimensions, np.float64).reshape(-1, 3)
    ry = np.asarray(rotation_y, np.float64).reshape(-1)
    h, w, l = hwl[:, 0], hwl[:, 1], hwl[:, 2]
    return np.stack([loc[:, 2], -loc[:, 0], -loc[:, 1] + 0.5 * h, l, w, h, -ry - 0.5 * math.pi], axis=1)


def camera_box_params(loc: list[np.ndarray], dims: list[np.ndarray], ry: list[np.ndarray]) -> np.ndarray:
    """float64 ``(N, 8)`` parameter rows (:func:`perception.ops.iou3d_torch.box_params`) of the camera boxes given
    as per-frame lists of locations ``(n, 3)``, dimensions ``hwl`` ``(n, 3)`` and ``rotation_y`` ``(n,)``."""
    if not loc:
        return np.zeros((0, 8))
    boxes = camera_boxes_to_lidar_convention(np.concatenate(loc), np.concatenate(dims), np.concatenate(ry))
    return np.ascontiguousarray(box_params(torch.from_numpy(boxes)).numpy())


def box_overlaps(dets: KittiObjects, gts: KittiObjects, kind: str) -> np.ndarray:
    """IoU float64 ``(D, G)`` of every detection with every ground-truth object of one frame, as the evaluation
    computes it.

    Args:
        dets, gts: the frame's objects (any class; DontCare's negative sizes count as 0).
        kind: ``"image"`` (2D box IoU), ``"bev"`` (rotated rectangles in the camera ``x, z`` plane, exact polygon
            clipping) or ``"3d"`` (BEV intersection x overlap of the vertical extents ``[y - h, y]`` over the
            union volume).
    """
    if kind not in BOX_KINDS:
        raise ValueError(f"kind must be one of {BOX_KINDS}, got {kind!r}")
    if kind == "image":
        return image_overlap(dets.bbox, gts.bbox, -1)
    d_par = camera_box_params([dets.location], [np.maximum(dets.dimensions, 0.0)], [dets.rotation_y])
    g_par = camera_box_params([gts.location], [np.maximum(gts.dimensions, 0.0)], [gts.rotation_y])
    off = np.array([0, len(dets) * len(gts)], np.int64)
    flat = rotated_overlaps(
        d_par, g_par, np.array([0, len(dets)], np.int64), np.array([0, len(gts)], np.int64), off, kind == "3d"
    )
    return flat.reshape(len(dets), len(gts))
