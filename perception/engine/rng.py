"""Seeding, deterministic mode, and capturing / restoring every random generator for exact resumption."""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch

__all__ = [
    "align_numba_threads",
    "capture_rng_state",
    "restore_rng_state",
    "seed_everything",
    "set_deterministic",
]

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and every GPU) with ``seed``."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """Switch deterministic algorithms on or off (torch, cuDNN; cuBLAS workspace on GPUs).

    Ops without a deterministic implementation warn instead of failing (``warn_only=True``): on the CPU every op
    this project uses is deterministic for a fixed thread count; on GPUs scatter-adds with atomics are not.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled


def align_numba_threads() -> int:
    """Make numba's parallel kernels use as many threads as torch does, and return that number.

    The ops call :func:`perception.ops._backend.match_torch_threads` before each parallel kernel; calling it once
    at start-up as well makes the count known (and logged) before the first kernel runs.
    """
    from perception.ops._backend import match_torch_threads

    return match_torch_threads()


def capture_rng_state() -> dict[str, Any]:
    """States of Python's ``random``, numpy's global generator, torch CPU and (if present) every CUDA device."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; CUDA states are restored only when the device count matches.

    Raises:
        ValueError: ``state`` lacks one of ``python``, ``numpy``, ``torch``.
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(f"RNG state is missing {missing}")
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            logger.warning(
                "checkpoint holds RNG states of %d CUDA devices but %d are visible; CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )
