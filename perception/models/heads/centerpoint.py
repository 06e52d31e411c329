"""CenterPoint detection head (Yin et al., "Center-based 3D Object Detection and Tracking", CVPR 2021).

A shared 3x3 conv-BN-ReLU on the BEV map, then one sub-head per task (group of classes). Each sub-head has
separate branches, each ``num_head_convs - 1`` times conv3x3-BN-ReLU followed by a conv3x3 to the output channels:
``heatmap`` (one channel per class of the task, bias initialised to -2.19, i.e. prior probability 0.1),
``offset`` (2), ``height`` (1), ``log_dims`` (3), ``rot`` (2: sin, cos) and optionally ``velocity`` (2).

Training: Gaussian heatmap targets and per-object regression targets
(:mod:`perception.models.heads.centerpoint_targets`); loss per task = ``heatmap_weight *`` Gaussian focal loss +
``bbox_weight *`` L1 over the object slots weighted by ``code_weights`` and divided by the number of objects.
Inference: :mod:`perception.models.heads.centerpoint_decode`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from perception._validate import check_tensor
from perception.models.losses import gaussian_focal_loss, weighted_l1_loss
from perception.structures import Boxes3D, Detections

from .box_coder import CenterBoxCoder
from .centerpoint_decode import CenterPointDecodeConfig, CircleNMS, decode_task
from .centerpoint_targets import CenterPointTaskTargets, build_center_targets

__all__ = [
    "NUSCENES_CLASSES",
    "NUSCENES_TASKS",
    "CenterPointHead",
    "CenterPointOutput",
    "CenterPointTaskOutput",
    "SeparateHead",
]

NUSCENES_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
NUSCENES_TASKS: tuple[tuple[str, ...], ...] = (
    ("car",),
    ("truck", "construction_vehicle"),
    ("bus", "trailer"),
    ("barrier",),
    ("motorcycle", "bicycle"),
    ("pedestrian", "traffic_cone"),
)
"""CenterPoint's nuScenes class groups."""

HEATMAP_PRIOR_BIAS = -2.19
"""Initial bias of the heatmap convolution: sigmoid(-2.19) ~ 0.1, as CenterPoint."""


@dataclass
class CenterPointTaskOutput:
    """Dense predictions of one task on a ``(H, W)`` BEV map (dtype of the network: float32, or bf16 under
    autocast).

    Attributes:
        heatmap: ``(B, C_t, H, W)`` class logits (sigmoid -> centre probability), one channel per class of the task.
        offset: ``(B, 2, H, W)`` sub-cell centre offset ``[du, dv]`` in cells.
        height: ``(B, 1, H, W)`` box-centre z, metres.
        log_dims: ``(B, 3, H, W)`` ``log([dx, dy, dz])``, metres.
        rot: ``(B, 2, H, W)`` ``[sin(yaw), cos(yaw)]``.
        velocity: ``(B, 2, H, W)`` ``[vx, vy]`` m/s, or None for a head without velocity.
    """

    heatmap: torch.Tensor
    offset: torch.Tensor
    height: torch.Tensor
    log_dims: torch.Tensor
    rot: torch.Tensor
    velocity: torch.Tensor | None

    def box_codes(self) -> torch.Tensor:
        """``(B, D, H, W)`` the regression branches concatenated in ``CODE_NAMES`` order (``D`` = 10 or 8)."""
        parts = [self.offset, self.height, self.log_dims, self.rot]
        if self.velocity is not None:
            parts.append(self.velocity)
        return torch.cat(parts, dim=1)


@dataclass
class CenterPointOutput:
    """Output of :class:`CenterPointHead`: one :class:`CenterPointTaskOutput` per task, in task order."""

    tasks: list[CenterPointTaskOutput]


class SeparateHead(nn.Module):
    """One prediction branch: ``num_convs - 1`` x (conv3x3-BN-ReLU), then conv3x3 with bias.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        head_channels: width of the hidden convolutions.
        num_convs: total number of convolutions, ``>= 1``.
        final_bias: ``None``: a regression branch; every convolution gets Kaiming-normal weights (fan-in) and the
            last one a zero bias. A float: the heatmap branch; PyTorch's default initialisation, and this bias on
            the last convolution (as CenterPoint: Kaiming-normal fan-out weights here gave initial logits of a
            few units and a heatmap focal loss about 100x too large at the start).

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        head_channels: int,
        num_convs: int,
        final_bias: float | None,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(num_convs - 1):
            layers += [
                nn.Conv2d(c, head_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(head_channels),
                nn.ReLU(),
            ]
            c = head_channels
        final = nn.Conv2d(c, out_channels, 3, padding=1, bias=True)
        layers.append(final)
        self.layers = nn.Sequential(*layers)
        if final_bias is None:
            for m in self.layers:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        assert final.bias is not None
        nn.init.constant_(final.bias, 0.0 if final_bias is None else final_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class _TaskHead(nn.Module):
    def __init__(
        self, *, in_channels: int, num_classes: int, head_channels: int, num_convs: int, velocity: bool
    ):
        super().__init__()

        def branch(out: int, bias: float | None = None) -> SeparateHead:
            return SeparateHead(
                in_channels=in_channels,
                out_channels=out,
                head_channels=head_channels,
                num_convs=num_convs,
                final_bias=bias,
            )

        self.heatmap = branch(num_classes, HEATMAP_PRIOR_BIAS)
        self.offset = branch(2)
        self.height = branch(1)
        self.log_dims = branch(3)
        self.rot = branch(2)
        self.velocity = branch(2) if velocity else None

    def forward(self, x: torch.Tensor) -> CenterPointTaskOutput:
        return CenterPointTaskOutput(
            heatmap=self.heatmap(x),
            offset=self.offset(x),
            height=self.height(x),
            log_dims=self.log_dims(x),
            rot=self.rot(x),
            velocity=None if self.velocity is None else self.velocity(x),
        )


class CenterPointHead(nn.Module):
    """CenterPoint's multi-task centre head.

    Args:
        in_channels: channels ``C`` of the input BEV map.
        class_names: the detector's global class list; ``Detections.labels`` index it.
        tasks: class groups, each a sequence of names from ``class_names``; every class in exactly one group
            (nuScenes: :data:`NUSCENES_TASKS`).
        point_cloud_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` metres of the voxel grid.
        voxel_size: ``(vx, vy, vz)`` metres.
        feature_stride: total stride of the BEV map w.r.t. the voxel grid.
        shared_channels: width of the shared conv (64).
        head_channels: width of the branch convs (64).
        num_head_convs: convs per branch (2).
        with_velocity: predict ``[vx, vy]`` (nuScenes) and output 9-column boxes; else 7-column boxes.
        code_weights: ``D`` weights of the regression columns in ``CODE_NAMES`` order; default 1 for all, 0.2 for
            the velocities (CenterPoint nuScenes).
        heatmap_weight: weight of the heatmap focal loss (1.0).
        bbox_weight: weight of the regression L1 loss (0.25).
        max_objects: object slots per task and sample (500).
        min_overlap: Gaussian radius overlap (0.1).
        min_radius: minimum Gaussian radius in cells (2).
        decode_config: post-processing; defaults to :class:`CenterPointDecodeConfig` ``()`` (rotated NMS).

    ``forward(bev (B, C, H, W)) -> CenterPointOutput`` where ``(H, W)`` must equal ``feature_map_size``
    (``ceil(ny / stride), ceil(nx / stride)``).
    """

    code_weights: torch.Tensor

    def __init__(
        self,
        *,
        in_channels: int,
        class_names: Sequence[str],
        tasks: Sequence[Sequence[str]],
        point_cloud_range: Sequence[float],
        voxel_size: Sequence[float],
        feature_stride: int,
        shared_channels: int = 64,
        head_channels: int = 64,
        num_head_convs: int = 2,
        with_velocity: bool = True,
        code_weights: Sequence[float] | None = None,
        heatmap_weight: float = 1.0,
        bbox_weight: float = 0.25,
        max_objects: int = 500,
        min_overlap: float = 0.1,
        min_radius: int = 2,
        decode_config: CenterPointDecodeConfig | None = None,
    ) -> None:
        super().__init__()
        self.class_names = tuple(class_names)
        self.task_names = tuple(tuple(t) for t in tasks)
        self._check_tasks()
        self.task_classes: tuple[tuple[int, ...], ...] = tuple(
            tuple(self.class_names.index(n) for n in t) for t in self.task_names
        )
        self.coder = CenterBoxCoder(
            point_cloud_range=point_cloud_range, voxel_size=voxel_size, feature_stride=feature_stride
        )
        self.with_velocity = with_velocity
        d = CenterBoxCoder.code_size(with_velocity)
        weights = [1.0] * 8 + [0.2, 0.2] if code_weights is None else [float(w) for w in code_weights]
        weights = weights[:d] if code_weights is None else weights
        if len(weights) != d or any(w < 0 for w in weights):
            raise ValueError(f"code_weights must be {d} values >= 0 (CODE_NAMES order), got {list(weights)}")
        self.register_buffer("code_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)
        if heatmap_weight < 0 or bbox_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got heatmap {heatmap_weight}, bbox {bbox_weight}")
        self.heatmap_weight = float(heatmap_weight)
        self.bbox_weight = float(bbox_weight)
        self.max_objects = int(max_objects)
        self.min_overlap = float(min_overlap)
        self.min_radius = int(min_radius)
        if not 0 < self.min_overlap < 1 or self.max_objects < 1 or self.min_radius < 0:
            raise ValueError(
                f"need 0 < min_overlap < 1, max_objects >= 1, min_radius >= 0; got {min_overlap}, {max_objects}, "
                f"{min_radius}"
            )
        self.decode_config = CenterPointDecodeConfig() if decode_config is None else decode_config
        nms = self.decode_config.nms
        if isinstance(nms, CircleNMS) and len(nms.distances) != len(self.task_names):
            raise ValueError(
                f"CircleNMS.distances has {len(nms.distances)} entries but the head has {len(self.task_names)} tasks"
            )
        self.in_channels = in_channels
        self.shared_conv = nn.Sequential(
            nn.Conv2d(in_channels, shared_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(shared_channels),
            nn.ReLU(),
        )
        self.task_heads = nn.ModuleList(
            _TaskHead(
                in_channels=shared_channels,
                num_classes=len(t),
                head_channels=head_channels,
                num_convs=num_head_convs,
                velocity=with_velocity,
            )
            for t in self.task_names
        )

    def _check_tasks(self) -> None:
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be non-empty and unique, got {self.class_names}")
        seen: list[str] = []
        for t in self.task_names:
            if not t:
                raise ValueError(f"tasks must not contain an empty group, got {self.task_names}")
            for name in t:
                if name not in self.class_names:
                    raise ValueError(f"task class {name!r} is not in class_names {self.class_names}")
                if name in seen:
                    raise ValueError(f"class {name!r} appears in more than one task")
                seen.append(name)
        missing = [n for n in self.class_names if n not in seen]
        if missing:
            raise ValueError(f"classes {missing} belong to no task; tasks are {self.task_names}")

    @property
    def feature_map_size(self) -> tuple[int, int]:
        """``(H, W)`` the head expects."""
        return self.coder.feature_map_size

    def forward(self, bev: torch.Tensor) -> CenterPointOutput:
        """Args: bev: float ``(B, in_channels, H, W)``. Returns: :class:`CenterPointOutput`."""
        check_tensor("bev", bev, shape=(None, self.in_channels, *self.feature_map_size))
        x = self.shared_conv(bev)
        return CenterPointOutput(tasks=[head(x) for head in self.task_heads])

    def targets(
        self, gt_boxes: Sequence[Boxes3D], gt_labels: Sequence[torch.Tensor]
    ) -> list[CenterPointTaskTargets]:
        """Training targets per task (see :func:`build_center_targets`), on the device of the head."""
        return build_center_targets(
            self.coder,
            gt_boxes,
            gt_labels,
            self.task_classes,
            with_velocity=self.with_velocity,
            max_objects=self.max_objects,
            min_overlap=self.min_overlap,
            min_radius=self.min_radius,
            device=self.code_weights.device,
        )

    def loss(
        self, output: CenterPointOutput, gt_boxes: Sequence[Boxes3D], gt_labels: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Training loss.

        Args:
            output: this head's forward output for ``B`` samples.
            gt_boxes: ``B`` ground-truth boxes ``(K_b, 9)`` (``(K_b, 7)`` accepted without velocity).
            gt_labels: ``B`` int64 ``(K_b,)`` indices into ``class_names``.

        Returns:
            float32 scalars ``"task{i}.heatmap"`` and ``"task{i}.bbox"`` per task, weights applied; the total loss is
            their sum.
        """
        b = output.tasks[0].heatmap.shape[0]
        if len(gt_boxes) != b:
            raise ValueError(f"got {len(gt_boxes)} gt_boxes entries for a batch of {b}")
        losses: dict[str, torch.Tensor] = {}
        for i, (pred, tgt) in enumerate(zip(output.tasks, self.targets(gt_boxes, gt_labels), strict=True)):
            losses[f"task{i}.heatmap"] = self.heatmap_weight * gaussian_focal_loss(pred.heatmap, tgt.heatmap)
            codes = pred.box_codes()
            d = codes.shape[1]
            gathered = codes.flatten(2).gather(2, tgt.indices[:, None, :].expand(-1, d, -1)).transpose(1, 2)
            weight = tgt.mask[..., None].float() * self.code_weights
            l1 = weighted_l1_loss(gathered, tgt.codes, weight, reduction="sum")
            losses[f"task{i}.bbox"] = self.bbox_weight * l1 / (tgt.mask.sum() + 1e-4)
        return losses

    @torch.no_grad()
    def decode(self, output: CenterPointOutput) -> list[Detections]:
        """Boxes per sample: top-K peaks, score / range filter and NMS per task (``decode_config``).

        Returns:
            ``B`` :class:`Detections` with float32 boxes ``(N, 9)`` (``(N, 7)`` without velocity) in the LiDAR
            frame, scores in ``(0, 1)``, labels indexing ``class_names``; tasks concatenated in task order, each
            sorted by descending score.
        """
        per_task = [
            decode_task(t.heatmap, t.box_codes(), self.coder, self.decode_config, i)
            for i, t in enumerate(output.tasks)
        ]
        b = output.tasks[0].heatmap.shape[0]
        dets = []
        for s in range(b):
            boxes, scores, labels = [], [], []
            for classes, results in zip(self.task_classes, per_task, strict=True):
                bx, sc, ch = results[s]
                boxes.append(bx)
                scores.append(sc)
                labels.append(torch.as_tensor(classes, dtype=torch.int64, device=ch.device)[ch])
            dets.append(Detections(Boxes3D(torch.cat(boxes)), torch.cat(scores), torch.cat(labels)))
        return dets
