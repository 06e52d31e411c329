"""Benchmark: DSVT set partition, ours (numba CPU) vs the plain-torch implementation, side by side in one run.

DSVT's pillar configuration (Waymo): sparse shape 468 x 468 x 1 (0.32 m pillars over +-74.88 m), window 12 x 12 x 1,
set size 36, second configuration 24 x 24 x 1 (hybrid factor 2 x 2 x 1) shifted by (6, 6, 0). "one config" is a
single :func:`set_partition` call (window partition + both rotated orders + masks), "stage" is both configurations
(:func:`stage_set_partitions`, what DSVT's input layer computes per stage). The torch column is our torch reference,
a straightforward vectorised implementation of the DSVT authors' algorithm (unique / sort / padded lookup table).

Pillar sets: "scans" pillarizes simulated 32-beam, 10-sweep scans (``make_lidar_scan``; each scan is one sample of
the batch, about 9k pillars each) until the target count is reached and keeps a random subset of exactly that many;
"clustered" is one sample with pillars drawn around the sensor with an exponential range profile (dense near the
centre, like one Waymo frame). Timings: 2 threads, A and B interleaved, median (min-max) of ``REPEATS`` runs.
First-call times run in fresh processes: "cold" with an empty numba cache (JIT compile), "cached" with a warm one.

Run: ``python benchmarks/bench_set_partition.py`` (``make bench`` sets ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_``; the table says which setting it ran with).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from perception.ops.set_partition import set_partition, stage_set_partitions

SPARSE_SHAPE = (1, 468, 468)
WINDOW = (1, 12, 12)
HYBRID = (1, 2, 2)
SHIFT = (0, 6, 6)
SET_SIZE = 36
PILLAR = 0.32
RANGE = 74.88
SIZES = (30_000, 40_000, 60_000)
REPEATS = 15
PAUSE_S = 0.02


def _pillar_keys(xy: np.ndarray) -> np.ndarray:
    """Distinct pillar keys ``y * 468 + x`` of metric points ``(N, 2)`` inside the grid."""
    cells = np.floor((xy + RANGE) / PILLAR).astype(np.int64)
    inside = ((cells >= 0) & (cells < SPARSE_SHAPE[2])).all(axis=1)
    cells = cells[inside]
    return np.unique(cells[:, 1] * SPARSE_SHAPE[2] + cells[:, 0])


def _to_coords(batch: np.ndarray, keys: np.ndarray) -> torch.Tensor:
    coords = np.zeros((len(keys), 4), dtype=np.int32)
    coords[:, 0] = batch
    coords[:, 2] = keys // SPARSE_SHAPE[2]
    coords[:, 3] = keys % SPARSE_SHAPE[2]
    return torch.from_numpy(coords)


def scan_pillars(target: int, seed: int = 0) -> torch.Tensor:
    """``target`` pillars ``[b, 0, y, x]`` from a batch of simulated 10-sweep scans (one scan per sample)."""
    from perception.datasets.synthetic import make_lidar_scan

    batches, keys = [], []
    sample = 0
    while sum(len(k) for k in keys) < target:
        points = make_lidar_scan(num_sweeps=10, beams=32, seed=seed + sample)
        k = _pillar_keys(points[:, :2].astype(np.float64))
        keys.append(k)
        batches.append(np.full(len(k), sample))
        sample += 1
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(sum(len(k) for k in keys), size=target, replace=False))
    return _to_coords(np.concatenate(batches)[pick], np.concatenate(keys)[pick])


def clustered_pillars(target: int, seed: int = 0) -> torch.Tensor:
    """``target`` pillars of one sample, dense near the sensor (exponential range profile, 18 m scale)."""
    rng = np.random.default_rng(seed)
    keys = np.zeros(0, dtype=np.int64)
    draw = 2 * target
    while len(keys) < target:
        r = rng.exponential(18.0, draw) + rng.uniform(0.0, 2.5, draw)
        a = rng.uniform(0.0, 2 * np.pi, draw)
        keys = np.union1d(keys, _pillar_keys(np.stack([r * np.cos(a), r * np.sin(a)], axis=1)))
        draw *= 2
    keys = rng.permutation(keys)[:target]
    return _to_coords(np.zeros(target, dtype=np.int64), np.sort(keys))


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm up (JIT, allocator)
    for _ in range(repeats):
        for name, fn in fns.items():
            time.sleep(PAUSE_S)  # let the other side's idle OpenMP threads stop spinning on the 2 cores
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def _fmt(ts: list[float]) -> str:
    return f"{statistics.median(ts):.2f} ({min(ts):.2f}-{max(ts):.2f})"


_FIRST_CALL = """
import time, torch
t = time.perf_counter()
import numba
tn = time.perf_counter()
t0 = time.perf_counter()
from perception.ops.set_partition import set_partition
t1 = time.perf_counter()
c = torch.tensor([[0, 0, 5, 7], [0, 0, 30, 40], [1, 0, 100, 3]], dtype=torch.int32)
set_partition(c, (1, 468, 468), (1, 12, 12), 36, backend="cpu")
t2 = time.perf_counter()
set_partition(c, (1, 468, 468), (1, 12, 12), 36, backend="cpu")
t3 = time.perf_counter()
print(f"{(tn - t) * 1e3:.0f} {(t1 - t0) * 1e3:.0f} {(t2 - t1) * 1e3:.0f} {(t3 - t2) * 1e3:.2f}")
"""


def first_call_times() -> list[tuple[str, ...]]:
    """(label, numba import ms, our import ms, first call ms, second call ms) with a cold and a warm numba cache, in fresh processes."""
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold cache (JIT compile)", "cached (second process)"):
            out = subprocess.run(
                [sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True, check=True
            )
            rows.append((label, *out.stdout.split()))
    return rows


def main() -> None:
    torch.set_num_threads(2)
    malloc = os.environ.get("MALLOC_MMAP_THRESHOLD_", "default")
    print(
        f"set partition, DSVT pillar config {SPARSE_SHAPE} window {WINDOW} x hybrid {HYBRID} shift {SHIFT}, "
        f"set size {SET_SIZE}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"MALLOC_MMAP_THRESHOLD_={malloc}, load average before {os.getloadavg()[0]:.2f}\n"
    )
    print("| pillars | distribution | op | sets (base / hybrid) | ours numba CPU ms | torch ms | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for size in SIZES:
        for dist, make in (("scans", scan_pillars), ("clustered", clustered_pillars)):
            coords = make(size)
            assert coords.shape[0] == size
            ours = stage_set_partitions(coords, SPARSE_SHAPE, WINDOW, HYBRID, SHIFT, SET_SIZE, backend="cpu")
            ref = stage_set_partitions(coords, SPARSE_SHAPE, WINDOW, HYBRID, SHIFT, SET_SIZE, backend="torch")
            for a, b in zip(ours, ref, strict=True):  # same result, or the comparison means nothing
                assert torch.equal(a.voxel_index, b.voxel_index) and torch.equal(a.mask, b.mask)
            sets = f"{ours[0].num_sets} / {ours[1].num_sets}"
            ops = {
                "one config": lambda be, c=coords: set_partition(
                    c, SPARSE_SHAPE, WINDOW, SET_SIZE, backend=be
                ),
                "stage (2 configs)": lambda be, c=coords: stage_set_partitions(
                    c, SPARSE_SHAPE, WINDOW, HYBRID, SHIFT, SET_SIZE, backend=be
                ),
            }
            for op, fn in ops.items():
                t = _interleaved(
                    {"cpu": lambda fn=fn: fn("cpu"), "torch": lambda fn=fn: fn("torch")}, REPEATS
                )
                speed = statistics.median(t["torch"]) / statistics.median(t["cpu"])
                print(
                    f"| {size:,} | {dist} | {op} | {sets} | {_fmt(t['cpu'])} | {_fmt(t['torch'])} | {speed:.1f}x |"
                )
    print(f"\nload average after {os.getloadavg()[0]:.2f} (2 cores; other processes slow both columns)\n")
    print(
        "| first call of set_partition (fresh process) | import numba ms | import op ms | first call ms | second call ms |"
    )
    print("|---|---|---|---|---|")
    for row in first_call_times():
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
