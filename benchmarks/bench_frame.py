#!/usr/bin/env python
"""One whole frame, stage by stage: loading, voxelization + VFE, set partition, DSVT, BEV scatter, 2D backbone,
head, decode + NMS; first call (numba compile / cache load, torch warm-up) against steady state; fp32 and bf16.

    python benchmarks/bench_frame.py [--frames 6] [--large-frames 2] [--demo-only]

Detectors: the shipped demo detector on its synthetic nuScenes val set (``data/demo_detector_val``, generated
when missing as the README's accuracy figures use it), each frame *loaded* through the data set (keyframe and
the config's sweeps read from disk, moved into the keyframe's LiDAR frame by the ego poses, range filter,
collate); and the nuScenes-size DSVT-pillar CenterPoint and TransFusion detectors of
``configs/dsvt_pillar_{centerpoint,transfusion}_nuscenes.yaml`` (random weights, seed 0: latency only) on
simulated 10-sweep 32-beam scans held in memory (their ``load`` is the range filter + collate only). Batch 1, one
process, the stages called one by one as ``VoxelDetector.predict`` calls them; the first frame of the process is
reported apart (``first``: numba kernels compiled or loaded from numba's on-disk cache, first torch calls), the
steady state is the median over the next frames. Each table row also gives each stage's share of the frame.
Run it twice to see the cached (second-process) first call. ``--compete`` holds one core with a busy loop
(another process) for the whole run. Not a test.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import competing_process, machine_line  # noqa: E402

STAGES = ("load", "vfe", "set_partition", "dsvt", "bev_scatter", "bev_backbone", "head", "decode_nms")
VAL_SET = ["data.root=../data/demo_detector_val", "synthetic.seed=1", "synthetic.samples=10"]


def frame_times(model, batch_fn, precision) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Wall seconds per stage of one frame (``batch_fn()`` loads it)."""
    import torch

    from perception.models.casting import float32_outputs
    from perception.models.heads.centerpoint import CenterPointHead

    times: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        times[name] = now - t
        t = now

    batch = batch_fn()
    lap("load")
    with torch.inference_mode(), precision.autocast("cpu"):
        sparse = model.voxel_features(batch)
        lap("vfe")
        geometry = model.backbone_3d.geometry(sparse)
        lap("set_partition")
        sparse = model.backbone_3d(sparse, geometry)
        lap("dsvt")
        bev = model.to_bev(sparse)
        lap("bev_scatter")
        feats = model.bev_backbone(bev)
        lap("bev_backbone")
        if isinstance(model.head, CenterPointHead):  # what predict does: regression at the peaks only
            peaks = model.head.peaks(feats)
            lap("head")
            model.head.decode_peaks(peaks)
        else:
            out = model.head(feats)
            lap("head")
            model.head.decode(float32_outputs(out))
        lap("decode_nms")
    return times


def _prepared(detector, scan):  # type: ignore[no-untyped-def]
    """A simulated scan (``x, y, z, intensity, time_lag``) as the detector's batch (range filter, collate)."""
    return detector.prepare(scan, columns=("x", "y", "z", "intensity", "time_lag")).batch


def report(title: str, rows: dict[str, tuple[dict[str, float], list[dict[str, float]]]]) -> None:
    print(f"\n{title} (ms; share of the steady-state frame in brackets)\n")
    print("| precision | run | " + " | ".join(STAGES) + " | frame |")
    print("|---|---|" + "---:|" * (len(STAGES) + 1))
    for name, (first, steady) in rows.items():
        med = {s: statistics.median(f[s] for f in steady) * 1000 for s in STAGES}
        total = statistics.median(sum(f.values()) for f in steady) * 1000
        cells = " | ".join(f"{med[s]:.1f} ({100 * med[s] / total:.0f}%)" for s in STAGES)
        print(f"| {name} | steady | {cells} | {total:.1f} |")
        print(
            f"| {name} | first | "
            + " | ".join(f"{first[s] * 1000:.1f}" for s in STAGES)
            + f" | {sum(first.values()) * 1000:.1f} |"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=6, help="steady-state frames of the demo detector")
    p.add_argument(
        "--large-frames", type=int, default=2, help="steady-state frames of the nuScenes-size ones"
    )
    p.add_argument("--demo-only", action="store_true", help="time the demo detector only")
    p.add_argument("--compete", action="store_true", help="hold one core with a busy loop meanwhile")
    p.add_argument(
        "--threads", default="2", help="'auto' (the cores free now: perception.engine.threads) or a count (2)"
    )
    args = p.parse_args(argv)
    with competing_process(args.compete) as competitor:
        print(f"competing: {competitor}")
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import torch

    import perception
    from perception.config import load_config
    from perception.datasets.synthetic import make_lidar_scan
    from perception.engine.data import build_dataset, collate_for, prepare_data
    from perception.engine.malloc import keep_freed_memory
    from perception.engine.precision import resolve_precision
    from perception.engine.threads import use_free_cores
    from perception.inference_api.detector import Detector
    from perception.models.build import build_detector

    keep_freed_memory()
    choice = use_free_cores(args.threads)
    print(machine_line())
    print(f"threads: {choice.reason}")
    precisions = {p: resolve_precision(p, "cpu") for p in ("fp32", "bf16")}

    demo = perception.load_detector(
        REPO / "checkpoints" / "demo_detector.pth", device="cpu", config=REPO / "configs" / "demo_detector.yaml",
        overrides=VAL_SET, precision="fp32",
    )  # fmt: skip
    prepare_data(demo.config)
    dataset = build_dataset(demo.config, "val", "test")
    collate = collate_for(dataset)
    rows = {}
    index = 0
    for name, precision in precisions.items():
        runs = []
        for _ in range(args.frames + 1):
            i = index % len(dataset)  # type: ignore[arg-type]
            runs.append(frame_times(demo.model, lambda i=i: collate([dataset[i]]), precision))
            index += 1
        rows[name] = (runs[0], runs[1:])
    points = len(dataset[0].points)
    report(f"demo detector, {demo.config.data.max_sweeps} sweeps loaded from disk (~{points} points)", rows)

    large = (
        ()
        if args.demo_only
        else ("dsvt_pillar_centerpoint_nuscenes.yaml", "dsvt_pillar_transfusion_nuscenes.yaml")
    )
    for config in large:
        cfg = load_config(REPO / "configs" / config, [f"data.root={REPO / 'output' / 'unused'}"])
        torch.manual_seed(0)
        det = Detector(build_detector(cfg.model, cfg.data), cfg, torch.device("cpu"))
        scans = [make_lidar_scan(num_sweeps=10, beams=32, seed=200 + i) for i in range(args.large_frames + 1)]
        rows = {}
        for name, precision in precisions.items():
            runs = [frame_times(det.model, functools.partial(_prepared, det, s), precision) for s in scans]
            rows[name] = (runs[0], runs[1:])
        with torch.no_grad():
            pillars = det.model.voxel_features(_prepared(det, scans[0])).num_voxels
        report(
            f"{config} (random weights), 10-sweep scan in memory ({len(scans[0])} points, {pillars} pillars)",
            rows,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
