"""View transformer: refine the lifted camera candidates in the LiDAR frame before fusion (SparseFusion sec. 3.3).

Per camera query (``B`` samples, ``Q`` queries, ``C`` channels):

1. camera-parameter encoding: the query's view parameters -- intrinsics normalised by the image size
   ``[fx / W, fy / H, cx / W, cy / H]``, the 3x3 part of ``cam_to_lidar`` (augmentation folded in) and its
   translation divided by the grid's half x/y extent -- go through an MLP whose sigmoid gates the query feature
   (the authors' ``CameraSE``), then ``Linear + LayerNorm`` (the authors' ``view_projection``);
2. one self-attention layer among the valid camera queries of a sample (post-norm, attention + FFN), with the
   learned BEV position encoding (:class:`~perception.models.heads.transfusion_layers.PositionEncoding`) of each
   query's lifted BEV position added to queries, keys and values; invalid queries are masked out as keys (a
   sample without valid queries attends unmasked, its outputs are finite and flagged invalid);
3. residual box targets: ``positions`` are the lifted centres in BEV cells (clamped to the map), and
   ``box_codes = coder.encode(lifted box, reference=positions) + delta`` with ``delta`` predicted per query
   (code order of :class:`~perception.models.heads.box_coder.CenterBoxCoder`), so an untrained delta decodes to the
   lifted box; class logits from their own branch.

The loss (:meth:`ViewTransformer.loss`) matches the valid queries of each sample to the ground truth visible in at
least one of its valid cameras (Hungarian, :func:`~perception.models.heads.transfusion_matching.hungarian_match`)
and takes a focal class loss over the valid queries and an L1 loss on the matched codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from perception.models.heads.box_coder import CenterBoxCoder
from perception.models.heads.config_common import default_code_weights
from perception.models.heads.transfusion_layers import PositionEncoding, PredictionBranch
from perception.models.heads.transfusion_matching import hungarian_match
from perception.models.losses import sigmoid_focal_loss, weighted_l1_loss
from perception.structures import Boxes3D, CameraBatch

from .camera_geometry import boxes_to_camera
from .fusion_config import ViewLossConfig, ViewTransformerConfig
from .lifting import CameraCandidates

__all__ = [
    "ViewLossConfig",
    "ViewOutput",
    "ViewTargets",
    "ViewTransformer",
    "ViewTransformerConfig",
    "visible_ground_truth",
]

CAMERA_PARAMS = 16
"""Camera parameters per query: 4 normalised intrinsics, 9 rotation entries, 3 translation entries."""


@dataclass
class ViewOutput:
    """The view transformer's output (``B`` samples, ``Q`` camera queries).

    Attributes:
        features: float ``(B, Q, C)`` refined query features.
        positions: float32 ``(B, Q, 2)`` ``[u, v]`` BEV cell coordinates of the lifted centres (no grad).
        box_codes: float ``(B, Q, 10|8)`` codes relative to ``positions``.
        cls_logits: float ``(B, Q, K)``.
        valid: bool ``(B, Q)`` (the candidates' validity).
    """

    features: torch.Tensor
    positions: torch.Tensor
    box_codes: torch.Tensor
    cls_logits: torch.Tensor
    valid: torch.Tensor


@dataclass
class ViewTargets:
    """Targets of the view-transform stage (``B`` samples, ``Q`` queries).

    Attributes:
        cls_targets: float32 ``(B, Q, K)`` one-hot class of the matched ground truth, zero if unmatched.
        box_targets: float32 ``(B, Q, D)`` matched ground-truth codes relative to the query positions.
        gt_index: int64 ``(B, Q)`` the matched ground-truth index of the sample, -1 if unmatched.
    """

    cls_targets: torch.Tensor
    box_targets: torch.Tensor
    gt_index: torch.Tensor

    @property
    def positive(self) -> torch.Tensor:
        """bool ``(B, Q)``: matched."""
        return self.gt_index >= 0


def visible_ground_truth(gt_boxes: Sequence[Boxes3D | torch.Tensor], cams: CameraBatch) -> list[torch.Tensor]:
    """Per sample, bool ``(G_b,)``: the box centre projects into at least one valid view
    (:func:`boxes_to_camera` ``.visible``)."""
    tensors = [g.tensor if isinstance(g, Boxes3D) else g for g in gt_boxes]
    visible = boxes_to_camera(tensors, cams).visible.any(dim=1)  # (B, G)
    return [visible[i, : len(t)] for i, t in enumerate(tensors)]


def camera_parameters(
    cams: CameraBatch, view: torch.Tensor, half_extent: tuple[float, float]
) -> torch.Tensor:
    """float32 ``(B, Q, 16)`` parameters of each query's view (module docstring, step 1)."""
    h, w = cams.image_size
    rows = torch.arange(view.shape[0], device=view.device)[:, None]
    k = cams.intrinsics[rows, view]  # (B, Q, 3, 3)
    t = cams.cam_to_lidar[rows, view]  # (B, Q, 4, 4)
    intr = torch.stack([k[..., 0, 0] / w, k[..., 1, 1] / h, k[..., 0, 2] / w, k[..., 1, 2] / h], dim=-1)
    scale = t.new_tensor([half_extent[0], half_extent[1], half_extent[0]])
    return torch.cat([intr, t[..., :3, :3].flatten(-2), t[..., :3, 3] / scale], dim=-1)


class ViewTransformer(nn.Module):
    """See the module docstring.

    Args:
        config: :class:`ViewTransformerConfig`.
        hidden: query feature size ``C`` (the camera branch's hidden size).
        num_classes: ``K``.
        coder: the BEV box coder shared with the LiDAR head (its grid and stride define the cells).
        with_velocity: codes carry ``vx, vy``.
    """

    def __init__(
        self,
        config: ViewTransformerConfig,
        *,
        hidden: int,
        num_classes: int,
        coder: CenterBoxCoder,
        with_velocity: bool,
    ) -> None:
        super().__init__()
        if hidden % config.num_heads:
            raise ValueError(f"view_transformer.num_heads ({config.num_heads}) must divide hidden ({hidden})")
        self.config, self.coder, self.with_velocity = config, coder, with_velocity
        self.num_classes, self.code_size = num_classes, coder.code_size(with_velocity)
        weights = config.loss.code_weights or default_code_weights(with_velocity)
        if len(weights) != self.code_size:
            raise ValueError(
                f"view_transformer.loss.code_weights needs {self.code_size} values, got {len(weights)}"
            )
        self.register_buffer("code_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        lo, hi = coder.grid.lo, coder.grid.hi
        self.half_extent = ((hi[0] - lo[0]) / 2, (hi[1] - lo[1]) / 2)
        self.camera_net = (
            nn.Sequential(
                nn.Linear(CAMERA_PARAMS, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
            )
            if config.camera_encoding
            else None
        )
        self.projection = nn.Sequential(nn.Linear(hidden, hidden), nn.LayerNorm(hidden))
        self.position = PositionEncoding(channels=hidden)
        self.attn = nn.MultiheadAttention(hidden, config.num_heads, dropout=config.dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, config.ffn_channels),
            nn.ReLU() if config.activation == "relu" else nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.ffn_channels, hidden),
        )
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.drop1, self.drop2 = nn.Dropout(config.dropout), nn.Dropout(config.dropout)
        self.box_branch = PredictionBranch(
            in_channels=hidden,
            hidden_channels=config.branch_channels,
            out_channels=self.code_size,
            num_layers=config.branch_layers,
        )
        self.cls_branch = PredictionBranch(
            in_channels=hidden,
            hidden_channels=config.branch_channels,
            out_channels=num_classes,
            num_layers=config.branch_layers,
            bias_init=-2.19,
        )

    def lifted_codes(self, candidates: CameraCandidates) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions ``(B, Q, 2)`` (lifted centres in BEV cells, clamped to the map) and the lifted boxes' codes
        ``(B, Q, D)`` relative to them (no grad)."""
        boxes = candidates.boxes.detach().float()
        b, q, _ = boxes.shape
        h, w = self.coder.feature_map_size
        uv = self.coder.to_cell_coords(boxes[..., :2])
        positions = torch.stack([uv[..., 0].clamp(0.0, float(w)), uv[..., 1].clamp(0.0, float(h))], dim=-1)
        flat = boxes.reshape(b * q, 9)
        flat = flat if self.with_velocity else flat[:, :7]
        codes = self.coder.encode(flat, reference=positions.reshape(b * q, 2)).codes.to(boxes.device)
        return positions, codes.reshape(b, q, self.code_size)

    def forward(
        self,
        query_features: torch.Tensor,
        candidates: CameraCandidates,
        query_view: torch.Tensor,
        cams: CameraBatch,
    ) -> ViewOutput:
        """Refine the camera candidates.

        Args:
            query_features: float ``(B, Q, C)`` the camera branch's query features.
            candidates: the lifted candidates (:func:`~perception.models.fusion.lifting.lift_camera_queries`).
            query_view: int64 ``(B, Q)`` each query's view.
            cams: the batch's cameras.

        Returns:
            :class:`ViewOutput`.
        """
        b, q, c = query_features.shape
        if tuple(candidates.boxes.shape) != (b, q, 9) or tuple(query_view.shape) != (b, q):
            raise ValueError(
                f"candidates.boxes must be (B, Q, 9) = {(b, q, 9)} and query_view (B, Q), got "
                f"{tuple(candidates.boxes.shape)} and {tuple(query_view.shape)}"
            )
        valid = candidates.valid
        view = query_view.clamp(0, cams.num_views - 1)
        x = query_features
        if self.camera_net is not None:
            params = camera_parameters(cams, view, self.half_extent).to(x.dtype)
            x = x * torch.sigmoid(self.camera_net(params))
        x = self.projection(x)
        positions, lifted = self.lifted_codes(candidates)
        pos = self.position(positions)
        ignore = ~valid
        ignore = ignore & ~ignore.all(
            dim=1, keepdim=True
        )  # no valid key at all: attend unmasked (finite output)
        y = x + pos
        attn = self.attn(y, y, y, key_padding_mask=ignore if q else None, need_weights=False)[0]
        x = self.norm1(x + self.drop1(attn))
        x = self.norm2(x + self.drop2(self.ffn(x)))
        box_codes = lifted + self.box_branch(x)
        return ViewOutput(
            features=x, positions=positions, box_codes=box_codes, cls_logits=self.cls_branch(x), valid=valid
        )

    def decode_boxes(self, out: ViewOutput) -> torch.Tensor:
        """float32 ``(B, Q, 9|7)`` LiDAR-frame boxes of the view output."""
        return self.coder.decode(out.box_codes.float(), out.positions)

    def targets(
        self,
        out: ViewOutput,
        gt_boxes: Sequence[Boxes3D],
        gt_labels: Sequence[torch.Tensor],
        gt_visible: Sequence[torch.Tensor],
    ) -> ViewTargets:
        """Hungarian matching of each sample's valid queries to its visible ground truth, and the targets.

        Args:
            out: :meth:`forward`'s output.
            gt_boxes: ``B`` boxes ``(G_b, 9)`` (7 columns without velocity).
            gt_labels: ``B`` int64 ``(G_b,)``.
            gt_visible: ``B`` bool ``(G_b,)``: visible in a valid camera (:func:`visible_ground_truth`); only these
                are matched.
        """
        b, q, _ = out.box_codes.shape
        if not (len(gt_boxes) == len(gt_labels) == len(gt_visible) == b):
            raise ValueError(
                f"need one gt_boxes / gt_labels / gt_visible entry per sample ({b}), got "
                f"{len(gt_boxes)}, {len(gt_labels)}, {len(gt_visible)}"
            )
        device = out.box_codes.device
        t = ViewTargets(
            cls_targets=torch.zeros(b, q, self.num_classes, device=device),
            box_targets=torch.zeros(b, q, self.code_size, device=device),
            gt_index=torch.full((b, q), -1, dtype=torch.int64, device=device),
        )
        pred_boxes = self.decode_boxes(out).detach()
        for i in range(b):
            gt = gt_boxes[i].tensor.to(device)
            gt = gt if self.with_velocity else gt[:, :7]
            seen = gt_visible[i].to(device).bool()
            if seen.shape != (len(gt),):
                raise ValueError(f"gt_visible[{i}] must be ({len(gt)},), got {tuple(seen.shape)}")
            gi_all = torch.nonzero(seen).squeeze(1)
            labels = gt_labels[i].to(device)
            qi = torch.nonzero(out.valid[i]).squeeze(1)
            a = hungarian_match(
                pred_boxes[i, qi],
                out.cls_logits[i, qi].detach(),
                gt[gi_all],
                labels[gi_all],
                self.coder.grid,
                self.config.loss.match,
            )
            if len(a) == 0:
                continue
            pi, gi = qi[a.pred_index], gi_all[a.gt_index]
            t.gt_index[i, pi] = gi
            t.cls_targets[i, pi, labels[gi]] = 1.0
            t.box_targets[i, pi] = self.coder.encode(gt[gi], reference=out.positions[i, pi]).codes
        return t

    def loss(
        self,
        out: ViewOutput,
        gt_boxes: Sequence[Boxes3D],
        gt_labels: Sequence[torch.Tensor],
        gt_visible: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """``loss_view_cls`` (focal over the valid queries, normalised by the number of matches) and
        ``loss_view_bbox`` (L1 on the matched codes with the code weights), loss weights applied.

        Args: as :meth:`targets`.
        """
        t = self.targets(out, gt_boxes, gt_labels, gt_visible)
        cfg = self.config.loss
        positive = t.positive
        num_pos = max(int(positive.sum()), 1)
        cls = sigmoid_focal_loss(
            out.cls_logits,
            t.cls_targets,
            cfg.focal_alpha,
            cfg.focal_gamma,
            reduction="mean",
            weight=out.valid[..., None].float(),
            avg_factor=num_pos,
        )
        weight = positive[..., None].float() * self.code_weights
        bbox = weighted_l1_loss(out.box_codes, t.box_targets, weight, reduction="mean", avg_factor=num_pos)
        return {"loss_view_cls": cls * cfg.cls_weight, "loss_view_bbox": bbox * cfg.bbox_weight}
