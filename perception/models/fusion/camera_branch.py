"""Camera branch of SparseFusion: per-view 3D object candidates from multi-scale image features (sec. 3.2).

For ``B`` samples, ``V`` views, ``L`` feature levels, ``K`` classes and ``Q = num_proposals`` queries:

1. heatmaps: one shared conv head (:class:`~perception.models.heads.transfusion_layers.HeatmapBranch`) on every
   level of every *valid* view gives class logits ``(B, V, K, H_l, W_l)``; an invalid view's logits are
   ``INVALID_LOGIT``;
2. queries: class-wise local maxima (max-pool ``nms_kernel_size``) of the sigmoid heatmaps of all views and levels
   compete in one top-``Q`` per sample; an invalid view's cells rank below every valid one, and a query is valid
   only when its view is. A query starts as its cell's image feature (``Linear`` to ``C``) plus a class embedding
   of its label; its position is the cell centre ``(i + 0.5) * stride`` (pixels), encoded with its level;
3. one decoder layer per view (post-norm): self-attention among the queries of the same view, multi-scale
   deformable attention (:class:`~.deform_attn.MSDeformAttn`) into that view's feature levels around the query's
   pixel, FFN. Views are independent, so ``per_view=True`` (one view at a time, less memory) gives the same
   result as all views at once;
4. prediction MLPs: class logits, the projected-centre offset (level cells), log depth, camera-frame log size,
   heading ``(sin, cos)`` and velocity ``(v_x, v_z)`` (:mod:`.camera_geometry`; zero velocity when the detector
   has none).

Loss (:meth:`CameraBranch.loss`): Gaussian focal loss on the heatmaps of the valid views
(:mod:`.camera_targets`); per valid view, Hungarian matching of its valid queries to the objects visible in it
(TransFusion cost on the queries lifted to the LiDAR frame, :func:`~.lifting.lift_camera_queries` geometry), a
focal class loss over all valid queries and an L1 loss on the matched queries' camera-frame codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from perception.grid import VoxelGrid
from perception.models.heads.config_common import default_code_weights
from perception.models.heads.transfusion_layers import HeatmapBranch
from perception.models.heads.transfusion_matching import hungarian_match
from perception.models.losses import gaussian_focal_loss, sigmoid_focal_loss, weighted_l1_loss
from perception.structures import CameraBatch

from ..image.shapes import ImageFeatureShape
from .camera_config import CameraBranchConfig
from .camera_geometry import CameraBoxes, boxes_to_camera, camera_to_boxes
from .camera_targets import camera_heatmap_targets, decode_codes, encode_codes, pad_labels, projected_extent
from .deform_attn import MSDeformAttn

__all__ = ["INVALID_LOGIT", "CameraBranch", "CameraOutput"]

INVALID_LOGIT = -1e4
"""Heatmap logit of every cell of an invalid view."""

_LOG_DIMS_LIMIT = 5.0
"""Predicted log sizes are clamped to ``[-5, 5]`` (sizes in ``[7 mm, 148 m]``) so lifted boxes stay finite."""


@dataclass
class CameraOutput:
    """The camera branch's output (``B`` samples, ``V`` views, ``Q`` queries, ``K`` classes, ``C`` width).

    Attributes:
        heatmaps: ``L`` float ``(B, V, K, H_l, W_l)`` class logits.
        query_view / query_level / query_labels: int64 ``(B, Q)`` view, feature level and class of each query.
        query_pixel: float32 ``(B, Q, 2)`` ``[u, v]`` input-image pixel of the query's cell centre.
        query_scores: float ``(B, Q)`` heatmap probability of the query's cell and class.
        query_valid: bool ``(B, Q)`` the query's view is valid.
        query_features: float ``(B, Q, C)`` decoder output.
        cls_logits: float ``(B, Q, K)``.
        center_offset: float ``(B, Q, 2)`` projected centre minus ``query_pixel``, in level-stride pixels.
        log_depth: float ``(B, Q)`` log of the centre's camera-frame depth (m), at most ``log(max_depth)``.
        log_dims: float ``(B, Q, 3)`` camera-metric log sizes.
        rot: float ``(B, Q, 2)`` camera-frame heading ``(sin, cos)`` (not normalised).
        velocity: float ``(B, Q, 2)`` camera-frame ``(v_x, v_z)``.
    """

    heatmaps: list[torch.Tensor]
    query_view: torch.Tensor
    query_level: torch.Tensor
    query_labels: torch.Tensor
    query_pixel: torch.Tensor
    query_scores: torch.Tensor
    query_valid: torch.Tensor
    query_features: torch.Tensor
    cls_logits: torch.Tensor
    center_offset: torch.Tensor
    log_depth: torch.Tensor
    log_dims: torch.Tensor
    rot: torch.Tensor
    velocity: torch.Tensor

    @property
    def depth(self) -> torch.Tensor:
        """float ``(B, Q)`` camera-frame depth (m), positive."""
        return self.log_depth.exp()

    def codes(self, with_velocity: bool) -> torch.Tensor:
        """float ``(B, Q, 10 | 8)`` box code in :data:`~.camera_targets.CODE_NAMES` order
        (:func:`~.camera_targets.decode_codes` turns it into a :class:`CameraBoxes`)."""
        parts = [self.center_offset, self.log_depth[..., None], self.log_dims, self.rot]
        if with_velocity:
            parts.append(self.velocity)
        return torch.cat(parts, dim=-1)


class _Mlp(nn.Module):
    """``Linear -> ReLU -> Linear`` per query (no normalisation: padding and invalid queries must not leak)."""

    def __init__(self, cin: int, hidden: int, cout: int, bias_init: float = 0.0) -> None:
        super().__init__()
        self.hidden = nn.Linear(cin, hidden)
        self.out = nn.Linear(hidden, cout)
        nn.init.constant_(self.out.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(x)))


class CameraDecoderLayer(nn.Module):
    """Self-attention among one view's queries, deformable attention into its feature levels, FFN (post-norm)."""

    def __init__(self, config: CameraBranchConfig, *, value_channels: int, num_levels: int) -> None:
        super().__init__()
        c = config.hidden_channels
        self.self_attn = nn.MultiheadAttention(c, config.num_heads, dropout=config.dropout, batch_first=True)
        self.cross_attn = MSDeformAttn(
            d_model=c,
            value_channels=value_channels,
            num_heads=config.num_heads,
            num_levels=num_levels,
            num_points=config.num_points,
        )
        self.ffn = nn.Sequential(
            nn.Linear(c, config.ffn_channels), nn.ReLU(), nn.Linear(config.ffn_channels, c)
        )
        self.norms = nn.ModuleList([nn.LayerNorm(c) for _ in range(3)])
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        query: torch.Tensor,
        pos: torch.Tensor,
        reference: torch.Tensor,
        values: Sequence[torch.Tensor],
        present: torch.Tensor,
    ) -> torch.Tensor:
        """``query``, ``pos`` ``(N, M, C)``; ``reference`` ``(N, M, 2)`` normalised ``(x, y)``; ``values`` ``L``
        maps ``(N, C_v, H_l, W_l)``; ``present`` bool ``(N, M)`` (False: padding, masked as key) -> ``(N, M, C)``."""
        x = query + pos
        att, _ = self.self_attn(x, x, x, key_padding_mask=~present, need_weights=False)
        q = self.norms[0](query + self.dropout(att))
        q = self.norms[1](q + self.dropout(self.cross_attn(q + pos, reference, values)))
        return self.norms[2](q + self.dropout(self.ffn(q)))


class CameraBranch(nn.Module):
    """Camera detector of SparseFusion (module docstring).

    Args:
        config: ``model.fusion.camera``.
        class_names: the detector's ``K`` classes.
        image_shape: the image encoder's feature levels.
        grid: the LiDAR grid (its x/y extent normalises the matching's centre cost).
        with_velocity: whether velocities are predicted.
    """

    def __init__(
        self,
        config: CameraBranchConfig,
        *,
        class_names: Sequence[str],
        image_shape: ImageFeatureShape,
        grid: VoxelGrid,
        with_velocity: bool,
    ) -> None:
        super().__init__()
        self.config = config
        self.class_names = tuple(class_names)
        self.num_classes = len(self.class_names)
        self.image_shape = image_shape
        self.grid = grid
        self.with_velocity = with_velocity
        code_size = 10 if with_velocity else 8
        weights = config.loss.code_weights or default_code_weights(with_velocity)
        if len(weights) != code_size:
            raise ValueError(
                f"model.fusion.camera.loss.code_weights needs {code_size} entries, got {len(weights)}"
            )
        self.register_buffer("code_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        c, cin, lv = config.hidden_channels, image_shape.channels, image_shape.num_levels
        self.heatmap_head = HeatmapBranch(channels=cin, num_classes=self.num_classes)
        self.input_proj = nn.Linear(cin, c)
        self.class_encoding = nn.Embedding(self.num_classes, c)
        self.pos_encoding = _Mlp(2 + lv, c, c)
        self.decoder = CameraDecoderLayer(config, value_channels=cin, num_levels=lv)
        b = config.branch_channels
        self.cls_branch = _Mlp(c, b, self.num_classes, bias_init=-2.19)
        self.center_branch = _Mlp(c, b, 2)
        self.depth_branch = _Mlp(c, b, 1, bias_init=math.log(20.0))
        self.dims_branch = _Mlp(c, b, 3)
        self.rot_branch = _Mlp(c, b, 2)
        self.vel_branch = _Mlp(c, b, 2) if with_velocity else None

    # ---------------------------------------------------------------------------------------------------------
    def _check_features(self, feats: Sequence[torch.Tensor], cams: CameraBatch) -> list[tuple[int, int]]:
        sizes = list(self.image_shape.level_sizes(cams.image_size))
        if len(feats) != len(sizes):
            raise ValueError(f"expected {len(sizes)} feature levels, got {len(feats)}")
        b, v = cams.batch_size, cams.num_views
        for i, (f, (h, w)) in enumerate(zip(feats, sizes, strict=True)):
            want = (b, v, self.image_shape.channels, h, w)
            if tuple(f.shape) != want:
                raise ValueError(f"image feature level {i} must be {want}, got {tuple(f.shape)}")
        return sizes

    def _heatmaps(self, feats: Sequence[torch.Tensor], valid: torch.Tensor) -> list[torch.Tensor]:
        """Logits of the valid views (the head never sees an invalid view, not even in its BatchNorm)."""
        out = []
        for f in feats:
            b, v, _, h, w = f.shape
            logits = f.new_full((b, v, self.num_classes, h, w), INVALID_LOGIT)
            if bool(valid.any()):
                logits[valid] = self.heatmap_head(f[valid]).to(logits.dtype)
            out.append(logits)
        return out

    def _select(
        self, heatmaps: Sequence[torch.Tensor], valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-``Q`` peaks over views and levels -> scores, view, level, label, row, col (each ``(B, Q)``)."""
        k, pad = self.num_classes, self.config.nms_kernel_size // 2
        flat, shapes = [], []
        for hm in heatmaps:
            b, v, _, h, w = hm.shape
            prob = hm.detach().float().sigmoid().reshape(b * v, k, h, w)
            peak = F.max_pool2d(prob, self.config.nms_kernel_size, stride=1, padding=pad)
            prob = torch.where(prob == peak, prob, torch.zeros_like(prob)).reshape(b, v, k, h, w)
            prob = torch.where(valid[:, :, None, None, None], prob, torch.full_like(prob, -1.0))
            flat.append(prob.reshape(b, -1))
            shapes.append((v, h, w))
        scores_all = torch.cat(flat, dim=1)
        q = self.config.num_proposals
        if q > scores_all.shape[1]:
            raise ValueError(
                f"model.fusion.camera.num_proposals ({q}) exceeds the heatmap cells of all views and levels "
                f"({scores_all.shape[1]})"
            )
        scores, index = scores_all.topk(q, dim=1, sorted=True)
        starts = torch.tensor([0] + [t.shape[1] for t in flat], device=index.device).cumsum(0)
        level = torch.searchsorted(starts[1:], index, right=True)
        local = index - starts[level]
        shp = torch.tensor(shapes, device=index.device)  # (L, 3) [V, H, W]
        h, w = shp[level, 1], shp[level, 2]
        view = local // (k * h * w)
        rem = local % (k * h * w)
        label = rem // (h * w)
        cell = rem % (h * w)
        return scores.clamp(min=0), view, level, label, cell // w, cell % w

    def _decode(
        self,
        feats: Sequence[torch.Tensor],
        query: torch.Tensor,
        pos: torch.Tensor,
        reference: torch.Tensor,
        view: torch.Tensor,
        per_view: bool,
    ) -> torch.Tensor:
        """Run the decoder layer per view: groups of ``(sample, view)``, all at once or one view at a time."""
        b, q, _ = query.shape
        v = feats[0].shape[1]
        out = torch.zeros_like(query)
        pairs = [(i, j) for i in range(b) for j in range(v)]
        batches = [[p for p in pairs if p[1] == j] for j in range(v)] if per_view else [pairs]
        for group in batches:
            members = [torch.nonzero(view[i] == j).squeeze(1) for i, j in group]
            keep = [(p, m) for p, m in zip(group, members, strict=True) if len(m)]
            if not keep:
                continue
            m = max(len(idx) for _, idx in keep)
            n = len(keep)
            rows = torch.zeros(n, m, dtype=torch.int64, device=query.device)
            cols = torch.zeros(n, m, dtype=torch.int64, device=query.device)
            present = torch.zeros(n, m, dtype=torch.bool, device=query.device)
            for g, ((i, _), idx) in enumerate(keep):
                rows[g, : len(idx)] = i
                cols[g, : len(idx)] = idx
                present[g, : len(idx)] = True
            bi = torch.tensor([i for (i, _), _ in keep], device=query.device)
            vi = torch.tensor([j for (_, j), _ in keep], device=query.device)
            values = [f[bi, vi] for f in feats]
            res = self.decoder(query[rows, cols], pos[rows, cols], reference[rows, cols], values, present)
            out[rows[present], cols[present]] = res[present]
        return out

    def forward(
        self, feats: Sequence[torch.Tensor], cams: CameraBatch, *, per_view: bool = False
    ) -> CameraOutput:
        """Camera candidates of every sample.

        Args:
            feats: ``L`` image features ``(B, V, C_img, H_l, W_l)`` (the image encoder's, after the geometric
                transfer).
            cams: the batch's cameras (``valid`` marks the views that exist).
            per_view: run the decoder one view at a time (identical results, less memory).

        Returns:
            :class:`CameraOutput`.
        """
        sizes = self._check_features(feats, cams)
        valid = cams.valid
        heatmaps = self._heatmaps(feats, valid)
        scores, view, level, label, row, col = self._select(heatmaps, valid)
        b, q = view.shape
        strides = torch.tensor(self.image_shape.strides, dtype=torch.float32, device=view.device)
        stride = strides[level]
        pixel = torch.stack([(col.float() + 0.5) * stride, (row.float() + 0.5) * stride], dim=-1)
        samples = torch.arange(b, device=view.device)[:, None].expand(b, q)
        cell_feat = torch.zeros(b, q, self.image_shape.channels, dtype=feats[0].dtype, device=view.device)
        for lvl, f in enumerate(feats):
            sel = level == lvl
            if bool(sel.any()):
                cell_feat[sel] = f[samples[sel], view[sel], :, row[sel], col[sel]]
        query = self.input_proj(cell_feat) + self.class_encoding(label)
        h, w = cams.image_size
        reference = pixel / pixel.new_tensor([w, h])
        level_code = F.one_hot(level, len(sizes)).to(reference.dtype)
        pos = self.pos_encoding(torch.cat([reference, level_code], dim=-1))
        feats_out = self._decode(feats, query, pos, reference, view, per_view)
        rows = torch.arange(b, device=view.device)[:, None]
        query_valid = valid[rows, view]
        log_depth = self.depth_branch(feats_out)[..., 0].clamp(max=math.log(self.config.max_depth))
        velocity = self.vel_branch(feats_out) if self.vel_branch is not None else feats_out.new_zeros(b, q, 2)
        return CameraOutput(
            heatmaps=heatmaps,
            query_view=view,
            query_level=level,
            query_labels=label,
            query_pixel=pixel,
            query_scores=scores,
            query_valid=query_valid,
            query_features=feats_out,
            cls_logits=self.cls_branch(feats_out),
            center_offset=self.center_branch(feats_out),
            log_depth=log_depth,
            log_dims=self.dims_branch(feats_out).clamp(-_LOG_DIMS_LIMIT, _LOG_DIMS_LIMIT),
            rot=self.rot_branch(feats_out),
            velocity=velocity,
        )

    # ---------------------------------------------------------------------------------------------------------
    def loss(
        self,
        out: CameraOutput,
        cams: CameraBatch,
        gt_boxes: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """``loss_cam_heatmap``, ``loss_cam_cls``, ``loss_cam_bbox`` (module docstring).

        Args:
            out: :meth:`forward`'s output for ``cams``.
            cams: the batch's cameras.
            gt_boxes: ``B`` float ``(G_b, 7|9)`` LiDAR-frame boxes.
            gt_labels: ``B`` int64 ``(G_b,)``.
        """
        cfg = self.config.loss
        b, q = out.query_view.shape
        if len(gt_boxes) != b or len(gt_labels) != b:
            raise ValueError(f"need one ground-truth entry per sample ({b})")
        device = out.cls_logits.device
        gt_boxes = [g.to(device).float() for g in gt_boxes]
        g = max((len(t) for t in gt_boxes), default=0)
        desc = boxes_to_camera(gt_boxes, cams)  # (B, V, G)
        labels = pad_labels(gt_labels, g, device)
        assert desc.visible is not None

        # heatmaps of the valid views
        extent = projected_extent(gt_boxes, cams)
        sizes = self.image_shape.level_sizes(cams.image_size)
        targets, count = camera_heatmap_targets(
            desc,
            extent,
            labels,
            num_classes=self.num_classes,
            strides=self.image_shape.strides,
            level_sizes=sizes,
            min_overlap=cfg.gaussian_overlap,
            min_radius=cfg.min_radius,
        )
        valid = cams.valid
        norm = float(max(count, 1))
        heat = out.heatmaps[0].new_zeros(())
        if bool(valid.any()):
            for pred, tgt in zip(out.heatmaps, targets, strict=True):
                heat = heat + gaussian_focal_loss(pred[valid].float(), tgt[valid], avg_factor=norm)

        # Hungarian matching per valid view on the lifted queries
        code_size = 10 if self.with_velocity else 8
        stride = torch.tensor(self.image_shape.strides, dtype=torch.float32, device=device)[out.query_level]
        with torch.no_grad():
            codes = out.codes(True).detach().float()
            pred = decode_codes(codes, out.query_pixel.float(), stride)
            lifted = camera_to_boxes(pred, out.query_view, cams)
            lifted = torch.nan_to_num(lifted, nan=0.0, posinf=1e4, neginf=-1e4)
            lifted[..., 3:6] = lifted[..., 3:6].clamp(min=0)
        cls_targets = torch.zeros_like(out.cls_logits, dtype=torch.float32)
        box_targets = out.cls_logits.new_zeros(b, q, code_size, dtype=torch.float32)
        positive = torch.zeros(b, q, dtype=torch.bool, device=device)
        for i in range(b):
            for j in range(cams.num_views):
                if not bool(valid[i, j]):
                    continue
                cand = torch.nonzero(out.query_valid[i] & (out.query_view[i] == j)).squeeze(1)
                objs = torch.nonzero(desc.visible[i, j]).squeeze(1)
                if len(cand) == 0 or len(objs) == 0:
                    continue
                gt = gt_boxes[i][objs]
                gt = gt[:, :7] if not self.with_velocity else gt
                lab = labels[i, objs]
                a = hungarian_match(
                    lifted[i, cand], out.cls_logits[i, cand].detach(), gt, lab, self.grid, cfg.match
                )
                if len(a) == 0:
                    continue
                qi, oi = cand[a.pred_index], objs[a.gt_index]
                positive[i, qi] = True
                cls_targets[i, qi, labels[i, oi]] = 1.0
                obj = CameraBoxes(
                    uv=desc.uv[i, j, oi],
                    depth=desc.depth[i, j, oi],
                    log_dims=desc.log_dims[i, j, oi],
                    rot=desc.rot[i, j, oi],
                    velocity=desc.velocity[i, j, oi],
                )
                box_targets[i, qi] = encode_codes(
                    obj, out.query_pixel[i, qi], stride[i, qi], self.with_velocity
                )
        num_pos = float(max(int(positive.sum()), 1))
        weight = out.query_valid[..., None].float().expand_as(cls_targets)
        cls = sigmoid_focal_loss(
            out.cls_logits,
            cls_targets,
            cfg.focal_alpha,
            cfg.focal_gamma,
            weight=weight,
            reduction="mean",
            avg_factor=num_pos,
        )
        box_weight = positive[..., None].float() * self.code_weights
        bbox = weighted_l1_loss(
            out.codes(self.with_velocity).float(),
            box_targets,
            box_weight,
            reduction="mean",
            avg_factor=num_pos,
        )
        return {
            "loss_cam_heatmap": heat * cfg.heatmap_weight,
            "loss_cam_cls": cls * cfg.cls_weight,
            "loss_cam_bbox": bbox * cfg.bbox_weight,
        }
