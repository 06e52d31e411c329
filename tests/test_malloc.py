"""perception.engine.malloc: glibc keeps freed memory, so large short-lived buffers stop faulting in fresh pages."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only"
)

_CHILD = r"""
import json, resource, sys
import torch
from perception.engine.malloc import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "keep" else None
faults = []
for _ in range(16):  # tensors of 48-64 MB, above glibc's largest dynamic mmap threshold (32 MB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(12 << 20)
    y = x * 2
    z = torch.cat([x[: 4 << 20], y])
    del x, y, z
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"ok": ok, "faults": faults}))
"""


def _child(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_page_faults() -> None:
    default, kept = _child("default"), _child("keep")
    assert kept["ok"] is True
    pages = (48 + 48 + 64 << 20) // 4096
    assert min(default["faults"][1:]) > pages * 9 // 10  # by default every round faults its pages in again
    # kept: freed blocks are reused once the heap has grown. The heap's free space is fragmented for the first few
    # rounds (and now and then a later round still misses a fitting block), so the check is on the typical round
    # and on the total of the second half, not on any single round.
    later = kept["faults"][1:]
    assert sorted(later)[len(later) // 2] < pages // 20
    assert sum(kept["faults"][8:]) < sum(default["faults"][8:]) // 4


def test_user_settings_win() -> None:
    assert _child("keep", MALLOC_MMAP_THRESHOLD_="131072")["ok"] is False
