"""CenterPoint detection head (Yin et al., "Center-based 3D Object Detection and Tracking", CVPR 2021).

A shared 3x3 conv-BN-ReLU on the BEV map, then one sub-head per task (group of classes). Each sub-head has
separate branches, each ``num_head_convs - 1`` times conv3x3-BN-ReLU followed by a conv3x3 to the output channels:
``heatmap`` (one channel per class of the task, bias initialised to -2.19, i.e. prior probability 0.1),
``offset`` (2), ``height`` (1), ``log_dims`` (3), ``rot`` (2: sin, cos) and optionally ``velocity`` (2).

Training: Gaussian heatmap targets and per-object regression targets
(:mod:`perception.models.heads.centerpoint_targets`); loss per task = ``heatmap_weight *`` Gaussian focal loss +
``bbox_weight *`` L1 over the object slots weighted by ``code_weights`` and divided by the number of objects.
Inference: :mod:`perception.models.heads.centerpoint_decode`. :meth:`CenterPointHead.predict` (what
``VoxelDetector.predict`` calls) runs the heatmap branches on the whole map and the regression branches only at
the peaks that pass the score threshold (a ``(2 * num_head_convs + 1)``-cell patch of the shared features around
each, see :func:`branches_at_cells`): the same boxes as decoding the dense outputs (:meth:`CenterPointHead.
decode`, what the ONNX export and training use), at a fraction of the cost (the demo head: 6 tasks x 5 regression
branches of 3x3 convolutions on a 128 x 128 map were 80% of its time).

Settings: :class:`~perception.models.heads.centerpoint_config.CenterPointConfig` (the ``model.head.centerpoint``
schema); the map size and cell size come from the data's :class:`~perception.grid.VoxelGrid` and the stride of the
input map (:class:`~perception.shapes.MapShape`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from perception._validate import check_tensor
from perception.formats.nuscenes_names import NUSCENES_CLASSES
from perception.grid import VoxelGrid
from perception.models.casting import float32_outputs
from perception.models.losses import gaussian_focal_loss, weighted_l1_loss
from perception.shapes import MapShape
from perception.structures import Boxes3D, Detections

from .box_coder import CenterBoxCoder
from .centerpoint_config import CenterPointConfig
from .centerpoint_decode import TaskPeaks, decode_peaks, decode_task, peaks_to_decode, select_peaks
from .centerpoint_targets import CenterPointTaskTargets, build_center_targets

__all__ = [
    "NUSCENES_CLASSES",
    "NUSCENES_TASKS",
    "CenterPointHead",
    "CenterPointOutput",
    "CenterPointTaskOutput",
    "SeparateHead",
]

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
    """One prediction branch: ``num_convs - 1`` x (conv3x3-BN-ReLU or LeakyReLU), then conv3x3 with bias.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        head_channels: width of the hidden convolutions.
        num_convs: total number of convolutions, ``>= 1``.
        negative_slope: 0: ReLU after each hidden convolution (CenterPoint); above 0: LeakyReLU with this slope,
            so that a hidden unit switched off at every object centre of a task still passes a gradient (see
            ``CenterPointConfig.branch_negative_slope``).
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
        negative_slope: float = 0.0,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be >= 1, got {num_convs}")
        if not 0.0 <= negative_slope < 1.0:
            raise ValueError(f"negative_slope must be in [0, 1), got {negative_slope}")
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(num_convs - 1):
            layers += [
                nn.Conv2d(c, head_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(head_channels),
                nn.LeakyReLU(negative_slope) if negative_slope > 0 else nn.ReLU(),
            ]
            c = head_channels
        final = nn.Conv2d(c, out_channels, 3, padding=1, bias=True)
        layers.append(final)
        self.layers = nn.Sequential(*layers)
        if final_bias is None:
            for m in self.layers:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(
                        m.weight, negative_slope, mode="fan_in", nonlinearity="leaky_relu"
                    )
        assert final.bias is not None
        nn.init.constant_(final.bias, 0.0 if final_bias is None else final_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @property
    def radius(self) -> int:
        """Cells of the input that one output cell reads on each side: one per 3x3 convolution."""
        return sum(1 for m in self.layers if isinstance(m, nn.Conv2d))


def branches_at_cells(
    branches: Sequence[SeparateHead],
    x: torch.Tensor,
    sample: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """The outputs of ``branches`` (reading the same input) at ``N`` cells only.

    Equal to ``torch.cat([b(x) for b in branches], 1)[sample, :, rows, cols]`` up to float rounding: each distinct
    cell's ``(2R + 1)^2`` patch of ``x`` (``R`` = the branches' depth) goes once through the branches' convolutions
    without padding, fused into one convolution per layer (output channels stacked; block-diagonal after the first
    layer, whose input all branches share); hidden outputs that fall outside the map are zeroed, as ``forward``'s
    zero padding of each hidden map does. Batch norm must be in eval mode (running statistics), as at inference.

    Args:
        branches: branches of equal depth and structure (conv3x3 [-BN-ReLU or LeakyReLU] ... conv3x3; one slope).
        x: ``(B, C, H, W)`` their input.
        sample / rows / cols: int64 ``(N,)`` cells of ``x``.

    Returns:
        ``(N, sum of out_channels)``.
    """
    layers = [list(b.layers) for b in branches]
    if len({len(ls) for ls in layers}) != 1 or any(
        type(m) is not type(n) or getattr(m, "negative_slope", 0.0) != getattr(n, "negative_slope", 0.0)
        for ls in layers
        for m, n in zip(ls, layers[0], strict=True)
    ):
        raise ValueError("branches_at_cells needs branches of the same structure")
    _, _, h, w = x.shape
    r = branches[0].radius
    size = 2 * r + 1
    key, inverse = torch.unique((sample * h + rows) * w + cols, return_inverse=True)
    sample, cell = torch.div(key, h * w, rounding_mode="floor"), key % (h * w)
    rows, cols = torch.div(cell, w, rounding_mode="floor"), cell % w
    offsets = torch.arange(-r, r + 1, device=x.device)
    rr = rows[:, None] + offsets  # (U, S) rows of the patch, some outside the map near its borders
    cc = cols[:, None] + offsets
    inside = ((rr >= 0) & (rr < h))[:, :, None] & ((cc >= 0) & (cc < w))[:, None, :]  # (U, S, S)
    # the patch read in place (no padded copy of the map): clamped indices, zeroed outside as the padding is
    rows_in, cols_in = rr.clamp(0, h - 1)[:, :, None], cc.clamp(0, w - 1)[:, None, :]
    y = x.permute(0, 2, 3, 1)[sample[:, None, None], rows_in, cols_in]  # (U, S, S, C): rows of C from NHWC
    y = (y * inside[..., None].to(y.dtype)).permute(0, 3, 1, 2)  # (U, C, S, S)
    done = 0
    for j, first in enumerate(layers[0]):
        mods = [ls[j] for ls in layers]
        if isinstance(first, nn.Conv2d):
            weight = _fused_conv_weight([m.weight for m in mods], shared_input=done == 0)
            bias = None if first.bias is None else torch.cat([m.bias for m in mods])
            y = nn.functional.conv2d(y, weight, bias)
            done += 1
        elif isinstance(first, nn.BatchNorm2d):
            mean, var, gamma, beta = (
                torch.cat([getattr(m, name) for m in mods])
                for name in ("running_mean", "running_var", "weight", "bias")
            )
            y = nn.functional.batch_norm(y, mean, var, gamma, beta, False, 0.0, first.eps)
        elif isinstance(
            first, (nn.ReLU, nn.LeakyReLU)
        ):  # a hidden layer's end: zero where forward's padding is
            y = first(y) * inside[:, None, done : size - done, done : size - done].to(y.dtype)
        else:
            raise TypeError(f"branches_at_cells does not know {type(first).__name__}")
    return y[:, :, 0, 0][inverse]


def _fused_conv_weight(weights: Sequence[torch.Tensor], shared_input: bool) -> torch.Tensor:
    """One convolution's weight for several branches: outputs stacked; inputs shared, or block-diagonal."""
    if shared_input:
        return torch.cat(list(weights))
    out = sum(wt.shape[0] for wt in weights)
    cin = sum(wt.shape[1] for wt in weights)
    fused = weights[0].new_zeros(out, cin, *weights[0].shape[2:])
    o = i = 0
    for wt in weights:
        fused[o : o + wt.shape[0], i : i + wt.shape[1]] = wt
        o, i = o + wt.shape[0], i + wt.shape[1]
    return fused


class _TaskHead(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        head_channels: int,
        num_convs: int,
        velocity: bool,
        negative_slope: float,
    ):
        super().__init__()

        def branch(out: int, bias: float | None = None) -> SeparateHead:
            return SeparateHead(
                in_channels=in_channels,
                out_channels=out,
                head_channels=head_channels,
                num_convs=num_convs,
                final_bias=bias,
                negative_slope=0.0 if bias is not None else negative_slope,  # the heatmap keeps ReLU
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

    def regression_branches(self) -> list[SeparateHead]:
        """The box-code branches in ``CODE_NAMES`` order (offset, height, log_dims, rot[, velocity])."""
        branches = [self.offset, self.height, self.log_dims, self.rot]
        return branches + ([self.velocity] if self.velocity is not None else [])

    def codes_at(self, x: torch.Tensor, peaks: TaskPeaks, extra: Sequence[SeparateHead] = ()) -> torch.Tensor:
        """``(N, D)`` box codes at ``peaks`` only (:func:`branches_at_cells` of the regression branches, then
        ``extra``: the head's shared velocity branch when it has one)."""
        branches = [*self.regression_branches(), *extra]
        return branches_at_cells(branches, x, peaks.sample, peaks.rows, peaks.cols)


class CenterPointHead(nn.Module):
    """CenterPoint's multi-task centre head.

    Args:
        config: the head's settings (``model.head.centerpoint``): tasks, widths, loss weights, target and decode
            parameters.
        class_names: the detector's global class list (``data.class_names``); ``Detections.labels`` index it and
            ``config.tasks`` group it (:meth:`CenterPointConfig.check_classes`).
        grid: the voxel grid of the data (range, voxel size, shape).
        input_shape: the BEV map the head reads (the 2D backbone's output): channels ``C``, size
            ``grid.bev_size(stride)``, a whole-number stride, equal to ``config.feature_stride`` when written.

    Raises:
        ValueError: the classes or the input map do not fit the config (the message names the key).

    ``forward(bev (B, C, H, W)) -> CenterPointOutput`` where ``(H, W)`` is ``input_shape().size``.
    """

    code_weights: torch.Tensor

    def __init__(
        self,
        config: CenterPointConfig,
        *,
        class_names: Sequence[str],
        grid: VoxelGrid,
        input_shape: MapShape,
    ) -> None:
        super().__init__()
        if not isinstance(config, CenterPointConfig):
            raise TypeError(f"config must be a CenterPointConfig, got {type(config).__name__}")
        stride = config.check_input(input_shape, grid)
        self.config = config
        self.class_names = tuple(class_names)
        self.task_names = tuple(tuple(t) for t in config.tasks)
        self.task_classes: tuple[tuple[int, ...], ...] = config.task_classes(self.class_names)
        """Per task, the indices into ``class_names`` of its classes."""
        self._input_shape = input_shape
        self.coder = CenterBoxCoder(grid, stride)
        self.with_velocity = config.with_velocity
        weights = torch.tensor(config.code_weight_values, dtype=torch.float32)
        self.register_buffer("code_weights", weights, persistent=False)
        self.in_channels = input_shape.channels
        shared = config.shared_channels
        self.shared_conv = nn.Sequential(
            nn.Conv2d(self.in_channels, shared, 3, padding=1, bias=False),
            nn.BatchNorm2d(shared),
            nn.ReLU(),
        )
        self.task_heads = nn.ModuleList(
            _TaskHead(
                in_channels=shared,
                num_classes=len(t),
                head_channels=config.head_channels,
                num_convs=config.num_head_convs,
                velocity=config.with_velocity and not config.shared_velocity,
                negative_slope=config.branch_negative_slope,
            )
            for t in self.task_names
        )
        self.shared_velocity = (
            SeparateHead(
                in_channels=shared,
                out_channels=2,
                head_channels=config.head_channels,
                num_convs=config.num_head_convs,
                final_bias=None,
                negative_slope=config.branch_negative_slope,
            )
            if config.shared_velocity
            else None
        )
        """``config.shared_velocity``: the one velocity branch of all tasks (else None: each task has its own)."""

    def input_shape(self) -> MapShape:
        """The BEV map the head reads: ``(B, C, H, W)`` with ``(H, W) = grid.bev_size(stride)``."""
        return self._input_shape

    @property
    def feature_map_size(self) -> tuple[int, int]:
        """``(H, W)`` the head expects."""
        return self.coder.feature_map_size

    def forward(self, bev: torch.Tensor) -> CenterPointOutput:
        """Args: bev: float ``(B, in_channels, H, W)``. Returns: :class:`CenterPointOutput`."""
        check_tensor("bev", bev, shape=(None, self.in_channels, *self.feature_map_size))
        x = self.shared_conv(bev)
        tasks = [head(x) for head in self.task_heads]
        if self.shared_velocity is not None:
            velocity = self.shared_velocity(x)
            tasks = [dataclasses.replace(t, velocity=velocity) for t in tasks]
        return CenterPointOutput(tasks=tasks)

    @torch.no_grad()
    def peaks(self, bev: torch.Tensor) -> list[tuple[TaskPeaks, torch.Tensor]]:
        """Per task, the peaks that decoding can keep and their float32 box codes ``(N, D)``.

        The heatmap branches run on the whole map, the regression branches only at the peaks above the score
        threshold that NMS can read (:func:`peaks_to_decode`: the ``pre_max`` best with a centre in range, per
        sample) (:func:`branches_at_cells`). Args: bev: float ``(B, in_channels, H, W)``; the head in eval mode.
        """
        check_tensor("bev", bev, shape=(None, self.in_channels, *self.feature_map_size))
        if self.training:
            raise RuntimeError("CenterPointHead.peaks needs eval mode (batch norm with running statistics)")
        x = self.shared_conv(bev)
        out = []
        decode = self.config.decode
        extra = (
            [] if self.shared_velocity is None else [self.shared_velocity]
        )  # appended to every task's codes
        for i, head in enumerate(self.task_heads):
            peaks = select_peaks(head.heatmap(x), decode, i)
            out.append(
                peaks_to_decode(
                    peaks, lambda p, head=head: head.codes_at(x, p, extra).float(), self.coder, decode, i
                )
            )
        return out

    @torch.no_grad()
    def decode_peaks(self, peaks: list[tuple[TaskPeaks, torch.Tensor]]) -> list[Detections]:
        """:class:`Detections` per sample from :meth:`peaks`' output (box decoding, range filter, NMS per task)."""
        per_task = [
            decode_peaks(p, codes, self.coder, self.config.decode, i) for i, (p, codes) in enumerate(peaks)
        ]
        return self._assemble(per_task, peaks[0][0].batch_size)

    @torch.no_grad()
    def predict(self, bev: torch.Tensor) -> list[Detections]:
        """``decode(self(bev))`` with the regression computed at the peaks only (see the module docstring).

        In training mode (batch norm on batch statistics, where a patch is not the map) it decodes the dense
        outputs instead."""
        if self.training:
            return self.decode(float32_outputs(self(bev)))
        return self.decode_peaks(self.peaks(bev))

    def targets(
        self, gt_boxes: Sequence[Boxes3D], gt_labels: Sequence[torch.Tensor]
    ) -> list[CenterPointTaskTargets]:
        """Training targets per task (see :func:`build_center_targets`), on the device of the head."""
        cfg = self.config
        return build_center_targets(
            self.coder,
            gt_boxes,
            gt_labels,
            self.task_classes,
            with_velocity=self.with_velocity,
            max_objects=cfg.max_objects,
            min_overlap=cfg.min_overlap,
            min_radius=cfg.min_radius,
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
        heatmap_weight, bbox_weight = self.config.heatmap_weight, self.config.bbox_weight
        for i, (pred, tgt) in enumerate(zip(output.tasks, self.targets(gt_boxes, gt_labels), strict=True)):
            losses[f"task{i}.heatmap"] = heatmap_weight * gaussian_focal_loss(pred.heatmap, tgt.heatmap)
            codes = pred.box_codes()
            d = codes.shape[1]
            gathered = codes.flatten(2).gather(2, tgt.indices[:, None, :].expand(-1, d, -1)).transpose(1, 2)
            weight = tgt.mask[..., None].float() * self.code_weights
            l1 = weighted_l1_loss(gathered, tgt.codes, weight, reduction="sum")
            losses[f"task{i}.bbox"] = bbox_weight * l1 / (tgt.mask.sum() + 1e-4)
        return losses

    @torch.no_grad()
    def decode(self, output: CenterPointOutput) -> list[Detections]:
        """Boxes per sample: top-K peaks, score / range filter and NMS per task (``config.decode``).

        Returns:
            ``B`` :class:`Detections` with float32 boxes ``(N, 9)`` (``(N, 7)`` without velocity) in the LiDAR
            frame, scores in ``(0, 1)``, labels indexing ``class_names``; tasks concatenated in task order, each
            sorted by descending score.
        """
        per_task = [
            decode_task(t.heatmap, t.box_codes(), self.coder, self.config.decode, i)
            for i, t in enumerate(output.tasks)
        ]
        return self._assemble(per_task, output.tasks[0].heatmap.shape[0])

    def _assemble(
        self, per_task: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]], b: int
    ) -> list[Detections]:
        """Per sample, the tasks' boxes concatenated in task order, channels mapped to ``class_names`` indices."""
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
