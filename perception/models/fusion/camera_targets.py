"""Targets of the camera branch: per-view, per-level Gaussian class heatmaps and camera-frame box codes.

An object visible in a view (its centre projects inside the image, in front of the camera:
:func:`~.camera_geometry.boxes_to_camera`) is drawn on one feature level of that view, the level whose stride best
fits its projected 2D size (FCOS-style scale assignment): ``l = argmin |log2(size) - log2(4 * stride_l)|`` with
``size = sqrt(w * h)`` of the image-clipped 2D box around its projected corners (those in front of the camera), so
an object spans about four cells of its level. The Gaussian sits on the cell holding the projected centre, with
CenterPoint's radius (:func:`~perception.models.heads.centerpoint_targets.gaussian_radius`) of the 2D box in level
cells.

The box code of a query matched to an object (columns of ``CODE_NAMES``) is in the camera frame of the query's
view: ``(uv - query_pixel) / stride`` (the centre offset in level cells), ``log depth``, the camera-frame
``log_dims``, ``(sin, cos)`` and ``(v_x, v_z)`` (without velocity: the first 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from perception.structures import Boxes3D, CameraBatch

from ..heads.centerpoint_targets import draw_gaussians, heatmap_radius
from .camera_geometry import CameraBoxes

__all__ = [
    "CODE_NAMES",
    "assign_levels",
    "camera_heatmap_targets",
    "decode_codes",
    "encode_codes",
    "pad_labels",
    "projected_extent",
]

CODE_NAMES = ("du", "dv", "log_depth", "log_dx", "log_dy", "log_dz", "sin", "cos", "v_x", "v_z")
"""Columns of the camera branch's box code (the last two only with velocity)."""

_MIN_CORNER_DEPTH = 0.1
"""Corners nearer than this (m, camera z) are left out of the 2D extent."""


def pad_labels(gt_labels: Sequence[torch.Tensor], num: int, device: torch.device) -> torch.Tensor:
    """``B`` int64 ``(G_b,)`` -> int64 ``(B, num)`` padded with -1 (``num >= max G_b``)."""
    out = torch.full((len(gt_labels), num), -1, dtype=torch.int64, device=device)
    for i, lab in enumerate(gt_labels):
        out[i, : len(lab)] = lab.to(device)
    return out


def projected_extent(gt_boxes: Sequence[torch.Tensor], cams: CameraBatch) -> torch.Tensor:
    """Image-clipped 2D box size of every object in every view.

    Args:
        gt_boxes: ``B`` float ``(G_b, 7|9)`` LiDAR-frame boxes.
        cams: the batch's cameras.

    Returns:
        float32 ``(B, V, G, 2)`` ``[w, h]`` pixels (``G = max G_b``; 0 for padding and objects with no corner in
        front of the camera).
    """
    b = cams.batch_size
    g = max((len(t) for t in gt_boxes), default=0)
    corners = torch.zeros(b, max(g, 1) * 8, 3, device=cams.images.device)
    real = torch.zeros(b, max(g, 1), dtype=torch.bool, device=cams.images.device)
    for i, t in enumerate(gt_boxes):
        if len(t):
            corners[i, : len(t) * 8] = Boxes3D(t[:, :7].float().to(corners.device)).corners().reshape(-1, 3)
            real[i, : len(t)] = True
    uv, depth, _ = cams.project(corners)
    v = cams.num_views
    uv = uv.reshape(b, v, -1, 8, 2)
    front = (depth.reshape(b, v, -1, 8) > _MIN_CORNER_DEPTH) & real[:, None, :, None]
    h, w = cams.image_size
    limit = uv.new_tensor([w, h])
    uv = torch.minimum(uv.clamp(min=0), limit)
    big = torch.finfo(torch.float32).max
    lo = torch.where(front[..., None], uv, uv.new_full((), big)).amin(dim=3)
    hi = torch.where(front[..., None], uv, uv.new_full((), -big)).amax(dim=3)
    size = torch.where(front.any(dim=3)[..., None], (hi - lo).clamp(min=0), torch.zeros_like(lo))
    return size[:, :, :g]


def assign_levels(extent: torch.Tensor, strides: Sequence[int]) -> torch.Tensor:
    """int64 ``(...)``: the feature level of each 2D size ``extent`` ``(..., 2)`` (rule: module docstring)."""
    size = (extent[..., 0] * extent[..., 1]).clamp(min=1.0).sqrt()
    target = torch.log2(4.0 * torch.tensor(tuple(strides), dtype=torch.float32, device=extent.device))
    return (torch.log2(size)[..., None] - target).abs().argmin(dim=-1)


def camera_heatmap_targets(
    desc: CameraBoxes,
    extent: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    strides: Sequence[int],
    level_sizes: Sequence[tuple[int, int]],
    min_overlap: float,
    min_radius: int,
) -> tuple[list[torch.Tensor], int]:
    """Gaussian heatmap targets of every view and level.

    Args:
        desc: :func:`~.camera_geometry.boxes_to_camera` of the ground truth, leading shape ``(B, V, G)``, with
            ``visible``.
        extent: float ``(B, V, G, 2)`` from :func:`projected_extent`.
        labels: int64 ``(B, G)`` class indices, -1 for padding.
        num_classes: ``K``.
        strides / level_sizes: of the ``L`` feature levels.
        min_overlap / min_radius: Gaussian radius settings.

    Returns:
        ``L`` float32 ``(B, V, K, H_l, W_l)`` targets, and the number of drawn objects (peaks of exactly 1).
    """
    assert desc.visible is not None
    b, v, g = desc.depth.shape
    device = desc.depth.device
    heat = [torch.zeros(b, v, num_classes, h, w, device=device) for h, w in level_sizes]
    level = assign_levels(extent, strides)
    visible = desc.visible & (labels[:, None, :] >= 0)
    count = 0
    for lvl, (stride, (h, w)) in enumerate(zip(strides, level_sizes, strict=True)):
        sel = visible & (level == lvl)
        if not bool(sel.any()):
            continue
        bi, vi, gi = torch.nonzero(sel, as_tuple=True)
        cell = torch.floor(desc.uv[bi, vi, gi] / stride).long()
        cell[:, 0].clamp_(0, w - 1)
        cell[:, 1].clamp_(0, h - 1)
        size = extent[bi, vi, gi] / stride
        radius = heatmap_radius(size[:, 1], size[:, 0], min_overlap, min_radius)
        flat = heat[lvl].view(b * v, num_classes, h, w)
        img = bi * v + vi
        for n in torch.unique(img).tolist():
            mine = img == n
            draw_gaussians(flat[n], labels[bi[mine], gi[mine]], cell[mine], radius[mine])
        count += int(sel.sum())
    return heat, count


def encode_codes(
    desc: CameraBoxes, pixel: torch.Tensor, stride: torch.Tensor, with_velocity: bool
) -> torch.Tensor:
    """Box codes of objects described in a camera frame, relative to query cells.

    Args:
        desc: leading shape ``S`` (e.g. ``(M,)`` matched objects).
        pixel: float ``(*S, 2)`` the queries' cell-centre pixels.
        stride: float ``S`` the queries' level strides.
        with_velocity: 10 columns, else 8 (:data:`CODE_NAMES`).

    Returns:
        float32 ``(*S, 10 | 8)``.
    """
    parts = [
        (desc.uv - pixel) / stride[..., None],
        desc.depth.clamp(min=1e-3).log()[..., None],
        desc.log_dims,
        desc.rot,
    ]
    if with_velocity:
        parts.append(desc.velocity)
    return torch.cat(parts, dim=-1).float()


def decode_codes(codes: torch.Tensor, pixel: torch.Tensor, stride: torch.Tensor) -> CameraBoxes:
    """Inverse of :func:`encode_codes` (8 columns: zero velocity); ``codes`` ``(*S, 10 | 8)``."""
    if codes.shape[-1] not in (8, 10):
        raise ValueError(f"codes must have 8 or 10 columns ({CODE_NAMES}), got {tuple(codes.shape)}")
    velocity = codes[..., 8:10] if codes.shape[-1] == 10 else torch.zeros_like(codes[..., :2])
    return CameraBoxes(
        uv=pixel + codes[..., 0:2] * stride[..., None],
        depth=codes[..., 2].exp(),
        log_dims=codes[..., 3:6],
        rot=codes[..., 6:8],
        velocity=velocity,
    )
