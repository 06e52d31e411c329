"""Benchmark: CenterPoint's sparse ResNet (``VoxelResBackbone8x``) per-stage forward latency on the CPU.

Input: a simulated 10-sweep 32-beam scan (``make_lidar_scan(10)``, ~340k points), hard-voxelized on the nuScenes
CenterPoint grid (0.075 x 0.075 x 0.2 m over [-54, -54, -5, 54, 54, 3] -> 40 x 1440 x 1440, 10 points per voxel,
160k voxels), MeanVFE, then the backbone in eval mode under ``torch.no_grad()`` with 2 threads (spconv Native).

Peer in the same run: ``torch.mm`` 2048^3 float32 throughput. Each stage's useful work is counted exactly from
spconv's rulebooks (``2 * C_in * C_out`` FLOPs per active input/output pair of every conv, submanifold centre
offsets included), so each stage is shown
as achieved GFLOP/s and as a fraction of the matmul rate (the FLOP floor). Latencies: median (min-max) over the
repeats, stages timed one after another inside each forward.

Run: ``.venv/bin/python benchmarks/bench_models_spconv.py`` (about a minute on an idle machine). The machine is
shared and noisy (SETUP.md); the table prints the load average and the glibc malloc settings it ran with.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from typing import Any

VOXEL_SIZE = (0.075, 0.075, 0.2)
POINT_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
MAX_POINTS = 10
MAX_VOXELS = 160000
REPEATS = 3


def _matmul_gflops(torch: Any, repeats: int = 5) -> float:
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    return 2 * 2048**3 / statistics.median(times) / 1e9


def _count_flops(net: Any, x: Any) -> dict[str, float]:
    """Run once with hooks; FLOPs per stage from the rulebook pair counts of every sparse conv."""
    from perception.models.spconv_utils import SparseConv3d, SubMConv3d

    flops: dict[str, float] = {}
    current = {"stage": ""}
    handles = []

    def hook(module: Any, inputs: Any, output: Any) -> None:
        data = output.indice_dict[module.indice_key]
        pairs = int(data.indice_pair_num.sum())
        if module.subm:
            # spconv stores one half of a submanifold rulebook (the mirrored offsets reuse it) and runs the centre
            # offset as one dense matmul over all voxels.
            pairs = 2 * pairs + int(output.features.shape[0])
        stage = current["stage"]
        flops[stage] = flops.get(stage, 0.0) + 2.0 * pairs * module.in_channels * module.out_channels

    for m in net.modules():
        if isinstance(m, (SubMConv3d, SparseConv3d)):
            handles.append(m.register_forward_hook(hook))
    for name in ("conv_input", "conv1", "conv2", "conv3", "conv4", "conv_out"):
        current["stage"] = name
        x = getattr(net, name)(x)
    for h in handles:
        h.remove()
    return flops


def main() -> None:
    warnings.simplefilter("ignore")
    import numba
    import torch

    from perception.datasets.synthetic import make_lidar_scan
    from perception.models.backbones.spconv_resnet import VoxelResBackbone8x
    from perception.models.backbones.spconv_resnet_config import SpconvResNetConfig
    from perception.models.spconv_utils import to_spconv, use_conv_algo
    from perception.models.vfe import MeanVFE
    from perception.ops.voxelize import make_grid, voxelize
    from perception.shapes import SparseShape

    torch.set_num_threads(2)
    numba.set_num_threads(2)
    torch.manual_seed(0)
    points = torch.from_numpy(make_lidar_scan(10, seed=0))
    voxelize(points[:1000], VOXEL_SIZE, POINT_RANGE, MAX_POINTS, MAX_VOXELS)  # JIT warm-up
    t = time.perf_counter()
    voxels = voxelize(points, VOXEL_SIZE, POINT_RANGE, MAX_POINTS, MAX_VOXELS)
    t_vox = time.perf_counter() - t
    vfe = MeanVFE(num_point_features=5, grid=make_grid(VOXEL_SIZE, POINT_RANGE))
    t = time.perf_counter()
    sparse = vfe(voxels, batch_size=1)
    t_vfe = time.perf_counter() - t
    net = VoxelResBackbone8x(SpconvResNetConfig(), input_shape=SparseShape(5, voxels.grid_shape)).eval()
    use_conv_algo(net, "cpu")
    stages = ("conv_input", "conv1", "conv2", "conv3", "conv4", "conv_out")
    times: dict[str, list[float]] = {s: [] for s in stages}
    totals = []
    with torch.no_grad():
        flops = _count_flops(net, to_spconv(sparse, net.sparse_shape))  # also the warm-up forward
        counts = {}
        gflops_mm = [_matmul_gflops(torch)]
        for _ in range(REPEATS):
            t0 = time.perf_counter()
            x = to_spconv(sparse, net.sparse_shape)
            for s in stages:
                t = time.perf_counter()
                x = getattr(net, s)(x)
                times[s].append(time.perf_counter() - t)
                counts[s] = x.features.shape[0]
            totals.append(time.perf_counter() - t0)
            gflops_mm.append(_matmul_gflops(torch))  # interleaved with the backbone runs
        # the public entry point once, to check it costs the same as the stages
        t = time.perf_counter()
        net(sparse)
        t_public = time.perf_counter() - t
    mm = statistics.median(gflops_mm)

    def fmt(v: list[float]) -> str:
        return f"{1e3 * statistics.median(v):.0f} ({1e3 * min(v):.0f}-{1e3 * max(v):.0f})"

    print(
        f"\nVoxelResBackbone8x forward, CPU, 2 threads, eval + no_grad; {points.shape[0]} points (10 sweeps), "
        f"{sparse.num_voxels} voxels on {voxels.grid_shape} (z, y, x); repeats {REPEATS}\n"
    )
    print(
        "| stage | output voxels | grid (z, y, x) | ms median (min-max) | GFLOP | GFLOP/s | of matmul rate |"
    )
    print("|---|---|---|---|---|---|---|")
    spec = {s.name: s for s in net.stages}
    for s in stages:
        med = statistics.median(times[s])
        gf = flops.get(s, 0.0) / 1e9
        grid = spec[s].grid_shape if s in spec else net.sparse_shape
        print(
            f"| {s} | {counts[s]} | {grid} | {fmt(times[s])} | {gf:.2f} | {gf / med:.1f} | {gf / med / mm:.1%} |"
        )
    total_gf = sum(flops.values()) / 1e9
    med = statistics.median(totals)
    print(
        f"| **backbone** | | | {fmt(totals)} | {total_gf:.2f} | {total_gf / med:.1f} | {total_gf / med / mm:.1%} |"
    )
    print(
        f"\npeer: torch.mm 2048^3 float32 = {mm:.1f} GFLOP/s (median of {len(gflops_mm)} interleaved runs, "
        f"{min(gflops_mm):.1f}-{max(gflops_mm):.1f}); backbone via forward(): {1e3 * t_public:.0f} ms; "
        f"context: voxelize {1e3 * t_vox:.0f} ms, MeanVFE {1e3 * t_vfe:.0f} ms"
    )
    malloc = {k: os.environ.get(k, "unset") for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    print(f"load average at the end: {os.getloadavg()}; malloc settings: {malloc}")


if __name__ == "__main__":
    main()
