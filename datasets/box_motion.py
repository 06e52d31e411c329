"""Which points of a multi-sweep cloud belong to a moving box: each point tested at its own time.

A multi-sweep nuScenes cloud (keyframe + earlier sweeps moved into the keyframe's LiDAR frame, channel
``time_lag`` = seconds before the keyframe) shows a moving object once per sweep: the scan ``t`` seconds old sees
it ``v * t`` behind its keyframe box. The object's points are those whose position moved forward by ``v * t``
(bird's-eye view; constant velocity over the lag) lies inside the keyframe box -- the same as testing each
point against the box moved back to the point's time. For ``t = 0`` or ``v = 0`` it is the plain closed-box test
(:func:`perception.ops.points_in_boxes.points_in_boxes`); a non-finite velocity (the devkit's ``nan`` for an
annotation without neighbours) counts as 0.

Used for the GT database's object crops (:func:`perception.datasets.prep_runner.crop_box_points`), so a pasted
object keeps its trail of older points, and for the scene points GT sampling clears for a pasted object
(:class:`perception.datasets.gt_sampling.GTSampling`), so the trail region holds the pasted object alone.
"""

from __future__ import annotations

import numpy as np
import torch

from perception.ops.points_in_boxes import points_in_boxes

__all__ = ["points_in_moving_box"]


def points_in_moving_box(xyz: np.ndarray, time_lag: np.ndarray | None, box: np.ndarray) -> np.ndarray:
    """bool ``(N,)``: the points inside ``box`` at their own time.

    Args:
        xyz: float32 ``(N, 3)`` points in the box's frame.
        time_lag: float ``(N,)`` seconds before the box's time (>= 0), or None (all at the box's time).
        box: float ``(7,)`` ``[x, y, z, dx, dy, dz, yaw]`` or ``(9,)`` with ``[vx, vy]`` (m/s); 7 columns or
            ``time_lag`` None: the plain box test.
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    box = np.asarray(box, dtype=np.float32).reshape(-1)
    if xyz.ndim != 2 or xyz.shape[1] != 3 or box.shape[0] not in (7, 9):
        raise ValueError(f"xyz must be (N, 3) and box (7,) or (9,), got {xyz.shape} and {box.shape}")
    lag, v, reach = None, None, 0.0
    if time_lag is not None and box.shape[0] == 9:
        lag = np.asarray(time_lag, dtype=np.float32).reshape(-1)
        if lag.shape[0] != xyz.shape[0]:
            raise ValueError(f"time_lag must be ({xyz.shape[0]},), got {lag.shape}")
        v = np.where(np.isfinite(box[7:9]), box[7:9], 0.0).astype(np.float32)
        reach = float(np.abs(v).max() * np.abs(lag).max(initial=0.0))
    # only the points within the box's radius plus the farthest it moves are tested (and moved)
    radius = 0.5 * float(np.linalg.norm(box[3:6])) + 1e-3
    near = np.flatnonzero(np.abs(xyz - box[:3]).max(axis=1) <= radius + reach)
    out = np.zeros(len(xyz), dtype=bool)
    if len(near):
        moved = xyz[near]
        if reach > 0.0 and lag is not None and v is not None:
            moved[:, :2] += lag[near, None] * v[None, :]
        index, _ = points_in_boxes(torch.from_numpy(moved), torch.from_numpy(box[None, :7].copy()))
        out[near[index.numpy() == 0]] = True
    return out
