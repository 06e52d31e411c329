"""What several benchmarks share: the CPU line every benchmark prints (model, relevant flags, threads, a same-run
``torch.mm`` rate in fp32 and bf16, so figures from different machines compare), running a tool with its output
in a log, and a run's newest checkpoint."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["REPO", "competing_process", "machine_line", "newest_checkpoint", "run_logged"]

REPO = Path(__file__).resolve().parents[1]


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
        flags = " ".join(
            f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8") if f in have
        )
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


def run_logged(cmd: list[str], log: Path, cwd: Path = REPO) -> float:
    """Run ``cmd`` in ``cwd`` (default: the repository; output appended to ``log``) and return its wall time in seconds; raise on failure."""
    t0 = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, check=False)
    took = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[1:3])} ... failed (exit {done.returncode}); see {log}")
    return took


def newest_checkpoint(ckpt_dir: Path) -> Path:
    """The newest ``checkpoint_epoch_*.pth`` of a run's ``ckpt/`` folder (by epoch and iteration)."""
    from perception.engine.checkpoint import CheckpointManager

    found = [(k, p) for p in ckpt_dir.glob("checkpoint_epoch_*.pth") if (k := CheckpointManager.sort_key(p))]
    if not found:
        raise FileNotFoundError(f"no checkpoint in {ckpt_dir}")
    return max(found)[1]


@contextlib.contextmanager
def competing_process(enabled: bool = True) -> Iterator[str]:
    """A busy loop in another process pinned to the last usable core while the block runs (the benchmarks'
    ``--compete``: one core held elsewhere, as a data loader or a second job would). Yields a one-line label."""
    if not enabled:
        yield "no competing process"
        return
    core = max(os.sched_getaffinity(0))
    proc = subprocess.Popen(
        [sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, {core})
    )
    time.sleep(0.5)  # let it start spinning before any thread count is chosen
    try:
        yield f"a busy loop (pid {proc.pid}) pinned to core {core}"
    finally:
        proc.kill()
        proc.wait()
