"""DSVT input layer: per-stage set partitions, pooling windows and positional embeddings.

Computed once per frame and stage and shared by the stage's blocks:

* **Geometry** (:func:`dsvt_geometry`, no parameters, no gradient): for each stage, the rotated set partitions
  of both window configurations (base window unshifted; base window x hybrid factor, shifted) from
  :mod:`perception.ops.set_partition`, the slot holding each voxel's first copy in every partition (where the
  set-attention output of a voxel is read back; also listed in slot order, for reading back one range of sets
  at a time, :class:`SetIndex`), and the pooling windows to the next stage from
  :mod:`perception.ops.pool_windows`. This is the data-dependent preprocessing that an exported model receives
  as input (DESIGN.md, "What stays outside the model").
* **Positional embeddings** (:class:`DSVTInputLayer`): the in-window coordinate of every voxel centred on its
  window (``c - w / 2``; ``(x, y)`` when the stage has one z layer, ``(x, y, z)`` otherwise) through a small MLP
  (Linear -> BatchNorm -> ReLU -> Linear). There is one MLP per stage, block and attention layer (the authors
  name the last index "shift"). Block ``k`` (counted across stages) uses window configuration ``k % 2``; layer
  ``i`` of a block embeds the in-window coordinates of the block's configuration. With ``authors_pos_embed``
  layer ``i`` instead embeds the coordinates of configuration ``i`` whatever the block's configuration, as the
  authors' code does (their issue #50), so their checkpoints reproduce. The embeddings are kept as tables
  (:class:`PosEmbedding`): at inference the MLP runs once per window position and each voxel indexes its row,
  so the layers gather the rows they need instead of receiving an ``(M, C)`` tensor per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from perception.models.cpu_linear import exporting
from perception.ops.pool_windows import PoolWindows, pool_windows
from perception.ops.set_partition import SetPartition, set_partition, stage_window_configs

from .dsvt_config import DSVTStageConfig, Int3

_TWO_PI = 2 * 3.1415  # the authors' constant for ``normalize_pos`` (kept for checkpoint compatibility)


@dataclass(frozen=True)
class SetIndex:
    """Gather / read-back indices of one window configuration's rotated sets (order 0 y-major, 1 x-major).

    On the CPU, sets are padded to ``K`` = the next multiple of 32 slots when that adds at most 1/8 (DSVT-pillar:
    90 -> 96): the padding slots repeat a voxel of the set and are masked, so the attention output is unchanged,
    while torch's CPU flash-attention kernel (query blocks of 32) runs about 20% faster on full blocks.

    Attributes:
        voxel_index: int64 ``(2, S, K)`` voxel in each slot (``K >= set_size``, see above).
        keep: bool ``(2, S, 1, 1, K)`` True for slots that take part as keys (not a repeat, not padding), an
            attention mask that broadcasts over heads and queries; ``None`` when every slot takes part.
        first_slot: int64 ``(2, M)`` flat slot ``set * K + position`` of each voxel's first copy.
        read_slot: int64 ``(2, M)`` the first-copy slots in ascending order (``first_slot`` sorted), so the
            voxels read back from a range of sets are a contiguous range of it; ``None`` in an exported graph
            (:meth:`from_graph`), which never reads back chunk by chunk.
        read_voxel: int64 ``(2, M)`` voxel of each ``read_slot`` (``first_slot[read_voxel] == read_slot``), or
            ``None`` with ``read_slot``.
    """

    voxel_index: torch.Tensor
    keep: torch.Tensor | None
    first_slot: torch.Tensor
    read_slot: torch.Tensor | None = None
    read_voxel: torch.Tensor | None = None

    @staticmethod
    def slots(set_size: int, *, cuda: bool) -> int:
        """``K``, the slots per set for sets of ``set_size`` (padded on the CPU, see the class docstring)."""
        padded = -(-set_size // 32) * 32
        return padded if not cuda and 8 * (padded - set_size) <= set_size else set_size

    @classmethod
    def from_graph(cls, voxel_index: torch.Tensor, keep: torch.Tensor, first_slot: torch.Tensor) -> SetIndex:
        """The indices an exported graph receives: ``voxel_index`` int64 ``(2, S, K)``, ``keep`` bool
        ``(2, S, K)`` (every slot listed; all True where nothing is masked), ``first_slot`` int64 ``(2, M)``."""
        return cls(voxel_index, keep[:, :, None, None, :], first_slot)

    def graph_keep(self) -> torch.Tensor:
        """bool ``(2, S, K)``: :attr:`keep` as an exported graph takes it (all True when ``keep`` is ``None``)."""
        if self.keep is None:
            return torch.ones(self.voxel_index.shape, dtype=torch.bool, device=self.voxel_index.device)
        return self.keep[:, :, 0, 0, :]

    @classmethod
    def from_partition(cls, partition: SetPartition, num_voxels: int) -> SetIndex:
        index, mask = partition.voxel_index, partition.mask
        k = partition.set_size
        padded = cls.slots(k, cuda=index.is_cuda)
        if padded > k:
            extra = padded - k
            index = torch.cat((index, index[..., :1].expand(*index.shape[:2], extra)), dim=-1)
            mask = torch.cat((mask, mask.new_ones((*mask.shape[:2], extra))), dim=-1)
        keep = (~mask)[:, :, None, None, :] if bool(mask.any()) else None
        return cls.from_index(index, keep, num_voxels)

    @classmethod
    def from_index(cls, voxel_index: torch.Tensor, keep: torch.Tensor | None, num_voxels: int) -> SetIndex:
        """Derive the read-back indices from ``voxel_index`` ``(2, S, K)`` (``keep`` as the attribute)."""
        first = first_slots(voxel_index, num_voxels)
        # Sorting by marking the first-copy slots: nonzero lists them in ascending order.
        is_first = torch.zeros((2, voxel_index[0].numel()), dtype=torch.bool, device=voxel_index.device)
        is_first.scatter_(1, first, True)
        read_slot = is_first.nonzero()[:, 1].view(2, num_voxels)
        read_voxel = voxel_index.reshape(2, -1).gather(1, read_slot)
        return cls(voxel_index, keep, first, read_slot, read_voxel)

    def order(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(voxel_index (S, K), keep (S, 1, 1, K) | None, first_slot (M,))`` of order ``i``."""
        keep = None if self.keep is None else self.keep[i]
        return self.voxel_index[i], keep, self.first_slot[i]

    def reads(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(read_slot (M,), read_voxel (M,))`` of order ``i``."""
        if self.read_slot is None or self.read_voxel is None:
            raise ValueError("these set indices have no read-back order (SetIndex.from_graph)")
        return self.read_slot[i], self.read_voxel[i]


@dataclass(frozen=True)
class PosEmbedding:
    """Positional embedding of every voxel as a row of a table: voxel ``v`` has ``table[index[v]]``.

    At inference the embedding MLP runs once per window position (a few hundred rows) and ``index`` holds each
    voxel's position; otherwise ``table`` has one row per voxel and ``index`` is ``None``.

    Attributes:
        table: float ``(R, C)``.
        index: int64 ``(M,)`` row of each voxel, or ``None`` (``R == M``, row ``v`` is voxel ``v``).
    """

    table: torch.Tensor
    index: torch.Tensor | None

    def dense(self) -> torch.Tensor:
        """float ``(M, C)``: the embedding of every voxel."""
        return self.table if self.index is None else self.table.index_select(0, self.index)

    def rows(self, voxels: torch.Tensor) -> torch.Tensor:
        """float ``(N, C)``: the embeddings of ``voxels`` (int64 ``(N,)``)."""
        rows = voxels if self.index is None else self.index.index_select(0, voxels)
        return self.table.index_select(0, rows)


@dataclass(frozen=True)
class StageGeometry:
    """Data-dependent structure of one stage.

    Attributes:
        coords: int32 ``(M, 4)`` ``[b, z, y, x]`` of the stage's voxels (stage 0: the input voxels in input
            order; later stages: pooled voxels in the pooling order of :mod:`perception.ops.pool_windows`).
        sparse_shape: the stage grid ``(nz, ny, nx)``.
        partitions: set partitions of the two window configurations (base, hybrid-shifted); each holds
            ``voxel_index`` / ``mask`` of shape ``(2, S, set_size)`` (order 0 y-major, order 1 x-major).
        sets: per configuration, the gather / read-back indices the set-attention layers use.
        pool: pooling windows to the next stage, ``None`` for the last stage.
    """

    coords: torch.Tensor
    sparse_shape: Int3
    partitions: tuple[SetPartition, SetPartition]
    sets: tuple[SetIndex, SetIndex]
    pool: PoolWindows | None

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])


def first_slots(voxel_index: torch.Tensor, num_voxels: int) -> torch.Tensor:
    """int64 ``(2, M)``: flat slot index (``set * K + position``) of the first copy of every voxel, per set order.

    Args:
        voxel_index: int64 ``(2, S, K)`` voxel in each slot (:attr:`SetPartition.voxel_index`).
        num_voxels: ``M``.

    Every voxel appears in at least one slot of each order (a window's ``M * set_size >= n`` slots spread over all
    its voxels), which is checked.
    """
    inds = voxel_index.reshape(2, -1)
    total = inds.shape[1]
    out = torch.full((2, num_voxels), total, dtype=torch.long, device=inds.device)
    if total:
        positions = torch.arange(total, device=inds.device).expand(2, total)
        out.scatter_reduce_(1, inds, positions, reduce="amin")
    if num_voxels and bool((out == total).any()):
        raise RuntimeError("set partition left a voxel without a slot; the partition is inconsistent")
    return out


@torch.no_grad()
def dsvt_geometry(
    coords: torch.Tensor,
    sparse_shape: Sequence[int],
    stages: Sequence[DSVTStageConfig],
    *,
    backend: str | None = None,
) -> list[StageGeometry]:
    """Set partitions, set gather / read-back indices and pooling windows of every stage.

    Args:
        coords: int32 ``(M, 4)`` ``[b, z, y, x]`` unique input voxels inside ``sparse_shape``.
        sparse_shape: input grid ``(nz, ny, nx)``.
        stages: the stage configs (windows, shifts, set size, downsample stride).
        backend: op backend (``None`` by device, ``"torch"``, ``"cpu"``, ``"cuda"``).

    Returns:
        One :class:`StageGeometry` per stage.

    Raises:
        ValueError / TypeError: bad coordinates (outside the grid, duplicates, wrong dtype) from the ops.
    """
    out: list[StageGeometry] = []
    cur_coords = coords
    shape: Int3 = (int(sparse_shape[0]), int(sparse_shape[1]), int(sparse_shape[2]))
    for s, stage in enumerate(stages):
        m = int(cur_coords.shape[0])
        configs = stage_window_configs(stage.window_shape, stage.hybrid_factor, stage.shift, stage.base_shift)
        parts = tuple(
            set_partition(cur_coords, shape, c.window_shape, stage.set_size, c.shift, backend=backend)
            for c in configs
        )
        sets = tuple(SetIndex.from_partition(p, m) for p in parts)
        pool = None
        if s < len(stages) - 1:
            assert stage.downsample_stride is not None  # guaranteed by DSVTConfig validation
            pool = pool_windows(cur_coords, shape, stage.downsample_stride, backend=backend)
        out.append(StageGeometry(cur_coords, shape, (parts[0], parts[1]), (sets[0], sets[1]), pool))
        if pool is not None:
            cur_coords, shape = pool.pooled_coords, pool.pooled_shape
    return out


class PositionEmbeddingMLP(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear on centred in-window coordinates.

    In training mode with fewer than 2 rows, BatchNorm cannot estimate batch statistics; it then uses its running
    statistics (and leaves them unchanged) instead of raising.

    Args:
        in_dim: 2 (``(x, y)``) or 3 (``(x, y, z)``).
        d_model: output channels.
    """

    def __init__(self, *, in_dim: int, d_model: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(in_dim, d_model)
        self.norm = nn.BatchNorm1d(d_model)
        self.linear2 = nn.Linear(d_model, d_model)

    def forward(self, location: torch.Tensor) -> torch.Tensor:
        """``(N, in_dim)`` float -> ``(N, d_model)``."""
        h = self.linear1(location)
        if self.training and h.shape[0] < 2:
            bn = self.norm
            h = F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            h = self.norm(h)
        return self.linear2(F.relu(h))


class DSVTInputLayer(nn.Module):
    """Geometry plus positional embeddings of every stage, block and layer.

    Args:
        stages: stage configs (as validated by :class:`~.dsvt_config.DSVTConfig`).
        stage_shapes: grid ``(nz, ny, nx)`` of every stage, the input grid first
            (:meth:`~.dsvt_config.DSVTConfig.stage_shapes`).
        normalize_pos: scale centred coordinates by ``2 * 3.1415 / window`` (to about ``[-pi, pi)``).
        authors_pos_embed: the authors' issue-#50 behaviour (see the module docstring).
    """

    def __init__(
        self,
        *,
        stages: Sequence[DSVTStageConfig],
        stage_shapes: Sequence[Sequence[int]],
        normalize_pos: bool = False,
        authors_pos_embed: bool = False,
    ) -> None:
        super().__init__()
        self.stage_configs = tuple(stages)
        if len(stage_shapes) != len(self.stage_configs):
            raise ValueError(
                f"stage_shapes has {len(stage_shapes)} grids for {len(self.stage_configs)} stages"
            )
        self.stage_shapes: tuple[Int3, ...] = tuple((int(g[0]), int(g[1]), int(g[2])) for g in stage_shapes)
        self.sparse_shape: Int3 = self.stage_shapes[0]
        """The input grid ``(nz, ny, nx)``."""
        self.normalize_pos = normalize_pos
        self.authors_pos_embed = authors_pos_embed
        self.pos_embeds = nn.ModuleList()
        for stage, shape in zip(self.stage_configs, self.stage_shapes, strict=True):
            in_dim = 3 if shape[0] > 1 else 2
            self.pos_embeds.append(
                nn.ModuleList(
                    nn.ModuleList(
                        PositionEmbeddingMLP(in_dim=in_dim, d_model=stage.d_model) for _ in range(2)
                    )
                    for _ in range(stage.num_blocks)
                )
            )
        counter, configs = 0, []
        for stage in self.stage_configs:
            configs.append(tuple((counter + b) % 2 for b in range(stage.num_blocks)))
            counter += stage.num_blocks
        self.block_configs: tuple[tuple[int, ...], ...] = tuple(configs)
        """Window configuration (0 base, 1 hybrid-shifted) of every block, ``[stage][block]``."""

    def geometry(self, coords: torch.Tensor, *, backend: str | None = None) -> list[StageGeometry]:
        """:func:`dsvt_geometry` for this layer's stages and grid."""
        return dsvt_geometry(coords, self.sparse_shape, self.stage_configs, backend=backend)

    def _centred(self, cin: torch.Tensor, window: Int3, stage: int) -> torch.Tensor:
        """float32 ``(N, 2 or 3)`` centred ``(x, y[, z])`` from int ``(N, 3)`` ``[z, y, x]`` in-window coords."""
        two_d = self.stage_shapes[stage][0] == 1
        axes = (2, 1) if two_d else (2, 1, 0)  # the authors' order: x, y (, z)
        cols = [cin[:, a].to(torch.float32) - window[a] / 2 for a in axes]
        if self.normalize_pos:
            cols = [c / window[a] * _TWO_PI for c, a in zip(cols, axes, strict=True)]
        return torch.stack(cols, dim=-1)

    def _locations(
        self, cin: torch.Tensor, window: Int3, stage: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Centred locations to embed and, at inference, the gather index from window positions to voxels.

        Args:
            cin: int ``(M, 3)`` ``[z, y, x]`` in-window coordinates of the stage's voxels for one window
                configuration (:attr:`~perception.ops.set_partition.WindowPartition.coords_in_window`).
            window: that configuration's window ``(wz, wy, wx)``.
            stage: the stage index.

        Returns ``(loc, None)`` with ``loc`` ``(M, d)`` (training, or fewer voxels than window positions), or
        ``(table, key)`` with the ``(V, d)`` locations of all ``V = wz * wy * wx`` positions of a window and the
        int64 ``(M,)`` position of each voxel (the MLP is row-wise, so at inference it runs once per position;
        an exported graph always takes this form, whatever ``M``).
        """
        volume = window[0] * window[1] * window[2]
        if self.training or (not exporting() and cin.shape[0] <= volume):
            return self._centred(cin, window, stage), None
        c = cin.to(torch.long)
        key = (c[:, 0] * window[1] + c[:, 1]) * window[2] + c[:, 2]
        z, y, x = torch.meshgrid(*(torch.arange(n, device=cin.device) for n in window), indexing="ij")
        table = torch.stack((z, y, x), dim=-1).reshape(volume, 3)
        return self._centred(table, window, stage), key

    def window_shapes(self, stage: int) -> tuple[Int3, Int3]:
        """The window ``(wz, wy, wx)`` of stage ``stage``'s two configurations (base, hybrid-shifted)."""
        st = self.stage_configs[stage]
        configs = stage_window_configs(st.window_shape, st.hybrid_factor, st.shift, st.base_shift)
        return configs[0].window_shape, configs[1].window_shape

    def embedded_configs(self, stage: int) -> tuple[int, ...]:
        """The window configurations whose in-window coordinates stage ``stage``'s embeddings read."""
        if self.authors_pos_embed:
            return (0, 1)
        return tuple(sorted(set(self.block_configs[stage])))

    def pos_tables(self, geometry: Sequence[StageGeometry]) -> list[list[tuple[PosEmbedding, PosEmbedding]]]:
        """Positional embeddings ``[stage][block] -> (layer 0, layer 1)`` as tables (:class:`PosEmbedding`)."""
        return self.pos_tables_from(
            [tuple(p.windows.coords_in_window for p in geo.partitions) for geo in geometry]
        )

    def pos_tables_from(
        self, coords_in_window: Sequence[Sequence[torch.Tensor | None]]
    ) -> list[list[tuple[PosEmbedding, PosEmbedding]]]:
        """:meth:`pos_tables` from the in-window coordinates alone.

        Args:
            coords_in_window: ``[stage][config]`` int ``(M_stage, 3)`` ``[z, y, x]``; an entry may be ``None``
                where :meth:`embedded_configs` does not list the configuration.
        """
        out: list[list[tuple[PosEmbedding, PosEmbedding]]] = []
        for s, cins in enumerate(coords_in_window):
            shapes = self.window_shapes(s)
            locs = [
                None if cin is None else self._locations(cin, shapes[config], s)
                for config, cin in enumerate(cins)
            ]
            stage_out = []
            block_mlps: nn.ModuleList
            for b, block_mlps in enumerate(self.pos_embeds[s]):  # type: ignore[arg-type]
                cfg = self.block_configs[s][b]
                pair = []
                for i in range(2):
                    entry = locs[i if self.authors_pos_embed else cfg]
                    if entry is None:
                        raise ValueError(f"stage {s} needs the in-window coordinates of configuration {cfg}")
                    loc, key = entry
                    pair.append(PosEmbedding(block_mlps[i](loc), key))
                stage_out.append((pair[0], pair[1]))
            out.append(stage_out)
        return out

    def pos_embeddings(
        self, geometry: Sequence[StageGeometry]
    ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Positional embeddings ``[stage][block] -> (layer 0, layer 1)``, each float ``(M_stage, d_model)``."""
        return [[(p0.dense(), p1.dense()) for p0, p1 in stage] for stage in self.pos_tables(geometry)]


__all__ = [
    "DSVTInputLayer",
    "PosEmbedding",
    "PositionEmbeddingMLP",
    "SetIndex",
    "StageGeometry",
    "dsvt_geometry",
    "first_slots",
]
