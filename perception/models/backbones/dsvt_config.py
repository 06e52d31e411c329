"""Typed configuration of the DSVT backbone, the authors' two configs, and the shape-consistency checks.

All triples follow the project convention ``(z, y, x)`` (grid shape ``[nz, ny, nx]``, voxel coords
``[b, z, y, x]``), except the metric quantities ``point_cloud_range`` ``(x0, y0, z0, x1, y1, z1)`` and
``voxel_size`` ``(x, y, z)``, which follow the data config. The DSVT authors list windows, strides, factors and
shifts as ``(x, y, z)``; :func:`dsvt_config_from_authors` reverses them.

Validation (pydantic, frozen, unknown keys rejected) catches the disagreements that make the authors' code crash
deep inside a forward pass, each with a message naming the quantity: point range / voxel size vs ``sparse_shape``,
``in_channels`` vs ``d_model``, windows and shifts vs the stage grids, 2-D vs 3-D positional embeddings, heads vs
``d_model``, pooling strides vs stages, and ``bev_shape`` vs the last stage's grid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from perception.config_types import Bool, Float, PositiveFloat
from perception.grid import GRID_TOLERANCE

Int3 = tuple[int, int, int]
PosInt = Annotated[int, Field(strict=True, ge=1)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
PosInt3 = tuple[PosInt, PosInt, PosInt]
NonNegInt3 = tuple[NonNegInt, NonNegInt, NonNegInt]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DSVTStageConfig(_Section):
    """One DSVT stage (all triples ``(z, y, x)``, in voxels of this stage's grid).

    Attributes:
        window_shape: base window ``(wz, wy, wx)`` of the first (unshifted) window configuration.
        hybrid_factor: the second configuration's window is ``window_shape * hybrid_factor``.
        shift: shift ``(sz, sy, sx)`` of the second configuration, each in ``[0, its window]``.
        base_shift: shift of the first configuration (the authors: ``(0, 0, 0)``).
        set_size: voxels per set.
        num_blocks: DSVT blocks in the stage (each = two set-attention layers).
        d_model: channels of the stage.
        num_heads: attention heads; must divide ``d_model``.
        dim_feedforward: hidden width of the feed-forward networks.
        downsample_stride: attention-pooling stride ``(sz, sy, sx)`` to the next stage; ``None`` for the last.
    """

    window_shape: PosInt3
    hybrid_factor: PosInt3 = (1, 1, 1)
    shift: NonNegInt3
    base_shift: NonNegInt3 = (0, 0, 0)
    set_size: PosInt
    num_blocks: PosInt
    d_model: PosInt
    num_heads: PosInt
    dim_feedforward: PosInt
    downsample_stride: PosInt3 | None = None

    @property
    def hybrid_window_shape(self) -> Int3:
        """Window ``(wz, wy, wx)`` of the second (shifted) configuration."""
        w, f = self.window_shape, self.hybrid_factor
        return (w[0] * f[0], w[1] * f[1], w[2] * f[2])


class DSVTConfig(_Section):
    """The DSVT backbone.

    Attributes:
        point_cloud_range: metres ``(x0, y0, z0, x1, y1, z1)``.
        voxel_size: metres ``(vx, vy, vz)`` of the input grid.
        sparse_shape: input grid ``(nz, ny, nx)``; must equal range extent / voxel size per axis.
        in_channels: channels of the input voxel features (VFE output); must equal ``stages[0].d_model``.
        stages: the stages; all but the last need ``downsample_stride``.
        bev_shape: ``(H, W)`` of the BEV map built from the output; must equal the last stage's ``(ny, nx)``.
        dropout: attention dropout probability (training only).
        activation: feed-forward activation (``"gelu"`` as the authors, or ``"relu"``).
        normalize_pos: scale centred in-window coordinates to ``[-pi, pi)`` before the positional MLP.
        pool_num_heads: heads of the attention pooling (the authors hard-code 8).
        pool_mask_empty: exclude empty pooling slots from the max query and the attention keys (correct);
            ``False`` reproduces the authors (empty slots take part as zero features).
        authors_pos_embed: reproduce the authors' positional-embedding mix-up (their issue #50): layer ``i`` of
            every block gets the embedding of window configuration ``i`` instead of the block's configuration.
            Needed to reproduce their checkpoints; ``False`` (default) is the correct behaviour.
    """

    point_cloud_range: tuple[Float, Float, Float, Float, Float, Float]
    voxel_size: tuple[PositiveFloat, PositiveFloat, PositiveFloat]
    sparse_shape: PosInt3
    in_channels: PosInt
    stages: tuple[DSVTStageConfig, ...] = Field(min_length=1)
    bev_shape: tuple[PosInt, PosInt]
    dropout: Annotated[float, Field(strict=True, ge=0.0, lt=1.0)] = 0.0
    activation: Literal["gelu", "relu"] = "gelu"
    normalize_pos: Bool = False
    pool_num_heads: PosInt = 8
    pool_mask_empty: Bool = True
    authors_pos_embed: Bool = False

    @property
    def stage_shapes(self) -> tuple[Int3, ...]:
        """Grid ``(nz, ny, nx)`` of every stage: each is ``ceil(previous / downsample_stride)``."""
        shapes: list[Int3] = [self.sparse_shape]
        for stage in self.stages[:-1]:
            prev, st = shapes[-1], stage.downsample_stride or (1, 1, 1)
            shapes.append((_ceil_div(prev[0], st[0]), _ceil_div(prev[1], st[1]), _ceil_div(prev[2], st[2])))
        return tuple(shapes)

    @property
    def out_channels(self) -> int:
        """Channels of the backbone output (the last stage's ``d_model``)."""
        return self.stages[-1].d_model

    @property
    def out_shape(self) -> Int3:
        """Grid ``(nz, ny, nx)`` of the output voxels."""
        return self.stage_shapes[-1]

    @model_validator(mode="after")
    def _check(self) -> DSVTConfig:
        _check_grid(self.point_cloud_range, self.voxel_size, self.sparse_shape)
        if self.in_channels != self.stages[0].d_model:
            raise ValueError(
                f"in_channels ({self.in_channels}) must equal stages[0].d_model ({self.stages[0].d_model}): "
                "the VFE output feeds the first stage directly"
            )
        last = len(self.stages) - 1
        for s, stage in enumerate(self.stages):
            _check_stage(s, stage, self.stage_shapes[s], is_last=s == last, pool_heads=self.pool_num_heads)
            if s < last and stage.d_model != self.stages[s + 1].d_model:
                raise ValueError(
                    f"stages[{s}].d_model ({stage.d_model}) must equal stages[{s + 1}].d_model "
                    f"({self.stages[s + 1].d_model}): attention pooling keeps the channel count"
                )
        out = self.stage_shapes[-1]
        if tuple(self.bev_shape) != (out[1], out[2]):
            raise ValueError(
                f"bev_shape {tuple(self.bev_shape)} must equal the last stage's (ny, nx) = {(out[1], out[2])} "
                f"(sparse_shape {tuple(self.sparse_shape)} after the downsample strides)"
            )
        return self


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _check_grid(pc_range: Sequence[float], voxel_size: Sequence[float], sparse_shape: Sequence[int]) -> None:
    for i, axis in enumerate("xyz"):
        lo, hi, v = pc_range[i], pc_range[i + 3], voxel_size[i]
        if not lo < hi:
            raise ValueError(f"point_cloud_range: {axis}_min ({lo}) must be < {axis}_max ({hi})")
        n_float = (hi - lo) / v
        n = sparse_shape[2 - i]
        if abs((hi - lo) - n * v) > GRID_TOLERANCE:
            raise ValueError(
                f"sparse_shape n{axis} = {n} disagrees with point_cloud_range and voxel_size: "
                f"({hi:g} - {lo:g}) / {v:g} = {n_float:g} voxels along {axis}"
            )


def _check_stage(s: int, stage: DSVTStageConfig, shape: Int3, *, is_last: bool, pool_heads: int) -> None:
    name = f"stages[{s}]"
    if stage.d_model % stage.num_heads:
        raise ValueError(f"{name}.num_heads ({stage.num_heads}) must divide d_model ({stage.d_model})")
    if not is_last:
        if stage.downsample_stride is None:
            raise ValueError(f"{name}.downsample_stride is required: every stage but the last pools")
        if stage.d_model % pool_heads:
            raise ValueError(f"pool_num_heads ({pool_heads}) must divide {name}.d_model ({stage.d_model})")
    elif stage.downsample_stride is not None:
        raise ValueError(f"{name}.downsample_stride must be None: the last stage has no pooling after it")
    windows = (
        ("window_shape", stage.window_shape, stage.base_shift, "base_shift"),
        ("window_shape * hybrid_factor", stage.hybrid_window_shape, stage.shift, "shift"),
    )
    for wname, window, shift, sname in windows:
        for a, axis in enumerate("zyx"):
            if axis == "z" and window[a] > shape[a]:
                raise ValueError(
                    f"{name}.{wname} z = {window[a]} exceeds the stage grid nz = {shape[a]} "
                    f"(stage grid (nz, ny, nx) = {shape})"
                )
            if shift[a] > window[a]:
                raise ValueError(
                    f"{name}.{sname} {axis} = {shift[a]} must lie in [0, {window[a]}] ({wname} {axis})"
                )
        if (window[0] > 1) != (shape[0] > 1):
            raise ValueError(
                f"{name}.{wname} z = {window[0]} with stage grid nz = {shape[0]}: a stage with several z layers "
                "needs windows spanning z > 1 (3-D positional embedding) and a single-layer stage windows of "
                "z = 1 (2-D embedding)"
            )


# --------------------------------------------------------------------------------------------------------------
# The authors' configurations
# --------------------------------------------------------------------------------------------------------------


def dsvt_pillar_nuscenes(**overrides: Any) -> DSVTConfig:
    """The authors' nuScenes DSVT-pillar backbone (``dsvt_plain_1f_onestage_nusences.yaml``).

    +-54 m, 0.3 m pillars (z: -5..3 m in one 8 m layer), 360 x 360 grid, window 30 x 30 and 30 x 30 shifted by
    (15, 15), set size 90, 4 blocks, d_model 128, 8 heads, FFN 256, BEV 360 x 360. ``overrides`` replace
    top-level fields (e.g. ``authors_pos_embed=True``).
    """
    stage = DSVTStageConfig(
        window_shape=(1, 30, 30),
        hybrid_factor=(1, 1, 1),
        shift=(0, 15, 15),
        set_size=90,
        num_blocks=4,
        d_model=128,
        num_heads=8,
        dim_feedforward=256,
    )
    fields: dict[str, Any] = dict(
        point_cloud_range=(-54.0, -54.0, -5.0, 54.0, 54.0, 3.0),
        voxel_size=(0.3, 0.3, 8.0),
        sparse_shape=(1, 360, 360),
        in_channels=128,
        stages=(stage,),
        bev_shape=(360, 360),
    )
    fields.update(overrides)
    return DSVTConfig(**fields)


def dsvt_voxel_waymo(**overrides: Any) -> DSVTConfig:
    """The authors' Waymo DSVT-voxel backbone (``dsvt_3D_1f_onestage.yaml``).

    0.32 x 0.32 x 0.1875 m voxels on a 468 x 468 x 32 grid (+-74.88 m, z -2..4 m), 4 stages of one block with
    windows 12 x 12 x {32, 8, 2, 1} and a 24 x 24 shifted (6, 6) configuration, set size 48, attention pooling
    with z strides 4, 4, 2, d_model 192, 8 heads, FFN 384, BEV 468 x 468.
    """
    zs = (32, 8, 2, 1)
    strides: tuple[Int3 | None, ...] = ((4, 1, 1), (4, 1, 1), (2, 1, 1), None)
    stages = tuple(
        DSVTStageConfig(
            window_shape=(wz, 12, 12),
            hybrid_factor=(1, 2, 2),
            shift=(0, 6, 6),
            set_size=48,
            num_blocks=1,
            d_model=192,
            num_heads=8,
            dim_feedforward=384,
            downsample_stride=st,
        )
        for wz, st in zip(zs, strides, strict=True)
    )
    fields: dict[str, Any] = dict(
        point_cloud_range=(-74.88, -74.88, -2.0, 74.88, 74.88, 4.0),
        voxel_size=(0.32, 0.32, 0.1875),
        sparse_shape=(32, 468, 468),
        in_channels=192,
        stages=stages,
        bev_shape=(468, 468),
    )
    fields.update(overrides)
    return DSVTConfig(**fields)


def dsvt_config_from_authors(
    backbone_cfg: Mapping[str, Any],
    *,
    point_cloud_range: Sequence[float],
    voxel_size: Sequence[float],
    **overrides: Any,
) -> DSVTConfig:
    """Our config from the authors' ``MODEL.BACKBONE_3D`` mapping (their YAML, ``(x, y, z)`` order).

    Reads ``INPUT_LAYER`` (sparse_shape, downsample_stride, d_model, set_info, window_shape, hybrid_factor,
    shifts_list, normalize_pos), ``nhead``, ``dim_feedforward``, ``dropout``, ``activation``, ``output_shape`` and
    ``reduction_type`` (only ``"attention"`` is supported). The result has ``authors_pos_embed=True`` and
    ``pool_mask_empty=False`` (their behaviour) unless ``overrides`` say otherwise.

    Raises:
        ValueError: a missing key, an unsupported reduction type, or any check of :class:`DSVTConfig`.
    """

    def rev(v: Sequence[int]) -> Int3:
        if len(v) != 3:
            raise ValueError(f"expected an (x, y, z) triple, got {list(v)}")
        return (int(v[2]), int(v[1]), int(v[0]))

    try:
        inp = backbone_cfg["INPUT_LAYER"]
        reduction = backbone_cfg.get("reduction_type", "attention")
        if reduction != "attention":
            raise ValueError(f"reduction_type {reduction!r} is not supported (only 'attention')")
        n = len(inp["d_model"])
        strides = [rev(st) for st in inp["downsample_stride"]]
        if len(strides) != n - 1:
            raise ValueError(f"INPUT_LAYER.downsample_stride needs {n - 1} entries, got {len(strides)}")
        stages = []
        for s in range(n):
            shifts = inp["shifts_list"][s]
            stages.append(
                DSVTStageConfig(
                    window_shape=rev(inp["window_shape"][s]),
                    hybrid_factor=rev(inp["hybrid_factor"]),
                    base_shift=rev(shifts[0]),
                    shift=rev(shifts[1]),
                    set_size=int(inp["set_info"][s][0]),
                    num_blocks=int(inp["set_info"][s][1]),
                    d_model=int(inp["d_model"][s]),
                    num_heads=int(backbone_cfg["nhead"][s]),
                    dim_feedforward=int(backbone_cfg["dim_feedforward"][s]),
                    downsample_stride=strides[s] if s < n - 1 else None,
                )
            )
        out_shape = backbone_cfg["output_shape"]
        fields: dict[str, Any] = dict(
            point_cloud_range=tuple(float(v) for v in point_cloud_range),
            voxel_size=tuple(float(v) for v in voxel_size),
            sparse_shape=rev(inp["sparse_shape"]),
            in_channels=int(inp["d_model"][0]),
            stages=tuple(stages),
            bev_shape=(int(out_shape[1]), int(out_shape[0])),  # theirs is (nx, ny)
            dropout=float(backbone_cfg.get("dropout", 0.0)),
            activation=backbone_cfg.get("activation", "gelu"),
            normalize_pos=bool(inp.get("normalize_pos", False)),
            pool_mask_empty=False,
            authors_pos_embed=True,
        )
    except KeyError as exc:
        raise ValueError(f"the authors' BACKBONE_3D config is missing key {exc.args[0]!r}") from None
    fields.update(overrides)
    return DSVTConfig(**fields)


__all__ = [
    "DSVTConfig",
    "DSVTStageConfig",
    "dsvt_config_from_authors",
    "dsvt_pillar_nuscenes",
    "dsvt_voxel_waymo",
]
