"""TransFusion-L detection head (Bai et al., "TransFusion: Robust LiDAR-Camera Fusion for 3D Object Detection with
Transformers", CVPR 2022), LiDAR only, with DSVT's optional IoU branch and IoU score rectification.

Forward (:meth:`TransFusionHead.forward`):

1. a shared 3x3 conv maps the BEV map to ``hidden_channels``; a dense heatmap branch predicts ``K`` class logits
   per cell;
2. the ``num_proposals`` highest class-specific 3x3 local maxima of the (detached) heatmap become the queries
   (:func:`~perception.models.heads.transfusion_layers.select_queries`; classes in ``exempt_classes`` are not
   suppressed); each query starts from the BEV feature at its cell plus a class embedding (one-hot -> linear);
3. one transformer decoder layer (self-attention among queries, cross-attention to the whole flattened BEV map,
   FFN; learned position encodings of the cell positions);
4. FFN branches predict per query: class logits, centre offset from the query cell centre (cells), z (m), log
   size, sin/cos yaw, velocity (optional), IoU in ``[-1, 1]`` (optional).

Training (:meth:`TransFusionHead.loss`): Hungarian matching of queries to ground truth
(:mod:`~perception.models.heads.transfusion_matching`), sigmoid focal loss on the query classes (all queries,
background = all-zero target), L1 on the box codes of matched queries (code weights), Gaussian focal loss on the
dense heatmap (CenterPoint's Gaussian targets), and with the IoU branch an L1 loss between the predicted IoU and
``2 * IoU3D(predicted box, matched ground truth) - 1``.

Decoding (:meth:`TransFusionHead.decode`): score = sigmoid(class logit of the query's class) x heatmap peak value,
label = the query's class; with the IoU branch and ``iou_rectifier`` the score becomes
``score^(1 - a_c) * iou^a_c``; then the score threshold, the centre range filter and optional per-class rotated
NMS (see :class:`~perception.models.heads.transfusion_config.TransFusionDecodeConfig`; TransFusion uses none on
nuScenes).

Settings: :class:`~perception.models.heads.transfusion_config.TransFusionConfig` (the ``model.head.transfusion``
schema); the map size and cell size come from the data's :class:`~perception.grid.VoxelGrid` and the stride of the
input map (:class:`~perception.shapes.MapShape`).

Deliberate differences from the authors' code (OpenPCDet / DSVT ``transfusion_head.py``): border cells can be
heatmap peaks (they exclude a ``kernel_size // 2`` border); ``z`` is the box-centre height (DSVT converts to the
bottom); the score threshold applies to the rectified score; DSVT's released head restricts cross-attention to a
41 x 41-cell window around each query, this head attends to the whole map as TransFusion does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from perception._validate import check_tensor
from perception.grid import VoxelGrid
from perception.models.casting import float32_outputs
from perception.ops.nms import nms_bev
from perception.shapes import MapShape
from perception.structures import Boxes3D, Detections

from ..losses import gaussian_focal_loss, sigmoid_focal_loss, weighted_l1_loss
from .box_coder import CenterBoxCoder
from .transfusion_config import TransFusionConfig
from .transfusion_layers import HeatmapBranch, PredictionBranch, QueryDecoderLayer, select_queries
from .transfusion_matching import TransFusionTargets, build_transfusion_targets

__all__ = ["TransFusionHead", "TransFusionOutput"]


@dataclass
class TransFusionOutput:
    """Raw predictions of :class:`TransFusionHead` for a batch (``B`` samples, ``P`` queries, ``K`` classes).

    Attributes:
        dense_heatmap: float ``(B, K, H, W)`` dense class logits on the BEV map.
        query_index: int64 ``(B, P)`` flat cell index ``row * W + col`` of each query.
        query_labels: int64 ``(B, P)`` class whose heatmap peak seeded the query (the decoded label).
        query_scores: float32 ``(B, P)`` sigmoid heatmap value of that peak (no gradient).
        query_positions: float32 ``(B, P, 2)`` ``[u, v]`` query cell centre in feature-map cells (``col + 0.5``,
            ``row + 0.5``); the reference of ``box_codes``.
        cls_logits: float ``(B, P, K)`` refined class logits.
        box_codes: float ``(B, P, 8|10)`` box codes in ``box_coder.CODE_NAMES`` order relative to
            ``query_positions``: centre offset (cells), z (m), log sizes (log m), sin/cos yaw(, vx, vy m/s).
        iou: float ``(B, P)`` predicted 3D IoU with the matched object, in ``[-1, 1]`` (``2 * IoU - 1``), or None
            without the IoU branch.
        query_features: float ``(B, P, C)`` the decoder's output per query (what the branches read; SparseFusion
            fuses it with the camera candidates), or None.
    """

    dense_heatmap: torch.Tensor
    query_index: torch.Tensor
    query_labels: torch.Tensor
    query_scores: torch.Tensor
    query_positions: torch.Tensor
    cls_logits: torch.Tensor
    box_codes: torch.Tensor
    iou: torch.Tensor | None = None
    query_features: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.cls_logits.shape[0])

    @property
    def num_proposals(self) -> int:
        return int(self.cls_logits.shape[1])


class TransFusionHead(nn.Module):
    """TransFusion-L head (see the module docstring).

    Args:
        config: the head's settings (``model.head.transfusion``): queries, decoder, branches, loss, decode.
        class_names: the detector's class list (``data.class_names``): ``K = len(class_names)`` classes; the
            labels index it and the config's class names (``exempt_classes``, ``decode.nms_iou_thresholds``) are
            looked up in it.
        grid: the voxel grid of the data (range, voxel size, shape).
        input_shape: the BEV map the head reads: channels ``C_in``, size ``grid.bev_size(stride)``, a whole-number
            stride, equal to ``config.feature_stride`` when written.

    Raises:
        ValueError: the classes or the input map do not fit the config (the message names the key), or
            ``num_proposals > K * H * W``.
    """

    def __init__(
        self,
        config: TransFusionConfig,
        *,
        class_names: Sequence[str],
        grid: VoxelGrid,
        input_shape: MapShape,
    ) -> None:
        super().__init__()
        if not isinstance(config, TransFusionConfig):
            raise TypeError(f"config must be a TransFusionConfig, got {type(config).__name__}")
        stride = config.check_input(input_shape, grid)
        self.config = config
        self.class_names = tuple(class_names)
        self.exempt_classes = config.exempt_class_indices(self.class_names)
        """Class indices exempt from the local-maximum suppression."""
        self._input_shape = input_shape
        self.coder = CenterBoxCoder(grid, stride)
        self.num_classes = k = len(self.class_names)
        self.num_proposals = config.num_proposals
        self.with_velocity = config.with_velocity
        self.with_iou = config.with_iou
        self.code_size = self.coder.code_size(config.with_velocity)
        h, w = self.coder.feature_map_size
        if config.num_proposals > k * h * w:
            raise ValueError(
                f"model.head.transfusion.num_proposals ({config.num_proposals}) exceeds K * H * W = {k * h * w}"
            )

        c = config.hidden_channels
        self.in_channels = input_shape.channels
        self.shared_conv = nn.Conv2d(self.in_channels, c, 3, padding=1)
        self.heatmap = HeatmapBranch(channels=c, num_classes=k)
        self.class_embedding = nn.Linear(k, c)
        self.decoder = QueryDecoderLayer(
            d_model=c,
            num_heads=config.num_heads,
            ffn_channels=config.ffn_channels,
            dropout=config.dropout,
            activation=config.activation,
        )
        sizes = {"center": 2, "height": 1, "dim": 3, "rot": 2}
        if config.with_velocity:
            sizes["vel"] = 2
        if config.with_iou:
            sizes["iou"] = 1
        sizes["cls"] = k
        self.branches = nn.ModuleDict(
            {
                name: PredictionBranch(
                    in_channels=c,
                    hidden_channels=config.branch_channels,
                    out_channels=n,
                    num_layers=config.branch_layers,
                    bias_init=-2.19 if name == "cls" else 0.0,
                )
                for name, n in sizes.items()
            }
        )

    def input_shape(self) -> MapShape:
        """The BEV map the head reads: ``(B, C_in, H, W)`` with ``(H, W) = grid.bev_size(stride)``."""
        return self._input_shape

    # ---------------------------------------------------------------------------------------------------------
    def forward(self, bev: torch.Tensor) -> TransFusionOutput:
        """Predict.

        Args:
            bev: float ``(B, C_in, H, W)`` BEV feature map (rows y, columns x) of the configured stride. It is not
                checked for NaN / inf here (that would synchronise a GPU every step); non-finite values propagate
                to the outputs, and :meth:`loss` and :meth:`decode` then raise ``ValueError``.

        Returns:
            :class:`TransFusionOutput` with ``P = num_proposals`` queries per sample.
        """
        check_tensor("bev", bev, ndim=4)
        h, w = self.coder.feature_map_size
        if bev.shape[1] != self.in_channels or tuple(bev.shape[2:]) != (h, w):
            raise ValueError(
                f"bev must have shape (B, {self.in_channels}, {h}, {w}) for {self.coder}, "
                f"got {tuple(bev.shape)}"
            )
        feat = self.shared_conv(bev)
        return self.decode_queries(feat, self.heatmap(feat))

    def decode_queries(self, feat: torch.Tensor, dense: torch.Tensor) -> TransFusionOutput:
        """Steps 2-4 of the forward pass on given maps (SparseFusion picks the queries from a fused heatmap).

        Args:
            feat: float ``(B, C, H, W)`` the shared conv's output (the decoder's keys and the queries' features).
            dense: float ``(B, K, H, W)`` dense class logits whose peaks seed the queries (returned as
                ``dense_heatmap``).

        Returns:
            :class:`TransFusionOutput` with ``query_features`` set.
        """
        b = feat.shape[0]
        h, w = self.coder.feature_map_size
        check_tensor("feat", feat, shape=(b, self.config.hidden_channels, h, w))
        check_tensor("dense", dense, shape=(b, self.num_classes, h, w))
        prob = dense.detach().float().sigmoid()
        scores, labels, index = select_queries(
            prob,
            self.num_proposals,
            kernel_size=self.config.nms_kernel_size,
            exempt_classes=self.exempt_classes,
        )
        # (B, H*W, C) contiguous: a transposed view here gives the cross-attention a key projection on strided
        # rows, which under bf16 autocast on the CPU took a batched-matmul path with its weight copied per key
        # (a 180 x 180 map: 2.8 s, vs 0.01 s contiguous). A channels-last map (the 2D backbone's) is one already.
        keys = feat.flatten(2).transpose(1, 2).contiguous()
        query = keys.gather(1, index[..., None].expand(-1, -1, keys.shape[2]))
        one_hot = F.one_hot(labels, self.num_classes).to(query.dtype)
        query = query + self.class_embedding(one_hot)
        cells = self.coder.cell_centers(feat.device)  # (H*W, 2)
        query_xy = cells[index]  # (B, P, 2)
        query = self.decoder(query, keys, query_xy, cells[None].expand(b, -1, -1))
        out = {name: branch(query) for name, branch in self.branches.items()}
        parts = [out["center"], out["height"], out["dim"], out["rot"]]
        if self.with_velocity:
            parts.append(out["vel"])
        return TransFusionOutput(
            dense_heatmap=dense,
            query_index=index,
            query_labels=labels,
            query_scores=scores,
            query_positions=query_xy,
            cls_logits=out["cls"],
            box_codes=torch.cat(parts, dim=-1),
            iou=out["iou"][..., 0] if self.with_iou else None,
            query_features=query,
        )

    # ---------------------------------------------------------------------------------------------------------
    def code_weights(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """float32 ``(code_size,)`` L1 weights of the box code columns."""
        return torch.tensor(self.config.code_weight_values, dtype=torch.float32, device=device)

    def targets(
        self, output: TransFusionOutput, gt_boxes: Sequence[Boxes3D], gt_labels: Sequence[torch.Tensor]
    ) -> TransFusionTargets:
        """Match queries to ground truth and build every training target (see
        :func:`~perception.models.heads.transfusion_matching.build_transfusion_targets`)."""
        cfg = self.config.loss
        return build_transfusion_targets(
            self.coder,
            output.box_codes,
            output.cls_logits,
            output.query_positions,
            gt_boxes,
            gt_labels,
            num_classes=self.num_classes,
            with_velocity=self.with_velocity,
            costs=cfg.match,
            gaussian_overlap=cfg.gaussian_overlap,
            min_radius=cfg.min_radius,
        )

    def loss(
        self, output: TransFusionOutput, gt_boxes: Sequence[Boxes3D], gt_labels: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Training losses (float32 scalars, weights applied; the total loss is their sum).

        Args:
            output: this head's forward output.
            gt_boxes: ``B`` ground-truth boxes ``(G_b, 9)`` (``(G_b, 7)`` allowed without velocity).
            gt_labels: ``B`` int64 ``(G_b,)`` class indices in ``[0, K)``.

        Returns:
            ``loss_heatmap``, ``loss_cls``, ``loss_bbox`` and, with the IoU branch, ``loss_iou``.
        """
        if len(gt_boxes) != output.batch_size:
            raise ValueError(
                f"need {output.batch_size} gt_boxes entries (one per sample), got {len(gt_boxes)}"
            )
        t = self.targets(output, gt_boxes, gt_labels)
        cfg = self.config.loss
        num_pos = max(int(t.positive.sum()), 1)
        heatmap = gaussian_focal_loss(output.dense_heatmap, t.heatmap.to(output.dense_heatmap.device))
        cls = sigmoid_focal_loss(
            output.cls_logits,
            t.cls_targets,
            cfg.focal_alpha,
            cfg.focal_gamma,
            reduction="mean",
            avg_factor=num_pos,
        )
        weight = t.positive[..., None].float() * self.code_weights(output.box_codes.device)
        bbox = weighted_l1_loss(output.box_codes, t.box_targets, weight, reduction="mean", avg_factor=num_pos)
        losses = {
            "loss_heatmap": heatmap * cfg.heatmap_weight,
            "loss_cls": cls * cfg.cls_weight,
            "loss_bbox": bbox * cfg.bbox_weight,
        }
        if output.iou is not None:
            valid = t.positive & (t.ious > 0)
            iou = weighted_l1_loss(
                output.iou,
                2.0 * t.ious - 1.0,
                valid.float(),
                reduction="mean",
                avg_factor=max(int(valid.sum()), 1),
            )
            losses["loss_iou"] = iou * cfg.iou_weight
        return losses

    # ---------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, bev: torch.Tensor) -> list[Detections]:
        """``decode(self(bev))``, the outputs cast to float32 first (under bf16 autocast decoding runs in float32)."""
        return self.decode(float32_outputs(self(bev)))

    @torch.no_grad()
    def decode(self, output: TransFusionOutput) -> list[Detections]:
        """Detections per sample (see :class:`~.transfusion_config.TransFusionDecodeConfig`).

        Returns:
            ``B`` :class:`~perception.structures.Detections`: boxes float32 ``(N, 9)`` (``(N, 7)`` without
            velocity) in the LiDAR frame, scores float32 in ``[0, 1]`` by descending score, labels int64.

        Raises:
            ValueError: non-finite predictions (e.g. from a NaN in the BEV map).
        """
        dc = self.config.decode
        for name in ("cls_logits", "box_codes", "iou"):
            value = getattr(output, name)
            if value is not None and value.numel() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"output.{name} contains NaN or inf; cannot decode")
        prob = output.cls_logits.float().sigmoid()
        scores = prob.gather(2, output.query_labels[..., None])[..., 0] * output.query_scores.float()
        labels = output.query_labels
        boxes = self.coder.decode(output.box_codes.float(), output.query_positions)
        if dc.iou_rectifier is not None and output.iou is not None:
            a = torch.as_tensor(dc.iou_rectifier, dtype=torch.float32, device=scores.device).reshape(-1)
            a = a.expand(self.num_classes)[labels]
            iou = ((output.iou.float() + 1.0) * 0.5).clamp(0.0, 1.0)
            scores = scores.pow(1.0 - a) * iou.pow(a)
        keep = scores > dc.score_threshold
        if dc.post_center_range is not None:
            r = torch.as_tensor(dc.post_center_range, dtype=torch.float32, device=boxes.device)
            keep &= ((boxes[..., :3] >= r[:3]) & (boxes[..., :3] <= r[3:])).all(dim=-1)
        results = []
        for i in range(output.batch_size):
            idx = torch.nonzero(keep[i]).squeeze(1)
            idx = self._nms(boxes[i], scores[i], labels[i], idx)
            order = torch.sort(scores[i, idx], descending=True, stable=True).indices
            idx = idx[order]
            results.append(Detections(Boxes3D(boxes[i, idx].contiguous()), scores[i, idx], labels[i, idx]))
        return results

    def _nms(
        self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        thresholds = self.config.decode.nms_thresholds(self.class_names)
        if thresholds is None or idx.numel() == 0:
            return idx
        kept = []
        for c, thr in enumerate(thresholds):
            sel = idx[labels[idx] == c]
            if thr is None or sel.numel() == 0:
                kept.append(sel)
            else:
                kept.append(sel[nms_bev(boxes[sel, :7].contiguous(), scores[sel], thr)])
        return torch.cat(kept)
