"""DSVT backbone (Wang et al., "DSVT: Dynamic Sparse Voxel Transformer with Rotated Sets", CVPR 2023).

``SparseFeatures`` of the VFE -> per stage: DSVT blocks (two set-attention layers each, on the y-major then the
x-major rotated sets of one window configuration; consecutive blocks, counted across stages, alternate the base
and the hybrid-shifted configuration), then attention pooling to the next stage -> ``SparseFeatures`` on the last
stage's grid. Build from a :class:`~.dsvt_config.DSVTConfig` and the input's
:class:`~perception.shapes.SparseShape` with :func:`build_dsvt`; the built module reports both shapes
(:meth:`DSVTBackbone.input_shape`, :meth:`DSVTBackbone.output_shape`, the :class:`~perception.shapes.Backbone3D`
protocol) as the config computed them.

Compatibility with the authors' code: ``authors_pos_embed=True`` and ``pool_mask_empty=False`` reproduce their
outputs given their weights (converted by :mod:`.dsvt_convert`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from perception._validate import check_tensor
from perception.ops.pool_windows import PoolWindows
from perception.shapes import SparseShape
from perception.structures import SparseFeatures

from .dsvt_blocks import AttentionPooling, DSVTBlock, PoolSlots
from .dsvt_config import DSVTConfig
from .dsvt_input import DSVTInputLayer, PosEmbedding, SetIndex, StageGeometry


class DSVTBackbone(nn.Module):
    """Dynamic sparse voxel transformer.

    Args:
        input_shape: the input voxels (channels = first stage's ``d_model``, grid = ``input_layer.sparse_shape``).
        output_shape: the output voxels (channels = last stage's ``d_model``, grid = the last stage grid), as
            :meth:`DSVTConfig.output_shape` computes it for ``input_shape``.
        input_layer: geometry + positional embeddings for the stages.
        stages: ``stages[s]`` the DSVT blocks of stage ``s`` (as many as ``input_layer`` has embeddings for).
        poolings: attention pooling after every stage but the last (``len(stages) - 1`` modules).

    Forward input: :class:`SparseFeatures` with float ``(M, C_in)`` features and int32 ``(M, 4)`` unique coords
    on the input grid. Output: ``SparseFeatures`` with ``(M_out, C_out)`` features on the last stage's grid; for a
    single stage, the input voxels in input order.
    """

    def __init__(
        self,
        *,
        input_shape: SparseShape,
        output_shape: SparseShape,
        input_layer: DSVTInputLayer,
        stages: Sequence[Sequence[DSVTBlock]],
        poolings: Sequence[AttentionPooling],
    ) -> None:
        super().__init__()
        cfgs = input_layer.stage_configs
        given = {
            "input_shape.channels": (input_shape.channels, cfgs[0].d_model, "the first stage's d_model"),
            "input_shape.grid": (input_shape.grid, input_layer.sparse_shape, "input_layer.sparse_shape"),
            "output_shape.channels": (output_shape.channels, cfgs[-1].d_model, "the last stage's d_model"),
            "output_shape.grid": (output_shape.grid, input_layer.stage_shapes[-1], "the last stage grid"),
        }
        for name, (value, want, what) in given.items():
            if value != want:
                raise ValueError(f"{name} {value} must equal {what} {want}")
        if len(stages) != len(cfgs):
            raise ValueError(f"stages has {len(stages)} entries but input_layer has {len(cfgs)} stages")
        for s, (blocks, cfg) in enumerate(zip(stages, cfgs, strict=True)):
            if len(blocks) != cfg.num_blocks:
                raise ValueError(
                    f"stages[{s}] has {len(blocks)} blocks, input_layer expects {cfg.num_blocks}"
                )
        if len(poolings) != len(cfgs) - 1:
            raise ValueError(
                f"poolings needs {len(cfgs) - 1} modules (one between stages), got {len(poolings)}"
            )
        self.input_layer = input_layer
        self.stages = nn.ModuleList(nn.ModuleList(blocks) for blocks in stages)
        self.poolings = nn.ModuleList(poolings)
        self._input_shape = input_shape
        self._output_shape = output_shape

    def input_shape(self) -> SparseShape:
        """The input voxels this backbone was built for (channels, grid ``(nz, ny, nx)``, stride)."""
        return self._input_shape

    def output_shape(self) -> SparseShape:
        """The output voxels (last ``d_model``, last stage grid, input stride x the pooling strides)."""
        return self._output_shape

    @property
    def in_channels(self) -> int:
        """``input_shape().channels``."""
        return self._input_shape.channels

    @property
    def out_channels(self) -> int:
        """``output_shape().channels``."""
        return self._output_shape.channels

    @property
    def out_shape(self) -> tuple[int, int, int]:
        """``output_shape().grid``: ``(nz, ny, nx)`` of the output voxels."""
        return self._output_shape.grid

    def geometry(self, sparse: SparseFeatures, *, backend: str | None = None) -> list[StageGeometry]:
        """Preprocessing (set partitions, pooling windows) for ``sparse``; no gradient, no parameters."""
        self._check_input(sparse)
        return self.input_layer.geometry(sparse.coords, backend=backend)

    def _check_input(self, sparse: SparseFeatures) -> None:
        if not isinstance(sparse, SparseFeatures):
            raise TypeError(f"sparse must be SparseFeatures, got {type(sparse).__name__}")
        check_tensor("sparse.features", sparse.features, shape=(None, self.in_channels))
        if not sparse.features.is_floating_point():
            raise TypeError(f"sparse.features must be floating point, got {sparse.features.dtype}")
        if tuple(sparse.grid_shape) != self._input_shape.grid:
            raise ValueError(
                f"sparse.grid_shape {tuple(sparse.grid_shape)} must equal the backbone's input grid "
                f"{self._input_shape.grid}"
            )
        feats = sparse.features
        # A NaN or inf entry makes the sum non-finite, so a finite sum (one pass, no temporary) clears the input;
        # only a non-finite sum (possibly an overflow) needs the element-wise check.
        if feats.numel() and not bool(torch.isfinite(feats.sum())) and not bool(torch.isfinite(feats).all()):
            raise ValueError("sparse.features contains NaN or inf")

    def forward(
        self, sparse: SparseFeatures, geometry: Sequence[StageGeometry] | None = None
    ) -> SparseFeatures:
        """Encode ``sparse``; ``geometry`` (from :meth:`geometry`) is computed when not given."""
        if geometry is None:
            geometry = self.geometry(sparse)
        else:
            self._check_input(sparse)
            if len(geometry) != len(self.stages) or geometry[0].num_voxels != sparse.num_voxels:
                raise ValueError("geometry does not belong to this input (stage count or voxel count differ)")
        x = self.encode(
            sparse.features,
            [geo.sets for geo in geometry],
            self.input_layer.pos_tables(geometry),
            [geo.pool for geo in geometry],
        )
        last = geometry[-1]
        return SparseFeatures(x, last.coords.to(torch.int32), last.sparse_shape, sparse.batch_size)

    def encode(
        self,
        x: torch.Tensor,
        sets: Sequence[tuple[SetIndex, SetIndex]],
        pos: Sequence[Sequence[tuple[PosEmbedding, PosEmbedding]]],
        pools: Sequence[PoolWindows | PoolSlots | None],
    ) -> torch.Tensor:
        """The learned part of :meth:`forward` on features alone (what an exported graph runs).

        Args:
            x: float ``(M_0, C_in)`` input voxel features.
            sets: ``[stage]`` the set indices of both window configurations (:attr:`StageGeometry.sets`).
            pos: ``[stage][block]`` positional embeddings (:meth:`DSVTInputLayer.pos_tables`).
            pools: ``[stage]`` pooling windows to the next stage (``None`` for the last).

        Returns:
            float ``(M_last, C_out)``, rows in the last stage's voxel order.
        """
        for s, blocks in enumerate(self.stages):
            block: DSVTBlock
            for b, block in enumerate(blocks):  # type: ignore[arg-type]
                cfg = self.input_layer.block_configs[s][b]
                x = block(x, sets[s][cfg], pos[s][b])
            pool = pools[s]
            if pool is not None:
                x = self.poolings[s](x, pool)
        return x


def build_dsvt(cfg: DSVTConfig, *, input_shape: SparseShape) -> DSVTBackbone:
    """Build the backbone described by ``cfg`` for ``input_shape`` (weights initialised as the authors do).

    Args:
        cfg: the ``model.backbone_3d.dsvt`` section.
        input_shape: the input voxels (the VFE's output: channels, grid ``(nz, ny, nx)``, stride).

    Raises:
        ValueError: ``cfg`` does not fit ``input_shape`` (:meth:`DSVTConfig.output_shape`).
    """
    output_shape = cfg.output_shape(input_shape)
    input_layer = DSVTInputLayer(
        stages=cfg.stages,
        stage_shapes=cfg.stage_shapes(input_shape.grid),
        normalize_pos=cfg.normalize_pos,
        authors_pos_embed=cfg.authors_pos_embed,
    )
    stages = [
        [
            DSVTBlock(
                d_model=st.d_model,
                num_heads=st.num_heads,
                dim_feedforward=st.dim_feedforward,
                dropout=cfg.dropout,
                activation=cfg.activation,
            )
            for _ in range(st.num_blocks)
        ]
        for st in cfg.stages
    ]
    poolings = []
    for st in cfg.stages[:-1]:
        assert st.downsample_stride is not None  # guaranteed by DSVTConfig validation
        volume = st.downsample_stride[0] * st.downsample_stride[1] * st.downsample_stride[2]
        poolings.append(
            AttentionPooling(
                d_model=st.d_model,
                pool_volume=volume,
                num_heads=cfg.pool_num_heads,
                mask_empty=cfg.pool_mask_empty,
            )
        )
    model = DSVTBackbone(
        input_shape=input_shape,
        output_shape=output_shape,
        input_layer=input_layer,
        stages=stages,
        poolings=poolings,
    )
    # The authors re-initialise every matrix (including the pooling slot embeddings) xavier-uniform.
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    return model


__all__ = ["DSVTBackbone", "build_dsvt"]
