"""SparseFusion detector (Xie et al., "SparseFusion: Fusing Multi-Modal Sparse Representations for Multi-Sensor 3D
Object Detection", ICCV 2023): the LiDAR detector's stages plus a camera branch, fused as sparse candidates.

Forward, read top to bottom (:meth:`SparseFusionDetector.forward`):

1. LiDAR branch (the :class:`~perception.models.detector.VoxelDetector` stages, TransFusion-L head): voxelize ->
   VFE -> 3D backbone -> BEV -> 2D backbone -> the head's shared conv ``F`` ``(B, C, H, W)`` and its heatmap.
2. Camera input (``batch.camera_batch()``; skipped entirely when the batch has no images or no valid view):
   image encoder (ResNet + FPN) on the valid views -> geometric transfer (the current sweep's points as a sparse
   depth map, encoded and added to every FPN level) -> camera branch (per-view heatmaps, top-K queries, one
   decoder layer with multi-scale deformable attention, camera-frame boxes) -> lifting into the LiDAR frame -> view
   transformer (camera parameters encoded, self-attention, residual box targets).
3. Semantic transfer: occupied BEV cells gather image features from the views that see them; the result
   ``delta`` (zero where no valid view sees a cell) feeds a bias-free conv head whose output is added to the LiDAR
   heatmap logits. The fused heatmap picks the LiDAR queries; the (frozen) TransFusion decoder refines them.
4. Fusion stage (:mod:`.fusion_stage`): self-attention over the LiDAR and the valid camera candidates; residual
   class / box predictions; score = fused class probability x the query's heatmap score.

With no images, or with every view invalid, steps 2-3 contribute nothing and the model runs the LiDAR path plus
the fusion stage over the LiDAR candidates alone (same code, no separate model). ``mode: camera_only`` runs steps
2 alone and decodes the view transformer's candidates (the camera-only baseline; LiDAR is not read at all).

Training (:meth:`loss`), per stage as the authors: the camera branch (Hungarian per view), the view transformer
(Hungarian on objects visible in a valid camera), the fused heatmap (Gaussian focal), the fusion stage (Hungarian
on all objects); with ``freeze_lidar: false`` also the LiDAR head's own losses. With ``freeze_lidar: true`` (the
authors' second stage, from a LiDAR-only checkpoint given by ``tools/train.py --pretrained``) the LiDAR stages get
no gradient and stay in eval mode (BatchNorm statistics frozen).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from perception.shapes import Backbone3D, BEVStage, SparseStage
from perception.structures import Batch, Boxes3D, CameraBatch, Detections

from ..detector import VoxelDetector, Voxelization
from ..heads.centerpoint_targets import build_center_targets
from ..heads.transfusion import TransFusionHead, TransFusionOutput
from ..losses import gaussian_focal_loss, sigmoid_focal_loss, weighted_l1_loss
from ..stage_timer import StageTimer
from .fusion_config import SparseFusionConfig
from .fusion_stage import Candidates, FusionOutput, FusionStage
from .set_targets import build_set_targets

__all__ = ["SparseFusionDetector", "SparseFusionOutput", "DeltaHeatmap", "current_sweep"]


def current_sweep(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The keyframe sweep's points of ``batch`` (``time_lag == 0``; every point without a ``time_lag`` column):
    float32 xyz ``(N', 3)`` and their int64 sample index ``(N',)``. Older sweeps are motion-compensated for the
    ego only: a moving object's older returns lag behind where the keyframe's images show it."""
    points, index = batch.points, batch.batch_index
    if "time_lag" in batch.point_channels:
        keep = points[:, batch.point_channels.index("time_lag")] == 0
        points, index = points[keep], index[keep]
    return points[:, :3], index


class DeltaHeatmap(nn.Module):
    """Heatmap logits added by the semantic transfer: bias-free ``conv3x3 -> ReLU -> conv3x3`` on ``delta``, so a
    zero ``delta`` (no camera sees the cell's neighbourhood) adds exactly zero to the LiDAR heatmap."""

    def __init__(self, *, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.out = nn.Conv2d(channels, num_classes, 3, padding=1, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, K, H, W)``."""
        return self.out(F.relu(self.conv(delta)))


@dataclass
class SparseFusionOutput:
    """Raw outputs of :class:`SparseFusionDetector` for a batch.

    Attributes:
        lidar: the TransFusion head's output on the fused heatmap (None in ``camera_only`` mode).
        camera: the camera branch's output (None without valid views).
        view: the view transformer's output (None without valid views).
        fused: the fusion stage's output (None in ``camera_only`` mode).
        cameras: the batch's cameras (None without images).
    """

    lidar: TransFusionOutput | None
    camera: Any | None
    view: Any | None
    fused: FusionOutput | None
    cameras: CameraBatch | None


class SparseFusionDetector(VoxelDetector):
    """SparseFusion (see the module docstring). The LiDAR stages keep the names of :class:`VoxelDetector`
    (``vfe``, ``backbone_3d``, ``to_bev``, ``bev_backbone``, ``head``) so a LiDAR-only checkpoint loads into them
    with ``--pretrained``.

    Args:
        config: ``model.fusion`` settings.
        voxelization, vfe, backbone_3d, to_bev, bev_backbone, head: the LiDAR stages (head: TransFusion).
        image_encoder: images ``(B, V, 3, H, W)`` + valid ``(B, V)`` -> FPN levels ``(B, V, C, H_l, W_l)``.
        geometric_transfer: sparse depth -> added to every level, or None.
        camera_branch: camera detector.
        view_transformer: lifted candidates -> refined LiDAR-frame candidates.
        semantic_transfer: image features -> BEV ``delta``, or None.
        fusion: the fusion stage (None in ``camera_only`` mode).
    """

    def __init__(
        self,
        *,
        config: SparseFusionConfig,
        voxelization: Voxelization,
        vfe: SparseStage,
        backbone_3d: Backbone3D,
        to_bev: BEVStage,
        bev_backbone: BEVStage,
        head: TransFusionHead,
        image_encoder: nn.Module,
        geometric_transfer: nn.Module | None,
        camera_branch: nn.Module,
        view_transformer: nn.Module,
        semantic_transfer: nn.Module | None,
        fusion: FusionStage | None,
    ) -> None:
        if not isinstance(head, TransFusionHead):
            raise TypeError(f"SparseFusion needs a TransFusion head, got {type(head).__name__}")
        super().__init__(
            voxelization=voxelization,
            vfe=vfe,
            backbone_3d=backbone_3d,
            to_bev=to_bev,
            bev_backbone=bev_backbone,
            head=head,
        )
        self.config = config
        self.image_encoder = image_encoder
        self.image_strides: tuple[int, ...] = tuple(image_encoder.output_shape().strides)  # type: ignore[operator]
        self.geometric_transfer = geometric_transfer
        self.camera_branch = camera_branch
        self.view_transformer = view_transformer
        self.semantic_transfer = semantic_transfer
        self.delta_heatmap = (
            DeltaHeatmap(channels=head.config.hidden_channels, num_classes=head.num_classes)
            if semantic_transfer is not None
            else None
        )
        self.fusion = fusion
        self.camera_only = config.mode == "camera_only"
        if self.camera_only and fusion is not None:
            raise ValueError("mode camera_only has no fusion stage")
        if self.lidar_frozen:
            for p in self.lidar_parameters():
                p.requires_grad_(False)
        self.stage_timer: StageTimer | None = None
        """Set a :class:`~perception.models.stage_timer.StageTimer` to record the wall time of each stage."""

    def timed(self, name: str) -> AbstractContextManager[None]:
        """Context of one stage: timed when :attr:`stage_timer` is set."""
        return nullcontext() if self.stage_timer is None else self.stage_timer(name)

    # ---------------------------------------------------------------------------------------------------------
    @property
    def lidar_frozen(self) -> bool:
        return bool(self.config.freeze_lidar) and not self.camera_only

    def lidar_modules(self) -> list[nn.Module]:
        """The LiDAR branch's modules (what ``freeze_lidar`` freezes)."""
        return [self.vfe, self.backbone_3d, self.to_bev, self.bev_backbone, self.head]  # type: ignore[list-item]

    def frozen_state_keys(self) -> list[str]:
        """``state_dict`` keys of the frozen LiDAR branch (empty unless ``freeze_lidar``): ``tools/train.py``
        refuses a fresh run whose ``--pretrained`` file does not hold them all."""
        if not self.lidar_frozen:
            return []
        names = ("vfe", "backbone_3d", "to_bev", "bev_backbone", "head")
        return [k for k in self.state_dict() if k.split(".", 1)[0] in names]

    def lidar_parameters(self) -> Iterator[nn.Parameter]:
        for m in self.lidar_modules():
            yield from m.parameters()

    def train(self, mode: bool = True) -> SparseFusionDetector:
        """As ``nn.Module.train``, but a frozen LiDAR branch stays in eval mode (its BatchNorm statistics too)."""
        super().train(mode)
        if self.lidar_frozen:
            for m in self.lidar_modules():
                m.eval()
        return self

    # ---------------------------------------------------------------------------------------------------------
    def _occupancy(self, voxel_coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        """bool ``(B, H, W)``: BEV cells of the head's map that hold a non-empty voxel (``coords [b, z, y, x]``)."""
        coder = self.head.coder
        h, w = coder.feature_map_size
        stride = coder.feature_stride
        occ = torch.zeros(batch_size, h, w, dtype=torch.bool, device=voxel_coords.device)
        c = voxel_coords.long()
        occ[c[:, 0], (c[:, 2] // stride).clamp(max=h - 1), (c[:, 3] // stride).clamp(max=w - 1)] = True
        return occ

    def _camera_stage(self, batch: Batch, cams: CameraBatch) -> tuple[Any, Any, list[torch.Tensor]]:
        """Image encoder -> geometric transfer -> camera branch -> lifting -> view transformer."""
        from .lifting import lift_camera_queries

        with self.timed("image_backbone"):
            feats = self.image_encoder(cams.images, cams.valid)
        if self.geometric_transfer is not None:
            with self.timed("geometric_transfer"):
                xyz, index = current_sweep(batch)
                depth = self.geometric_transfer.depth_map(xyz, index, cams)
                feats = self.geometric_transfer(feats, depth, cams.valid)
        with self.timed("camera_branch"):
            cam_out = self.camera_branch(feats, cams, per_view=self.config.per_view)
            candidates = lift_camera_queries(cam_out, cams, self.image_strides)
            view_out = self.view_transformer(cam_out.query_features, candidates, cam_out.query_view, cams)
        return cam_out, view_out, feats

    def forward(self, batch: Batch) -> SparseFusionOutput:  # type: ignore[override]
        """Raw outputs of every stage (see the module docstring)."""
        cams = batch.camera_batch()
        use_cams = cams is not None and bool(cams.valid.any())
        cam_out = view_out = feats = None
        if use_cams:
            assert cams is not None
            cam_out, view_out, feats = self._camera_stage(batch, cams)
        if self.camera_only:
            if not use_cams:
                raise ValueError("a camera_only model needs images with at least one valid view")
            return SparseFusionOutput(None, cam_out, view_out, None, cams)

        with self.timed("voxelize_vfe"):
            sparse = self.voxel_features(batch)
        with self.timed("lidar_backbone"):
            bev = self.bev_backbone(self.to_bev(self.backbone_3d(sparse)))
            head = self.head
            shared = head.shared_conv(bev)
            dense = head.heatmap(shared)
        if use_cams and self.semantic_transfer is not None:
            assert cams is not None and feats is not None and self.delta_heatmap is not None
            with self.timed("semantic_transfer"):
                occupied = self._occupancy(sparse.coords, batch.batch_size)
                delta = self.semantic_transfer(shared, occupied, feats, cams, per_view=self.config.per_view)
                dense = dense + self.delta_heatmap(delta)
        with self.timed("lidar_head"):
            lidar_out = head.decode_queries(shared, dense)
        assert self.fusion is not None and lidar_out.query_features is not None
        with self.timed("fusion"):
            lidar_boxes = head.coder.decode(lidar_out.box_codes.detach().float(), lidar_out.query_positions)
            lidar_cands = Candidates(
                features=lidar_out.query_features,
                boxes=lidar_boxes,
                cls_logits=lidar_out.cls_logits,
                labels=lidar_out.query_labels,
                scores=lidar_out.query_scores,
                valid=torch.ones_like(lidar_out.query_labels, dtype=torch.bool),
            )
            camera_cands = self._view_candidates(cam_out, view_out) if use_cams else None
            fused = self.fusion(lidar_cands, camera_cands)
        return SparseFusionOutput(lidar_out, cam_out, view_out, fused, cams)

    def _view_candidates(self, cam_out: Any, view_out: Any) -> Candidates:
        boxes = self.head.coder.decode(view_out.box_codes.detach().float(), view_out.positions)
        valid = view_out.valid
        boxes = torch.where(valid[..., None], boxes, torch.zeros_like(boxes))
        return Candidates(
            features=view_out.features,
            boxes=boxes,
            cls_logits=view_out.cls_logits,
            labels=cam_out.query_labels,
            scores=torch.where(
                valid, cam_out.query_scores.float(), torch.zeros_like(cam_out.query_scores.float())
            ),
            valid=valid,
        )

    # ---------------------------------------------------------------------------------------------------------
    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Named float32 losses of every stage that trains (see the module docstring)."""
        out = self(batch)
        gt_boxes, gt_labels = batch.boxes, batch.labels
        losses: dict[str, torch.Tensor] = {}
        if out.camera is not None:
            from .view_transformer import visible_ground_truth

            assert out.cameras is not None
            tensors = [g.tensor for g in gt_boxes]
            losses.update(self.camera_branch.loss(out.camera, out.cameras, tensors, gt_labels))
            visible = visible_ground_truth(tensors, out.cameras)
            losses.update(self.view_transformer.loss(out.view, gt_boxes, gt_labels, visible))
        if self.camera_only:
            return losses
        assert out.lidar is not None and out.fused is not None
        if not self.lidar_frozen:
            losses.update(self.head.loss(out.lidar, gt_boxes, gt_labels))
        elif self.delta_heatmap is not None and out.camera is not None:
            losses["loss_fused_heatmap"] = self._heatmap_loss(out.lidar.dense_heatmap, gt_boxes, gt_labels)
        losses.update(self._fusion_loss(out.fused, gt_boxes, gt_labels))
        return losses

    def _heatmap_loss(
        self, dense: torch.Tensor, gt_boxes: Sequence[Boxes3D], gt_labels: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        head = self.head
        cfg = head.config.loss
        (heat,) = build_center_targets(
            head.coder,
            gt_boxes,
            gt_labels,
            [list(range(head.num_classes))],
            with_velocity=head.with_velocity,
            max_objects=max([len(g) for g in gt_boxes] + [1]),
            min_overlap=cfg.gaussian_overlap,
            min_radius=cfg.min_radius,
            device=dense.device,
        )
        return gaussian_focal_loss(dense, heat.heatmap) * cfg.heatmap_weight

    def _fusion_loss(
        self, fused: FusionOutput, gt_boxes: Sequence[Boxes3D], gt_labels: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        assert self.fusion is not None
        cfg = self.fusion.config
        head = self.head
        t = build_set_targets(
            head.coder,
            fused.box_codes,
            fused.cls_logits,
            fused.positions,
            fused.valid,
            gt_boxes,
            gt_labels,
            with_velocity=head.with_velocity,
            costs=cfg.match,
        )
        num_pos = max(t.num_positive, 1)
        lc = head.config.loss
        valid = fused.valid[..., None].float()
        cls = sigmoid_focal_loss(
            fused.cls_logits,
            t.cls_targets,
            lc.focal_alpha,
            lc.focal_gamma,
            weight=valid.expand_as(t.cls_targets),
            reduction="mean",
            avg_factor=num_pos,
        )
        weight = t.positive[..., None].float() * head.code_weights(fused.box_codes.device)
        bbox = weighted_l1_loss(fused.box_codes, t.box_targets, weight, reduction="mean", avg_factor=num_pos)
        return {"loss_fusion_cls": cls * cfg.cls_weight, "loss_fusion_bbox": bbox * cfg.bbox_weight}

    # ---------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Detections]:
        """Detections per sample: the fusion stage's (or, ``camera_only``, the view transformer's) candidates,
        decoded and filtered by the TransFusion head's decode settings (score threshold, centre range, NMS)."""
        out = self(batch)
        with self.timed("decode"):
            return self._decode(out)

    def _decode(self, out: SparseFusionOutput) -> list[Detections]:
        if self.camera_only:
            view, cam = out.view, out.camera
            cands = self._view_candidates(cam, view)
            as_head = TransFusionOutput(
                dense_heatmap=torch.zeros(0),
                query_index=torch.zeros_like(cands.labels),
                query_labels=cands.labels,
                query_scores=cands.scores,
                query_positions=view.positions,
                cls_logits=view.cls_logits,
                box_codes=view.box_codes,
            )
            return self.head.decode(as_head)
        fused = out.fused
        assert fused is not None and out.lidar is not None
        scores = torch.where(fused.valid, fused.scores, torch.zeros_like(fused.scores))
        as_head = TransFusionOutput(
            dense_heatmap=out.lidar.dense_heatmap,
            query_index=torch.zeros_like(fused.labels),
            query_labels=fused.labels,
            query_scores=scores,
            query_positions=fused.positions,
            cls_logits=fused.cls_logits,
            box_codes=fused.box_codes,
        )
        return self.head.decode(as_head)
