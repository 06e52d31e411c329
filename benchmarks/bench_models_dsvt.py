"""Benchmark: DSVT-pillar backbone forward latency (nuScenes configuration) vs the matmul floor of the same run.

Configuration: the authors' nuScenes DSVT-pillar backbone (:func:`dsvt_pillar_nuscenes`): 360 x 360 pillars of
0.3 m, window 30 x 30 and 30 x 30 shifted by (15, 15), set size 90, 4 blocks, d_model 128, 8 heads, FFN 256.
Input: ``SparseFeatures`` with random features at realistic pillar coordinates: the pillars of simulated 32-beam,
10-sweep scans (``make_lidar_scan``) merged into ONE sample (dense near the sensor, like one frame) until 60k
pillars are reached, then a random subset of exactly 30k / 40k / 60k pillars.

Columns: "partition" is the preprocessing (set partitions of both window configurations + first-copy slots,
:meth:`DSVTBackbone.geometry`), "blocks" the rest of the forward (positional embeddings + 4 blocks), "total" both,
and the partition's fraction of the total. The peer is ``torch.mm`` on 2048 x 2048 float32 matrices in the same
run: "GFLOP" is the backbone's matmul + attention FLOP count, and "% of mm" the throughput it reaches relative to
``torch.mm`` (the FLOP floor). Eval mode, ``torch.inference_mode``, 2 threads, fp32 and bf16 autocast (the peer
stays fp32); median (min-max) of ``REPEATS`` interleaved runs. Target: total at 40k pillars under 800 ms.

Run: ``python benchmarks/bench_models_dsvt.py [--keep-freed-memory] [--threads auto|N] [--compete]``
(``--threads`` default 2; ``--compete``: a busy loop pinned to one core for the whole run, the row "with one core
taken by a competing process"; ``auto`` then picks the free cores, :mod:`perception.engine.threads`). With
``--keep-freed-memory`` the process first calls
:func:`perception.engine.malloc.keep_freed_memory` (as ``tools/test.py`` does), the same as raising glibc's
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``; the header says which setting the run used.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from bench_common import competing_process, machine_line

from perception.models.backbones.dsvt import DSVTBackbone, build_dsvt
from perception.models.backbones.dsvt_presets import dsvt_pillar_nuscenes
from perception.structures import SparseFeatures

SIZES = (30_000, 40_000, 60_000)
REPEATS = 5
PILLAR, RANGE, GRID = 0.3, 54.0, 360


def frame_pillars(sizes: tuple[int, ...], seed: int = 0) -> dict[int, torch.Tensor]:
    """For each size, int32 ``(size, 4)`` ``[0, 0, y, x]`` pillars of one frame built from simulated 10-sweep scans.

    The pillars of successive scans are merged into one sample until the largest size is reached; every size is a
    random subset of that union.
    """
    from perception.datasets.synthetic import make_lidar_scan

    keys = np.zeros(0, dtype=np.int64)
    scan = 0
    while len(keys) < max(sizes):
        xy = make_lidar_scan(num_sweeps=10, beams=32, seed=seed + scan)[:, :2].astype(np.float64)
        cells = np.floor((xy + RANGE) / PILLAR).astype(np.int64)
        cells = cells[((cells >= 0) & (cells < GRID)).all(axis=1)]
        keys = np.union1d(keys, cells[:, 1] * GRID + cells[:, 0])
        scan += 1
    rng = np.random.default_rng(seed)
    out = {}
    for n in sizes:
        pick = np.sort(rng.permutation(keys)[:n])
        coords = np.zeros((n, 4), dtype=np.int32)
        coords[:, 2], coords[:, 3] = pick // GRID, pick % GRID
        out[n] = torch.from_numpy(coords)
    return out


def flop_count(model: DSVTBackbone, sparse: SparseFeatures) -> float:
    """Multiply-add FLOPs (x2) of the linear layers and the attention of one forward."""
    geo = model.geometry(sparse)[0]
    m, c = sparse.num_voxels, model.in_channels
    ffn = model.stages[0][0].layers[0].linear1.out_features  # type: ignore[index]
    total = 0.0
    for b, _ in enumerate(model.stages[0]):  # type: ignore[arg-type]
        part = geo.partitions[model.input_layer.block_configs[0][b]]
        slots = part.num_sets * part.set_size
        for _ in range(2):
            total += 2 * m * c * (3 * c + c + 2 * ffn)  # in/out projections, FFN
            total += 2 * 2 * slots * part.set_size * c  # scores and weighted values
            total += 2 * 2 * 900 * c * c  # positional MLP on the distinct in-window positions (upper bound)
    return total


def _median(ts: list[float]) -> str:
    return f"{statistics.median(ts):.0f} ({min(ts):.0f}-{max(ts):.0f})"


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="DSVT-pillar backbone latency")
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="raise glibc's mmap / trim thresholds first"
    )
    parser.add_argument("--threads", default="2", help="'auto' (the cores free now) or a count (2)")
    parser.add_argument("--compete", action="store_true", help="hold one core with a busy loop meanwhile")
    args = parser.parse_args()
    with competing_process(args.compete) as competitor:
        _run(args, competitor)


def _run(args, competitor: str) -> None:  # type: ignore[no-untyped-def]
    from perception.engine.threads import use_free_cores

    kept = False
    if args.keep_freed_memory:
        from perception.engine.malloc import keep_freed_memory

        kept = keep_freed_memory()
        if not kept:
            print("note: keep_freed_memory() changed nothing (not glibc, or MALLOC_* already set)")
    choice = use_free_cores(args.threads)
    print(machine_line())
    print(f"threads: {choice.reason}; competing: {competitor}")
    torch.manual_seed(0)
    preset = dsvt_pillar_nuscenes()
    model = build_dsvt(preset.config, input_shape=preset.input_shape).eval()
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm_flop = 2 * 2048**3

    def mm_fp32() -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return torch.mm(a, b)

    malloc = "2^30 (keep_freed_memory)" if kept else os.environ.get("MALLOC_MMAP_THRESHOLD_", "glibc default")
    frames = frame_pillars(SIZES)
    print(
        f"DSVT-pillar backbone (nuScenes config), {choice.threads} thread(s), eval; MALLOC_MMAP_THRESHOLD_={malloc}; load average "
        f"{os.getloadavg()[0]:.1f} at start\n"
    )
    print(
        "| pillars | precision | sets (base / shifted) | partition ms | blocks ms | total ms | partition % "
        "| GFLOP | GFLOP/s | torch.mm fp32 GFLOP/s | % of mm |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for n in SIZES:
        sparse = SparseFeatures(torch.randn(n, 128), frames[n], (1, GRID, GRID), 1)
        for precision in ("fp32", "bf16 autocast"):
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "fp32")
            with torch.inference_mode(), autocast:
                geo = model.geometry(sparse)
                model(sparse, geo)  # warm up
                parts, blocks, mms = [], [], []
                for _ in range(REPEATS):
                    mms.append(_time(mm_fp32))
                    parts.append(_time(lambda s=sparse: model.geometry(s)))  # type: ignore[misc]
                    blocks.append(_time(lambda s=sparse, g=geo: model(s, g)))  # type: ignore[misc]
            flop = flop_count(model, sparse)
            part_med, block_med = statistics.median(parts), statistics.median(blocks)
            totals = [p + q for p, q in zip(parts, blocks, strict=True)]
            mm_rate = mm_flop / (statistics.median(mms) * 1e-3) / 1e9
            rate = flop / (block_med * 1e-3) / 1e9
            sets = f"{geo[0].partitions[0].num_sets} / {geo[0].partitions[1].num_sets}"
            print(
                f"| {n} | {precision} | {sets} | {_median(parts)} | {_median(blocks)} | {_median(totals)} "
                f"| {100 * part_med / (part_med + block_med):.1f} | {flop / 1e9:.1f} | {rate:.0f} | {mm_rate:.0f} "
                f"| {100 * rate / mm_rate:.0f} |"
            )
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (other processes share the 2 cores)")


if __name__ == "__main__":
    main()
