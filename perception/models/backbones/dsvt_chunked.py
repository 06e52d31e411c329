"""DSVT set-attention layer at inference on the CPU: the whole layer, one chunk of sets at a time.

The layer (:class:`.dsvt_blocks.SetAttentionLayer`) is attention within each set, then row-wise work per voxel
(output projection, residuals, LayerNorms, FFN). Run over all voxels at once (the reference path), every step
writes and reads full-size intermediates: ``(M, 2C)`` query / key projections, ``(S * K, 2C)`` gathered sets,
the ``(M, F)`` FFN hidden layer, 20-50 MB each at 40k pillars. They miss the caches, and glibc serves
allocations above its mmap threshold (at most 32 MB) with fresh pages, so each of them also pays a page fault
per 4 KB (about 1.5 GB of faulted pages per 40k-pillar forward, measured). Here the layer runs per chunk of
about :data:`CHUNK_SLOTS` slots (consecutive sets). Chunking cuts those faults to 15k-80k per forward with
glibc's default thresholds (heap trimming still hands freed chunks back); after
:func:`perception.engine.malloc.keep_freed_memory` (called by the tools) there are none: at 40k pillars 1124 ms
vs 816-862 ms on the project's machine.

1. gather the chunk's slots from ``x`` and the positional table, project to query / key / value there (the
   projection commutes with the gather; slots repeat a few voxels, about 15% more rows than voxels);
2. attention within each set of the chunk, repeated and padding slots masked as keys: for float32 as batched
   matrix products one head at a time (:func:`_attention_bmm`, which uses both threads far better than torch's
   CPU flash-attention kernel at head dim 16), otherwise (autocast) through torch's SDPA;
3. for the voxels whose first copy lies in the chunk (a contiguous range of :attr:`SetIndex.read_slot`), the
   rest of the layer, written to their rows of the output.

Same arithmetic as the reference path (the attention, projections, LayerNorms and activations of the same
values); linear layers go through :func:`perception.models.cpu_linear.linear` (oneDNN for float32), so results
agree to float32 rounding (about 2e-6 on the 40k-pillar benchmark frame). Used by the layer only in eval
mode, without autograd, on the CPU, when not tracing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from perception.models.cpu_linear import exporting, linear

from .dsvt_input import PosEmbedding, SetIndex

if TYPE_CHECKING:
    from .dsvt_blocks import SetAttentionLayer

CHUNK_SLOTS = 16384
"""Slots per chunk (rounded down to whole sets, at least one set). Each intermediate of a chunk stays under 20 MB
(below glibc's mmap limit), and a 40k-pillar layer takes 3 chunks. Smaller chunks were as fast on an idle CPU
but much slower when another process keeps one of the two cores busy: every op of a chunk is a parallel region
whose end waits for the preempted thread, so the number of ops per layer matters."""


def chunked_inference_applies(layer: SetAttentionLayer, x: torch.Tensor) -> bool:
    """Whether ``layer`` runs ``x`` with :func:`set_attention_chunked`: eval mode, no autograd, CPU, voxels
    present, not tracing / scripting / compiling (exported graphs keep the reference path)."""
    return (
        not layer.training
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.shape[0] > 0
        and not exporting()
    )


def set_attention_chunked(
    layer: SetAttentionLayer, x: torch.Tensor, pos: PosEmbedding, sets: SetIndex, order: int
) -> torch.Tensor:
    """The set-attention layer's forward, chunk by chunk (see the module docstring).

    Args:
        layer: the layer whose weights to use (eval mode; dropout does not apply).
        x: float ``(M, C)`` voxel features, ``M > 0``.
        pos: the layer's positional embeddings.
        sets: set indices of the layer's window configuration.
        order: set order (0 y-major, 1 x-major).

    Returns:
        float ``(M, C)``, as :meth:`SetAttentionLayer.forward` returns.
    """
    c, h = layer.d_model, layer.num_heads
    index, keep, _ = sets.order(order)
    read_slot, read_voxel = sets.reads(order)
    s, k = index.shape
    m = x.shape[0]
    flat = index.reshape(-1)
    step = max(1, CHUNK_SLOTS // k)
    starts = list(range(0, s, step))
    # The voxels read back from sets [a, a + step) are read_slot's range [bound(a), bound(a + step)).
    cuts = torch.tensor([a * k for a in starts[1:]], dtype=read_slot.dtype, device=read_slot.device)
    bounds = [0, *torch.searchsorted(read_slot, cuts).tolist(), m]
    w, b = layer.in_proj.weight, layer.in_proj.bias
    neg = None if keep is None else _additive_mask(keep)
    out: torch.Tensor | None = None
    for i, a in enumerate(starts):
        n = min(step, s - a)
        slots = flat[a * k : (a + n) * k]
        gx = x.index_select(0, slots)
        qk = linear(gx + pos.rows(slots), w[: 2 * c], b[: 2 * c])
        v = linear(gx, w[2 * c :], b[2 * c :])
        local = read_slot[bounds[i] : bounds[i + 1]] - a * k
        if qk.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
            rows = _attention_bmm(qk, v, None if neg is None else neg[a : a + n], (n, k, h), local)
        else:
            rows = _attention_sdpa(qk, v, None if keep is None else keep[a : a + n], (n, k, h), local)
        xr = gx.index_select(0, local)
        y = layer.norm_attn(linear(rows, layer.out_proj.weight, layer.out_proj.bias, residual=xr))
        hidden = linear(y, layer.linear1.weight, layer.linear1.bias, layer.activation)
        z = layer.norm_ffn(linear(hidden, layer.linear2.weight, layer.linear2.bias, residual=y))
        res = layer.norm_out(z + xr)
        if out is None:
            out = res.new_empty((m, c))
        out.index_copy_(0, read_voxel[bounds[i] : bounds[i + 1]], res)
    assert out is not None  # M > 0 implies at least one set
    return out


def _additive_mask(keep: torch.Tensor) -> torch.Tensor:
    """float32 ``(S, 1, K)``: 0 where ``keep`` ``(S, 1, 1, K)`` is True, ``-inf`` where the key is masked."""
    s, k = keep.shape[0], keep.shape[-1]
    return torch.zeros((s, 1, k), device=keep.device).masked_fill_(~keep.view(s, 1, k), float("-inf"))


def _attention_sdpa(
    qk: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    sets: tuple[int, int, int],
    local: torch.Tensor,
) -> torch.Tensor:
    """Set attention through torch's SDPA (any dtype; autocast applies), read at slots ``local``.

    Args:
        qk: ``(n * K, 2C)`` queries and keys of the chunk's slots.
        v: ``(n * K, C)`` values.
        keep: bool ``(n, 1, 1, K)`` key mask, or ``None``.
        sets: ``(n, K, H)`` sets, slots per set, heads.
        local: int64 ``(R,)`` slots (in the chunk) whose output to return.

    Returns:
        ``(R, C)``: the heads' outputs side by side, before the output projection.
    """
    (n, k, h), c = sets, v.shape[1]
    # (n * K, 2C) -> (2, n, H, K, d) and (n * K, C) -> (n, H, K, d): strided views, as in the reference path.
    qk_sets = qk.view(n, k, 2, h, c // h).permute(2, 0, 3, 1, 4)
    v_sets = v.view(n, k, h, c // h).transpose(1, 2)
    att = F.scaled_dot_product_attention(qk_sets[0], qk_sets[1], v_sets, attn_mask=keep)
    return att.transpose(1, 2).reshape(n * k, c).index_select(0, local)


def _attention_bmm(
    qk: torch.Tensor,
    v: torch.Tensor,
    neg: torch.Tensor | None,
    sets: tuple[int, int, int],
    local: torch.Tensor,
) -> torch.Tensor:
    """Set attention as batched matrix products, one head at a time (float32): what :func:`_attention_sdpa`
    computes, ``softmax(scale * q k^T + mask) v`` per set and head.

    Why: torch's CPU flash-attention kernel barely gains from a second thread at head dim 16 (measured 1.1x),
    while ``baddbmm`` / softmax / ``bmm`` do (together about 1.7x faster than SDPA on two threads, equal on one).
    The ``(n, K, K)`` score buffer and the ``(n, K, d)`` head output are reused across heads; each head's output
    is copied into its columns of one ``(n, K, C)`` buffer (``bmm`` into the strided columns directly is slower),
    whose rows are then read at ``local``.

    Args:
        qk, v, sets, local: as in :func:`_attention_sdpa`.
        neg: float32 ``(n, 1, K)`` additive key mask (0 or ``-inf``), or ``None``.

    Returns:
        ``(R, C)`` as :func:`_attention_sdpa`.
    """
    (n, k, h), c = sets, v.shape[1]
    d = c // h
    q3, v3 = qk.view(n, k, 2 * c), v.view(n, k, c)
    scores = qk.new_empty((n, k, k))
    head = v.new_empty((n, k, d))
    out = v.new_empty((n, k, c))
    scale = d**-0.5
    for i in range(h):
        q, key = q3[:, :, i * d : (i + 1) * d], q3[:, :, c + i * d : c + (i + 1) * d].transpose(1, 2)
        if neg is None:
            scores.baddbmm_(q, key, beta=0.0, alpha=scale)  # beta 0: the buffer's old values are not read
        else:
            torch.baddbmm(neg, q, key, alpha=scale, out=scores)
        torch.softmax(scores, -1, out=scores)
        torch.bmm(scores, v3[:, :, i * d : (i + 1) * d], out=head)
        out[:, :, i * d : (i + 1) * d].copy_(head)
    return out.view(n * k, c).index_select(0, local)


__all__ = ["CHUNK_SLOTS", "chunked_inference_applies", "set_attention_chunked"]
