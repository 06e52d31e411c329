"""Benchmark: the LiDAR detectors on the CPU -- per-part benchmarks, then a full DSVT-pillar-TransFusion frame.

1. Runs the per-part benchmarks of their owners: ``bench_models_spconv.py`` (CenterPoint's sparse ResNet per stage)
   and ``bench_models_dsvt.py`` (DSVT-pillar backbone at 30k / 40k / 60k pillars), each printing its own table.
2. A whole detector frame for ``configs/dsvt_pillar_transfusion_nuscenes.yaml`` (the authors' nuScenes DSVT-pillar +
   TransFusion model, random weights, eval mode, ``torch.inference_mode``, fp32) on one simulated 10-sweep 32-beam
   scan (``make_lidar_scan``): per-stage latency -- dynamic voxelization, the pillar VFE (which voxelizes again
   internally), set partition (DSVT geometry), DSVT blocks, pillar scatter + BEV backbone, TransFusion head,
   decoding -- and ``predict`` end to end. Preprocessing = voxelize + partition, as a fraction of the end-to-end
   frame (target < 5 %). The peer is ``torch.mm`` on 2048 x 2048 float32 matrices, interleaved with the frames.

Median (min-max) of ``REPEATS`` interleaved runs, 2 threads. The machine's other load and the malloc settings are
printed (``make bench`` raises ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``).

Run: ``python benchmarks/bench_models.py``.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "configs" / "dsvt_pillar_transfusion_nuscenes.yaml"
REPEATS = 5


def _run_part(name: str) -> None:
    """Import ``benchmarks/<name>.py`` by path (benchmarks/ is not a package) and run its ``main()``."""
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {HERE / name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(f"\n## {name}\n", flush=True)
    module.main()


def _ms(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1e3


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def detector_frame() -> None:
    """Per-stage and end-to-end latency of DSVT-pillar-TransFusion on one 10-sweep frame (see the module doc)."""
    import torch

    from perception.config import load_config
    from perception.datasets.synthetic import make_lidar_scan
    from perception.models.build import build_detector
    from perception.ops.voxelize import voxelize
    from perception.structures import Batch, Boxes3D

    torch.set_num_threads(2)
    torch.manual_seed(0)
    cfg = load_config(CONFIG, ["synthetic=null"])
    model = build_detector(cfg.model, cfg.data).eval()
    points = torch.from_numpy(make_lidar_scan(num_sweeps=10, beams=32, seed=0))
    batch = Batch(
        points=points,
        batch_index=torch.zeros(len(points), dtype=torch.int64),
        point_channels=("x", "y", "z", "intensity", "time_lag"),
        boxes=[Boxes3D.empty(with_velocity=True)],
        labels=[torch.zeros(0, dtype=torch.int64)],
        class_names=cfg.data.class_names,
        tokens=["frame"],
    )
    vox = model.voxelization
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    stages = (
        "voxelize",
        "VFE (incl. its voxelize)",
        "partition",
        "DSVT blocks",
        "scatter + BEV backbone",
        "head",
        "decode",
        "predict end to end",
        "torch.mm 2048^3",
    )
    times: dict[str, list[float]] = {s: [] for s in stages}
    with torch.inference_mode():
        model.predict(batch)  # warm-up (numba JIT, allocator)
        for _ in range(REPEATS):
            times["torch.mm 2048^3"].append(_ms(lambda: torch.mm(a, b)))
            times["voxelize"].append(_ms(lambda: voxelize(points, vox.grid, mode="dynamic")))
            t = time.perf_counter()
            sparse = model.voxel_features(batch)
            times["VFE (incl. its voxelize)"].append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            geo = model.backbone_3d.geometry(sparse)
            times["partition"].append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            encoded = model.backbone_3d(sparse, geo)
            times["DSVT blocks"].append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            bev = model.bev_backbone(model.to_bev(encoded))
            times["scatter + BEV backbone"].append((time.perf_counter() - t) * 1e3)
            t = time.perf_counter()
            out = model.head(bev)
            times["head"].append((time.perf_counter() - t) * 1e3)
            times["decode"].append(_ms(lambda o=out: model.head.decode(o)))  # type: ignore[misc]
            times["predict end to end"].append(_ms(lambda: model.predict(batch)))
    med = {s: statistics.median(v) for s, v in times.items()}
    frame = med["predict end to end"]
    mm_gflops = 2 * 2048**3 / (med["torch.mm 2048^3"] * 1e-3) / 1e9
    malloc = {k: os.environ.get(k, "unset") for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    print(
        f"\n## full detector frame: {CONFIG.name}\n\n{len(points)} points (10 sweeps), {sparse.num_voxels} pillars "
        f"on {sparse.grid_shape}; eval, inference_mode, fp32, 2 threads, median (min-max) of {REPEATS}; "
        f"load average {os.getloadavg()[0]:.1f}; malloc {malloc}\n"
    )
    print("| stage | ms median (min-max) | % of the frame |")
    print("|---|---|---|")
    for s in stages[:-1]:
        print(f"| {s} | {_fmt(times[s])} | {100 * med[s] / frame:.1f} |")
    pre = med["voxelize"] + med["partition"]
    print(
        f"| **preprocessing (voxelize + partition)** | {pre:.0f} | **{100 * pre / frame:.1f}** (target < 5) |"
    )
    print(
        f"\npeer: torch.mm 2048^3 float32 {_fmt(times['torch.mm 2048^3'])} ms = {mm_gflops:.0f} GFLOP/s in the same run"
    )


def main() -> None:
    warnings.simplefilter("ignore")
    _run_part("bench_models_spconv")
    _run_part("bench_models_dsvt")
    detector_frame()


if __name__ == "__main__":
    main()
