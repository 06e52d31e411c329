"""DSVT set-attention layer, DSVT block and attention-style 3D pooling.

Shapes: ``M`` voxels of a stage, ``C`` channels, ``S`` sets of ``K`` slots, ``H`` heads, ``P`` pooled voxels with
``V`` slots each.

The attention is computed exactly as multi-head attention over each set (query = key = feature + position,
value = feature, repeated slots masked as keys), but the linear projections run once per voxel rather than once
per slot (a projection commutes with the gather), and the output projection once per voxel after reading back its
first copy. At inference on the CPU the layer runs chunk by chunk of sets instead (:mod:`.dsvt_chunked`, same
arithmetic, results equal to float32 rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from perception.models.cpu_linear import ACTIVATIONS as _ACTIVATIONS
from perception.ops.pool_windows import PoolWindows

from .dsvt_chunked import chunked_inference_applies, set_attention_chunked
from .dsvt_input import PosEmbedding, SetIndex


def _init_attention(in_proj: nn.Linear, out_proj: nn.Linear) -> None:
    """The initialisation of ``nn.MultiheadAttention``: xavier-uniform in-projection, zero biases."""
    nn.init.xavier_uniform_(in_proj.weight)
    nn.init.zeros_(in_proj.bias)
    nn.init.zeros_(out_proj.bias)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(..., L, C)`` -> ``(..., H, L, C / H)`` (a view when possible)."""
    *lead, length, c = x.shape
    return x.reshape(*lead, length, num_heads, c // num_heads).transpose(-3, -2)


class SetAttentionLayer(nn.Module):
    """One set-attention layer, wrapped as the authors do.

    ``y = LN_attn(x + MHA(sets))``, ``z = LN_ffn(y + FFN(y))``, output ``LN_out(z + x)`` (the authors' extra
    residual + LayerNorm around each layer).

    Args:
        d_model: channels ``C``.
        num_heads: heads ``H`` (divides ``C``).
        dim_feedforward: FFN hidden width.
        dropout: attention-probability dropout (training only).
        activation: ``"gelu"`` or ``"relu"``.
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float = 0.0,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.d_model, self.num_heads, self.dropout = d_model, num_heads, dropout
        self.activation = activation
        self.in_proj = nn.Linear(
            d_model, 3 * d_model
        )  # rows: query, key, value (nn.MultiheadAttention layout)
        self.out_proj = nn.Linear(d_model, d_model)
        self.norm_attn = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.norm_out = nn.LayerNorm(d_model)
        _init_attention(self.in_proj, self.out_proj)

    def attention(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        voxel_index: torch.Tensor,
        keep: torch.Tensor | None,
        first_slot: torch.Tensor,
    ) -> torch.Tensor:
        """Multi-head set attention, read back per voxel.

        Args:
            x: float ``(M, C)`` voxel features.
            pos: float ``(M, C)`` positional embeddings.
            voxel_index: int64 ``(S, K)`` voxel in each slot.
            keep: bool ``(S, 1, 1, K)``, False for repeated slots (excluded as keys); ``None``: keep all.
            first_slot: int64 ``(M,)`` flat slot ``set * K + position`` of each voxel's first copy.

        Returns:
            float ``(M, C)`` attention output (after the output projection) of each voxel's first copy.
        """
        c, h = self.d_model, self.num_heads
        w, b = self.in_proj.weight, self.in_proj.bias
        qk = F.linear(x + pos, w[: 2 * c], b[: 2 * c])
        v = F.linear(x, w[2 * c :], b[2 * c :])
        s, k = voxel_index.shape
        if s == 0:
            return self.out_proj(v.new_zeros((0, c)))
        flat = voxel_index.reshape(-1)
        # index_select (much faster than advanced indexing on the CPU), then strided views without copies:
        # (S, K, 2, H, d) -> (2, S, H, K, d) and (S, K, H, d) -> (S, H, K, d).
        qk_sets = qk.index_select(0, flat).view(s, k, 2, h, c // h).permute(2, 0, 3, 1, 4)
        v_sets = v.index_select(0, flat).view(s, k, h, c // h).transpose(1, 2)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(qk_sets[0], qk_sets[1], v_sets, attn_mask=keep, dropout_p=p)
        slots = out.transpose(1, 2).reshape(s * k, c)  # (S, H, K, d) -> (S * K, C), a view for SDPA's layout
        return self.out_proj(slots.index_select(0, first_slot))

    def forward(self, x: torch.Tensor, pos: PosEmbedding, sets: SetIndex, order: int) -> torch.Tensor:
        """Run the layer on the sets of one order.

        Args:
            x: float ``(M, C)`` voxel features.
            pos: positional embeddings of the voxels.
            sets: set indices of one window configuration.
            order: which of its set orders (0 y-major, 1 x-major).

        Returns:
            float ``(M, C)``. In eval mode without autograd on the CPU this runs chunk by chunk of sets
            (:func:`.dsvt_chunked.set_attention_chunked`); otherwise (or for set indices without a read-back
            order, :meth:`SetIndex.from_graph`) all sets at once through :meth:`attention`.
        """
        if sets.read_slot is not None and chunked_inference_applies(self, x):
            return set_attention_chunked(self, x, pos, sets, order)
        y = self.norm_attn(x + self.attention(x, pos.dense(), *sets.order(order)))
        ffn = self.linear2(_ACTIVATIONS[self.activation](self.linear1(y)))
        z = self.norm_ffn(y + ffn)
        return self.norm_out(z + x)


class DSVTBlock(nn.Module):
    """Two set-attention layers: the first on the y-major sets, the second on the x-major sets of one window
    configuration, wrapped in one more residual + LayerNorm (as the authors do).

    Args:
        d_model, num_heads, dim_feedforward, dropout, activation: as in :class:`SetAttentionLayer`.
    """

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float = 0.0,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        kw = dict(
            d_model=d_model,
            num_heads=num_heads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation=activation,
        )
        self.layers = nn.ModuleList([SetAttentionLayer(**kw), SetAttentionLayer(**kw)])  # type: ignore[arg-type]
        self.norm_out = nn.LayerNorm(d_model)

    def forward(
        self, x: torch.Tensor, sets: SetIndex, pos: tuple[PosEmbedding, PosEmbedding]
    ) -> torch.Tensor:
        """Run the block.

        Args:
            x: float ``(M, C)``.
            sets: set indices of the block's window configuration (:class:`.dsvt_input.SetIndex`).
            pos: positional embeddings of layer 0 and layer 1 (:class:`.dsvt_input.PosEmbedding`).

        Returns:
            float ``(M, C)``.
        """
        y = x
        for order, layer in enumerate(self.layers):
            y = layer(y, pos[order], sets, order)
        return self.norm_out(y + x)


@dataclass(frozen=True)
class PoolSlots:
    """The part of :class:`~perception.ops.pool_windows.PoolWindows` that :class:`AttentionPooling` reads, as an
    exported graph receives it.

    Attributes:
        pooled_index: int64 ``(M,)`` pooled voxel of each input voxel.
        slot: int64 ``(M,)`` slot of each input voxel in its pooled voxel's region.
        mask: bool ``(P, V)`` True for empty slots.
    """

    pooled_index: torch.Tensor
    slot: torch.Tensor
    mask: torch.Tensor

    @property
    def pool_volume(self) -> int:
        """Slots per region ``V``."""
        return int(self.mask.shape[1])


class AttentionPooling(nn.Module):
    """Attention-style 3D pooling between DSVT stages.

    Each pooled voxel's input voxels fill a ``(P, V, C)`` buffer (zeros in empty slots); the query is the max over
    the region, the keys are the slots plus a learned per-slot embedding, the values the slots; one multi-head
    attention, then ``LayerNorm(attention + query)``.

    Args:
        d_model: channels ``C`` (in and out).
        pool_volume: slots ``V`` per region (product of the stride).
        num_heads: attention heads (the authors use 8).
        mask_empty: exclude empty slots from the max and from the keys (default). ``False`` reproduces the
            authors, where empty slots take part as zero features (so the max is at least 0).
    """

    def __init__(
        self, *, d_model: int, pool_volume: int, num_heads: int = 8, mask_empty: bool = True
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"num_heads ({num_heads}) must divide d_model ({d_model})")
        self.d_model, self.pool_volume, self.num_heads = d_model, pool_volume, num_heads
        self.mask_empty = mask_empty
        self.slot_embed = nn.Parameter(torch.empty(pool_volume, d_model))
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        nn.init.normal_(self.slot_embed, std=0.01)
        _init_attention(self.in_proj, self.out_proj)

    def forward(self, x: torch.Tensor, pool: PoolWindows | PoolSlots) -> torch.Tensor:
        """Pool ``x`` float ``(M, C)`` over ``pool`` (``M`` input voxels, ``P`` regions); returns ``(P, C)``."""
        if pool.pool_volume != self.pool_volume:
            raise ValueError(f"pool has {pool.pool_volume} slots per region, this layer {self.pool_volume}")
        c, n = self.d_model, pool.mask.shape[0]  # a size, not an int: stays symbolic in an exported graph
        flat = pool.pooled_index * self.pool_volume + pool.slot
        buf = x.new_zeros((n * self.pool_volume, c)).index_copy(0, flat, x).view(n, self.pool_volume, c)
        empty = pool.mask[..., None]
        if self.mask_empty:
            query = buf.masked_fill(empty, -math.inf).amax(dim=1)
        else:
            query = buf.amax(dim=1)
        w, b = self.in_proj.weight, self.in_proj.bias
        q = F.linear(query, w[:c], b[:c])[:, None]  # (P, 1, C)
        key = F.linear(buf + self.slot_embed.to(buf.dtype), w[c : 2 * c], b[c : 2 * c])
        val = F.linear(buf, w[2 * c :], b[2 * c :])
        if n == 0:
            return self.norm(self.out_proj(q[:, 0]) + query)
        attn_mask = (~pool.mask)[:, None, None, :] if self.mask_empty else None
        h = self.num_heads
        out = F.scaled_dot_product_attention(
            _heads(q, h), _heads(key, h), _heads(val, h), attn_mask=attn_mask
        )
        out = self.out_proj(out.reshape(n, c))  # (P, H, 1, d) -> (P, C)
        return self.norm(out + query)


__all__ = ["AttentionPooling", "DSVTBlock", "PoolSlots", "SetAttentionLayer"]
