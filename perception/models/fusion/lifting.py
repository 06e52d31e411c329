"""Lifting of the camera branch's candidates into the LiDAR frame (no gradient through the geometry).

A camera query of view ``v`` at feature level ``l`` (stride ``s_l``) predicts, in that camera's frame
(:mod:`~perception.models.fusion.camera_geometry`): the offset from its peak pixel to the projected 3D centre in
units of ``s_l`` pixels, the centre depth, log sizes, heading ``(sin, cos)`` and velocity ``(v_x, v_z)``. The
projected centre is ``query_pixel + center_offset * s_l``; :func:`camera_to_boxes` turns the description into a
LiDAR-frame box. Everything is detached: the LiDAR-frame box is a *position* for the view transformer and the
fusion stage (as the authors' ``loc_cam_3d.detach()``); the camera branch learns from its own loss.

A candidate is valid when its query is valid, its view is valid and its prediction is finite with depth
``> MIN_DEPTH``; invalid candidates get the finite placeholder box ``PLACEHOLDER_BOX`` so that later stages
(box coding, matching) never see NaN, and must be masked with ``valid``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from perception.structures import CameraBatch

from .camera_geometry import CameraBoxes, camera_to_boxes

__all__ = ["CameraCandidates", "CameraPredictions", "MIN_DEPTH", "PLACEHOLDER_BOX", "lift_camera_queries"]

MIN_DEPTH = 1e-2
"""Candidates predicted nearer than this (m, camera frame) are invalid: their back-projection is meaningless."""

PLACEHOLDER_BOX = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0)
"""The box an invalid candidate carries (LiDAR origin, 1 m cube)."""


class CameraPredictions(Protocol):
    """The fields of the camera branch's output that lifting reads (``CameraOutput`` has them)."""

    query_view: torch.Tensor
    query_level: torch.Tensor
    query_pixel: torch.Tensor
    query_valid: torch.Tensor
    center_offset: torch.Tensor
    depth: torch.Tensor
    log_dims: torch.Tensor
    rot: torch.Tensor
    velocity: torch.Tensor


@dataclass
class CameraCandidates:
    """Camera candidates in the LiDAR frame.

    Attributes:
        boxes: float32 ``(B, Q, 9)`` ``[x, y, z, dx, dy, dz, yaw, vx, vy]``, detached; ``PLACEHOLDER_BOX`` where
            invalid.
        valid: bool ``(B, Q)``.
    """

    boxes: torch.Tensor
    valid: torch.Tensor


def lift_camera_queries(
    out: CameraPredictions, cams: CameraBatch, strides: Sequence[int]
) -> CameraCandidates:
    """Back-project the camera branch's predictions into LiDAR-frame boxes (module docstring).

    Args:
        out: the camera branch's output: ``query_view``, ``query_level`` int64 ``(B, Q)``; ``query_pixel`` float
            ``(B, Q, 2)`` input-image pixel ``[u, v]``; ``query_valid`` bool ``(B, Q)``; ``center_offset``
            ``(B, Q, 2)`` in level-stride pixels; ``depth`` ``(B, Q)`` m; ``log_dims`` ``(B, Q, 3)``; ``rot``
            ``(B, Q, 2)`` ``(sin, cos)``; ``velocity`` ``(B, Q, 2)`` camera ``(v_x, v_z)``.
        cams: the batch's cameras.
        strides: the feature levels' strides (``ImageFeatureShape.strides``), indexed by ``query_level``.

    Returns:
        :class:`CameraCandidates` (no autograd graph).
    """
    view, level = out.query_view, out.query_level
    b, q = view.shape
    for name in ("query_level", "query_valid", "depth"):
        if tuple(getattr(out, name).shape) != (b, q):
            raise ValueError(f"{name} must be (B, Q) = {(b, q)}, got {tuple(getattr(out, name).shape)}")
    for name, last in (
        ("query_pixel", 2),
        ("center_offset", 2),
        ("log_dims", 3),
        ("rot", 2),
        ("velocity", 2),
    ):
        if tuple(getattr(out, name).shape) != (b, q, last):
            raise ValueError(f"{name} must be {(b, q, last)}, got {tuple(getattr(out, name).shape)}")
    if b != cams.batch_size:
        raise ValueError(f"query_view has batch size {b}, the cameras {cams.batch_size}")
    if level.numel() and (int(level.min()) < 0 or int(level.max()) >= len(strides)):
        raise ValueError(
            f"query_level must lie in [0, {len(strides)}) (the feature levels), got {level.unique().tolist()}"
        )
    with torch.no_grad():
        stride = torch.as_tensor(tuple(strides), dtype=torch.float32, device=view.device)[level]
        uv = out.query_pixel.float() + out.center_offset.float() * stride[..., None]
        depth = out.depth.float()
        desc = CameraBoxes(
            uv=uv,
            depth=depth,
            log_dims=out.log_dims.float(),
            rot=out.rot.float(),
            velocity=out.velocity.float(),
        )
        view_ok = (view >= 0) & (view < cams.num_views)
        safe_view = torch.where(view_ok, view, torch.zeros_like(view))
        boxes = camera_to_boxes(desc, safe_view, cams)
        rows = torch.arange(b, device=view.device)[:, None]
        valid = (
            out.query_valid.bool()
            & view_ok
            & cams.valid[rows, safe_view]
            & (depth > MIN_DEPTH)
            & torch.isfinite(boxes).all(dim=-1)
        )
        placeholder = boxes.new_tensor(PLACEHOLDER_BOX)
        boxes = torch.where(valid[..., None], boxes, placeholder)
    return CameraCandidates(boxes=boxes.detach(), valid=valid)
