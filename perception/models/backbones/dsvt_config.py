"""Config of the DSVT backbone (the ``model.backbone_3d.dsvt:`` section) and its shape arithmetic.

:class:`DSVTConfig` is the schema of the YAML section and the object :func:`~.dsvt.build_dsvt` reads; there is no
second copy. It holds the backbone's own settings only: the voxel grid and the input channels are not in it, they
come from the stage before as a :class:`~perception.shapes.SparseShape` (the VFE's output on the data's
:class:`~perception.grid.VoxelGrid`). Torch-free: the config loader imports it.

All triples follow the project convention ``(z, y, x)`` (grid shape ``[nz, ny, nx]``, voxel coords
``[b, z, y, x]``). The DSVT authors list windows, strides, factors and shifts as ``(x, y, z)``;
:func:`~.dsvt_presets.dsvt_config_from_authors` reverses them.

Two moments of validation, each with a message naming the quantity (the checks catch the disagreements that make
the authors' code crash deep inside a forward pass):

* the section alone (pydantic, on load): heads vs ``d_model``, pooling strides present on every stage but the
  last, equal ``d_model`` across stages, ``pool_num_heads`` vs ``d_model``, shifts vs windows, and equal y and x
  total strides (a BEV map has one stride);
* against the input (:meth:`DSVTConfig.output_shape`, by the config-time plan and by ``build_dsvt``): input
  channels vs ``stages[0].d_model``, z windows vs the stage grids, 2-D vs 3-D embeddings, and a written
  ``sparse_shape`` / ``bev_shape`` vs the input grid / the last stage grid. These errors start with
  ``model.backbone_3d.dsvt:`` (:data:`KEY`).

Stage grids: stage ``s + 1`` is ``ceil(stage s / stages[s].downsample_stride)`` per axis (the rule of
:func:`perception.ops.pool_windows.pool_windows`), :meth:`DSVTConfig.stage_shapes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from perception.config_types import Bool, NonNegInt, PosInt, Probability, StrictSection
from perception.shapes import SparseShape

__all__ = ["KEY", "DSVTConfig", "DSVTStageConfig", "Int3"]

KEY = "model.backbone_3d.dsvt"
"""Where the section lives in an experiment config (the prefix of :meth:`DSVTConfig.output_shape` errors)."""

Int3 = tuple[int, int, int]
PosInt3 = tuple[PosInt, PosInt, PosInt]
NonNegInt3 = tuple[NonNegInt, NonNegInt, NonNegInt]


class DSVTStageConfig(StrictSection):
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

    def window_configs(self) -> tuple[tuple[str, Int3, Int3, str], ...]:
        """``(window name, window, shift, shift name)`` of the base and the hybrid-shifted configuration."""
        return (
            ("window_shape", self.window_shape, self.base_shift, "base_shift"),
            ("window_shape * hybrid_factor", self.hybrid_window_shape, self.shift, "shift"),
        )


class DSVTConfig(StrictSection):
    """The DSVT backbone (``model.backbone_3d.dsvt:``).

    Attributes:
        stages: the stages; all but the last need ``downsample_stride``.
        sparse_shape: input grid ``(nz, ny, nx)`` written out as in the authors' configs; ``None`` (default) takes
            the input's grid, else it must equal it.
        bev_shape: ``(H, W)`` of the BEV map built from the output, written out as in the authors' configs;
            ``None`` (default) or the last stage's ``(ny, nx)``.
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

    stages: tuple[DSVTStageConfig, ...] = Field(min_length=1)
    sparse_shape: PosInt3 | None = None
    bev_shape: tuple[PosInt, PosInt] | None = None
    dropout: Probability = 0.0
    activation: Literal["gelu", "relu"] = "gelu"
    normalize_pos: Bool = False
    pool_num_heads: PosInt = 8
    pool_mask_empty: Bool = True
    authors_pos_embed: Bool = False

    # ---------------------------------------------------------------------------------------------------------
    # shapes

    @property
    def downsample_strides(self) -> tuple[Int3, ...]:
        """The pooling strides ``(sz, sy, sx)`` between stages (``len(stages) - 1`` of them)."""
        return tuple(s.downsample_stride for s in self.stages if s.downsample_stride is not None)

    @property
    def stride(self) -> int:
        """Total x/y stride of the output grid w.r.t. the input grid: the product of the y strides."""
        return math.prod(s[1] for s in self.downsample_strides)

    def stage_shapes(self, input_grid: Sequence[int]) -> tuple[Int3, ...]:
        """Grid ``(nz, ny, nx)`` of every stage for the input grid: each is ``ceil(previous / downsample_stride)``."""
        g = tuple(int(v) for v in input_grid)
        if len(g) != 3:
            raise ValueError(f"{KEY}: the input grid must be (nz, ny, nx), got {tuple(input_grid)}")
        shapes: list[Int3] = [g]  # type: ignore[list-item]
        for st in self.downsample_strides:
            prev = shapes[-1]
            shapes.append((-(-prev[0] // st[0]), -(-prev[1] // st[1]), -(-prev[2] // st[2])))
        return tuple(shapes)

    def output_shape(self, input: SparseShape) -> SparseShape:
        """The backbone's output for ``input`` (the VFE output): last ``d_model``, last stage grid, stride.

        Args:
            input: channels and grid ``(nz, ny, nx)`` of the input voxels; ``input.stride`` (1 for a VFE) is
                multiplied by :attr:`stride`.

        Raises:
            ValueError: starting with ``model.backbone_3d.dsvt:``, when the input does not fit the section
                (channels, written ``sparse_shape`` / ``bev_shape``, windows vs the stage grids).
        """
        grid = tuple(input.grid)
        first = self.stages[0].d_model
        if input.channels != first:
            raise ValueError(
                f"{KEY}: the input has {input.channels} channels but stages[0].d_model is {first}: the VFE "
                "output feeds the first stage directly, they must be equal"
            )
        if self.sparse_shape is not None and tuple(self.sparse_shape) != grid:
            raise ValueError(
                f"{KEY}: sparse_shape {tuple(self.sparse_shape)} disagrees with the input grid {grid} (nz, ny, nx) "
                "= data.point_cloud_range / data.voxel_size"
            )
        shapes = self.stage_shapes(grid)
        for s, stage in enumerate(self.stages):
            _check_stage_grid(s, stage, shapes[s])
        out = shapes[-1]
        if self.bev_shape is not None and tuple(self.bev_shape) != out[1:]:
            raise ValueError(
                f"{KEY}: bev_shape {tuple(self.bev_shape)} must equal the last stage's (ny, nx) = {out[1:]} "
                f"(input grid {grid} after the downsample strides)"
            )
        return SparseShape(self.stages[-1].d_model, out, input.stride * self.stride)

    # ---------------------------------------------------------------------------------------------------------
    # checks of the section alone

    @model_validator(mode="after")
    def _check(self) -> DSVTConfig:
        last = len(self.stages) - 1
        for s, stage in enumerate(self.stages):
            _check_stage(s, stage, is_last=s == last, pool_heads=self.pool_num_heads)
            if s < last and stage.d_model != self.stages[s + 1].d_model:
                raise ValueError(
                    f"stages[{s}].d_model ({stage.d_model}) must equal stages[{s + 1}].d_model "
                    f"({self.stages[s + 1].d_model}): attention pooling keeps the channel count"
                )
        sy, sx = (math.prod(st[a] for st in self.downsample_strides) for a in (1, 2))
        if sy != sx:
            raise ValueError(
                f"the y and x downsample strides differ in total ({sy} vs {sx}): the BEV map has one stride"
            )
        return self


def _check_stage(s: int, stage: DSVTStageConfig, *, is_last: bool, pool_heads: int) -> None:
    """Checks of one stage that need no grid."""
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
    for wname, window, shift, sname in stage.window_configs():
        for a, axis in enumerate("zyx"):
            if shift[a] > window[a]:
                raise ValueError(
                    f"{name}.{sname} {axis} = {shift[a]} must lie in [0, {window[a]}] ({wname} {axis})"
                )


def _check_stage_grid(s: int, stage: DSVTStageConfig, shape: Int3) -> None:
    """Checks of one stage against its grid ``(nz, ny, nx)``."""
    name = f"{KEY}: stages[{s}]"
    for wname, window, _, _ in stage.window_configs():
        if window[0] > shape[0]:
            raise ValueError(
                f"{name}.{wname} z = {window[0]} exceeds the stage grid nz = {shape[0]} "
                f"(stage grid (nz, ny, nx) = {shape})"
            )
        if (window[0] > 1) != (shape[0] > 1):
            raise ValueError(
                f"{name}.{wname} z = {window[0]} with stage grid nz = {shape[0]}: a stage with several z layers "
                "needs windows spanning z > 1 (3-D positional embedding) and a single-layer stage windows of "
                "z = 1 (2-D embedding)"
            )
