"""numba CUDA kernel for :func:`perception.ops.points_in_boxes`: one thread per point, ``atomic.add`` for counts.

Uses the same ``register_jitable`` test as the CPU kernel (:mod:`perception.ops.points_in_boxes_cpu`).
``cuda`` is a module global because the CUDA simulator swaps it in the kernel's globals.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from numba import cuda

from ._backend import blocks_for, check_cuda_usable, copy_back, launch_stream, to_device_array
from .points_in_boxes_cpu import point_in_box

THREADS = 256


@functools.cache
def _kernel() -> Any:
    @cuda.jit
    def kernel(points, boxes, out_index, counts):  # type: ignore[no-untyped-def]
        i = cuda.grid(1)
        if i >= points.shape[0]:
            return
        first = -1
        px = points[i, 0]
        py = points[i, 1]
        pz = points[i, 2]
        for j in range(boxes.shape[0]):
            if point_in_box(px, py, pz, boxes[j]):
                cuda.atomic.add(counts, j, 1)
                if first < 0:
                    first = j
        out_index[i] = first

    return kernel


def points_in_boxes_cuda(points: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CUDA backend: (first box index per point int64 ``(N,)`` or -1, points per box int64 ``(K,)``)."""
    n, k = points.shape[0], rows.shape[0]
    index = torch.full((n,), -1, dtype=torch.int64, device=points.device)
    counts = torch.zeros(k, dtype=torch.int64, device=points.device)
    if n == 0 or k == 0:
        return index, counts
    check_cuda_usable(points)
    d_index = to_device_array(index)
    d_counts = to_device_array(counts)
    _kernel()[blocks_for(n, THREADS), THREADS, launch_stream(points)](
        to_device_array(points), to_device_array(rows), d_index, d_counts
    )
    copy_back(d_index, index)
    copy_back(d_counts, counts)
    return index, counts
