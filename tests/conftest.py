"""Test-session setup.

On machines where torch sees no GPU, numba's CUDA kernels are tested in numba's CUDA simulator. The simulator is
switched on by ``NUMBA_ENABLE_CUDASIM=1``, which numba reads once at import time, so it is set here, before any test
module imports numba. On a GPU machine the variable is left alone and the CUDA tests use the real device.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def cuda_backend_device() -> torch.device:
    """Device on which the ``backend="cuda"`` tests put their tensors: the GPU if present, else the CPU (simulator)."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("no GPU and NUMBA_ENABLE_CUDASIM is not 1: numba CUDA kernels cannot run here")
    return torch.device("cpu")
