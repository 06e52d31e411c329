"""Segment reduction with autograd: ``scatter(features, index, num_segments, reduce)`` for dynamic VFEs.

``out[s] = reduce({features[i] : index[i] == s})``, with ``reduce`` in ``"sum"``, ``"mean"``, ``"max"``
(per channel). Rules, identical for all backends:

* ``index == -1`` rows are ignored (no contribution, zero gradient); other values must be in ``[0, num_segments)``.
* Empty segments give 0 (and no gradient).
* Sums run over each segment's points in ascending point order (numba CPU and CUDA are bit-identical; the torch
  reference may differ in the last bits). NaN and inf propagate as in ordinary arithmetic; for ``"max"`` a column
  with a NaN gives NaN.
* ``"max"`` sends the gradient to one point per (segment, channel): the first point (lowest index) holding the
  maximum (or the first NaN).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from perception._validate import check_tensor

from ._backend import check_cuda_usable, match_torch_threads, pick_backend

Reduce = Literal["sum", "mean", "max"]
_CODES = {"sum": 0, "mean": 1, "max": 2}


def scatter_reference(
    features: torch.Tensor, index: torch.Tensor, num_segments: int, reduce: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Plain-torch forward: ``out`` ``(S, C)``, ``arg`` int64 ``(S, C)`` (max only, else -1), counts int64 ``(S,)``."""
    n, c = features.shape
    dev = features.device
    valid = index >= 0
    idx = index[valid]
    f = features[valid]
    rows = torch.nonzero(valid).flatten()
    counts = torch.bincount(idx, minlength=num_segments)
    out = features.new_zeros((num_segments, c))
    arg = torch.full((num_segments, c), -1, dtype=torch.int64, device=dev)
    if reduce in ("sum", "mean"):
        out.index_add_(0, idx, f)
        if reduce == "mean":
            out = out / counts.clamp(min=1).to(features.dtype)[:, None]
        return out, arg, counts
    nan = torch.isnan(f)
    amax = features.new_full((num_segments, c), -torch.inf)
    amax.scatter_reduce_(0, idx[:, None].expand(-1, c), torch.where(nan, -torch.inf, f), "amax")
    if idx.numel() == 0:
        return out, arg, counts
    nan_count = torch.zeros((num_segments, c), dtype=torch.int64, device=dev)
    has_nan = nan_count.scatter_add_(0, idx[:, None].expand(-1, c), nan.to(torch.int64)) > 0
    winner = torch.where(has_nan[idx], nan, (f == amax[idx]) & ~nan)
    first = torch.full((num_segments, c), n, dtype=torch.int64, device=dev)
    cand = torch.where(winner, rows[:, None].expand(-1, c), torch.full_like(winner, n, dtype=torch.int64))
    first.scatter_reduce_(0, idx[:, None].expand(-1, c), cand, "amin")
    nonempty = (counts > 0)[:, None].expand(-1, c)
    arg = torch.where(nonempty, first, arg)
    out = torch.where(nonempty, features[arg.clamp(min=0), torch.arange(c, device=dev)], out)
    return out, arg, counts


def _forward(
    features: torch.Tensor, index: torch.Tensor, num_segments: int, reduce: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "torch":
        return scatter_reference(features, index, num_segments, reduce)
    if backend == "cuda":
        check_cuda_usable(features)
        from . import scatter_cuda

        return scatter_cuda.segment_reduce(features, index, num_segments, _CODES[reduce])
    from . import scatter_cpu

    f = features.detach().contiguous().numpy()
    order, offsets = scatter_cpu.segment_order(index.numpy(), num_segments)
    counts = np.diff(offsets)
    out = np.empty((num_segments, f.shape[1]), dtype=f.dtype)
    arg = np.empty((num_segments, f.shape[1]), dtype=np.int64)
    match_torch_threads()
    scatter_cpu.segment_reduce(f, order, offsets, counts.astype(f.dtype), _CODES[reduce], out, arg)
    return torch.from_numpy(out), torch.from_numpy(arg), torch.from_numpy(counts)


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, features: torch.Tensor, index: torch.Tensor, num_segments: int, reduce: str, backend: str
    ) -> torch.Tensor:
        out, arg, counts = _forward(features, index, num_segments, reduce, backend)
        ctx.reduce = reduce
        ctx.num_points = features.shape[0]
        ctx.save_for_backward(index, arg, counts)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        index, arg, counts = ctx.saved_tensors
        n, c = ctx.num_points, grad_out.shape[1]
        if ctx.reduce == "max":
            grad = grad_out.new_zeros((n, c))
            has = arg >= 0
            grad.index_put_((arg[has], torch.nonzero(has)[:, 1]), grad_out[has])
            return grad, None, None, None, None
        g = grad_out
        if ctx.reduce == "mean":
            g = grad_out / counts.clamp(min=1).to(grad_out.dtype)[:, None]
        valid = (index >= 0)[:, None]
        picked = g.index_select(0, index.clamp(min=0)) if g.shape[0] > 0 else grad_out.new_zeros((n, c))
        return torch.where(valid, picked, torch.zeros_like(picked)), None, None, None, None


def scatter(
    features: torch.Tensor,
    index: torch.Tensor,
    num_segments: int,
    reduce: Reduce = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Reduce the rows of ``features`` into ``num_segments`` segments (differentiable w.r.t. ``features``).

    Args:
        features: float32 or float64 ``(N, C)``.
        index: int64 ``(N,)`` segment of each row in ``[0, num_segments)``, or -1 to ignore the row; same device.
        num_segments: ``S >= 0``.
        reduce: ``"sum"``, ``"mean"`` or ``"max"`` (per channel).
        backend: ``None`` (by device), ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        ``(S, C)`` tensor of the dtype of ``features``; empty segments are 0.

    Raises:
        TypeError / ValueError: wrong types, shapes, devices, unknown ``reduce`` or out-of-range indices.
    """
    f = check_tensor("features", features, ndim=2, dtype=(torch.float32, torch.float64))
    idx = check_tensor("index", index, shape=(f.shape[0],), dtype=torch.int64)
    if idx.device != f.device:
        raise ValueError(f"index must be on the device of features ({f.device}), got {idx.device}")
    if isinstance(num_segments, bool) or not isinstance(num_segments, (int, np.integer)) or num_segments < 0:
        raise ValueError(f"num_segments must be an int >= 0, got {num_segments!r}")
    if reduce not in _CODES:
        raise ValueError(f"reduce must be one of {tuple(_CODES)}, got {reduce!r}")
    if idx.numel() > 0:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < -1 or hi >= num_segments:
            raise ValueError(f"index values must be in [-1, {num_segments}), got min {lo} and max {hi}")
    be = pick_backend(f, backend)
    out: torch.Tensor = _Scatter.apply(f, idx.contiguous(), int(num_segments), reduce, be)
    return out
