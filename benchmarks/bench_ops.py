"""`make bench` for the ops: runs each op benchmark in turn, each printing its own markdown table.

    python benchmarks/bench_ops.py [voxelize] [set_partition] [nms]

Every benchmark compares against a peer in the same run (spconv's PointToVoxel, a torch reference), with 2 threads,
and reports medians with min/max. The Makefile's `bench` target raises glibc's mmap/trim thresholds (see
../shared/SETUP.md); each table says which setting it ran with.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {"voxelize": "bench_voxelize.py", "set_partition": "bench_set_partition.py", "nms": "bench_nms.py"}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}", file=sys.stderr)
        return 2
    print(
        f"# perception ops benchmarks ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    )
    print(f"load average at start: {os.getloadavg()}")
    print(
        "MALLOC_MMAP_THRESHOLD_={} MALLOC_TRIM_THRESHOLD_={}".format(
            os.environ.get("MALLOC_MMAP_THRESHOLD_", "unset"),
            os.environ.get("MALLOC_TRIM_THRESHOLD_", "unset"),
        )
    )
    for name in names:
        print(f"\n## {name}\n", flush=True)
        t0 = time.perf_counter()
        _load(HERE / BENCHES[name]).main()
        print(f"\n({name} took {time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
