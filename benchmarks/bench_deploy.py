#!/usr/bin/env python
"""Deployment runtime vs torch eager, per frame and per stage, for the shipped demo detector.

    python benchmarks/bench_deploy.py [--frames 8] [--out output/bench_deploy]

Set-up (not timed): the demo checkpoint's dense part exported (``tools/export.py``) and a small synthetic nuScenes
set (32 beams as the demo was trained on; keyframes without earlier sweeps). Per frame (batch 1, warm: two frames
first, then the median over ``--frames``, the two runs interleaved frame by frame, alternating which goes first), wall time of: ``prepare``
(points -> batch), ``lidar_to_bev`` (voxelize, VFE, DSVT, BEV scatter: torch in both), the dense part (BEV backbone
+ head: torch eager vs onnxruntime fp32), ``postprocess`` (decode + NMS), and the frame; the preprocessing share
(prepare + voxelize..scatter) of the onnxruntime frame. Prints a markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine_line  # noqa: E402

CHECKPOINT = REPO / "checkpoints" / "demo_detector.pth"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--out", type=Path, default=REPO / "output" / "bench_deploy")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    import perception
    from perception.deploy.dense_export import DenseStage, export_dense
    from perception.deploy.runtime import OnnxRuntime
    from perception.engine.malloc import keep_freed_memory

    keep_freed_memory()
    out = args.out.absolute()
    data = out / "data"
    if not (data / "samples" / "LIDAR_TOP").is_dir():
        subprocess.run(
            [sys.executable, str(REPO / "tools" / "create_data.py"), "synthetic", "--format", "nuscenes", "--out",
             str(data), "--scenes", "2", "--samples", str((args.frames + 3) // 2 + 1), "--sweeps", "1", "--cameras",
             "none", "--seed", "11"],
            check=True, capture_output=True,
        )  # fmt: skip
    files = sorted((data / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))[: args.frames + 2]
    detector = perception.load_detector(CHECKPOINT, device="cpu")
    export_dense(detector.model, out / "export", config=detector.config, checkpoint=CHECKPOINT, max_batch=1)
    runtime = OnnxRuntime(detector, out / "export")
    stage = DenseStage(detector.model).eval()
    model = detector.model

    def eager(path: Path) -> dict[str, float]:
        times: dict[str, float] = {}
        t = time.perf_counter()
        prepared = detector.prepare(path)
        times["prepare"] = time.perf_counter() - t
        t = time.perf_counter()
        bev = model.to_bev(model.backbone_3d(model.voxel_features(prepared.batch)))
        times["lidar_to_bev"] = time.perf_counter() - t
        t = time.perf_counter()
        outputs = stage(bev)
        times["dense"] = time.perf_counter() - t
        t = time.perf_counter()
        model.head.decode(stage.head_output(list(outputs)))
        times["postprocess"] = time.perf_counter() - t
        return times

    rows: dict[str, dict[str, list[float]]] = {"torch eager": {}, "onnxruntime fp32": {}}
    points = []
    with torch.inference_mode():
        for i, path in enumerate(files):
            if i % 2:  # alternate which runtime sees the frame first
                a = eager(path)
                timed = runtime.detect(path)
            else:
                timed = runtime.detect(path)
                a = eager(path)
            b = {("dense" if k == "engine" else k): v for k, v in timed.times.items()}
            if i < 2:
                continue
            points.append(timed.result.num_points)
            for name, times in (("torch eager", a), ("onnxruntime fp32", b)):
                for k, v in {**times, "frame": sum(times.values())}.items():
                    rows[name].setdefault(k, []).append(v * 1000)
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in rows.items()}
    stages = ("prepare", "lidar_to_bev", "dense", "postprocess", "frame")
    print(machine_line())
    print(
        f"\n{len(points)} frames, {int(np.median(points))} points (median) in the grid, batch 1, median ms\n"
    )
    print("| runtime | " + " | ".join(stages) + " | preprocessing share |")
    print("|---|" + "---:|" * (len(stages) + 1))
    for name, m in med.items():
        share = (m["prepare"] + m["lidar_to_bev"]) / m["frame"]
        print(f"| {name} | " + " | ".join(f"{m[s]:.1f}" for s in stages) + f" | {100 * share:.0f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
