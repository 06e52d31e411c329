"""Typed ``model:`` section of an experiment config: one config class per stage, and the config-time shape plan.

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

Each class here (and the stage configs it names: :class:`~.backbones.dsvt_config.DSVTConfig`,
:class:`~.backbones.spconv_resnet_config.SpconvResNetConfig`, :class:`~.heads.centerpoint_config.CenterPointConfig`,
:class:`~.heads.transfusion_config.TransFusionConfig`) is both the YAML schema and what the built module reads:
strict and frozen (:class:`~perception.config_types.StrictSection`), with no runtime mirror class.

Shapes: every stage config computes its ``output_shape(input)`` (:mod:`perception.shapes`) without building
anything, and the built module's ``output_shape()`` returns that same computation. :meth:`ModelConfig.plan`
follows them from the data's :class:`~perception.grid.VoxelGrid` to the head's input map and raises ``ValueError``
naming the keys that disagree; :class:`~perception.config_schema.ExperimentConfig` calls it, so ``load_config``
reports these errors with the file name.

Torch-free (pydantic only), so loading a config stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Literal, Protocol

from pydantic import Field, Strict, model_validator

from perception.config_types import Bool, NonNegInt, OneOf, PosInt, PositiveFloat, StrictSection
from perception.grid import VoxelGrid
from perception.shapes import MapShape, SparseShape

from .backbones.dsvt_config import DSVTConfig
from .backbones.spconv_resnet_config import SpconvResNetConfig
from .fusion.fusion_config import SparseFusionConfig
from .heads.centerpoint_config import CenterPointConfig
from .heads.transfusion_config import TransFusionConfig

__all__ = [
    "BEVBackboneConfig",
    "BEVConfig",
    "Backbone3DConfig",
    "DynamicVFEConfig",
    "HeadConfig",
    "MeanVFEConfig",
    "ModelConfig",
    "ModelPlan",
    "ToBEVConfig",
    "VFEConfig",
    "VoxelizationConfig",
    "bev_map_shape",
]

# --------------------------------------------------------------------------------------------------------------
# voxelization and VFE
# --------------------------------------------------------------------------------------------------------------


class VoxelizationConfig(StrictSection):
    """How points become voxels (range and voxel size come from ``data``: the :class:`VoxelGrid`).

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
    def _check(self) -> VoxelizationConfig:
        caps = (self.max_points_per_voxel, self.max_voxels_train, self.max_voxels_test)
        if self.mode == "dynamic" and any(c is not None for c in caps):
            raise ValueError(
                "max_points_per_voxel / max_voxels_* apply to mode: hard only (dynamic keeps every point)"
            )
        if self.mode == "hard" and self.max_points_per_voxel is None:
            raise ValueError("mode: hard needs max_points_per_voxel")
        return self

    def max_voxels(self, training: bool) -> int | None:
        """The voxel cap of the mode the model is in."""
        return self.max_voxels_train if training else self.max_voxels_test


class MeanVFEConfig(StrictSection):
    """:class:`~perception.models.vfe.MeanVFE` (no settings)."""


class DynamicVFEConfig(StrictSection):
    """:class:`~perception.models.vfe.DynamicPillarVFE` / ``DynamicVoxelVFE`` settings.

    Attributes:
        filters: output widths of the stacked layers, e.g. ``(128, 128)`` (DSVT nuScenes); inner widths even.
        use_absolute_xyz: include the raw xyz among the point features (else only the columns after xyz).
        with_distance: append the point's distance to the origin.
        use_norm: BatchNorm1d after each bias-free Linear (else a Linear with bias).
        reduce: per-voxel reduction of every layer, ``"max"`` or ``"mean"``.
        feature_scale: ``C - 3`` multipliers (> 0) of the point columns after x, y, z as the encoder reads them,
            e.g. ``[0.01, 5.0]`` for nuScenes' ``[intensity (0-255), time_lag (0-0.45 s)]``: brings them to the
            scale of the geometric features so that a short training can use them (a 0.2 s time lag beside a
            0-255 intensity is invisible to the first layer for thousands of steps). The geometry (xyz and the
            offsets) is not scaled. ``None`` (default): as loaded, like OpenPCDet.
    """

    filters: tuple[PosInt, ...] = Field(min_length=1)
    use_absolute_xyz: Bool = True
    with_distance: Bool = False
    use_norm: Bool = True
    reduce: Literal["max", "mean"] = "max"
    feature_scale: tuple[PositiveFloat, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> DynamicVFEConfig:
        odd = [f for f in self.filters[:-1] if f % 2]
        if odd:
            raise ValueError(
                f"filters: inner layers need even widths (half is concatenated), got {list(self.filters)}"
            )
        return self


class VFEConfig(OneOf):
    """The VFE: ``mean`` (hard voxels), ``dynamic_pillar`` or ``dynamic_voxel`` (dynamic voxelization)."""

    mean: MeanVFEConfig | None = None
    dynamic_pillar: DynamicVFEConfig | None = None
    dynamic_voxel: DynamicVFEConfig | None = None

    @property
    def voxel_mode(self) -> Literal["hard", "dynamic"]:
        """The voxelization mode the chosen VFE reads."""
        return "hard" if self.mean is not None else "dynamic"

    def output_shape(self, num_point_features: int, grid: VoxelGrid) -> SparseShape:
        """Features on the voxel grid: ``C`` point columns (mean) or ``filters[-1]`` channels."""
        if self.dynamic_pillar is not None and not grid.is_pillar:
            raise ValueError(
                f"model.vfe.dynamic_pillar needs one voxel along z: data.voxel_size z ({grid.voxel_size[2]:g}) must "
                f"equal the z extent of data.point_cloud_range, but the grid (nz, ny, nx) is {grid.shape}"
            )
        settings = self.settings
        channels = num_point_features if isinstance(settings, MeanVFEConfig) else settings.filters[-1]
        return SparseShape(channels, grid.shape, 1)


# --------------------------------------------------------------------------------------------------------------
# 3D backbone and BEV
# --------------------------------------------------------------------------------------------------------------


class Backbone3DConfig(OneOf):
    """The sparse 3D backbone: ``spconv_resnet`` or ``dsvt``."""

    spconv_resnet: SpconvResNetConfig | None = None
    dsvt: DSVTConfig | None = None

    def output_shape(self, input: SparseShape) -> SparseShape:
        return self.settings.output_shape(input)


def bev_map_shape(input: SparseShape) -> MapShape:
    """The dense map of sparse features ``input``: ``C * nz`` channels (height folded into channels), ``(ny, nx)``."""
    nz, ny, nx = input.grid
    return MapShape(input.channels * nz, (ny, nx), Fraction(input.stride))


class ToBEVConfig(StrictSection):
    """Settings of ``height_compression`` / ``pillar_scatter``.

    Attributes:
        num_bev_features: optional, as OpenPCDet's ``NUM_BEV_FEATURES``: checked against the computed channels.
    """

    num_bev_features: PosInt | None = None


class BEVConfig(OneOf):
    """Sparse -> dense: ``height_compression`` (any nz) or ``pillar_scatter`` (nz == 1)."""

    height_compression: ToBEVConfig | None = None
    pillar_scatter: ToBEVConfig | None = None

    def output_shape(self, input: SparseShape, *, backbone: str = "backbone_3d") -> MapShape:
        if self.pillar_scatter is not None and input.grid[0] != 1:
            raise ValueError(
                f"model.bev.pillar_scatter needs a backbone output with one z layer, but "
                f"model.{backbone} outputs the grid {input.grid}; use height_compression"
            )
        out = bev_map_shape(input)
        wanted = self.settings.num_bev_features
        if wanted is not None and wanted != out.channels:
            raise ValueError(
                f"model.bev.{self.name}.num_bev_features is {wanted} but the backbone gives "
                f"{input.channels} channels x {input.grid[0]} z layers = {out.channels}"
            )
        return out


class BEVBackboneConfig(StrictSection):
    """:class:`~perception.models.bev_backbone.BaseBEVBackbone` settings.

    Attributes:
        layer_nums: extra layers (plain) or blocks (residual) per stage after the first one, e.g. ``(5, 5)``.
        layer_strides: stride of each stage's first layer, e.g. ``(1, 2)``.
        num_filters: width of each stage, e.g. ``(128, 256)``.
        upsample_strides: per-stage deblock stride (``u >= 1`` integer or ``1 / integer``), optionally one more
            for a final deblock on the concatenation; empty for no deblocks. E.g. ``(1, 2)`` (CenterPoint) or
            ``(0.5, 1, 2)`` (DSVT nuScenes).
        num_upsample_filters: output width of each deblock, e.g. ``(256, 256)``.
        block: ``"plain"`` (CenterPoint) or ``"residual"`` (DSVT).
        use_conv_for_no_stride: ``u == 1`` deblocks use a 1x1 Conv2d instead of a ConvTranspose2d (plain only).
    """

    layer_nums: tuple[NonNegInt, ...] = Field(min_length=1)
    layer_strides: tuple[PosInt, ...] = Field(min_length=1)
    num_filters: tuple[PosInt, ...] = Field(min_length=1)
    upsample_strides: tuple[Annotated[float, Strict(), Field(gt=0)], ...] = ()
    num_upsample_filters: tuple[PosInt, ...] = ()
    block: Literal["plain", "residual"] = "plain"
    use_conv_for_no_stride: Bool = False

    @model_validator(mode="after")
    def _check(self) -> BEVBackboneConfig:
        n = len(self.layer_nums)
        if len(self.layer_strides) != n or len(self.num_filters) != n:
            raise ValueError("layer_nums, layer_strides and num_filters need the same length")
        if len(self.upsample_strides) != len(self.num_upsample_filters):
            raise ValueError("upsample_strides and num_upsample_filters need the same length")
        if len(self.upsample_strides) not in (0, n, n + 1):
            raise ValueError(f"upsample_strides needs 0, {n} or {n + 1} entries for {n} stages")
        for u in self.upsample_fractions:
            if u.denominator != 1 and u.numerator != 1:
                raise ValueError(f"upsample_strides must be integers or 1 / integer, got {float(u):g}")
        levels = set(self.level_strides)
        if len(levels) != 1:
            raise ValueError(
                f"the stages end at strides {sorted(float(v) for v in levels)} after upsampling; they must agree"
            )
        return self

    @property
    def upsample_fractions(self) -> tuple[Fraction, ...]:
        """``upsample_strides`` as exact fractions (``0.5`` -> ``1/2``)."""
        return tuple(Fraction(u).limit_denominator(1000) for u in self.upsample_strides)

    @property
    def cumulative_strides(self) -> tuple[int, ...]:
        """Stride of each stage's output w.r.t. the input map (before its deblock)."""
        out, acc = [], 1
        for s in self.layer_strides:
            acc *= s
            out.append(acc)
        return tuple(out)

    @property
    def level_strides(self) -> tuple[Fraction, ...]:
        """Stride of each stage's output after its deblock (all equal in a valid config)."""
        ups = self.upsample_fractions or (Fraction(1),) * len(self.layer_nums)
        return tuple(Fraction(c) / ups[i] for i, c in enumerate(self.cumulative_strides))

    @property
    def max_stride(self) -> int:
        """The largest stage stride: input height and width must be multiples of it."""
        return self.cumulative_strides[-1]

    @property
    def out_stride(self) -> Fraction:
        """Stride of the output w.r.t. the input map (e.g. 1 for CenterPoint, 2 for DSVT nuScenes)."""
        stride = self.level_strides[0]
        if len(self.upsample_strides) == len(self.layer_nums) + 1:
            stride /= self.upsample_fractions[-1]
        return stride

    @property
    def out_channels(self) -> int:
        n = len(self.layer_nums)
        return sum(self.num_upsample_filters[:n]) if self.upsample_strides else sum(self.num_filters)

    def output_shape(self, input: MapShape) -> MapShape:
        """The output map for ``input``; ``ValueError`` when the input size does not fit the strides."""
        h, w = input.size
        if h % self.max_stride or w % self.max_stride:
            raise ValueError(
                f"the BEV map is {h} x {w} but model.bev_backbone.layer_strides {list(self.layer_strides)} need "
                f"multiples of {self.max_stride}"
            )
        size = (int(h / self.out_stride), int(w / self.out_stride))
        return MapShape(self.out_channels, size, input.stride * self.out_stride)


# --------------------------------------------------------------------------------------------------------------
# heads
# --------------------------------------------------------------------------------------------------------------


class HeadConfig(OneOf):
    """The detection head: ``centerpoint`` or ``transfusion``."""

    centerpoint: CenterPointConfig | None = None
    transfusion: TransFusionConfig | None = None

    def check_input(self, input: MapShape, grid: VoxelGrid) -> int:
        """The head's (whole) feature stride for the map ``input``; ``ValueError`` naming the key."""
        return self.settings.check_input(input, grid)


# --------------------------------------------------------------------------------------------------------------
# the model and its shape plan
# --------------------------------------------------------------------------------------------------------------


class DataLike(Protocol):
    """What the plan reads of :class:`~perception.config_schema.DataConfig`."""

    @property
    def grid(self) -> VoxelGrid: ...

    @property
    def class_names(self) -> Sequence[str]: ...


@dataclass(frozen=True)
class ModelPlan:
    """Shapes through the stages, computed from the config alone (the built modules report the same).

    Attributes:
        grid: the voxel grid (from ``data``).
        vfe: output of the VFE (channels on the voxel grid, stride 1).
        backbone_3d: output of the 3D backbone.
        bev: the dense BEV map (``C * D`` channels after height compression).
        head_input: output of the 2D backbone, the head's input map (its stride is the head's feature stride).
    """

    grid: VoxelGrid
    vfe: SparseShape
    backbone_3d: SparseShape
    bev: MapShape
    head_input: MapShape

    @property
    def feature_stride(self) -> int:
        """Total x/y stride of the head's input w.r.t. the voxel grid (a whole number, checked)."""
        return int(self.head_input.stride)


class ModelConfig(StrictSection):
    """A voxel detector: voxelize -> vfe -> backbone_3d -> bev -> bev_backbone -> head.

    Attributes:
        num_point_features: point columns ``C`` the detector reads (nuScenes ``[x, y, z, intensity, time_lag]``: 5).
        voxelization / vfe / backbone_3d / bev / bev_backbone / head: the stages (see the config classes).
        fusion: SparseFusion's camera branch and fusion stages on top of these LiDAR stages
            (:class:`~.fusion.fusion_config.SparseFusionConfig`; the head must be ``transfusion``); None: a
            LiDAR-only detector.
    """

    num_point_features: Annotated[int, Strict(), Field(ge=3)]
    voxelization: VoxelizationConfig
    vfe: VFEConfig
    backbone_3d: Backbone3DConfig
    bev: BEVConfig
    bev_backbone: BEVBackboneConfig
    head: HeadConfig
    fusion: SparseFusionConfig | None = None

    def plan(self, data: DataLike) -> ModelPlan:
        """Follow the shapes through the stages on ``data.grid`` for ``data.class_names``; ``ValueError`` naming
        the keys that disagree."""
        grid, class_names = data.grid, tuple(data.class_names)
        if self.voxelization.mode != self.vfe.voxel_mode:
            raise ValueError(
                f"model.vfe.{self.vfe.name} needs model.voxelization.mode: {self.vfe.voxel_mode}, "
                f"got {self.voxelization.mode}"
            )
        vfe = self.vfe.output_shape(self.num_point_features, grid)
        backbone = self.backbone_3d.output_shape(vfe)
        bev = self.bev.output_shape(backbone, backbone=f"backbone_3d.{self.backbone_3d.name}")
        head_input = self.bev_backbone.output_shape(bev)
        self.head.check_input(head_input, grid)
        self.head.settings.check_classes(class_names)
        if self.fusion is not None and self.head.transfusion is None:
            raise ValueError(
                f"model.fusion (SparseFusion) needs model.head.transfusion, got model.head.{self.head.name}"
            )
        return ModelPlan(grid=grid, vfe=vfe, backbone_3d=backbone, bev=bev, head_input=head_input)
