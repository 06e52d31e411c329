"""Box conversion between the nuScenes devkit (centre, ``wlh``, quaternion) and :class:`Boxes3D`.

nuScenes stores a box as a centre, a size ``[width, length, height]`` and an orientation quaternion, in the
global frame; the devkit's ``NuScenes.get_sample_data`` moves them into a sensor frame. Our convention
(DESIGN.md) is ``[x, y, z, dx, dy, dz, yaw]`` with ``dx`` the length along the heading, so ``dx = l = wlh[1]``,
``dy = w = wlh[0]``, ``dz = h``, and ``yaw`` is the quaternion's rotation about +z. Boxes in the LiDAR frame are
upright to within the ego vehicle's pitch and roll; the conversion keeps only the yaw (as every LiDAR detector
does).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from perception.structures import Boxes3D


def boxes_from_devkit(boxes: Sequence[Box], with_velocity: bool = True) -> Boxes3D:
    """Devkit boxes (in the LiDAR frame, e.g. from ``get_sample_data``) -> ``Boxes3D`` ``(N, 7|9)``.

    Velocities the devkit could not estimate (NaN, an object seen once) become 0, as OpenPCDet and mmdetection3d
    do; use :func:`velocity_known` to know which.
    """
    rows = []
    for b in boxes:
        w, l, h = (float(v) for v in b.wlh)
        row = [*map(float, b.center), l, w, h, float(b.orientation.yaw_pitch_roll[0])]
        if with_velocity:
            v = np.nan_to_num(np.asarray(b.velocity, dtype=np.float64)[:2], nan=0.0)
            row += [float(v[0]), float(v[1])]
        rows.append(row)
    cols = 9 if with_velocity else 7
    return Boxes3D(torch.tensor(rows, dtype=torch.float32).reshape(-1, cols))


def velocity_known(boxes: Sequence[Box]) -> torch.Tensor:
    """bool ``(N,)``: the devkit's velocity estimate is finite."""
    return torch.tensor(
        [bool(np.isfinite(np.asarray(b.velocity)[:2]).all()) for b in boxes], dtype=torch.bool
    )


def boxes_to_devkit(
    boxes: Boxes3D, names: Sequence[str] | None = None, scores: Sequence[float] | None = None
) -> list[Box]:
    """``Boxes3D`` -> devkit ``Box`` objects in the same frame (upright, yaw only; velocity z = 0)."""
    out = []
    t = boxes.tensor.detach().cpu().double().numpy()
    for i, row in enumerate(t):
        velocity = (row[7], row[8], 0.0) if boxes.has_velocity else (math.nan, math.nan, math.nan)
        out.append(
            Box(
                center=row[:3].tolist(),
                size=[row[4], row[3], row[5]],
                orientation=Quaternion(axis=[0.0, 0.0, 1.0], radians=float(row[6])),
                velocity=velocity,
                name=None if names is None else names[i],
                score=math.nan if scores is None else float(scores[i]),
            )
        )
    return out
