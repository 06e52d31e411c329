"""numba CUDA kernels for :mod:`perception.ops.nms`.

Two stages, as in the usual GPU NMS: (1) a kernel with one thread per (box ``i``, word of 64 later boxes) writes
the suppression bit mask ``int64 (M, ceil(M / 64))`` -- bit ``j % 64`` of word ``j // 64`` in row ``i`` is set when
``j > i`` and box ``i`` would suppress box ``j``; (2) the greedy pass over the mask
(:func:`perception.ops.nms_cpu.reduce_mask`) runs on the host, which reads ``M * M / 8`` bytes (2 MB for 4096
boxes). The pairwise test is the same ``register_jitable`` core as on the CPU, so decisions agree.
``cuda`` is a module global because the CUDA simulator swaps it in the kernels' globals.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from numba import cuda, float64, int64

from ._backend import blocks_for, check_cuda_usable, copy_back, launch_stream, to_device_array
from .iou3d_cpu import MAX_VERTS, pair_iou
from .nms_cpu import WORD, reduce_mask

THREADS = 128


@functools.cache
def _kernels() -> tuple[Any, Any]:
    @cuda.jit
    def iou_mask_kernel(params, threshold, mask):  # type: ignore[no-untyped-def]
        t = cuda.grid(1)
        m = params.shape[0]
        words = mask.shape[1]
        if t >= m * words:
            return
        i = t // words
        w = t - i * words
        px = cuda.local.array(MAX_VERTS, float64)
        py = cuda.local.array(MAX_VERTS, float64)
        qx = cuda.local.array(MAX_VERTS, float64)
        qy = cuda.local.array(MAX_VERTS, float64)
        bits = int64(0)
        start = w * WORD
        for b in range(WORD):
            j = start + b
            if j > i and j < m:
                if pair_iou(params[i], params[j], False, px, py, qx, qy) > threshold:
                    bits |= int64(1) << int64(b)
        mask[i, w] = bits

    @cuda.jit
    def circle_mask_kernel(centres, distance_sq, mask):  # type: ignore[no-untyped-def]
        t = cuda.grid(1)
        m = centres.shape[0]
        words = mask.shape[1]
        if t >= m * words:
            return
        i = t // words
        w = t - i * words
        bits = int64(0)
        start = w * WORD
        for b in range(WORD):
            j = start + b
            if j > i and j < m:
                ddx = centres[i, 0] - centres[j, 0]
                ddy = centres[i, 1] - centres[j, 1]
                if ddx * ddx + ddy * ddy <= distance_sq:
                    bits |= int64(1) << int64(b)
        mask[i, w] = bits

    return iou_mask_kernel, circle_mask_kernel


def _run(which: int, data: torch.Tensor, value: float, post_max: int) -> torch.Tensor:
    m = data.shape[0]
    if m == 0:
        return torch.zeros(0, dtype=torch.int64)
    check_cuda_usable(data)
    kernel = _kernels()[which]
    words = (m + WORD - 1) // WORD
    mask = torch.zeros(m, words, dtype=torch.int64, device=data.device)
    d_mask = to_device_array(mask)
    kernel[blocks_for(m * words, THREADS), THREADS, launch_stream(data)](to_device_array(data), value, d_mask)
    copy_back(d_mask, mask)
    return torch.from_numpy(reduce_mask(mask.cpu().numpy(), post_max))


def nms_sorted_cuda(params: torch.Tensor, threshold: float, post_max: int) -> torch.Tensor:
    """Kept positions int64 (CPU tensor) of greedy IoU NMS over sorted parameter rows float64 ``(M, 9)``."""
    return _run(0, params, threshold, post_max)


def circle_nms_sorted_cuda(centres: torch.Tensor, distance_sq: float, post_max: int) -> torch.Tensor:
    """Kept positions int64 (CPU tensor) of greedy circle NMS over sorted float64 centres ``(M, 2)``."""
    return _run(1, centres, distance_sq, post_max)
