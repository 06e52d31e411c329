"""The fusion stage of SparseFusion: one self-attention layer over the LiDAR and the camera candidates together.

Both candidate sets arrive in the LiDAR frame: the LiDAR branch's ``P`` queries (TransFusion-L decoder output) and
the ``Q`` lifted camera queries (view transformer output). Each set is projected to the fusion width
(``Linear -> LayerNorm``, one projection per modality), a learned BEV position encoding of each candidate's
predicted centre is added, and one post-norm transformer layer (self-attention over all ``P + Q`` candidates,
FFN) mixes them; invalid camera candidates (missing views) are masked out of the attention as keys, so they
cannot change any other candidate, and they never produce a detection.

Prediction is *residual* on the stage before: each candidate's box code is the code of its own incoming box
(encoded at its predicted centre, so the centre offsets start at zero) plus the branch output, and its class
logits are the incoming logits plus the branch output. The branches' last layers start at zero, so an untrained
fusion stage reproduces its inputs; the authors predict afresh, but on a CPU budget the residual form trains in
a fraction of the steps and keeps LiDAR quality when every camera is missing.

Score of a candidate = sigmoid(fused logit of its query class) x its query's heatmap score (the LiDAR queries:
the fused BEV heatmap; the camera queries: the camera heatmap), as in SparseFusion / TransFusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from perception._validate import check_tensor

from ..heads.box_coder import CenterBoxCoder
from ..heads.transfusion_layers import PositionEncoding, PredictionBranch
from .fusion_config import FusionStageConfig

__all__ = ["Candidates", "FusionOutput", "FusionStage"]


@dataclass
class Candidates:
    """One set of box candidates entering the fusion stage (``B`` samples, ``N`` candidates).

    Attributes:
        features: float ``(B, N, C_in)``.
        boxes: float32 ``(B, N, 9|7)`` decoded boxes (LiDAR frame), detached: the residual base.
        cls_logits: float ``(B, N, K)`` class logits of the stage before (the residual base).
        labels: int64 ``(B, N)`` query class (the decoded label).
        scores: float32 ``(B, N)`` heatmap score of the query.
        valid: bool ``(B, N)``.
    """

    features: torch.Tensor
    boxes: torch.Tensor
    cls_logits: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor("Candidates.features", self.features, ndim=3)
        b, n = self.features.shape[:2]
        check_tensor("Candidates.boxes", self.boxes, shape=(b, n, None))
        check_tensor("Candidates.cls_logits", self.cls_logits, shape=(b, n, None))
        check_tensor("Candidates.labels", self.labels, shape=(b, n), dtype=torch.int64)
        check_tensor("Candidates.scores", self.scores, shape=(b, n))
        check_tensor("Candidates.valid", self.valid, shape=(b, n), dtype=torch.bool)


@dataclass
class FusionOutput:
    """The fused candidates (``N = P + Q``: LiDAR first, then camera).

    Attributes:
        cls_logits: float ``(B, N, K)``.
        box_codes: float ``(B, N, D)`` relative to ``positions``.
        positions: float32 ``(B, N, 2)`` reference positions (incoming predicted centres, feature-map cells).
        labels: int64 ``(B, N)``; scores: float32 ``(B, N)`` heatmap scores; valid: bool ``(B, N)``.
        num_lidar: ``P``.
    """

    cls_logits: torch.Tensor
    box_codes: torch.Tensor
    positions: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor
    num_lidar: int


class FusionStage(nn.Module):
    """See the module docstring.

    Args:
        config: the stage's settings.
        lidar_channels: ``C`` of the LiDAR queries; camera_channels: ``C`` of the camera queries.
        num_classes: ``K``.
        coder: the BEV box coder (positions and codes).
        with_velocity: codes with velocity.
    """

    def __init__(
        self,
        config: FusionStageConfig,
        *,
        lidar_channels: int,
        camera_channels: int,
        num_classes: int,
        coder: CenterBoxCoder,
        with_velocity: bool,
    ) -> None:
        super().__init__()
        c = config.hidden_channels
        if c % config.num_heads:
            raise ValueError(
                f"model.fusion.fusion.hidden_channels ({c}) must be divisible by num_heads ({config.num_heads})"
            )
        self.config, self.coder, self.with_velocity = config, coder, with_velocity
        self.num_classes = num_classes
        self.lidar_proj = nn.Sequential(nn.Linear(lidar_channels, c), nn.LayerNorm(c))
        self.camera_proj = nn.Sequential(nn.Linear(camera_channels, c), nn.LayerNorm(c))
        self.position = PositionEncoding(channels=c)
        self.attn = nn.MultiheadAttention(c, config.num_heads, dropout=config.dropout, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(c, config.ffn_channels),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.ffn_channels, c),
        )
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.drop1, self.drop2 = nn.Dropout(config.dropout), nn.Dropout(config.dropout)
        self.box_branch = PredictionBranch(
            in_channels=c, hidden_channels=config.branch_channels, out_channels=coder.code_size(with_velocity)
        )
        self.cls_branch = PredictionBranch(
            in_channels=c, hidden_channels=config.branch_channels, out_channels=num_classes
        )
        for branch in (self.box_branch, self.cls_branch):
            last = branch.layers[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, lidar: Candidates, camera: Candidates | None) -> FusionOutput:
        """Fuse the LiDAR candidates with the camera candidates (None: LiDAR only, e.g. no images at all)."""
        sets = [(lidar, self.lidar_proj)] + ([(camera, self.camera_proj)] if camera is not None else [])
        feats = torch.cat([proj(s.features) for s, proj in sets], dim=1)
        boxes = torch.cat([s.boxes.float() for s, _ in sets], dim=1).detach()
        base_logits = torch.cat([s.cls_logits for s, _ in sets], dim=1)
        valid = torch.cat([s.valid for s, _ in sets], dim=1)
        positions = self.coder.to_cell_coords(boxes[..., :2])
        base_codes = self.coder.encode(boxes.reshape(-1, boxes.shape[-1]), reference=positions.reshape(-1, 2))
        base = base_codes.codes.reshape(*boxes.shape[:2], -1).to(feats.dtype)
        pos = self.position(positions)
        x = feats + pos
        # A sample whose every candidate is invalid cannot happen (the LiDAR queries are always valid); the guard
        # keeps softmax rows finite anyway.
        pad = ~valid
        pad = pad & ~(pad.all(dim=1, keepdim=True))
        attended = self.attn(x, x, feats, key_padding_mask=pad, need_weights=False)[0]
        h = self.norm1(feats + self.drop1(attended))
        h = self.norm2(h + self.drop2(self.ffn(h)))
        return FusionOutput(
            cls_logits=base_logits + self.cls_branch(h),
            box_codes=base + self.box_branch(h),
            positions=positions,
            labels=torch.cat([s.labels for s, _ in sets], dim=1),
            scores=torch.cat([s.scores.float() for s, _ in sets], dim=1),
            valid=valid,
            num_lidar=lidar.features.shape[1],
        )
