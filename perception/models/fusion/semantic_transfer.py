"""Semantic transfer (camera -> LiDAR): image features written into the BEV map before the LiDAR heatmap picks
its queries (SparseFusion sec. 3.4).

For each sample (``B``), at most ``max_cells`` occupied BEV cells are processed (which ones: :meth:`select_cells`).
A cell's centre is lifted to each of ``heights`` (LiDAR-frame z, m) and the ``len(heights)`` points are projected
into every view (:meth:`CameraBatch.project`, which marks invalid views as not seeing anything). A (cell, view)
*pair* exists when at least one of the cell's points lands inside that valid view. Per pair, the image features at
the projected points are sampled with ``grid_sample`` (bilinear, align_corners=False, coordinate ``2u / W - 1``)
from the finest ``num_levels`` FPN levels: ``T = num_levels * len(heights)`` tokens, each with a learned
(level, height) embedding plus an encoding of its normalised pixel and log depth. A small multi-head attention
with the cell's BEV feature as the query attends over the visible tokens of the pair. The result is max-pooled
over the views that see the cell (as the authors take the maximum over overlapping cameras) and projected to the
BEV channels: ``delta (B, C, H, W)``, **exactly zero** at every cell no valid view sees (cells not occupied, not
selected, or outside every valid image), so the LiDAR path is unchanged without cameras. The caller adds it:
``bev + delta``.

``per_view=True`` samples and attends view by view (peak memory of one view's pairs; the authors need this on a
24 GB GPU); the pooled result is the same up to float rounding.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from perception.grid import VoxelGrid
from perception.models.heads.box_coder import CenterBoxCoder
from perception.models.image.shapes import ImageFeatureShape
from perception.structures import CameraBatch

from .fusion_config import SemanticTransferConfig

__all__ = ["SemanticTransfer", "SemanticTransferConfig"]


class SemanticTransfer(nn.Module):
    """See the module docstring.

    Args:
        config: :class:`SemanticTransferConfig`.
        bev_channels: ``C`` of the BEV map.
        image_shape: the image features' shape (channels, strides).
        grid: the voxel grid.
        feature_stride: the BEV map's stride w.r.t. the grid (its ``(H, W)`` is ``grid.bev_size(stride)``).
    """

    def __init__(
        self,
        config: SemanticTransferConfig,
        *,
        bev_channels: int,
        image_shape: ImageFeatureShape,
        grid: VoxelGrid,
        feature_stride: int,
    ) -> None:
        super().__init__()
        levels = config.num_levels or image_shape.num_levels
        if levels > image_shape.num_levels:
            raise ValueError(
                f"semantic_transfer.num_levels ({levels}) exceeds the image features' {image_shape.num_levels} levels"
            )
        width = config.hidden_channels or bev_channels
        if width % config.num_heads:
            raise ValueError(
                f"semantic_transfer.num_heads ({config.num_heads}) must divide the width ({width})"
            )
        self.config, self.image_shape, self.num_levels = config, image_shape, levels
        self.num_heads, self.width = config.num_heads, width
        coder = CenterBoxCoder(grid, feature_stride)
        self.map_size = coder.feature_map_size
        xy = coder.to_metric(coder.cell_centers())
        self.register_buffer("cell_xy", xy, persistent=False)  # (H * W, 2) metres
        self.register_buffer("heights", torch.tensor(config.heights, dtype=torch.float32), persistent=False)
        tokens = levels * len(config.heights)
        self.query_proj = nn.Linear(bev_channels, width)
        self.key_proj = nn.Linear(image_shape.channels, width)
        self.value_proj = nn.Linear(image_shape.channels, width)
        self.token_embed = nn.Parameter(torch.randn(tokens, width) * 0.02)
        self.geometry = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, width))
        self.out = nn.Linear(width, bev_channels)

    # ---------------------------------------------------------------------------------------------------------
    def select_cells(
        self, occupied: torch.Tensor, priority: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The cells processed per sample: all occupied cells, or over ``max_cells`` the ``max_cells`` with the
        highest ``priority`` (e.g. the detached LiDAR heatmap's max class probability), by default the ones
        nearest to the LiDAR origin in BEV (ties: lower flat index first).

        Args:
            occupied: bool ``(B, H, W)``.
            priority: optional float ``(B, H, W)``.

        Returns:
            index: int64 ``(B, N)`` flat cell indices ``row * W + col``; mask: bool ``(B, N)`` real entries.
        """
        b = occupied.shape[0]
        flat = occupied.reshape(b, -1)
        if priority is None:
            key = -self.cell_xy.norm(dim=1).expand(b, -1)
        else:
            if tuple(priority.shape) != tuple(occupied.shape):
                raise ValueError(f"priority must be {tuple(occupied.shape)}, got {tuple(priority.shape)}")
            key = priority.detach().reshape(b, -1).float()
        key = torch.where(flat, key, torch.full_like(key, -math.inf))
        counts = flat.sum(dim=1).clamp(max=self.config.max_cells)
        n = int(counts.max()) if b else 0
        index = torch.argsort(key, dim=1, descending=True, stable=True)[:, :n]
        mask = torch.arange(n, device=flat.device)[None] < counts[:, None]
        return index, mask

    def _check(
        self, bev: torch.Tensor, occupied: torch.Tensor, feats: list[torch.Tensor], cams: CameraBatch
    ) -> None:
        b, v = cams.batch_size, cams.num_views
        h, w = self.map_size
        if bev.ndim != 4 or bev.shape[0] != b or tuple(bev.shape[2:]) != (h, w):
            raise ValueError(f"bev must be (B={b}, C, {h}, {w}), got {tuple(bev.shape)}")
        if tuple(occupied.shape) != (b, h, w) or occupied.dtype != torch.bool:
            raise ValueError(
                f"occupied must be bool (B={b}, {h}, {w}), got {occupied.dtype} {tuple(occupied.shape)}"
            )
        sizes = self.image_shape.level_sizes(cams.image_size)
        if len(feats) < self.num_levels:
            raise ValueError(f"feats must hold at least {self.num_levels} levels, got {len(feats)}")
        for lvl in range(self.num_levels):
            want = (b, v, self.image_shape.channels, *sizes[lvl])
            if tuple(feats[lvl].shape) != want:
                raise ValueError(f"feats[{lvl}] must be {want}, got {tuple(feats[lvl].shape)}")

    def _sample(
        self, level: torch.Tensor, b: torch.Tensor, v: torch.Tensor, grid: torch.Tensor
    ) -> torch.Tensor:
        """Bilinear samples of ``level`` ``(B, V, Ci, H_l, W_l)`` for pairs ``(b, v)`` ``(P,)`` at ``grid``
        ``(P, S, 2)`` grid_sample coordinates -> ``(P, S, Ci)``. Pairs must be grouped by image (sorted by b, v)."""
        num_views = level.shape[1]
        image = b * num_views + v
        uniq, inverse, counts = torch.unique_consecutive(image, return_inverse=True, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(image), device=image.device) - starts[inverse]
        padded = grid.new_zeros(len(uniq), int(counts.max()), grid.shape[1], 2)
        padded[inverse, slot] = grid
        images = level.flatten(0, 1)[uniq]  # (U, Ci, H_l, W_l)
        out = F.grid_sample(images, padded, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.permute(0, 2, 3, 1)[inverse, slot]  # (P, S, Ci)

    def _attend(
        self,
        query: torch.Tensor,
        feats: list[torch.Tensor],
        b: torch.Tensor,
        v: torch.Tensor,
        uv: torch.Tensor,
        depth: torch.Tensor,
        visible: torch.Tensor,
        image_size: tuple[int, int],
    ) -> torch.Tensor:
        """Attention of each pair's cell query ``(P, D)`` over its tokens: ``uv`` ``(P, Z, 2)``, ``depth`` and
        ``visible`` ``(P, Z)`` of its ``Z`` lifted points -> ``(P, D)``."""
        h, w = image_size
        p, z = depth.shape
        grid = torch.stack([2 * uv[..., 0] / w - 1, 2 * uv[..., 1] / h - 1], dim=-1)  # (P, Z, 2)
        sampled = torch.stack([self._sample(feats[lvl], b, v, grid) for lvl in range(self.num_levels)], dim=1)
        sampled = sampled.reshape(p, self.num_levels * z, -1)  # tokens in (level, height) order
        geo = torch.cat([grid, torch.log(depth.clamp(min=1e-3))[..., None]], dim=-1)
        pos = self.geometry(geo).repeat(1, self.num_levels, 1) + self.token_embed  # (P, T, D)
        mask = visible.repeat(1, self.num_levels)  # (P, T)
        heads, d = self.num_heads, self.width // self.num_heads
        k = (self.key_proj(sampled) + pos).reshape(p, -1, heads, d)
        val = (self.value_proj(sampled) + pos).reshape(p, -1, heads, d)
        q = query.reshape(p, heads, d)
        logits = torch.einsum("phd,pthd->pht", q, k) / math.sqrt(d)
        logits = logits.masked_fill(~mask[:, None, :], -math.inf)  # every pair has a visible token
        return torch.einsum("pht,pthd->phd", logits.softmax(dim=-1), val).reshape(p, self.width)

    def forward(
        self,
        bev: torch.Tensor,
        occupied: torch.Tensor,
        feats: list[torch.Tensor],
        cams: CameraBatch,
        *,
        per_view: bool = False,
        priority: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image features for the BEV map.

        Args:
            bev: float ``(B, C, H, W)`` BEV features (the head's shared features).
            occupied: bool ``(B, H, W)`` cells holding LiDAR points (voxels) of the current frame.
            feats: image features, level ``l`` ``(B, V, C_img, H / s_l, W / s_l)``.
            cams: the batch's cameras (invalid views are ignored).
            per_view: sample and attend view by view (less memory, same result).
            priority: optional ``(B, H, W)`` cell priority for the cap (:meth:`select_cells`).

        Returns:
            float ``(B, C, H, W)`` delta, exactly zero where no valid view sees the cell.
        """
        self._check(bev, occupied, feats, cams)
        bsz, c, h, w = bev.shape
        index, mask = self.select_cells(occupied, priority)
        n = index.shape[1]
        delta = bev.new_zeros(bsz, h * w, c)
        if n == 0:
            return delta.permute(0, 2, 1).reshape(bsz, c, h, w)
        z = len(self.config.heights)
        xy = self.cell_xy[index]  # (B, N, 2)
        xyz = torch.cat(
            [xy[:, :, None].expand(-1, -1, z, -1), self.heights.view(1, 1, z, 1).expand(bsz, n, z, 1)], dim=-1
        )
        uv, depth, visible = cams.project(xyz.reshape(bsz, n * z, 3))
        nv = cams.num_views
        uv, depth = uv.reshape(bsz, nv, n, z, 2), depth.reshape(bsz, nv, n, z)
        visible = visible.reshape(bsz, nv, n, z) & mask[:, None, :, None]
        pairs = visible.any(dim=-1)  # (B, V, N)
        query = self.query_proj(bev.flatten(2).transpose(1, 2).gather(1, index[..., None].expand(-1, -1, c)))
        if per_view:
            parts = []
            for view in range(nv):
                pb, pn = pairs[:, view].nonzero(as_tuple=True)
                pv = torch.full_like(pb, view)
                parts.append((pb, pv, pn))
            pb, pv, pn = (torch.cat(t) for t in zip(*parts, strict=True))
            outs = [
                self._attend(
                    query[b_, n_],
                    feats,
                    b_,
                    v_,
                    uv[b_, v_, n_],
                    depth[b_, v_, n_],
                    visible[b_, v_, n_],
                    cams.image_size,
                )
                for b_, v_, n_ in parts
                if len(b_)
            ]
            att = torch.cat(outs) if outs else query.new_zeros(0, self.width)
        else:
            pb, pv, pn = pairs.nonzero(as_tuple=True)  # sorted by (b, v, n): grouped by image
            att = (
                self._attend(
                    query[pb, pn],
                    feats,
                    pb,
                    pv,
                    uv[pb, pv, pn],
                    depth[pb, pv, pn],
                    visible[pb, pv, pn],
                    cams.image_size,
                )
                if len(pb)
                else query.new_zeros(0, self.width)
            )
        cell = pb * n + pn  # (P,) row in (B * N)
        pooled = att.new_full((bsz * n, self.width), -math.inf).scatter_reduce(
            0, cell[:, None].expand(-1, self.width), att, reduce="amax", include_self=False
        )
        seen = torch.zeros(bsz * n, dtype=torch.bool, device=bev.device)
        seen[cell] = True
        rows = seen.nonzero().squeeze(1)
        values = self.out(pooled[rows])
        delta = delta.index_put((rows // n, index.reshape(-1)[rows]), values)
        return delta.permute(0, 2, 1).reshape(bsz, c, h, w)
