"""Typed ``model:`` section of an experiment config, and the cross-checks of its shapes against the data grid.

The section names each stage's class by a key (the small name -> class tables live in
:mod:`perception.models.build`): exactly one key per choice, e.g.

.. code-block:: yaml

    model:
      num_point_features: 5
      voxelization: {mode: dynamic}
      vfe: {dynamic_pillar: {filters: [128, 128]}}
      backbone_3d: {dsvt: {stages: [...]}}
      bev: {pillar_scatter: {}}
      bev_backbone: {layer_nums: [1, 2, 2], ...}
      head: {transfusion: {num_proposals: 200, ...}}

Every section is a frozen pydantic model with ``extra="forbid"`` and strict scalars, like
:mod:`perception.config_schema`. :meth:`ModelConfig.plan` follows the shapes through the stages (voxel grid ->
VFE channels -> 3D backbone grid and stride -> BEV map -> 2D backbone stride -> head feature map) without building
anything, and raises ``ValueError`` naming the keys that disagree (point range / voxel size vs grid, pillar vs voxel
grids, windows, BEV shapes, channels, strides, class names). :class:`~perception.config_schema.ExperimentConfig`
calls it, so ``load_config`` reports these errors with the file name.

This module imports only pydantic (DSVT's own config is imported lazily), so loading a config stays cheap and
free of import cycles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from perception.grid import VoxelGrid
    from perception.models.backbones.dsvt_config import DSVTConfig

Float = Annotated[float, Strict()]
NonNegFloat = Annotated[float, Strict(), Field(ge=0)]
PosInt = Annotated[int, Strict(), Field(ge=1)]
NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Bool = Annotated[bool, Strict()]
Name = Annotated[str, Strict(), Field(min_length=1)]
Int3 = tuple[int, int, int]
Range6 = tuple[Float, Float, Float, Float, Float, Float]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _OneOf(_Section):
    """A choice: exactly one of the fields (the class names) is set; its value holds that class's settings."""

    @model_validator(mode="after")
    def _exactly_one(self) -> _OneOf:
        chosen = [k for k in type(self).model_fields if getattr(self, k) is not None]
        if len(chosen) != 1:
            options = ", ".join(type(self).model_fields)
            raise ValueError(f"set exactly one of: {options} (got {chosen or 'none'})")
        return self

    @property
    def name(self) -> str:
        """The chosen key."""
        return next(k for k in type(self).model_fields if getattr(self, k) is not None)

    @property
    def settings(self) -> Any:
        """The chosen key's section."""
        return getattr(self, self.name)


# --------------------------------------------------------------------------------------------------------------
# voxelization and VFE
# --------------------------------------------------------------------------------------------------------------


class VoxelizationSection(_Section):
    """How points become voxels (range and voxel size come from ``data``).

    Attributes:
        mode: ``hard`` (capped voxels for ``vfe.mean``) or ``dynamic`` (every point kept; dynamic VFEs).
        max_points_per_voxel: hard: points kept per voxel (OpenPCDet nuScenes: 10).
        max_voxels_train: hard: voxels kept in training mode (120000); ``None`` keeps all.
        max_voxels_test: hard: voxels kept in eval mode (160000); ``None`` keeps all.
    """

    mode: Literal["hard", "dynamic"]
    max_points_per_voxel: PosInt | None = None
    max_voxels_train: PosInt | None = None
    max_voxels_test: PosInt | None = None

    @model_validator(mode="after")
    def _check(self) -> VoxelizationSection:
        caps = (self.max_points_per_voxel, self.max_voxels_train, self.max_voxels_test)
        if self.mode == "dynamic" and any(c is not None for c in caps):
            raise ValueError(
                "max_points_per_voxel / max_voxels_* apply to mode: hard only (dynamic keeps every point)"
            )
        if self.mode == "hard" and self.max_points_per_voxel is None:
            raise ValueError("mode: hard needs max_points_per_voxel")
        return self


class MeanVFESection(_Section):
    """:class:`~perception.models.vfe.MeanVFE` (no settings)."""


class DynamicVFESection(_Section):
    """:class:`~perception.models.vfe.DynamicPillarVFE` / ``DynamicVoxelVFE`` settings (same names)."""

    filters: tuple[PosInt, ...] = Field(min_length=1)
    use_absolute_xyz: Bool = True
    with_distance: Bool = False
    use_norm: Bool = True
    reduce: Literal["max", "mean"] = "max"


class VFESection(_OneOf):
    mean: MeanVFESection | None = None
    dynamic_pillar: DynamicVFESection | None = None
    dynamic_voxel: DynamicVFESection | None = None


# --------------------------------------------------------------------------------------------------------------
# 3D backbones
# --------------------------------------------------------------------------------------------------------------


class SpconvResNetSection(_Section):
    """:class:`~perception.models.backbones.spconv_resnet.VoxelResBackbone8x` settings (same names)."""

    channels: tuple[PosInt, PosInt, PosInt, PosInt] = (16, 32, 64, 128)
    out_channels: PosInt = 128
    blocks_per_stage: NonNegInt = 2
    block_bias: Bool = True
    extra_z: NonNegInt = 1
    last_pad: NonNegInt = 0

    def out_grid(self, grid: Int3) -> Int3:
        """Output ``(D, H, W)`` for the input voxel grid (the layer table of ``VoxelResBackbone8x``)."""
        shape = (grid[0] + self.extra_z, grid[1], grid[2])
        for pad in ((1, 1, 1), (1, 1, 1), (0, 1, 1)):
            shape = _conv_out(shape, (3, 3, 3), (2, 2, 2), pad)
        return _conv_out(shape, (3, 1, 1), (2, 1, 1), (self.last_pad,) * 3)


def _conv_out(shape: Sequence[int], k: Int3, s: Int3, p: Sequence[int]) -> Int3:
    return tuple((n + 2 * pi - ki) // si + 1 for n, ki, si, pi in zip(shape, k, s, p, strict=True))  # type: ignore[return-value]


class DSVTSection(_Section):
    """DSVT backbone: the fields of :class:`~perception.models.backbones.dsvt_config.DSVTConfig` except those taken
    from the data and VFE (``point_cloud_range``, ``voxel_size``, ``in_channels``).

    ``stages`` are :class:`~perception.models.backbones.dsvt_config.DSVTStageConfig` mappings (triples ``(z, y, x)``).
    ``sparse_shape`` and ``bev_shape`` may be written out (as in the authors' configs); they are then checked
    against the data grid and the last stage's grid, else derived.
    """

    stages: tuple[dict[str, Any], ...] = Field(min_length=1)
    sparse_shape: tuple[PosInt, PosInt, PosInt] | None = None
    bev_shape: tuple[PosInt, PosInt] | None = None
    dropout: Annotated[float, Strict(), Field(ge=0.0, lt=1.0)] = 0.0
    activation: Literal["gelu", "relu"] = "gelu"
    normalize_pos: Bool = False
    pool_num_heads: PosInt = 8
    pool_mask_empty: Bool = True
    authors_pos_embed: Bool = False

    @field_validator("stages")
    @classmethod
    def _check_stages(cls, stages: tuple[dict[str, Any], ...]) -> tuple[dict[str, Any], ...]:
        from perception.models.backbones.dsvt_config import DSVTStageConfig

        for i, stage in enumerate(stages):
            try:
                DSVTStageConfig.model_validate(stage)
            except ValidationError as exc:
                raise ValueError(f"stages[{i}]: {_errors(exc)}") from None
        return stages

    def to_dsvt_config(
        self, point_cloud_range: Sequence[float], voxel_size: Sequence[float], grid: Int3, in_channels: int
    ) -> DSVTConfig:
        """The validated :class:`DSVTConfig` (its checks raise ``ValueError`` naming the quantity)."""
        from perception.models.backbones.dsvt_config import DSVTConfig, DSVTStageConfig

        if self.sparse_shape is not None and tuple(self.sparse_shape) != tuple(grid):
            raise ValueError(
                f"model.backbone_3d.dsvt.sparse_shape {tuple(self.sparse_shape)} disagrees with the data grid "
                f"{tuple(grid)} (nz, ny, nx) = data.point_cloud_range / data.voxel_size"
            )
        stages = tuple(DSVTStageConfig.model_validate(s) for s in self.stages)
        if in_channels != stages[0].d_model:
            raise ValueError(
                f"the VFE outputs {in_channels} channels but model.backbone_3d.dsvt.stages[0].d_model is "
                f"{stages[0].d_model}: they must be equal"
            )
        fields = self.model_dump(exclude={"stages", "sparse_shape", "bev_shape"})
        probe = DSVTConfig.model_construct(sparse_shape=tuple(grid), stages=stages)
        bev = self.bev_shape if self.bev_shape is not None else probe.stage_shapes[-1][1:]
        try:
            return DSVTConfig.model_validate(
                dict(
                    point_cloud_range=tuple(point_cloud_range),
                    voxel_size=tuple(voxel_size),
                    sparse_shape=tuple(grid),
                    in_channels=in_channels,
                    stages=stages,
                    bev_shape=tuple(bev),
                    **fields,
                )
            )
        except ValidationError as exc:
            raise ValueError(f"model.backbone_3d.dsvt: {_errors(exc)}") from None


class Backbone3DSection(_OneOf):
    spconv_resnet: SpconvResNetSection | None = None
    dsvt: DSVTSection | None = None


# --------------------------------------------------------------------------------------------------------------
# BEV
# --------------------------------------------------------------------------------------------------------------


class ToBEVSection(_Section):
    """Settings of ``height_compression`` / ``pillar_scatter``.

    Attributes:
        num_bev_features: optional, as OpenPCDet's ``NUM_BEV_FEATURES``: checked against the computed channels.
    """

    num_bev_features: PosInt | None = None


class BEVSection(_OneOf):
    height_compression: ToBEVSection | None = None
    pillar_scatter: ToBEVSection | None = None


class BEVBackboneSection(_Section):
    """:class:`~perception.models.bev_backbone.BaseBEVBackbone` settings (same names)."""

    layer_nums: tuple[NonNegInt, ...] = Field(min_length=1)
    layer_strides: tuple[PosInt, ...] = Field(min_length=1)
    num_filters: tuple[PosInt, ...] = Field(min_length=1)
    upsample_strides: tuple[Annotated[float, Strict(), Field(gt=0)], ...] = ()
    num_upsample_filters: tuple[PosInt, ...] = ()
    block: Literal["plain", "residual"] = "plain"
    use_conv_for_no_stride: Bool = False

    @model_validator(mode="after")
    def _check(self) -> BEVBackboneSection:
        n = len(self.layer_nums)
        if len(self.layer_strides) != n or len(self.num_filters) != n:
            raise ValueError("layer_nums, layer_strides and num_filters need the same length")
        if len(self.upsample_strides) != len(self.num_upsample_filters):
            raise ValueError("upsample_strides and num_upsample_filters need the same length")
        if len(self.upsample_strides) not in (0, n, n + 1):
            raise ValueError(f"upsample_strides needs 0, {n} or {n + 1} entries for {n} stages")
        levels = set(self._level_strides())
        if len(levels) != 1:
            raise ValueError(
                f"the stages end at strides {sorted(float(v) for v in levels)} after upsampling; they must agree"
            )
        return self

    def _level_strides(self) -> list[Fraction]:
        ups = [Fraction(u).limit_denominator(1000) for u in self.upsample_strides] or [Fraction(1)] * len(
            self.layer_nums
        )
        return [
            Fraction(math.prod(self.layer_strides[: i + 1])) / ups[i] for i in range(len(self.layer_nums))
        ]

    @property
    def max_stride(self) -> int:
        return math.prod(self.layer_strides)

    @property
    def out_stride(self) -> Fraction:
        stride = self._level_strides()[0]
        if len(self.upsample_strides) == len(self.layer_nums) + 1:
            stride /= Fraction(self.upsample_strides[-1]).limit_denominator(1000)
        return stride

    @property
    def out_channels(self) -> int:
        n = len(self.layer_nums)
        return sum(self.num_upsample_filters[:n]) if self.upsample_strides else sum(self.num_filters)


# --------------------------------------------------------------------------------------------------------------
# heads
# --------------------------------------------------------------------------------------------------------------


class RotatedNMSSection(_Section):
    iou_threshold: Annotated[float, Strict(), Field(ge=0, le=1)] = 0.2
    pre_max: PosInt | None = 1000
    post_max: PosInt | None = 83


class CircleNMSSection(_Section):
    """Circle NMS radii in metres, one per task (CenterPoint's configs list squared metres: take the root)."""

    distances: tuple[NonNegFloat, ...] = Field(min_length=1)
    pre_max: PosInt | None = None
    post_max: PosInt | None = 83


class NMSSection(_OneOf):
    rotated: RotatedNMSSection | None = None
    circle: CircleNMSSection | None = None


class CenterPointDecodeSection(_Section):
    top_k: PosInt = 500
    score_threshold: Float = 0.1
    post_center_range: Range6 | None = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    nms: NMSSection | None = NMSSection(rotated=RotatedNMSSection())


class CenterPointSection(_Section):
    """:class:`~perception.models.heads.centerpoint.CenterPointHead` settings (same names; ``decode`` is its
    ``decode_config``). ``feature_stride`` is optional: when written it must equal the stride of the BEV map."""

    tasks: tuple[tuple[Name, ...], ...] = Field(min_length=1)
    feature_stride: PosInt | None = None
    shared_channels: PosInt = 64
    head_channels: PosInt = 64
    num_head_convs: PosInt = 2
    with_velocity: Bool = True
    code_weights: tuple[NonNegFloat, ...] | None = None
    heatmap_weight: NonNegFloat = 1.0
    bbox_weight: NonNegFloat = 0.25
    max_objects: PosInt = 500
    min_overlap: Annotated[float, Strict(), Field(gt=0, lt=1)] = 0.1
    min_radius: NonNegInt = 2
    decode: CenterPointDecodeSection = CenterPointDecodeSection()

    def check_classes(self, class_names: Sequence[str]) -> None:
        seen: list[str] = []
        for t, task in enumerate(self.tasks):
            for name in task:
                if name not in class_names:
                    raise ValueError(
                        f"model.head.centerpoint.tasks[{t}] names {name!r}, which is not in data.class_names"
                    )
                if name in seen:
                    raise ValueError(f"model.head.centerpoint.tasks: class {name!r} is in more than one task")
                seen.append(name)
        missing = [c for c in class_names if c not in seen]
        if missing:
            raise ValueError(f"model.head.centerpoint.tasks: data.class_names {missing} belong to no task")
        nms = self.decode.nms
        if nms is not None and nms.circle is not None and len(nms.circle.distances) != len(self.tasks):
            raise ValueError(
                f"model.head.centerpoint.decode.nms.circle.distances needs one radius per task ({len(self.tasks)}), "
                f"got {len(nms.circle.distances)}"
            )


class MatchSection(_Section):
    cls_weight: NonNegFloat = 0.15
    focal_alpha: NonNegFloat = 0.25
    focal_gamma: NonNegFloat = 2.0
    center_weight: NonNegFloat = 0.25
    iou_weight: NonNegFloat = 0.25
    iou_mode: Literal["3d", "bev"] = "3d"


class TransFusionLossSection(_Section):
    cls_weight: NonNegFloat = 1.0
    bbox_weight: NonNegFloat = 0.25
    heatmap_weight: NonNegFloat = 1.0
    iou_weight: NonNegFloat = 0.5
    code_weights: tuple[NonNegFloat, ...] | None = None
    focal_alpha: NonNegFloat = 0.25
    focal_gamma: NonNegFloat = 2.0
    gaussian_overlap: Annotated[float, Strict(), Field(gt=0, lt=1)] = 0.1
    min_radius: NonNegInt = 2
    match: MatchSection = MatchSection()


class TransFusionDecodeSection(_Section):
    """Post-processing; ``iou_rectifier`` one value or one per class; ``nms_iou_thresholds`` maps class names to a
    rotated-NMS IoU threshold (classes not listed: no NMS)."""

    score_threshold: Float = 0.0
    post_center_range: Range6 | None = None
    iou_rectifier: NonNegFloat | tuple[NonNegFloat, ...] | None = None
    nms_iou_thresholds: dict[Name, NonNegFloat] | None = None


class TransFusionSection(_Section):
    """:class:`~perception.models.heads.transfusion.TransFusionHead` settings (same names; ``exempt_classes`` are
    class names; ``loss`` / ``decode`` are its ``loss_config`` / ``decode_config``)."""

    feature_stride: PosInt | None = None
    num_proposals: PosInt = 200
    hidden_channels: PosInt = 128
    num_heads: PosInt = 8
    ffn_channels: PosInt = 256
    dropout: Annotated[float, Strict(), Field(ge=0.0, lt=1.0)] = 0.1
    activation: Literal["relu", "gelu"] = "relu"
    nms_kernel_size: PosInt = 3
    exempt_classes: tuple[Name, ...] = ()
    with_velocity: Bool = True
    with_iou: Bool = False
    branch_channels: PosInt = 64
    branch_layers: PosInt = 2
    loss: TransFusionLossSection = TransFusionLossSection()
    decode: TransFusionDecodeSection = TransFusionDecodeSection()

    def check_classes(self, class_names: Sequence[str]) -> None:
        names = list(self.exempt_classes) + list(self.decode.nms_iou_thresholds or {})
        for name in names:
            if name not in class_names:
                raise ValueError(
                    f"model.head.transfusion names class {name!r}, which is not in data.class_names"
                )
        if self.num_heads and self.hidden_channels % self.num_heads:
            raise ValueError(
                f"model.head.transfusion.num_heads ({self.num_heads}) must divide hidden_channels "
                f"({self.hidden_channels})"
            )


class HeadSection(_OneOf):
    centerpoint: CenterPointSection | None = None
    transfusion: TransFusionSection | None = None


# --------------------------------------------------------------------------------------------------------------
# the model and its shape plan
# --------------------------------------------------------------------------------------------------------------


class DataLike(Protocol):
    """What the cross-checks read from :class:`~perception.config_schema.DataConfig`."""

    @property
    def point_cloud_range(self) -> Sequence[float]: ...

    @property
    def voxel_size(self) -> Sequence[float]: ...

    @property
    def class_names(self) -> Sequence[str]: ...

    @property
    def grid(self) -> VoxelGrid: ...


@dataclass(frozen=True)
class ModelPlan:
    """Shapes through the stages, computed from the config alone.

    Attributes:
        grid: voxel grid ``(nz, ny, nx)``.
        vfe_channels: channels of the VFE output.
        backbone_grid: grid ``(D, H, W)`` of the 3D backbone output.
        backbone_channels: channels of the 3D backbone output.
        backbone_stride: x/y stride of the 3D backbone output w.r.t. the voxel grid.
        bev_channels: channels of the BEV map (``C * D`` after height compression).
        bev_backbone_channels: channels of the 2D backbone output.
        feature_stride: total stride of the head's input w.r.t. the voxel grid.
        feature_map_size: ``(H, W)`` of the head's input.
        dsvt: the DSVT backbone config (None for other backbones).
    """

    grid: Int3
    vfe_channels: int
    backbone_grid: Int3
    backbone_channels: int
    backbone_stride: int
    bev_channels: int
    bev_backbone_channels: int
    feature_stride: int
    feature_map_size: tuple[int, int]
    dsvt: DSVTConfig | None = None


class ModelConfig(_Section):
    """A voxel detector: voxelize -> vfe -> backbone_3d -> bev -> bev_backbone -> head.

    Attributes:
        num_point_features: point columns ``C`` the detector reads (nuScenes ``[x, y, z, intensity, time_lag]``: 5).
        voxelization / vfe / backbone_3d / bev / bev_backbone / head: the stages (see the section classes).
    """

    num_point_features: Annotated[int, Strict(), Field(ge=3)]
    voxelization: VoxelizationSection
    vfe: VFESection
    backbone_3d: Backbone3DSection
    bev: BEVSection
    bev_backbone: BEVBackboneSection
    head: HeadSection

    def plan(self, data: DataLike) -> ModelPlan:
        """Follow the shapes through the stages; ``ValueError`` naming the keys that disagree."""
        grid: Int3 = data.grid.shape
        vfe = self.vfe
        mode = "hard" if vfe.name == "mean" else "dynamic"
        if self.voxelization.mode != mode:
            raise ValueError(
                f"model.vfe.{vfe.name} needs model.voxelization.mode: {mode}, got {self.voxelization.mode}"
            )
        if vfe.name == "dynamic_pillar" and grid[0] != 1:
            raise ValueError(
                f"model.vfe.dynamic_pillar needs one voxel along z: data.voxel_size z ({data.voxel_size[2]:g}) must "
                f"equal the z extent of data.point_cloud_range, but the grid (nz, ny, nx) is {grid}"
            )
        vfe_channels = self.num_point_features if vfe.name == "mean" else vfe.settings.filters[-1]

        bb = self.backbone_3d
        dsvt = None
        if bb.name == "spconv_resnet":
            out_grid = bb.settings.out_grid(grid)
            if min(out_grid) < 1:
                raise ValueError(
                    f"model.backbone_3d.spconv_resnet: the data grid {grid} is too small (output grid {out_grid}); "
                    "it needs about 10 or more voxels along z (not a pillar grid)"
                )
            stride, channels = 8, bb.settings.out_channels
            exact = (-(-grid[1] // 8), -(-grid[2] // 8))
            if out_grid[1:] != exact:
                raise ValueError(
                    f"model.backbone_3d.spconv_resnet: output grid {out_grid} is not the grid / 8"
                )
        else:
            dsvt = bb.settings.to_dsvt_config(data.point_cloud_range, data.voxel_size, grid, vfe_channels)
            out_grid = dsvt.out_shape
            strides = [s.downsample_stride for s in dsvt.stages if s.downsample_stride is not None]
            sy, sx = math.prod(s[1] for s in strides), math.prod(s[2] for s in strides)
            if sy != sx:
                raise ValueError(f"model.backbone_3d.dsvt: y and x downsample strides differ ({sy} vs {sx})")
            stride, channels = sy, dsvt.out_channels

        bev = self.bev
        if bev.name == "pillar_scatter" and out_grid[0] != 1:
            raise ValueError(
                f"model.bev.pillar_scatter needs a backbone output with one z layer, but "
                f"model.backbone_3d.{bb.name} outputs the grid {out_grid}; use height_compression"
            )
        bev_channels = channels * out_grid[0]
        if bev.settings.num_bev_features is not None and bev.settings.num_bev_features != bev_channels:
            raise ValueError(
                f"model.bev.{bev.name}.num_bev_features is {bev.settings.num_bev_features} but the backbone gives "
                f"{channels} channels x {out_grid[0]} z layers = {bev_channels}"
            )
        h, w = out_grid[1], out_grid[2]
        b2 = self.bev_backbone
        if h % b2.max_stride or w % b2.max_stride:
            raise ValueError(
                f"the BEV map is {h} x {w} but model.bev_backbone.layer_strides {list(b2.layer_strides)} need "
                f"multiples of {b2.max_stride}"
            )
        total = Fraction(stride) * b2.out_stride
        if total.denominator != 1:
            raise ValueError(
                f"the head's feature stride would be {float(total):g} (backbone {stride} x bev_backbone "
                f"{float(b2.out_stride):g}); it must be a whole number"
            )
        feature_stride = int(total)
        head = self.head
        if head.settings.feature_stride is not None and head.settings.feature_stride != feature_stride:
            raise ValueError(
                f"model.head.{head.name}.feature_stride is {head.settings.feature_stride} but the BEV map has stride "
                f"{feature_stride} (backbone_3d {stride} x bev_backbone {float(b2.out_stride):g})"
            )
        map_size = (int(h / b2.out_stride), int(w / b2.out_stride))
        expected = (-(-grid[1] // feature_stride), -(-grid[2] // feature_stride))
        if map_size != expected:
            raise ValueError(
                f"the head's input map would be {map_size} but the head expects ceil(grid / {feature_stride}) = "
                f"{expected} for the grid {grid}"
            )
        head.settings.check_classes(data.class_names)
        return ModelPlan(
            grid=grid,
            vfe_channels=vfe_channels,
            backbone_grid=out_grid,
            backbone_channels=channels,
            backbone_stride=stride,
            bev_channels=bev_channels,
            bev_backbone_channels=b2.out_channels,
            feature_stride=feature_stride,
            feature_map_size=map_size,
            dsvt=dsvt,
        )


def _errors(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


__all__ = ["ModelConfig", "ModelPlan"]
