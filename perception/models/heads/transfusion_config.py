"""Config of the TransFusion-L head (``model.head.transfusion:``): the YAML schema and what the head reads.

.. code-block:: yaml

    head:
      transfusion:
        feature_stride: 2                       # optional; checked against the stride of the BEV map
        num_proposals: 200
        exempt_classes: [pedestrian, traffic_cone]
        with_iou: true
        loss: {code_weights: [1, 1, 1, 1, 1, 1, 1, 1, 0.2, 0.2], match: {cls_weight: 0.15}}
        decode: {score_threshold: 0.0, iou_rectifier: 0.5, nms_iou_thresholds: {pedestrian: 0.175}}

Torch-free (pydantic, :mod:`perception.config_types` and the base layer). Classes are named, not numbered; the
head turns names into indices of the detector's class list with :meth:`TransFusionConfig.exempt_class_indices`
and :meth:`TransFusionDecodeConfig.nms_thresholds`, and :meth:`TransFusionConfig.check_classes` holds every
class-dependent rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field, Strict, model_validator

from perception.config_types import (
    Bool,
    Float,
    Name,
    NonNegFloat,
    NonNegInt,
    PosInt,
    Probability,
    Range6,
    StrictSection,
)
from perception.grid import VoxelGrid
from perception.shapes import MapShape

from .config_common import check_class_names, check_head_input, code_size, default_code_weights

__all__ = ["MatchCosts", "TransFusionConfig", "TransFusionDecodeConfig", "TransFusionLossConfig"]

KEY = "model.head.transfusion"

UnitFloat = Annotated[float, Strict(), Field(ge=0, le=1)]
"""A float in ``[0, 1]``."""


class MatchCosts(StrictSection):
    """Weights and parameters of the Hungarian matching cost (``loss.match:``; defaults: TransFusion / DSVT
    nuScenes configs; see :mod:`~perception.models.heads.transfusion_matching`).

    Attributes:
        cls_weight: weight of the focal classification cost.
        focal_alpha: focal ``alpha`` of the classification cost, in ``[0, 1]``.
        focal_gamma: focal ``gamma`` of the classification cost.
        center_weight: weight of the L1 cost between BEV centres normalised by the point-cloud range.
        iou_weight: weight of the (negative) IoU cost.
        iou_mode: ``"3d"`` (rotated 3D IoU) or ``"bev"`` (rotated bird's-eye-view IoU).
    """

    cls_weight: NonNegFloat = 0.15
    focal_alpha: UnitFloat = 0.25
    focal_gamma: NonNegFloat = 2.0
    center_weight: NonNegFloat = 0.25
    iou_weight: NonNegFloat = 0.25
    iou_mode: Literal["3d", "bev"] = "3d"


class TransFusionLossConfig(StrictSection):
    """Loss weights and target parameters (``loss:``; defaults: TransFusion-L / DSVT nuScenes configs).

    Attributes:
        cls_weight: weight of the query focal classification loss.
        bbox_weight: weight of the box L1 loss.
        heatmap_weight: weight of the dense Gaussian focal heatmap loss.
        iou_weight: weight of the IoU-branch L1 loss (used only with the IoU branch).
        code_weights: per box-code column weights (10, or 8 without velocity); ``None``: 1 for all, 0.2 for the
            velocities (:meth:`TransFusionConfig.code_weight_values`).
        focal_alpha: alpha of the query focal loss.
        focal_gamma: gamma of the query focal loss.
        gaussian_overlap: ``min_overlap`` of the heatmap Gaussian radius, in ``(0, 1)``.
        min_radius: minimum Gaussian radius in cells.
        match: costs of the Hungarian matching.
    """

    cls_weight: NonNegFloat = 1.0
    bbox_weight: NonNegFloat = 0.25
    heatmap_weight: NonNegFloat = 1.0
    iou_weight: NonNegFloat = 0.5
    code_weights: tuple[NonNegFloat, ...] | None = None
    focal_alpha: NonNegFloat = 0.25
    focal_gamma: NonNegFloat = 2.0
    gaussian_overlap: Annotated[float, Strict(), Field(gt=0, lt=1)] = 0.1
    min_radius: NonNegInt = 2
    match: MatchCosts = MatchCosts()


class TransFusionDecodeConfig(StrictSection):
    """Post-processing of :meth:`~perception.models.heads.transfusion.TransFusionHead.decode` (``decode:``).

    Attributes:
        score_threshold: keep detections with final score ``> score_threshold`` (applied after IoU
            rectification, to the score that is returned).
        post_center_range: ``(x0, y0, z0, x1, y1, z1)`` metres: keep box centres with ``min <= c <= max``; None
            keeps all (DSVT nuScenes: ``(-61.2, -61.2, -10, 61.2, 61.2, 10)``).
        iou_rectifier: ``a`` in ``score^(1 - a) * iou^a``, in ``[0, 1]``: one value for all classes or one per
            class of ``data.class_names``; None disables the rectification (it needs ``with_iou``; DSVT nuScenes
            uses 0.5).
        nms_iou_thresholds: class name -> rotated BEV IoU threshold in ``[0, 1]`` of an NMS within that class;
            classes not listed get no NMS; None: no NMS at all (TransFusion on nuScenes). DSVT's nuScenes head
            runs NMS at 0.175 for pedestrian and traffic cone only.
    """

    score_threshold: Float = 0.0
    post_center_range: Range6 | None = None
    iou_rectifier: UnitFloat | tuple[UnitFloat, ...] | None = None
    nms_iou_thresholds: dict[Name, UnitFloat] | None = None

    @model_validator(mode="after")
    def _check(self) -> TransFusionDecodeConfig:
        r = self.post_center_range
        if r is not None and not all(r[i] <= r[i + 3] for i in range(3)):
            raise ValueError(f"post_center_range must be (x0, y0, z0, x1, y1, z1) with min <= max, got {r}")
        return self

    def nms_thresholds(self, class_names: Sequence[str]) -> tuple[float | None, ...] | None:
        """Per class of ``class_names``: its NMS IoU threshold or ``None`` (no NMS); ``None`` when no NMS is set."""
        if self.nms_iou_thresholds is None:
            return None
        return tuple(self.nms_iou_thresholds.get(c) for c in class_names)


class TransFusionConfig(StrictSection):
    """:class:`~perception.models.heads.transfusion.TransFusionHead` settings.

    Attributes:
        feature_stride: optional: when written it must equal the stride of the head's input map.
        num_proposals: queries per sample ``P`` (200 in TransFusion and DSVT).
        hidden_channels: query / feature size of the decoder (128); a multiple of ``num_heads``.
        num_heads: attention heads (8).
        ffn_channels: decoder FFN hidden size (256).
        dropout: decoder dropout (TransFusion 0.1, DSVT 0).
        activation: decoder FFN activation, ``"relu"`` or ``"gelu"``.
        nms_kernel_size: odd size of the local-maximum window for query selection (3).
        exempt_classes: class names exempt from the local-maximum suppression (nuScenes: pedestrian,
            traffic_cone).
        with_velocity: predict ``(vx, vy)`` (needs 9-column ground truth); decoded boxes are ``(N, 9)``, else 7.
        with_iou: add the IoU branch (DSVT).
        branch_channels: hidden size of the prediction branches (64).
        branch_layers: linear layers per prediction branch (2).
        loss: loss weights and target parameters.
        decode: post-processing.
    """

    feature_stride: PosInt | None = None
    num_proposals: PosInt = 200
    hidden_channels: PosInt = 128
    num_heads: PosInt = 8
    ffn_channels: PosInt = 256
    dropout: Probability = 0.1
    activation: Literal["relu", "gelu"] = "relu"
    nms_kernel_size: PosInt = 3
    exempt_classes: tuple[Name, ...] = ()
    with_velocity: Bool = True
    with_iou: Bool = False
    branch_channels: PosInt = 64
    branch_layers: PosInt = 2
    loss: TransFusionLossConfig = TransFusionLossConfig()
    decode: TransFusionDecodeConfig = TransFusionDecodeConfig()

    @model_validator(mode="after")
    def _check(self) -> TransFusionConfig:
        if self.hidden_channels % self.num_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must divide hidden_channels ({self.hidden_channels})"
            )
        if self.nms_kernel_size % 2 == 0:
            raise ValueError(f"nms_kernel_size must be odd, got {self.nms_kernel_size}")
        d = code_size(self.with_velocity)
        cw = self.loss.code_weights
        if cw is not None and len(cw) != d:
            raise ValueError(
                f"loss.code_weights needs {d} values (with_velocity: {str(self.with_velocity).lower()}), "
                f"got {len(cw)}"
            )
        if self.decode.iou_rectifier is not None and not self.with_iou:
            raise ValueError("decode.iou_rectifier needs the IoU branch (with_iou: true)")
        return self

    @property
    def code_weight_values(self) -> tuple[float, ...]:
        """The L1 weights of the code columns: ``loss.code_weights`` or the default."""
        if self.loss.code_weights is not None:
            return tuple(float(w) for w in self.loss.code_weights)
        return default_code_weights(self.with_velocity)

    def check_classes(self, class_names: Sequence[str]) -> None:
        """``ValueError`` unless every class named here is in ``class_names`` and ``decode.iou_rectifier`` has 1
        or ``len(class_names)`` values."""
        names = check_class_names(class_names)
        for key, listed in (
            ("exempt_classes", self.exempt_classes),
            ("decode.nms_iou_thresholds", tuple(self.decode.nms_iou_thresholds or {})),
        ):
            for name in listed:
                if name not in names:
                    raise ValueError(f"{KEY}.{key} names class {name!r}, which is not in data.class_names")
        a = self.decode.iou_rectifier
        if isinstance(a, tuple) and len(a) not in (1, len(names)):
            raise ValueError(
                f"{KEY}.decode.iou_rectifier needs 1 or {len(names)} values (one per class), got {len(a)}"
            )

    def exempt_class_indices(self, class_names: Sequence[str]) -> tuple[int, ...]:
        """Indices into ``class_names`` of ``exempt_classes`` (checked by :meth:`check_classes`)."""
        self.check_classes(class_names)
        names = tuple(class_names)
        return tuple(names.index(c) for c in self.exempt_classes)

    def check_input(self, input: MapShape, grid: VoxelGrid) -> int:
        """The head's feature stride for the map ``input`` (see :func:`~.config_common.check_head_input`)."""
        return check_head_input(KEY, self.feature_stride, input, grid)
