"""Benchmark: ``perception.ops.voxelize`` (numba CPU hash) vs spconv's ``PointToVoxel`` (CPU, dense grid table).

Simulated 32-beam scans (``make_lidar_scan``) at 1 sweep (~34k points) and 10 sweeps (~340k points), nuScenes
grid 0.075 m x 0.075 m x 0.2 m over [-54, -54, -5, 54, 54, 3], 10 points per voxel, 160k voxels, 2 threads.

* time: per call, interleaved repeats (ours, spconv, ours, ...) in one subprocess per configuration; spconv's
  generator is built once beforehand (its best case), ours has nothing to build. Median, min and max in ms.
  Run once with the MALLOC_* settings of the calling process and, when it has none, once more with glibc's
  mmap/trim thresholds raised to 2^30 (SETUP.md: this makes allocation-heavy CPU code, spconv included, faster).
* peak memory: peak RSS growth of one call in a fresh subprocess (``/proc/self/clear_refs`` resets the peak);
  for spconv this includes building the ``PointToVoxel`` (its dense hash grid is allocated there and is needed
  for the call). Our JIT is warmed up on a tiny input first so that compile memory is not counted.
* first call: numba compile time in a fresh process with an empty cache, and the load time from the cache.

Run: ``.venv/bin/python benchmarks/bench_voxelize.py``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOXEL_SIZE = [0.075, 0.075, 0.2]
POINT_RANGE = [-54.0, -54.0, -5.0, 54.0, 54.0, 3.0]
MAX_POINTS = 10
MAX_VOXELS = 160000
SWEEPS = (1, 10)
REPEATS = 15


def _setup_threads() -> None:
    import numba
    import torch

    torch.set_num_threads(2)
    numba.set_num_threads(2)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _make_ours():  # type: ignore[no-untyped-def]
    from perception.ops.voxelize import voxelize

    def run(points):  # type: ignore[no-untyped-def]
        v = voxelize(points, VOXEL_SIZE, POINT_RANGE, MAX_POINTS, MAX_VOXELS)
        return v.features, v.coords[:, 1:], v.counts

    return run


def _make_spconv(channels: int):  # type: ignore[no-untyped-def]
    from spconv.pytorch.utils import PointToVoxel

    gen = PointToVoxel(
        vsize_xyz=VOXEL_SIZE,
        coors_range_xyz=POINT_RANGE,
        num_point_features=channels,
        max_num_voxels=MAX_VOXELS,
        max_num_points_per_voxel=MAX_POINTS,
    )
    return gen


def _worker_memory(impl: str, path: str) -> dict:
    import gc

    import numpy as np
    import torch

    _setup_threads()
    points = torch.from_numpy(np.load(path))
    if impl == "ours":
        run = _make_ours()
        run(points[:1000])  # JIT (from the cache) outside the measurement
    else:
        import spconv.pytorch.utils  # noqa: F401  (import outside the measurement)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = _status_kb("VmRSS")
    if impl == "ours":
        out = run(points)
    else:
        out = _make_spconv(points.shape[1])(points)
    peak = _status_kb("VmHWM")
    return {"peak_mb": (peak - base) / 1024, "voxels": int(out[2].shape[0])}


def _worker_compile(cache_dir: str) -> dict:
    os.environ["NUMBA_CACHE_DIR"] = cache_dir
    import torch

    _setup_threads()
    from perception.datasets.synthetic import make_lidar_scan

    points = torch.from_numpy(make_lidar_scan(1, beams=32, seed=0))
    run = _make_ours()
    t0 = time.perf_counter()
    run(points)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(points)
    second = time.perf_counter() - t0
    return {"first_s": first, "second_s": second}


def _subprocess(args: list[str], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args],
        capture_output=True,
        text=True,
        check=True,
        env=env or os.environ.copy(),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _worker_time(path: str, repeats: int) -> dict:
    """Interleaved timing of both implementations on the scan at ``path`` (milliseconds per call)."""
    import numpy as np
    import torch

    _setup_threads()
    points = torch.from_numpy(np.load(path))
    gen = _make_spconv(points.shape[1])
    impls = {"ours": _make_ours(), "spconv": gen}
    results = {name: fn(points) for name, fn in impls.items()}  # warm-up, and check both agree
    a, b = results["ours"], results["spconv"]
    if not (torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])):
        raise AssertionError("voxelize and spconv PointToVoxel disagree on this scan")
    times: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            t0 = time.perf_counter()
            fn(points)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    """Print the benchmark as markdown tables."""
    import numpy as np

    from perception.datasets.synthetic import make_lidar_scan

    active = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    raised = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**30)}
    configs = [(f"as run: {active or 'glibc defaults'}", None)]
    if not active:
        configs.append(("MALLOC_MMAP/TRIM_THRESHOLD_=2^30", raised))
    print("## voxelize vs spconv PointToVoxel (CPU)\n")
    print(
        f"2 threads (torch and numba); load average at start: {os.getloadavg()[0]:.2f}; "
        f"MALLOC_* settings of this process: {active or 'none (glibc defaults)'}\n"
    )
    print(
        "| malloc | sweeps | points | voxels | impl | median ms | min ms | max ms | throughput vs spconv | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for sweeps in SWEEPS:
            scan = make_lidar_scan(sweeps, beams=32, seed=0)
            path = os.path.join(tmp, f"scan{sweeps}.npy")
            np.save(path, scan)
            for label, env in configs:
                times = _subprocess(["--time", path, str(REPEATS)], env)
                mem = {impl: _subprocess(["--memory", impl, path], env) for impl in ("ours", "spconv")}
                spconv_median = statistics.median(times["spconv"])
                for impl in ("ours", "spconv"):
                    t = times[impl]
                    print(
                        f"| {label} | {sweeps} | {len(scan)} | {mem[impl]['voxels']} | {impl} | "
                        f"{statistics.median(t):.2f} | {min(t):.2f} | {max(t):.2f} | "
                        f"{spconv_median / statistics.median(t):.2f}x | {mem[impl]['peak_mb']:.1f} |"
                    )
        cold = _subprocess(["--compile", os.path.join(tmp, "numba_cache")])
        warm = _subprocess(["--compile", os.path.join(tmp, "numba_cache")])
    print("\n| first call of voxelize (1 sweep), fresh process | seconds |\n|---|---|")
    print(f"| numba compile, empty cache | {cold['first_s']:.2f} |")
    print(f"| load from the numba cache | {warm['first_s']:.2f} |")
    print(f"| second call | {warm['second_s']:.4f} |")
    print(
        f"\n({REPEATS} interleaved repeats per row pair, each configuration in its own process; ours = "
        "perception.ops.voxelize, backend 'cpu'; spconv's generator is built once before timing; peak RSS = "
        "growth during one call in a fresh process, for spconv including building its generator; both "
        "outputs are checked equal before timing.)"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory":
        print(json.dumps(_worker_memory(sys.argv[2], sys.argv[3])))
    elif len(sys.argv) > 1 and sys.argv[1] == "--time":
        print(json.dumps(_worker_time(sys.argv[2], int(sys.argv[3]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--compile":
        print(json.dumps(_worker_compile(sys.argv[2])))
    else:
        main()
