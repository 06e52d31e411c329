"""The CPU line every benchmark prints: model, relevant flags, threads, a same-run ``torch.mm`` rate in fp32 and
bf16 (so figures from different machines compare)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

__all__ = ["machine_line"]


def machine_line() -> str:
    import torch

    flags = ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(
            (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), ""
        )
        have = set(
            next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
        )
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in have)
    except OSError:
        model = platform.processor()

    def rate(dtype: torch.dtype) -> float:
        a = torch.randn(1024, 1024).to(dtype)
        torch.mm(a, a)
        t0 = time.perf_counter()
        for _ in range(4):
            torch.mm(a, a)
        return 4 * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9

    return (
        f"CPU: {model} ({os.cpu_count()} cores; flags: {flags or 'none of avx2/avx512/amx'}); torch threads "
        f"{torch.get_num_threads()}; torch.mm 1024^3: fp32 {rate(torch.float32):.0f} GFLOP/s, bf16 "
        f"{rate(torch.bfloat16):.0f} GFLOP/s; MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}"
    )
