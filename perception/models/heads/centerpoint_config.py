"""Config of the CenterPoint head (``model.head.centerpoint:``): the YAML schema and what the head reads.

.. code-block:: yaml

    head:
      centerpoint:
        feature_stride: 8          # optional; checked against the stride of the BEV map
        tasks: [[car], [truck, construction_vehicle], ...]
        decode:
          top_k: 500
          nms: {rotated: {iou_threshold: 0.2, pre_max: 1000, post_max: 83}}

Torch-free (pydantic, :mod:`perception.config_types` and the base layer), so the config loader imports it without
torch. :class:`~perception.models.heads.centerpoint.CenterPointHead` takes a :class:`CenterPointConfig` and the
detector's class names; the class-dependent rules are :meth:`CenterPointConfig.check_classes` and
:meth:`CenterPointConfig.task_classes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated

from pydantic import Field, Strict, model_validator

from perception.config_types import (
    Bool,
    Float,
    Name,
    NonNegFloat,
    NonNegInt,
    OneOf,
    PosInt,
    Range6,
    StrictSection,
)
from perception.grid import VoxelGrid
from perception.shapes import MapShape

from .config_common import check_class_names, check_head_input, code_size, default_code_weights

__all__ = [
    "NUSCENES_CIRCLE_NMS_MIN_RADIUS",
    "CenterPointConfig",
    "CenterPointDecodeConfig",
    "CircleNMS",
    "NMSConfig",
    "RotatedNMS",
]

NUSCENES_CIRCLE_NMS_MIN_RADIUS: tuple[float, ...] = (4.0, 12.0, 10.0, 1.0, 0.85, 0.175)
"""CenterPoint's nuScenes ``min_radius`` per task (car | truck, cons. vehicle | bus, trailer | barrier |
motorcycle, bicycle | pedestrian, traffic cone). CenterPoint compares them with *squared* centre distances, so
they are m^2: :meth:`CircleNMS.from_squared` takes them as they are."""

KEY = "model.head.centerpoint"


class RotatedNMS(StrictSection):
    """Rotated BEV-IoU NMS per task (``nms: {rotated: {...}}``).

    Attributes:
        iou_threshold: suppress when BEV IoU ``>`` this, in ``[0, 1]`` (CenterPoint nuScenes / OpenPCDet: 0.2).
        pre_max: candidates considered per task and sample (1000); ``None``: all.
        post_max: boxes kept per task and sample (83); ``None``: all.
    """

    iou_threshold: Annotated[float, Strict(), Field(ge=0, le=1)] = 0.2
    pre_max: PosInt | None = 1000
    post_max: PosInt | None = 83


class CircleNMS(StrictSection):
    """CenterPoint's circle NMS per task (``nms: {circle: {...}}``).

    Attributes:
        distances: one suppression radius per task, metres (centre distance ``<=`` radius is suppressed).
            CenterPoint's configs list squared metres: take the root (:meth:`from_squared`).
        pre_max: candidates considered per task and sample (``None``: all, as CenterPoint).
        post_max: boxes kept per task and sample (83).
    """

    distances: tuple[NonNegFloat, ...] = Field(min_length=1)
    pre_max: PosInt | None = None
    post_max: PosInt | None = 83

    @classmethod
    def from_squared(cls, min_radius: Sequence[float], post_max: int | None = 83) -> CircleNMS:
        """From CenterPoint's ``min_radius`` config values (squared metres), e.g.
        ``CircleNMS.from_squared(NUSCENES_CIRCLE_NMS_MIN_RADIUS)``."""
        return cls(distances=tuple(math.sqrt(float(r)) for r in min_radius), post_max=post_max)


class NMSConfig(OneOf):
    """The NMS after decoding: ``rotated`` or ``circle``."""

    rotated: RotatedNMS | None = None
    circle: CircleNMS | None = None


class CenterPointDecodeConfig(StrictSection):
    """Post-processing (``decode:``; defaults: CenterPoint / OpenPCDet nuScenes).

    Attributes:
        top_k: peaks per task and sample (500).
        score_threshold: keep ``score >`` this (0.1).
        post_center_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` metres that decoded centres must lie in
            (inclusive, min <= max), or ``None`` for no filter.
        nms: :class:`NMSConfig` (default rotated NMS with :class:`RotatedNMS` defaults), or ``None``: no NMS.
    """

    top_k: PosInt = 500
    score_threshold: Float = 0.1
    post_center_range: Range6 | None = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    nms: NMSConfig | None = NMSConfig(rotated=RotatedNMS())

    @model_validator(mode="after")
    def _check(self) -> CenterPointDecodeConfig:
        r = self.post_center_range
        if r is not None and not all(r[i] <= r[i + 3] for i in range(3)):
            raise ValueError(
                f"post_center_range must be (x_min, y_min, z_min, x_max, y_max, z_max) with min <= max, got {r}"
            )
        return self


class CenterPointConfig(StrictSection):
    """:class:`~perception.models.heads.centerpoint.CenterPointHead` settings.

    Attributes:
        tasks: class groups, each a non-empty list of names from ``data.class_names``; every class in exactly one
            group (nuScenes: ``NUSCENES_TASKS``).
        feature_stride: optional: when written it must equal the stride of the head's input map.
        shared_channels: width of the shared conv (64).
        head_channels: width of the branch convs (64).
        num_head_convs: convs per branch (2).
        with_velocity: predict ``[vx, vy]`` (nuScenes) and output 9-column boxes; else 7-column boxes.
        shared_velocity: one velocity branch on the shared features for all tasks (default false: one per task,
            as CenterPoint). Motion is seen the same way whatever the class (the older sweeps' points trail the
            object), so every task's centres train the one branch and the rare classes use what the frequent
            ones teach; with a short training, the per-task branches of rare classes stay near zero.
        branch_negative_slope: 0 (default): ReLU in the hidden layers of the regression branches, as CenterPoint;
            above 0: LeakyReLU with this slope (the heatmap branches keep ReLU). With ReLU, a small head trained
            briefly can switch every hidden unit of a branch off at all the centres of a task (batch norm's
            statistics come from the whole, mostly empty map); the branch then outputs its bias there, gets no
            gradient and never recovers: the demo detector's bus / trailer velocity branch did, 0/32 units active
            at their centres and exactly 0 m/s predicted (``benchmarks/check_velocity.py``).
        code_weights: ``D`` (10, or 8 without velocity) weights of the regression columns in ``CODE_NAMES`` order;
            ``None``: 1 for all, 0.2 for the velocities (:attr:`code_weight_values`).
        heatmap_weight: weight of the heatmap focal loss (1.0).
        bbox_weight: weight of the regression L1 loss (0.25).
        max_objects: object slots per task and sample (500).
        min_overlap: Gaussian radius overlap, in ``(0, 1)`` (0.1).
        min_radius: minimum Gaussian radius in cells (2).
        decode: post-processing.
    """

    tasks: tuple[Annotated[tuple[Name, ...], Field(min_length=1)], ...] = Field(min_length=1)
    feature_stride: PosInt | None = None
    shared_channels: PosInt = 64
    head_channels: PosInt = 64
    num_head_convs: PosInt = 2
    with_velocity: Bool = True
    shared_velocity: Bool = False
    branch_negative_slope: Annotated[float, Strict(), Field(ge=0, lt=1)] = 0.0
    code_weights: tuple[NonNegFloat, ...] | None = None
    heatmap_weight: NonNegFloat = 1.0
    bbox_weight: NonNegFloat = 0.25
    max_objects: PosInt = 500
    min_overlap: Annotated[float, Strict(), Field(gt=0, lt=1)] = 0.1
    min_radius: NonNegInt = 2
    decode: CenterPointDecodeConfig = CenterPointDecodeConfig()

    @model_validator(mode="after")
    def _check(self) -> CenterPointConfig:
        d = code_size(self.with_velocity)
        if self.shared_velocity and not self.with_velocity:
            raise ValueError("shared_velocity needs with_velocity: true")
        if self.code_weights is not None and len(self.code_weights) != d:
            raise ValueError(
                f"code_weights must be {d} values >= 0 (CODE_NAMES order, with_velocity: "
                f"{str(self.with_velocity).lower()}), got {list(self.code_weights)}"
            )
        nms = self.decode.nms
        if nms is not None and nms.circle is not None and len(nms.circle.distances) != len(self.tasks):
            raise ValueError(
                f"decode.nms.circle.distances needs one radius per task ({len(self.tasks)}), "
                f"got {len(nms.circle.distances)}"
            )
        return self

    @property
    def code_weight_values(self) -> tuple[float, ...]:
        """The L1 weights of the code columns: ``code_weights`` or the default."""
        if self.code_weights is not None:
            return tuple(float(w) for w in self.code_weights)
        return default_code_weights(self.with_velocity)

    def check_classes(self, class_names: Sequence[str]) -> None:
        """``ValueError`` unless every task names classes of ``class_names`` and every class is in one task."""
        names = check_class_names(class_names)
        seen: list[str] = []
        for t, task in enumerate(self.tasks):
            for name in task:
                if name not in names:
                    raise ValueError(f"{KEY}.tasks[{t}] names {name!r}, which is not in data.class_names")
                if name in seen:
                    raise ValueError(f"{KEY}.tasks: class {name!r} is in more than one task")
                seen.append(name)
        missing = [c for c in names if c not in seen]
        if missing:
            raise ValueError(f"{KEY}.tasks: data.class_names {missing} belong to no task")

    def task_classes(self, class_names: Sequence[str]) -> tuple[tuple[int, ...], ...]:
        """Per task, the indices into ``class_names`` of its classes (checked by :meth:`check_classes`)."""
        self.check_classes(class_names)
        names = tuple(class_names)
        return tuple(tuple(names.index(n) for n in task) for task in self.tasks)

    def check_input(self, input: MapShape, grid: VoxelGrid) -> int:
        """The head's feature stride for the map ``input`` (see :func:`~.config_common.check_head_input`)."""
        return check_head_input(KEY, self.feature_stride, input, grid)
