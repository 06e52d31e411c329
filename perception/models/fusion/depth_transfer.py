"""Geometric transfer (LiDAR -> camera): current-sweep points as a sparse depth map added to the FPN levels.

:func:`sparse_depth_map` projects the points into every valid view and keeps, per cell of stride ``s``, the
nearest depth (``scatter_reduce`` ``amin``); :class:`GeometricTransfer` encodes the 2-channel map with a small CNN
and adds one output per FPN level (reached by strided convs) to that level.

Where this differs from the authors' code (``SparseDepth`` in ``mmdet3d/datasets/pipelines/loading.py`` and
``DepthEncoderResNet``): channel 0 is ``min(depth / max_depth, 1)`` instead of ``(depth - 14.41) / 12.53``
(dataset statistics); points behind the camera are dropped (the authors clamp the depth to 1e-4 and keep what
lands in the image); the map is built in the model from the batch, not in the data pipeline; and the encoding is
*added* to the FPN features (the authors concatenate and fuse with a conv to the hidden width), so the camera
branch sees ``ImageFeatureShape`` unchanged and an invalid view gets no change at all.
"""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from perception.models.image.shapes import ImageFeatureShape
from perception.structures import CameraBatch

from .fusion_config import GeometricTransferConfig

__all__ = ["DEPTH_CHANNELS", "GeometricTransfer", "GeometricTransferConfig", "sparse_depth_map"]

DEPTH_CHANNELS = 2
"""Channels of the sparse depth map: normalised nearest depth, occupancy."""
MIN_DEPTH = 1e-3
"""Metres; points nearer to (or behind) the camera plane are not projected, as :meth:`CameraBatch.project`."""


def sparse_depth_map(
    points_xyz: torch.Tensor,
    batch_index: torch.Tensor,
    cams: CameraBatch,
    stride: int,
    *,
    max_depth: float,
) -> torch.Tensor:
    """Nearest LiDAR depth per image cell of every valid view.

    Args:
        points_xyz: float ``(N, 3)`` LiDAR-frame points (the caller passes the current sweep only).
        batch_index: int64 ``(N,)`` sample of each point, in ``[0, B)``.
        cams: the views; a point counts in view ``(b, v)`` when ``cams.valid[b, v]``, its camera-frame depth is
            above :data:`MIN_DEPTH` and its pixel ``(u, v)`` lies in ``[0, W) x [0, H)`` (as
            :meth:`CameraBatch.project`); it falls in cell ``(floor(v / stride), floor(u / stride))``.
        stride: cell size in pixels; ``H`` and ``W`` must be multiples of it.
        max_depth: metres, the depth that reads 1.

    Returns:
        float32 ``(B, V, 2, H / stride, W / stride)``: channel 0 ``min(d / max_depth, 1)`` of the nearest point
        ``d`` of the cell (0 where none), channel 1 1 where a point landed. Invalid views are zero. No gradient.
    """
    if points_xyz.ndim != 2 or points_xyz.shape[1] != 3:
        raise ValueError(f"points_xyz must be (N, 3), got {tuple(points_xyz.shape)}")
    if batch_index.shape != points_xyz.shape[:1] or batch_index.dtype != torch.int64:
        raise ValueError(
            f"batch_index must be int64 ({points_xyz.shape[0]},), got {batch_index.dtype} {tuple(batch_index.shape)}"
        )
    b, v = cams.batch_size, cams.num_views
    h, w = cams.image_size
    if h % stride or w % stride:
        raise ValueError(f"image size {h}x{w} must be a multiple of the depth stride {stride}")
    hs, ws = h // stride, w // stride
    device = cams.images.device
    out = torch.zeros(b, v, DEPTH_CHANNELS, hs, ws, device=device)
    if len(points_xyz) and (int(batch_index.min()) < 0 or int(batch_index.max()) >= b):
        raise ValueError(
            f"batch_index must lie in [0, {b}), got [{int(batch_index.min())}, {int(batch_index.max())}]"
        )
    with torch.no_grad():
        xyz = points_xyz.to(device=device, dtype=torch.float32)
        idx = batch_index.to(device)
        lidar_to_cam = cams.lidar_to_cam[idx]  # (N, V, 4, 4)
        cam = torch.einsum("nvij,nj->nvi", lidar_to_cam[..., :3, :3], xyz) + lidar_to_cam[..., :3, 3]
        depth = cam[..., 2]
        pix = torch.einsum("nvij,nvj->nvi", cams.intrinsics[idx], cam)
        uv = pix[..., :2] / depth.clamp(min=MIN_DEPTH)[..., None]
        inside = (
            (depth > MIN_DEPTH)
            & (uv[..., 0] >= 0)
            & (uv[..., 0] < w)
            & (uv[..., 1] >= 0)
            & (uv[..., 1] < h)
            & cams.valid[idx]
        )
        point, view = inside.nonzero(as_tuple=True)
        if len(point) == 0:
            return out
        col = (uv[point, view, 0] / stride).floor().long().clamp_(0, ws - 1)
        row = (uv[point, view, 1] / stride).floor().long().clamp_(0, hs - 1)
        cell = ((idx[point] * v + view) * hs + row) * ws + col
        nearest = torch.full((b * v * hs * ws,), float("inf"), device=device)
        nearest.scatter_reduce_(0, cell, depth[point, view], reduce="amin", include_self=True)
        hit = torch.isfinite(nearest).view(b, v, hs, ws)
        out[:, :, 0] = torch.where(hit, (nearest.view(b, v, hs, ws) / max_depth).clamp(max=1.0), 0.0)
        out[:, :, 1] = hit.float()
    return out


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class GeometricTransfer(nn.Module):
    """Depth CNN whose per-level outputs are added to the image features of the valid views.

    A 3x3 conv-BN-ReLU stem on the 2-channel map, then per level ``l`` a 3x3 conv-BN-ReLU with stride
    ``s_l / s_{l-1}`` (``s_0 / depth_stride`` for the first) on the previous level's map, and a 1x1 conv to the
    image channels whose output is added to level ``l``.

    Args:
        config: :class:`GeometricTransferConfig`.
        image_shape: the image features it adds to (channels, strides).
    """

    def __init__(self, config: GeometricTransferConfig, image_shape: ImageFeatureShape) -> None:
        super().__init__()
        self.config = config
        self.image_shape = image_shape
        strides = (config.depth_stride, *image_shape.strides)
        steps = [b // a for a, b in pairwise(strides)]
        if any(b % a for a, b in pairwise(strides)):
            raise ValueError(
                f"geometric_transfer.depth_stride {config.depth_stride} and the image strides "
                f"{image_shape.strides} must each divide the next"
            )
        c = config.channels
        self.stem = _conv_bn_relu(DEPTH_CHANNELS, c, 1)
        self.down = nn.ModuleList(_conv_bn_relu(c, c, step) for step in steps)
        self.out = nn.ModuleList(nn.Conv2d(c, image_shape.channels, 1) for _ in steps)

    def depth_map(
        self, points_xyz: torch.Tensor, batch_index: torch.Tensor, cams: CameraBatch
    ) -> torch.Tensor:
        """:func:`sparse_depth_map` at this config's ``depth_stride`` and ``max_depth``."""
        return sparse_depth_map(
            points_xyz, batch_index, cams, self.config.depth_stride, max_depth=self.config.max_depth
        )

    def encode(self, depth_map: torch.Tensor) -> list[torch.Tensor]:
        """``(M, 2, H / depth_stride, W / depth_stride)`` -> one ``(M, C, H / s_l, W / s_l)`` per level."""
        x = self.stem(depth_map)
        outs = []
        for down, out in zip(self.down, self.out, strict=True):
            x = down(x)
            outs.append(out(x))
        return outs

    def forward(
        self, feats: list[torch.Tensor], depth_map: torch.Tensor, valid: torch.Tensor
    ) -> list[torch.Tensor]:
        """
        Args:
            feats: image features, level ``l`` float ``(B, V, C, H / s_l, W / s_l)``.
            depth_map: float ``(B, V, 2, H / depth_stride, W / depth_stride)`` (:func:`sparse_depth_map`).
            valid: bool ``(B, V)``; only these views are encoded (BatchNorm statistics included) and changed.

        Returns:
            ``feats`` with the encoding added on valid views; invalid views are returned unchanged.
        """
        if len(feats) != self.image_shape.num_levels:
            raise ValueError(f"feats must have {self.image_shape.num_levels} levels, got {len(feats)}")
        b, v = valid.shape
        if depth_map.ndim != 5 or depth_map.shape[:3] != (b, v, DEPTH_CHANNELS):
            raise ValueError(
                f"depth_map must be ({b}, {v}, {DEPTH_CHANNELS}, H', W'), got {tuple(depth_map.shape)}"
            )
        for lvl, f in enumerate(feats):
            if f.ndim != 5 or f.shape[:3] != (b, v, self.image_shape.channels):
                raise ValueError(
                    f"feats[{lvl}] must be ({b}, {v}, {self.image_shape.channels}, H_l, W_l), got {tuple(f.shape)}"
                )
        if not bool(valid.any()):
            return list(feats)
        encoded = self.encode(depth_map[valid])
        out = []
        for lvl, (f, e) in enumerate(zip(feats, encoded, strict=True)):
            if e.shape[-2:] != f.shape[-2:]:
                raise ValueError(
                    f"feats[{lvl}] is {tuple(f.shape[-2:])} but the depth map gives {tuple(e.shape[-2:])} "
                    f"(depth map {tuple(depth_map.shape[-2:])} at stride {self.config.depth_stride})"
                )
            delta = torch.zeros_like(f)
            delta[valid] = e.to(f.dtype)
            out.append(f + delta)
        return out
