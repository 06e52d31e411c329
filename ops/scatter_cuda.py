# mypy: disable-error-code="call-arg, var-annotated"
# (numba.cuda intrinsics such as cuda.grid carry no usable type hints)
"""numba CUDA kernel for :func:`perception.ops.scatter`: one thread per (segment, channel) reduces the segment's
points in ascending point order, so results are deterministic and bit-identical to the CPU kernel.

The segment grouping (a stable sort of the segment indices, counts and offsets) uses torch on the tensors' device.
Import lazily, only when the CUDA backend runs.
"""

from __future__ import annotations

from typing import Any

import torch
from numba import cuda

from ._backend import blocks_for, copy_back, launch_stream, to_device_array

THREADS = 256


@cuda.jit
def _reduce_kernel(
    features: Any, order: Any, offsets: Any, counts: Any, reduce_code: Any, out: Any, arg: Any
) -> None:
    t = cuda.grid(1)
    c_total = out.shape[1]
    if t >= out.shape[0] * c_total:
        return
    s = t // c_total
    c = t - s * c_total
    a = offsets[s]
    b = offsets[s + 1]
    if a == b:
        out[s, c] = 0
        arg[s, c] = -1
        return
    best_i = order[a]
    acc = features[best_i, c]
    for k in range(a + 1, b):
        i = order[k]
        v = features[i, c]
        if reduce_code == 2:
            if acc == acc and (v > acc or v != v):
                acc = v
                best_i = i
        else:
            acc += v
    if reduce_code == 1:
        acc = acc / counts[s]
    out[s, c] = acc
    arg[s, c] = best_i


def segment_reduce(
    features: torch.Tensor, index: torch.Tensor, num_segments: int, reduce_code: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``out`` ``(S, C)`` (dtype of ``features``), ``arg`` int64 ``(S, C)`` and int64 ``counts`` ``(S,)``."""
    n, c = features.shape
    dev = features.device
    counts = torch.bincount(index[index >= 0], minlength=num_segments)
    offsets = torch.zeros(num_segments + 1, dtype=torch.int64, device=dev)
    torch.cumsum(counts, 0, out=offsets[1:])
    order = torch.argsort(index, stable=True)[n - int(offsets[-1]) :].contiguous()  # drop the -1 rows
    out = torch.empty((num_segments, c), dtype=features.dtype, device=dev)
    arg = torch.empty((num_segments, c), dtype=torch.int64, device=dev)
    if out.numel() == 0:
        return out, arg, counts
    args = [features.contiguous(), order, offsets, counts.to(features.dtype), reduce_code, out, arg]
    dev_args = [to_device_array(a) if isinstance(a, torch.Tensor) else a for a in args]
    _reduce_kernel[blocks_for(out.numel(), THREADS), THREADS, launch_stream(features)](*dev_args)
    copy_back(dev_args[5], out)
    copy_back(dev_args[6], arg)
    return out, arg, counts
