#!/usr/bin/env python
"""Deployment runtime vs torch eager, per frame and per stage, and the exports' accuracy.

    python benchmarks/bench_deploy.py [--frames 8] [--large-frames 3] [--accuracy] [--out output/bench_deploy]

Detectors: the shipped demo detector (one DSVT stage, CenterPoint head), on frames of a small synthetic nuScenes
set (32 beams as it was trained on, keyframes without earlier sweeps); and the nuScenes-size DSVT-pillar
CenterPoint detector of ``configs/dsvt_pillar_centerpoint_nuscenes.yaml`` (random weights, seed 0: a latency
figure only) on simulated 10-sweep 32-beam scans. Set-up (not timed): each detector exported with
``perception.deploy.export.export_detector`` (the whole DSVT network as one graph, INT8 Q/DQ calibrated on frames
of the same kind, fp16 for the demo). Per frame (batch 1, warm: the first frame of each runtime is not counted,
then the median over the frames; the runtimes take turns frame by frame, the order rotating), wall time of:
``prepare`` (points -> batch), ``vfe`` (dynamic voxelization + pillar VFE, torch), ``geometry`` (set partitions,
numba), ``network`` (torch eager: DSVT + BEV scatter + BEV backbone + head; onnxruntime: the graph), ``postprocess``
(decode + NMS) and the frame; the preprocessing share (prepare + vfe + geometry) of the frame.

``--accuracy`` scores the demo detector on its fresh synthetic val split (the README's; ``tools/test.py``, the
official nuScenes metrics) in torch fp32 and in onnxruntime fp32 / fp16 / INT8. Prints markdown tables. Not a test.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine_line, run_logged  # noqa: E402

CHECKPOINT = REPO / "checkpoints" / "demo_detector.pth"
LARGE_CONFIG = REPO / "configs" / "dsvt_pillar_centerpoint_nuscenes.yaml"
VAL_SET = ["data.root=../data/demo_detector_val", "synthetic.seed=1", "synthetic.samples=10"]
STAGES = ("prepare", "vfe", "geometry", "network", "postprocess", "frame")


def _columns(points: object) -> tuple[str, ...] | None:
    """A file's columns come from its format; an array here is a simulated scan with a time-lag column."""
    return None if isinstance(points, Path) else ("x", "y", "z", "intensity", "time_lag")


def _eager(detector, points) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """torch eager, the same stages as the runtime's."""
    from perception.deploy.dense_export import DenseStage

    model = detector.model
    stage = DenseStage(model)
    times: dict[str, float] = {}
    t = time.perf_counter()
    prepared = detector.prepare(points, columns=_columns(points))
    times["prepare"] = time.perf_counter() - t
    t = time.perf_counter()
    sparse = model.voxel_features(prepared.batch)
    times["vfe"] = time.perf_counter() - t
    t = time.perf_counter()
    geometry = model.backbone_3d.geometry(sparse)
    times["geometry"] = time.perf_counter() - t
    t = time.perf_counter()
    outputs = stage(model.to_bev(model.backbone_3d(sparse, geometry)))
    times["network"] = time.perf_counter() - t
    t = time.perf_counter()
    model.head.decode(stage.head_output(list(outputs)))
    times["postprocess"] = time.perf_counter() - t
    return times


def _runtime(runtime) -> Callable[[object], dict[str, float]]:  # type: ignore[no-untyped-def]
    def run(points: object) -> dict[str, float]:
        timed = runtime.detect(points, columns=_columns(points))
        return {("network" if k == "engine" else k): v for k, v in timed.times.items()}

    return run


def _table(
    title: str, runs: dict[str, Callable[[object], dict[str, float]]], frames: list, points: list
) -> None:  # type: ignore[type-arg]
    import numpy as np
    import torch

    rows: dict[str, dict[str, list[float]]] = {name: {} for name in runs}
    names = list(runs)
    with torch.inference_mode():
        for i, frame in enumerate(frames):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                times = runs[name](frame)
                if i == 0:
                    continue
                for k, v in {**times, "frame": sum(times.values())}.items():
                    rows[name].setdefault(k, []).append(v * 1000)
    print(
        f"\n{title}: {len(frames) - 1} frames, {int(np.median(points))} points (median), batch 1, median ms\n"
    )
    print("| runtime | " + " | ".join(STAGES) + " | preprocessing share |")
    print("|---|" + "---:|" * (len(STAGES) + 1))
    for name, r in rows.items():
        m = {k: statistics.median(v) for k, v in r.items()}
        share = (m["prepare"] + m["vfe"] + m["geometry"]) / m["frame"]
        print(f"| {name} | " + " | ".join(f"{m[s]:.1f}" for s in STAGES) + f" | {100 * share:.0f}% |")


def _accuracy(out: Path) -> None:
    log = out / "accuracy.log"
    export = out / "export_demo"
    config = str(REPO / "configs" / "demo_detector.yaml")
    rows = []
    base = [
        sys.executable,
        str(REPO / "tools" / "test.py"),
        config,
        "--ckpt",
        str(CHECKPOINT),
        "--split",
        "val",
    ]
    for name, extra in (
        ("torch fp32", []),
        ("onnxruntime fp32", ["--onnx", str(export)]),
        ("onnxruntime fp16", ["--onnx", str(export), "--precision", "fp16"]),
        ("onnxruntime INT8", ["--onnx", str(export), "--precision", "int8"]),
    ):
        tag = "bench_deploy"
        run_logged([*base, "--extra-tag", tag, "--no-progress", *extra, "--set", *VAL_SET], log)
        from perception.engine.paths import FileIdentity, result_name

        leaf = "val" if not extra else "val_onnx" + ("" if "--precision" not in extra else f"_{extra[-1]}")
        folder = REPO / "output" / "demo_detector" / tag / "eval" / result_name(FileIdentity.of(CHECKPOINT))
        metrics = json.loads((folder / leaf / "metrics.json").read_text())
        rows.append((name, metrics["mAP"], metrics["NDS"]))
    print("\ndemo detector, fresh synthetic val split (20 samples), official nuScenes metrics\n")
    print("| runtime | mAP | NDS |\n|---|---:|---:|")
    for name, m, n in rows:
        print(f"| {name} | {m:.4f} | {n:.4f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--large-frames", type=int, default=3)
    p.add_argument("--accuracy", action="store_true", help="also score the exports on the demo's val split")
    p.add_argument("--out", type=Path, default=REPO / "output" / "bench_deploy")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    import perception
    from perception.config import load_config
    from perception.datasets.synthetic import make_lidar_scan
    from perception.deploy.export import dataset_batches, export_detector
    from perception.deploy.runtime import OnnxRuntime
    from perception.engine.malloc import keep_freed_memory
    from perception.inference_api.detector import Detector
    from perception.models.build import build_detector
    from perception.structures import Batch

    keep_freed_memory()
    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    print(machine_line())

    # the demo detector
    data = out / "data"
    if not (data / "samples" / "LIDAR_TOP").is_dir():
        subprocess.run(
            [sys.executable, str(REPO / "tools" / "create_data.py"), "synthetic", "--format", "nuscenes", "--out",
             str(data), "--scenes", "2", "--samples", str((args.frames + 3) // 2 + 1), "--sweeps", "1", "--cameras",
             "none", "--seed", "11"],
            check=True, capture_output=True,
        )  # fmt: skip
    files = sorted((data / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))[: args.frames + 1]
    demo = perception.load_detector(CHECKPOINT, device="cpu", config=REPO / "configs" / "demo_detector.yaml",
                                    overrides=VAL_SET)  # fmt: skip
    export = out / "export_demo"
    t = time.perf_counter()
    export_detector(
        demo.model, export, config=demo.config, batches=dataset_batches(demo.config, "train", 16),
        checkpoint=CHECKPOINT, fp16=True, int8=True,
    )  # fmt: skip
    print(f"\ndemo export (fp32 + fp16 + INT8, 16 frames): {time.perf_counter() - t:.1f} s")
    runs = {"torch eager fp32": lambda pts: _eager(demo, pts)}
    for precision in ("fp32", "fp16", "int8"):
        runs[f"onnxruntime {precision}"] = _runtime(OnnxRuntime(demo, export, precision=precision))
    counts = [len(demo.prepare(f).sample.points) for f in files]
    _table("demo detector", runs, files, counts)

    # the nuScenes-size DSVT-pillar detector (random weights)
    cfg = load_config(LARGE_CONFIG, ["data.root=" + str(out / "unused")])
    torch.manual_seed(0)
    large = Detector(build_detector(cfg.model, cfg.data), cfg, torch.device("cpu"))
    big = [make_lidar_scan(num_sweeps=10, beams=32, seed=100 + i) for i in range(args.large_frames + 1 + 4)]
    calib = [large.prepare(s, columns=("x", "y", "z", "intensity", "time_lag")).sample for s in big[-4:]]
    t = time.perf_counter()
    export_large = out / "export_large"
    export_detector(
        large.model, export_large, config=cfg, batches=[Batch.collate([s]) for s in calib], int8=True,
        calib_frames=4,
    )  # fmt: skip
    print(f"\nnuScenes-size export (fp32 + INT8, 4 frames): {time.perf_counter() - t:.1f} s")
    frames = big[: args.large_frames + 1]
    with torch.no_grad():
        pillars = [int(large.model.voxel_features(Batch.collate([c])).num_voxels) for c in calib]
    large_runs = {"torch eager fp32": lambda pts: _eager(large, pts)}
    for precision in ("fp32", "int8"):
        large_runs[f"onnxruntime {precision}"] = _runtime(
            OnnxRuntime(large, export_large, precision=precision)
        )
    counts = [
        len(large.prepare(s, columns=("x", "y", "z", "intensity", "time_lag")).sample.points) for s in frames
    ]
    _table(
        f"nuScenes-size DSVT-pillar CenterPoint (~{int(np.median(pillars))} pillars)",
        large_runs,
        frames,
        counts,
    )
    if args.accuracy:
        _accuracy(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
