"""Keep freed memory in the process (glibc): no page-fault storm from large, short-lived tensors.

glibc's ``malloc`` serves large blocks with ``mmap`` and trims the heap top whenever a large block is freed, so a
model that allocates and frees tensors of 10-50 MB many times per forward (DSVT's per-layer intermediates, the
padded voxel features) gets fresh pages each time and pays a page fault per 4 KiB: on this project's VMs that is
15k-80k faults and 150-300 ms of a 40k-pillar DSVT forward (``benchmarks/bench_models_dsvt.py --keep-freed-memory``).
PyTorch's CPU performance guide recommends jemalloc / tcmalloc for the same reason; raising glibc's two
thresholds (the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment variables, or ``mallopt``
at run time, as here) has the same effect without another library. The cost: memory freed by Python stays
mapped in the process (its resident size stays at its peak) instead of going back to the system.

The tools call :func:`keep_freed_memory` at start-up (``tools/train.py``, ``tools/test.py``, ``tools/demo.py``);
the library itself never changes the allocator.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

__all__ = ["KEEP_THRESHOLD", "keep_freed_memory"]

logger = logging.getLogger(__name__)

KEEP_THRESHOLD = 1 << 30
"""Bytes: blocks up to this size come from the heap, and the heap top is trimmed only above it."""

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory(threshold: int = KEEP_THRESHOLD) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes for this process.

    Does nothing (returns ``False``) when the C library is not glibc, when ``mallopt`` refuses, or when the user
    set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (their choice wins). Returns ``True`` when both
    thresholds were set. Results never change, only speed and resident memory.
    """
    if any(name in os.environ for name in _ENV):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    value = min(int(threshold), 2**31 - 1)
    # the mmap threshold first: setting it turns off glibc's dynamic thresholds, then the trim threshold
    ok = bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
    if not ok:
        logger.debug("mallopt refused the thresholds; glibc's defaults stay")
    return ok
