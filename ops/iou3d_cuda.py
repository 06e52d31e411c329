"""numba CUDA kernels for :mod:`perception.ops.iou3d` (one thread per box pair).

The kernels call the same ``register_jitable`` scalar cores as the CPU kernels
(:mod:`perception.ops.iou3d_cpu`), with per-thread local scratch buffers. Kernels are compiled lazily on first use
so that importing :mod:`perception.ops` does not import ``numba.cuda`` (this module is itself imported only when
the CUDA backend is used). ``cuda`` must be a module global: the CUDA simulator swaps it in the kernel's globals.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from numba import cuda, float64

from ._backend import blocks_for, check_cuda_usable, copy_back, launch_stream, to_device_array
from .iou3d_cpu import MAX_VERTS, pair_iou

THREADS = 256


@functools.cache
def _kernels() -> Any:
    @cuda.jit
    def iou_matrix_kernel(params_a, params_b, mode_3d, out):  # type: ignore[no-untyped-def]
        """Thread ``t`` computes ``out[t // K, t % K]``."""
        t = cuda.grid(1)
        k = params_b.shape[0]
        if t >= params_a.shape[0] * k:
            return
        i = t // k
        j = t - i * k
        px = cuda.local.array(MAX_VERTS, float64)
        py = cuda.local.array(MAX_VERTS, float64)
        qx = cuda.local.array(MAX_VERTS, float64)
        qy = cuda.local.array(MAX_VERTS, float64)
        out[i, j] = pair_iou(params_a[i], params_b[j], mode_3d, px, py, qx, qy)

    return iou_matrix_kernel


def iou_matrix_cuda(params_a: torch.Tensor, params_b: torch.Tensor, mode_3d: bool) -> torch.Tensor:
    """IoU matrix float32 ``(N, K)`` from parameter rows float64 ``(N, 9)``, ``(K, 9)`` on the CUDA backend."""
    n, k = params_a.shape[0], params_b.shape[0]
    out = torch.zeros(n, k, dtype=torch.float32, device=params_a.device)
    if n == 0 or k == 0:
        return out
    check_cuda_usable(params_a)
    kernel = _kernels()
    d_out = to_device_array(out)
    kernel[blocks_for(n * k, THREADS), THREADS, launch_stream(params_a)](
        to_device_array(params_a), to_device_array(params_b), mode_3d, d_out
    )
    copy_back(d_out, out)
    return out
