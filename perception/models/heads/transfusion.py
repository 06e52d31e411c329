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
NMS (see :class:`TransFusionDecodeConfig`; TransFusion uses none on nuScenes).

Deliberate differences from the authors' code (OpenPCDet / DSVT ``transfusion_head.py``): border cells can be
heatmap peaks (they exclude a ``kernel_size // 2`` border); ``z`` is the box-centre height (DSVT converts to the
bottom); the score threshold applies to the rectified score; DSVT's released head restricts cross-attention to a
41 x 41-cell window around each query, this head attends to the whole map as TransFusion does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from perception._validate import check_tensor
from perception.ops.nms import nms_bev
from perception.structures import Boxes3D, Detections

from ..losses import gaussian_focal_loss, sigmoid_focal_loss, weighted_l1_loss
from .box_coder import CenterBoxCoder
from .transfusion_layers import HeatmapBranch, PredictionBranch, QueryDecoderLayer, select_queries
from .transfusion_matching import MatchCosts, TransFusionTargets, build_transfusion_targets

__all__ = ["TransFusionHead", "TransFusionOutput", "TransFusionLossConfig", "TransFusionDecodeConfig"]


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
    """

    dense_heatmap: torch.Tensor
    query_index: torch.Tensor
    query_labels: torch.Tensor
    query_scores: torch.Tensor
    query_positions: torch.Tensor
    cls_logits: torch.Tensor
    box_codes: torch.Tensor
    iou: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.cls_logits.shape[0])

    @property
    def num_proposals(self) -> int:
        return int(self.cls_logits.shape[1])


@dataclass(frozen=True)
class TransFusionLossConfig:
    """Loss weights and target parameters (defaults: TransFusion-L / DSVT nuScenes configs).

    Attributes:
        cls_weight: weight of the query focal classification loss.
        bbox_weight: weight of the box L1 loss.
        heatmap_weight: weight of the dense Gaussian focal heatmap loss.
        iou_weight: weight of the IoU-branch L1 loss (used only with the IoU branch).
        code_weights: per box-code column weights (8 or 10 values); None -> 1 for all, 0.2 for velocity.
        focal_alpha: alpha of the query focal loss.
        focal_gamma: gamma of the query focal loss.
        gaussian_overlap: ``min_overlap`` of the heatmap Gaussian radius.
        min_radius: minimum Gaussian radius in cells.
        match: costs of the Hungarian matching.
    """

    cls_weight: float = 1.0
    bbox_weight: float = 0.25
    heatmap_weight: float = 1.0
    iou_weight: float = 0.5
    code_weights: tuple[float, ...] | None = None
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    gaussian_overlap: float = 0.1
    min_radius: int = 2
    match: MatchCosts = field(default_factory=MatchCosts)


@dataclass(frozen=True)
class TransFusionDecodeConfig:
    """Post-processing of :meth:`TransFusionHead.decode`.

    Attributes:
        score_threshold: keep detections with final score ``> score_threshold`` (applied after IoU
            rectification, to the score that is returned).
        post_center_range: ``(x0, y0, z0, x1, y1, z1)`` metres: keep box centres with ``min <= c <= max``; None
            keeps all (DSVT nuScenes: ``(-61.2, -61.2, -10, 61.2, 61.2, 10)``).
        iou_rectifier: ``a`` in ``score^(1 - a) * iou^a``: one value for all classes or one per class; None
            disables the rectification (it needs the IoU branch; DSVT nuScenes uses 0.5).
        nms_iou_thresholds: per class, None (no NMS) or a rotated BEV IoU threshold for NMS within that class;
            None for the whole field: no NMS (TransFusion on nuScenes). DSVT's nuScenes head runs NMS at 0.175 for
            pedestrian and traffic cone only.
    """

    score_threshold: float = 0.0
    post_center_range: tuple[float, float, float, float, float, float] | None = None
    iou_rectifier: float | tuple[float, ...] | None = None
    nms_iou_thresholds: tuple[float | None, ...] | None = None


class TransFusionHead(nn.Module):
    """TransFusion-L head (see the module docstring).

    Args:
        in_channels: channels ``C_in`` of the input BEV map.
        num_classes: ``K``.
        point_cloud_range: ``(x0, y0, z0, x1, y1, z1)`` metres of the voxel grid.
        voxel_size: ``(vx, vy, vz)`` metres.
        feature_stride: stride of the BEV map w.r.t. the voxel grid; the map must be
            ``(ceil(ny / stride), ceil(nx / stride))``.
        num_proposals: queries per sample ``P`` (200 in TransFusion and DSVT).
        hidden_channels: query / feature size of the decoder (128).
        num_heads: attention heads (8).
        ffn_channels: decoder FFN hidden size (256).
        dropout: decoder dropout (TransFusion 0.1, DSVT 0).
        activation: decoder FFN activation, ``"relu"`` or ``"gelu"``.
        nms_kernel_size: odd size of the local-maximum window for query selection (3).
        exempt_classes: class indices exempt from the local-maximum suppression (nuScenes order: pedestrian 8,
            traffic cone 9).
        with_velocity: predict ``(vx, vy)`` (needs 9-column ground truth); decoded boxes are ``(N, 9)``, else 7.
        with_iou: add the IoU branch (DSVT).
        branch_channels: hidden size of the prediction branches (64).
        branch_layers: linear layers per prediction branch (2).
        loss_config: loss weights and target parameters.
        decode_config: post-processing parameters.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        point_cloud_range: Sequence[float],
        voxel_size: Sequence[float],
        feature_stride: int,
        num_proposals: int = 200,
        hidden_channels: int = 128,
        num_heads: int = 8,
        ffn_channels: int = 256,
        dropout: float = 0.1,
        activation: str = "relu",
        nms_kernel_size: int = 3,
        exempt_classes: Sequence[int] = (),
        with_velocity: bool = True,
        with_iou: bool = False,
        branch_channels: int = 64,
        branch_layers: int = 2,
        loss_config: TransFusionLossConfig | None = None,
        decode_config: TransFusionDecodeConfig | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or in_channels < 1 or num_proposals < 1:
            raise ValueError(
                f"need num_classes, in_channels and num_proposals >= 1, got {num_classes}, {in_channels}, "
                f"{num_proposals}"
            )
        self.coder = CenterBoxCoder(
            point_cloud_range=point_cloud_range, voxel_size=voxel_size, feature_stride=feature_stride
        )
        self.num_classes = num_classes
        self.num_proposals = num_proposals
        self.nms_kernel_size = nms_kernel_size
        self.exempt_classes = tuple(int(c) for c in exempt_classes)
        if any(not 0 <= c < num_classes for c in self.exempt_classes):
            raise ValueError(f"exempt_classes must lie in [0, {num_classes}), got {list(exempt_classes)}")
        if nms_kernel_size < 1 or nms_kernel_size % 2 == 0:
            raise ValueError(f"nms_kernel_size must be an odd int >= 1, got {nms_kernel_size}")
        self.with_velocity = with_velocity
        self.with_iou = with_iou
        self.loss_config = loss_config or TransFusionLossConfig()
        self.decode_config = decode_config or TransFusionDecodeConfig()
        self.code_size = self.coder.code_size(with_velocity)
        self._check_configs()
        h, w = self.coder.feature_map_size
        if num_proposals > num_classes * h * w:
            raise ValueError(f"num_proposals ({num_proposals}) exceeds K * H * W = {num_classes * h * w}")

        c = hidden_channels
        self.shared_conv = nn.Conv2d(in_channels, c, 3, padding=1)
        self.heatmap = HeatmapBranch(channels=c, num_classes=num_classes)
        self.class_embedding = nn.Linear(num_classes, c)
        self.decoder = QueryDecoderLayer(
            d_model=c, num_heads=num_heads, ffn_channels=ffn_channels, dropout=dropout, activation=activation
        )
        sizes = {"center": 2, "height": 1, "dim": 3, "rot": 2}
        if with_velocity:
            sizes["vel"] = 2
        if with_iou:
            sizes["iou"] = 1
        sizes["cls"] = num_classes
        self.branches = nn.ModuleDict(
            {
                name: PredictionBranch(
                    in_channels=c,
                    hidden_channels=branch_channels,
                    out_channels=n,
                    num_layers=branch_layers,
                    bias_init=-2.19 if name == "cls" else 0.0,
                )
                for name, n in sizes.items()
            }
        )

    def _check_configs(self) -> None:
        k = self.num_classes
        cw = self.loss_config.code_weights
        if cw is not None and len(cw) != self.code_size:
            raise ValueError(f"loss_config.code_weights needs {self.code_size} values, got {len(cw)}")
        dc = self.decode_config
        if dc.post_center_range is not None and len(dc.post_center_range) != 6:
            raise ValueError(f"decode_config.post_center_range needs 6 values, got {dc.post_center_range}")
        if dc.iou_rectifier is not None:
            if not self.with_iou:
                raise ValueError("decode_config.iou_rectifier needs the IoU branch (with_iou=True)")
            a = (dc.iou_rectifier,) if isinstance(dc.iou_rectifier, int | float) else tuple(dc.iou_rectifier)
            if len(a) not in (1, k) or any(not 0.0 <= v <= 1.0 for v in a):
                raise ValueError(f"decode_config.iou_rectifier needs 1 or {k} values in [0, 1], got {a}")
        if dc.nms_iou_thresholds is not None:
            t = dc.nms_iou_thresholds
            if len(t) != k or any(v is not None and not 0.0 <= v <= 1.0 for v in t):
                raise ValueError(
                    f"decode_config.nms_iou_thresholds needs {k} entries (None or in [0, 1]), got {t}"
                )

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
        if bev.shape[1] != self.shared_conv.in_channels or tuple(bev.shape[2:]) != (h, w):
            raise ValueError(
                f"bev must have shape (B, {self.shared_conv.in_channels}, {h}, {w}) for {self.coder}, "
                f"got {tuple(bev.shape)}"
            )
        b = bev.shape[0]
        feat = self.shared_conv(bev)
        dense = self.heatmap(feat)
        prob = dense.detach().float().sigmoid()
        scores, labels, index = select_queries(
            prob, self.num_proposals, kernel_size=self.nms_kernel_size, exempt_classes=self.exempt_classes
        )
        keys = feat.flatten(2).transpose(1, 2)  # (B, H*W, C)
        query = keys.gather(1, index[..., None].expand(-1, -1, keys.shape[2]))
        one_hot = F.one_hot(labels, self.num_classes).to(query.dtype)
        query = query + self.class_embedding(one_hot)
        cells = self.coder.cell_centers(bev.device)  # (H*W, 2)
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
        )

    # ---------------------------------------------------------------------------------------------------------
    def code_weights(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """float32 ``(code_size,)`` L1 weights of the box code columns."""
        cw = self.loss_config.code_weights
        if cw is None:
            cw = (1.0,) * 8 + ((0.2, 0.2) if self.with_velocity else ())
        return torch.tensor(cw, dtype=torch.float32, device=device)

    def targets(
        self, output: TransFusionOutput, gt_boxes: Sequence[Boxes3D], gt_labels: Sequence[torch.Tensor]
    ) -> TransFusionTargets:
        """Match queries to ground truth and build every training target (see
        :func:`~perception.models.heads.transfusion_matching.build_transfusion_targets`)."""
        cfg = self.loss_config
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
        cfg = self.loss_config
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
    def decode(self, output: TransFusionOutput) -> list[Detections]:
        """Detections per sample (see :class:`TransFusionDecodeConfig`).

        Returns:
            ``B`` :class:`~perception.structures.Detections`: boxes float32 ``(N, 9)`` (``(N, 7)`` without
            velocity) in the LiDAR frame, scores float32 in ``[0, 1]`` by descending score, labels int64.

        Raises:
            ValueError: non-finite predictions (e.g. from a NaN in the BEV map) or an invalid ``decode_config``.
        """
        self._check_configs()
        dc = self.decode_config
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
        thresholds = self.decode_config.nms_iou_thresholds
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
