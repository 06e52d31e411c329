"""The exportable graph of a DSVT detector: VFE features and the frame's geometry in, the head's raw outputs out.

What is in the graph (:class:`DSVTGraph`): the positional-embedding MLPs of every stage, block and layer (run on
the ``wz * wy * wx`` positions of a window and gathered per voxel by its in-window coordinate), all DSVT blocks
and attention poolings, the BEV scatter, the 2D BEV backbone and the head up to its raw tensors (CenterPoint maps
or TransFusion query outputs), all from the detector's own modules (:meth:`DSVTBackbone.encode`,
``to_bev``, :class:`~.dense_export.DenseStage`). What it takes (:meth:`DSVTGraph.feeds`, from the numba
geometry of :meth:`DSVTBackbone.geometry`), batch 1, per stage ``s`` and window configuration ``c``:

==============================  ==================  =======  ===================================================
name                            shape               dtype    what
==============================  ==================  =======  ===================================================
``voxel_features``              ``(M0, C)``         float32  the VFE's output
``coords``                      ``(M_last, 4)``     int32    ``[b, z, y, x]`` of the last stage's voxels
``s{s}.c{c}.voxel_index``       ``(2, S_sc, K_s)``  int64    voxel in each slot of the y- / x-major sets
``s{s}.c{c}.keep``              ``(2, S_sc, K_s)``  bool     slots that take part as keys
``s{s}.c{c}.first_slot``        ``(2, M_s)``        int64    flat slot of each voxel's first copy
``s{s}.c{c}.coords_in_window``  ``(M_s, 3)``        int32    ``[z, y, x]`` in the voxel's window
``s{s}.pool.pooled_index``      ``(M_s,)``          int64    pooled voxel of each voxel (all but the last stage)
``s{s}.pool.slot``              ``(M_s,)``          int64    its slot in the pooling region
``s{s}.pool.mask``              ``(M_{s+1}, V_s)``  bool     empty slots of each region
==============================  ==================  =======  ===================================================

The voxel counts ``M_s`` and set counts ``S_sc`` are the dynamic axes (named ``voxels{s}`` and ``sets{s}_{c}``);
the slots per set ``K_s`` are static (the set size, padded as :meth:`SetIndex.slots` does on the CPU). An input a
stage does not read (the in-window coordinates of a configuration no block of it embeds) is left out.
Voxelization, the VFE, set partitioning and pooling windows (data-dependent, the numba ops), decoding and NMS
stay outside, in :mod:`.runtime`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from perception.models.backbones.dsvt import DSVTBackbone
from perception.models.backbones.dsvt_blocks import PoolSlots
from perception.models.backbones.dsvt_input import SetIndex, StageGeometry
from perception.structures import Batch, SparseFeatures

from .dense_export import DenseStage
from .manifest import TensorSpec

__all__ = ["DSVTGraph", "GraphLayout"]


@dataclass(frozen=True)
class GraphLayout:
    """Which inputs a DSVT graph takes, in order.

    Attributes:
        inputs: the graph's inputs (shapes with the dynamic axes named ``voxels{s}`` / ``sets{s}_{c}``).
        set_configs: ``[stage]`` the window configurations whose sets the stage's blocks attend over.
        embedded_configs: ``[stage]`` the configurations whose in-window coordinates its embeddings read.
    """

    inputs: tuple[TensorSpec, ...]
    set_configs: tuple[tuple[int, ...], ...]
    embedded_configs: tuple[tuple[int, ...], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Per input, its dynamic axes by name."""
        return {s.name: {i: d for i, d in enumerate(s.shape) if isinstance(d, str)} for s in self.inputs}

    @classmethod
    def of(cls, backbone: DSVTBackbone, slots: Sequence[int]) -> GraphLayout:
        """The layout of ``backbone``'s graph, ``slots[s]`` the static slots per set of stage ``s``."""
        layer = backbone.input_layer
        n = len(layer.stage_configs)
        c_in = backbone.in_channels
        specs = [
            TensorSpec("voxel_features", ("voxels0", c_in), "float32"),
            TensorSpec("coords", (f"voxels{n - 1}", 4), "int32"),
        ]
        set_configs, embedded = [], []
        for s in range(n):
            sets = tuple(sorted(set(layer.block_configs[s])))
            emb = layer.embedded_configs(s)
            set_configs.append(sets)
            embedded.append(emb)
            m = f"voxels{s}"
            for c in (0, 1):
                if c in sets:
                    dims = (2, f"sets{s}_{c}", int(slots[s]))
                    specs += [
                        TensorSpec(f"s{s}.c{c}.voxel_index", dims, "int64"),
                        TensorSpec(f"s{s}.c{c}.keep", dims, "bool"),
                        TensorSpec(f"s{s}.c{c}.first_slot", (2, m), "int64"),
                    ]
                if c in emb:
                    specs.append(TensorSpec(f"s{s}.c{c}.coords_in_window", (m, 3), "int32"))
            if s < n - 1:
                stride = layer.stage_configs[s].downsample_stride
                assert stride is not None  # guaranteed by DSVTConfig validation
                volume = stride[0] * stride[1] * stride[2]
                specs += [
                    TensorSpec(f"s{s}.pool.pooled_index", (m,), "int64"),
                    TensorSpec(f"s{s}.pool.slot", (m,), "int64"),
                    TensorSpec(f"s{s}.pool.mask", (f"voxels{s + 1}", volume), "bool"),
                ]
        return cls(tuple(specs), tuple(set_configs), tuple(embedded))


class DSVTGraph(nn.Module):
    """VFE features + geometry -> DSVT -> BEV scatter -> BEV backbone -> head, outputs as a flat tuple.

    Args:
        model: a :class:`~perception.models.detector.VoxelDetector` whose ``backbone_3d`` is a
            :class:`DSVTBackbone` (its modules are shared, not copied).

    Attributes:
        layout: the inputs (:class:`GraphLayout`), in ``forward``'s argument order.
        dense: the BEV backbone + head part (its ``output_names`` are this graph's outputs).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        backbone = getattr(model, "backbone_3d", None)
        if not isinstance(backbone, DSVTBackbone):
            raise TypeError(
                f"the DSVT graph needs a DSVT backbone_3d, this detector has {type(backbone).__name__}; "
                "export its dense part (perception.deploy.dense_export) instead"
            )
        self.backbone = backbone
        self.to_bev = model.to_bev  # type: ignore[union-attr]
        self.dense = DenseStage(model)
        layer = backbone.input_layer
        self.slots = tuple(SetIndex.slots(st.set_size, cuda=False) for st in layer.stage_configs)
        self.layout = GraphLayout.of(backbone, self.slots)
        self.grid = layer.stage_shapes[-1]

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.dense.output_names

    @torch.no_grad()
    def sample_inputs(
        self, model: nn.Module, batch: Batch, *, clock: dict[str, float] | None = None
    ) -> list[dict[str, torch.Tensor] | None]:
        """The graph's inputs for every sample of ``batch``: ``model``'s VFE (torch) on the whole batch, then per
        sample its voxels (batch index 0, in the VFE's order) and their geometry (the numba ops). A sample without
        voxels has no inputs (``None``). Wall times of ``"vfe"`` and ``"geometry"`` are added to ``clock``."""
        t = time.perf_counter()
        sparse = model.voxel_features(batch)  # type: ignore[operator]
        t_vfe = time.perf_counter() - t
        out: list[dict[str, torch.Tensor] | None] = []
        t = time.perf_counter()
        for b in range(sparse.batch_size):
            if sparse.batch_size == 1:
                one = sparse
            else:
                rows = (sparse.coords[:, 0] == b).nonzero()[:, 0]
                coords = sparse.coords.index_select(0, rows)
                coords[:, 0] = 0
                one = SparseFeatures(sparse.features.index_select(0, rows), coords, sparse.grid_shape, 1)
            out.append(self.feeds(one, self.backbone.geometry(one)) if one.num_voxels else None)
        if clock is not None:
            clock["vfe"] = clock.get("vfe", 0.0) + t_vfe
            clock["geometry"] = clock.get("geometry", 0.0) + time.perf_counter() - t
        return out

    @staticmethod
    def axis_sizes(layout: GraphLayout, feeds: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """The size of every dynamic axis (``voxels{s}``, ``sets{s}_{c}``) in one frame's inputs."""
        sizes: dict[str, int] = {}
        for spec in layout.inputs:
            for i, d in enumerate(spec.shape):
                if isinstance(d, str):
                    sizes.setdefault(d, int(feeds[spec.name].shape[i]))
        return sizes

    @torch.no_grad()
    def feeds(self, sparse: SparseFeatures, geometry: Sequence[StageGeometry]) -> dict[str, torch.Tensor]:
        """The graph's inputs for one frame, by name in :attr:`layout` order.

        Args:
            sparse: the VFE's output for one sample (``batch_size`` 1).
            geometry: :meth:`DSVTBackbone.geometry` of ``sparse``.

        Raises:
            ValueError: a batch of several samples, or set indices not padded as the graph's (a geometry made
                on a CUDA device: make it on the CPU).
        """
        if sparse.batch_size != 1:
            raise ValueError(f"the DSVT graph runs one sample at a time, got batch_size {sparse.batch_size}")
        out: dict[str, torch.Tensor] = {
            "voxel_features": sparse.features.float().contiguous(),
            "coords": geometry[-1].coords.to(torch.int32).contiguous(),
        }
        for s, geo in enumerate(geometry):
            for c in self.layout.set_configs[s]:
                sets = geo.sets[c]
                if sets.voxel_index.shape[2] != self.slots[s]:
                    raise ValueError(
                        f"stage {s} sets have {sets.voxel_index.shape[2]} slots, the graph {self.slots[s]} "
                        "(compute the geometry on the CPU)"
                    )
                out[f"s{s}.c{c}.voxel_index"] = sets.voxel_index.contiguous()
                out[f"s{s}.c{c}.keep"] = sets.graph_keep().contiguous()
                out[f"s{s}.c{c}.first_slot"] = sets.first_slot.contiguous()
            for c in self.layout.embedded_configs[s]:
                cin = geo.partitions[c].windows.coords_in_window
                out[f"s{s}.c{c}.coords_in_window"] = cin.to(torch.int32).contiguous()
            if geo.pool is not None:
                out[f"s{s}.pool.pooled_index"] = geo.pool.pooled_index.contiguous()
                out[f"s{s}.pool.slot"] = geo.pool.slot.contiguous()
                out[f"s{s}.pool.mask"] = geo.pool.mask.contiguous()
        return {name: out[name] for name in self.layout.names}

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tensors of :attr:`layout` in order -> the head's tensors in :attr:`output_names` order."""
        names = self.layout.names
        if len(inputs) != len(names):
            raise ValueError(f"expected {len(names)} inputs {names}, got {len(inputs)}")
        feed = dict(zip(names, inputs, strict=True))
        n = len(self.layout.set_configs)
        sets: list[tuple[SetIndex, SetIndex]] = []
        cins: list[list[torch.Tensor | None]] = []
        pools: list[PoolSlots | None] = []
        for s in range(n):
            per = {
                c: SetIndex.from_graph(
                    feed[f"s{s}.c{c}.voxel_index"], feed[f"s{s}.c{c}.keep"], feed[f"s{s}.c{c}.first_slot"]
                )
                for c in self.layout.set_configs[s]
            }
            # a configuration no block uses is never read: the other one stands in for the pair
            sets.append((per.get(0, per.get(1)), per.get(1, per.get(0))))  # type: ignore[arg-type]
            cins.append([feed.get(f"s{s}.c{c}.coords_in_window") for c in (0, 1)])
            pools.append(
                PoolSlots(feed[f"s{s}.pool.pooled_index"], feed[f"s{s}.pool.slot"], feed[f"s{s}.pool.mask"])
                if s < n - 1
                else None
            )
        pos = self.backbone.input_layer.pos_tables_from(cins)
        x = self.backbone.encode(feed["voxel_features"], sets, pos, pools)
        bev = self.to_bev(SparseFeatures(x, feed["coords"], self.grid, 1))
        return self.dense(bev)
