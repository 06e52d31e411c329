#!/usr/bin/env python
"""The GPU check: every numba CUDA kernel, the detectors and the deployment runtimes on a real CUDA device.

    python benchmarks/gpu_check.py [--out DIR] [--quick]
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/gpu_check.py --simulator [--quick]

Needs torch (a CUDA build), numba and numba-cuda beside the project's pure-Python dependencies; onnx /
onnxruntime (with ``CUDAExecutionProvider``) and tensorrt are optional, and each check that needs a missing one is
a SKIP with the reason. Prints the machine, then one row per check (PASS / FAIL / SKIP with the reason, what was
compared, the timings) and writes the same to ``DIR/gpu_check.json`` (default ``output/gpu_check``). Exit code 0
when no check FAILs, 1 otherwise. Timings: warm (one untimed call first), the median of a few calls,
``torch.cuda.synchronize()`` around every GPU call (a kernel's GPU time includes copying its inputs to the device);
cuDNN / matmul TF32 is switched off so that GPU and CPU results compare at float32 precision. Part (a) lives in
``benchmarks/gpu_check_kernels.py``.

(a) kernels: each op's ``backend="cuda"`` on CUDA tensors against ``backend="cpu"`` on the same inputs (seeded,
    realistic sizes: a simulated 32-beam scan, boxes within 50 m): voxelize (hard, nuScenes 0.075 m voxels;
    dynamic, the demo's 0.8 m pillars), set partition (demo and nuScenes DSVT windows), pooling windows, scatter
    (sum / mean / max), rotated BEV / 3D IoU, BEV and circle NMS, points in boxes. Integer outputs must be equal,
    floats within 1e-5 (the max difference is printed). With ``--simulator`` (numba's CUDA simulator,
    ``NUMBA_ENABLE_CUDASIM=1``) only this part runs, on CPU tensors and a few hundred points, as a smoke test.
(b) detectors: the shipped demo detector on the GPU vs the CPU (fp32) on simulated scans (same detections: labels
    equal, boxes and scores within 1e-3), warm frame times on both; the nuScenes-size DSVT-pillar TransFusion
    detector (``configs/dsvt_pillar_transfusion_nuscenes.yaml``, random weights) timed on a frame of ~30k
    pillars on the GPU (finite outputs).
(c) deployment: the demo detector exported (``export_dsvt``, two buckets) and run by ``OnnxRuntime`` with the CUDA
    execution provider (same detections as the CPU detector), and TensorRT engines built from the export
    (:mod:`perception.deploy.tensorrt_engine`): fp32 within 1e-3 of onnxruntime on every output, fp16 within 0.05.

Without a CUDA device (and without ``--simulator``) every check is a SKIP ("no CUDA device") and the exit code 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, machine_line  # noqa: E402
from gpu_check_kernels import (  # noqa: E402
    FULL,
    KERNELS,
    QUICK,
    SIMULATOR,
    Check,
    Context,
    Failed,
    nuscenes_frame,
    same,
    timed,
)

CHECKPOINT = REPO / "checkpoints" / "demo_detector.pth"
NUSCENES_CONFIG = REPO / "configs" / "dsvt_pillar_transfusion_nuscenes.yaml"
SCAN_COLUMNS = ("x", "y", "z", "intensity", "time_lag")
DISTRIBUTIONS = (
    "numba",
    "numba-cuda",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "spconv-cu120",
    "nuscenes-devkit",
)


# ---- (b) detectors --------------------------------------------------------------------------------------------------


def demo_scans(n: int = 3) -> list[Any]:
    """Simulated 32-beam keyframes (``x, y, z, intensity, time_lag``) of busy streets, as the demo was trained on."""
    from perception.datasets.synthetic import make_lidar_scan

    return [make_lidar_scan(num_sweeps=1, beams=32, seed=10 + i) for i in range(n)]


def demo_detector(ctx: Context, device: str) -> Any:
    key = f"demo {device}"
    if key not in ctx.cache:
        import perception

        ctx.cache[key] = perception.load_detector(CHECKPOINT, device=device, precision="fp32")
    return ctx.cache[key]


def compare_results(a: Any, b: Any, what: str, atol: float = 1e-3) -> str:
    """Raise :class:`Failed` unless two :class:`perception.Result` hold the same detections (labels equal,
    boxes and scores within ``atol``); else say how many and the max differences."""
    import numpy as np

    if len(a) != len(b) or not np.array_equal(a.labels, b.labels):
        strong = (len(a.above(0.3)), len(b.above(0.3)))
        raise Failed(f"{what}: {len(a)} vs {len(b)} detections ({strong[0]} vs {strong[1]} above 0.3)")
    if len(a) == 0:
        raise Failed(f"{what}: no detections to compare")
    box, score = float(np.abs(a.boxes - b.boxes).max()), float(np.abs(a.scores - b.scores).max())
    if box > atol or score > atol:
        raise Failed(f"{what}: max box difference {box:.3g}, score {score:.3g} (> {atol:g})")
    return f"{len(a)} detections, max box diff {box:.2g} m, score {score:.2g}"


def check_demo_detector(ctx: Context, times: dict[str, float]) -> str:
    gpu, cpu = demo_detector(ctx, "cuda"), demo_detector(ctx, "cpu")
    details = []
    for i, pts in enumerate(demo_scans()):
        ref, got = cpu.detect(pts, columns=SCAN_COLUMNS), gpu.detect(pts, columns=SCAN_COLUMNS)
        details.append(compare_results(ref, got, f"frame {i}"))
    pts = demo_scans(1)[0]
    _, times["cpu"] = timed(ctx, lambda: cpu.detect(pts, columns=SCAN_COLUMNS), gpu=False)
    _, times["cuda"] = timed(ctx, lambda: gpu.detect(pts, columns=SCAN_COLUMNS), gpu=True)
    return f"GPU = CPU on 3 scans ({details[0]}); frame times: detect() incl. prepare and NMS"


def check_nuscenes_detector(ctx: Context, times: dict[str, float]) -> str:
    import numpy as np
    import torch

    from perception.config import load_config
    from perception.inference_api.detector import Detector
    from perception.models.build import build_detector

    cfg = load_config(NUSCENES_CONFIG)
    assert cfg.model is not None
    torch.manual_seed(0)
    det = Detector(build_detector(cfg.model, cfg.data), cfg, ctx.device)
    pts = nuscenes_frame()
    with torch.no_grad():
        batch = det.prepare(pts, columns=SCAN_COLUMNS).batch
        pillars = det.model.voxel_features(batch).num_voxels  # type: ignore[operator]
    result, times["cuda"] = timed(ctx, lambda: det.detect(pts, columns=SCAN_COLUMNS), gpu=True)
    if not (np.isfinite(result.boxes).all() and np.isfinite(result.scores).all()):
        raise Failed("non-finite boxes or scores")
    mem = torch.cuda.max_memory_allocated(ctx.device) / 2**30
    return f"{len(pts)} points, {pillars} pillars, random weights: finite, {len(result)} boxes; peak {mem:.1f} GiB"


# ---- (c) deployment -------------------------------------------------------------------------------------------------


def demo_export(ctx: Context) -> tuple[Path, list[dict[str, Any]]]:
    """The demo detector's DSVT export (``ctx.out/export``, two buckets) and the graph inputs of its frames."""
    if "export" not in ctx.cache:
        import torch

        from perception.deploy.dsvt_export import export_dsvt
        from perception.deploy.dsvt_graph import DSVTGraph

        det = demo_detector(ctx, "cpu")
        graph = DSVTGraph(det.model)
        frames = []
        for keep, pts in zip((1, 2, 4), demo_scans(), strict=True):
            with torch.no_grad():
                sparse = det.model.voxel_features(det.prepare(pts[::keep], columns=SCAN_COLUMNS).batch)
            frames.append(graph.feeds(sparse, det.model.backbone_3d.geometry(sparse)))
        folder = ctx.out / "export"
        export_dsvt(det.model, folder, config=det.config, frames=frames, checkpoint=CHECKPOINT, buckets=2)
        ctx.cache["export"] = (folder, frames)
    out: tuple[Path, list[dict[str, Any]]] = ctx.cache["export"]
    return out


def check_export(ctx: Context, times: dict[str, float]) -> str:
    t0 = time.perf_counter()
    folder, frames = demo_export(ctx)
    times["export"] = (time.perf_counter() - t0) * 1e3
    return f"{folder / 'model.onnx'} ({len(frames)} frames, 3 profiles)"


def check_onnxruntime_cuda(ctx: Context, times: dict[str, float]) -> str:
    from perception.deploy.runtime import OnnxRuntime

    folder, _ = demo_export(ctx)
    det = demo_detector(ctx, "cpu")
    runtime = OnnxRuntime(det, folder, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    used = runtime.model.session.get_providers()
    if used[0] != "CUDAExecutionProvider":
        raise Failed(f"the session runs on {used}, not CUDA")
    details = []
    for i, pts in enumerate(demo_scans()):
        ref, got = det.detect(pts, columns=SCAN_COLUMNS), runtime.detect(pts, columns=SCAN_COLUMNS).result
        details.append(compare_results(ref, got, f"frame {i}"))
    pts = demo_scans(1)[0]
    timed_result, times["frame"] = timed(ctx, lambda: runtime.detect(pts, columns=SCAN_COLUMNS), gpu=True)
    times.update({k: v * 1e3 for k, v in timed_result.times.items()})
    return f"= CPU detector on 3 scans ({details[0]}); stage times of the last frame"


def check_tensorrt(ctx: Context, times: dict[str, float], precision: str, atol: float) -> str:
    from perception.deploy.runtime import OnnxModel
    from perception.deploy.tensorrt_engine import TensorRTEngine, build_engine, plan_engine

    folder, frames = demo_export(ctx)
    plan = plan_engine(folder, precision=precision)
    t0 = time.perf_counter()
    engine = TensorRTEngine(build_engine(plan, folder / f"model.{precision}.plan"), ctx.device)
    times["build"] = (time.perf_counter() - t0) * 1e3
    onnx = OnnxModel(demo_detector(ctx, "cpu").model, folder)
    worst = 0.0
    for feeds in frames:
        for name, g, r in zip(plan.outputs, engine.run(feeds), onnx.run_graph(feeds), strict=True):
            worst = max(worst, same(name, r.float(), g.cpu().float(), atol=atol))
    _, times["tensorrt"] = timed(ctx, lambda: engine.run(frames[0]), gpu=True)
    _, times["onnxruntime cpu"] = timed(ctx, lambda: onnx.run_graph(frames[0]), gpu=False)
    return f"{len(plan.profiles)} profiles, {len(frames)} frames: max abs diff to onnxruntime {worst:.2g} (<= {atol:g})"


# ---- running ------------------------------------------------------------------------------------------------------


def optional(module: str) -> tuple[Any, str]:
    """``(module, "")``, or ``(None, why)`` when it does not import."""
    import importlib

    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # ImportError, or a broken install (missing CUDA libraries)
        return (
            None,
            f"{module} does not import ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
        )


CheckFn = Callable[[Context, dict[str, float]], str]


def plan_checks(
    ctx: Context | None, skip_all: str
) -> list[tuple[Check, Callable[[dict[str, float]], str] | None]]:
    """Every check with its function (``fn(times) -> detail``), or with ``None`` and the reason for skipping it in
    ``detail``."""
    rows: list[tuple[str, str, str, CheckFn]] = [("a", name, skip_all, fn) for name, fn in KERNELS]
    later = skip_all or ("--simulator: kernel checks only" if ctx is not None and ctx.simulator else "")
    onnx_why = later or optional("onnx")[1] or optional("onnxscript")[1]
    ort_why = onnx_why
    if not ort_why:
        ort, ort_why = optional("onnxruntime")
        if ort is not None and "CUDAExecutionProvider" not in ort.get_available_providers():
            ort_why = f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (install onnxruntime-gpu)"
    trt_why = onnx_why or optional("tensorrt")[1]
    rows += [
        ("b", "demo detector GPU vs CPU", later, check_demo_detector),
        ("b", "DSVT-pillar nuScenes forward", later, check_nuscenes_detector),
        ("c", "export demo DSVT (ONNX)", onnx_why, check_export),
        ("c", "onnxruntime CUDA provider", ort_why, check_onnxruntime_cuda),
        ("c", "TensorRT fp32 engine", trt_why, partial(check_tensorrt, precision="fp32", atol=1e-3)),
        ("c", "TensorRT fp16 engine", trt_why, partial(check_tensorrt, precision="fp16", atol=5e-2)),
    ]
    return [
        (Check(part, name, detail=why), None if why or ctx is None else partial(fn, ctx))
        for part, name, why, fn in rows
    ]


def run_checks(ctx: Context | None, skip_all: str) -> list[Check]:
    """Run (or skip) every check, printing a line as each ends."""
    checks = []
    for check, fn in plan_checks(ctx, skip_all):
        if fn is not None:
            try:
                check.detail = fn(check.times_ms)
                check.status = "PASS"
            except Failed as exc:
                check.status, check.detail = "FAIL", str(exc)
            except Exception as exc:  # a crash is a failed check; the traceback goes to the JSON
                check.status, check.detail = "FAIL", f"{type(exc).__name__}: {exc}"
                check.error = traceback.format_exc()
        print(f"  ({check.part}) {check.name:<30} {check.status:<4} {check.detail}", flush=True)
        checks.append(check)
    return checks


def machine(simulator: bool) -> dict[str, Any]:
    """The machine: CPU line (bench_common), GPU, CUDA and library versions."""
    import torch

    info: dict[str, Any] = {"cpu": machine_line(), "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = (
            f"{torch.cuda.get_device_name(0)} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor})"
        )
    else:
        info["gpu"] = "none (torch sees no CUDA device)"
    if simulator:
        info["gpu"] = "numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    for dist in DISTRIBUTIONS:
        info[dist] = installed(dist)
    return info


def installed(dist: str) -> str:
    """The installed version of a distribution, or ``"not installed"`` (read from its metadata, not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def table(checks: list[Check]) -> str:
    lines = ["| part | check | status | detail | times (ms) |", "|---|---|---|---|---|"]
    for c in checks:
        t = ", ".join(f"{k} {v:.1f}" for k, v in c.times_ms.items())
        status = c.status if c.status != "SKIP" else f"SKIP ({c.detail})"
        detail = c.detail if c.status != "SKIP" else ""
        lines.append(f"| {c.part} | {c.name} | {status} | {detail} | {t} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "output" / "gpu_check", help="results folder")
    p.add_argument("--quick", action="store_true", help="smaller kernel inputs, fewer repeats")
    p.add_argument("--simulator", action="store_true", help="kernels only, in numba's CUDA simulator")
    args = p.parse_args(argv)
    if args.simulator and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        if "numba" in sys.modules:
            print(
                "gpu_check.py: --simulator needs NUMBA_ENABLE_CUDASIM=1 before numba is imported",
                file=sys.stderr,
            )
            return 2
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine(args.simulator)
    print("\n".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    t0 = time.perf_counter()
    skip_all, ctx = "", None
    if args.simulator:
        ctx = Context(torch.device("cpu"), SIMULATOR, args.out, simulator=True)
    elif not torch.cuda.is_available():
        skip_all = "no CUDA device"
    else:
        ctx = Context(torch.device("cuda"), QUICK if args.quick else FULL, args.out, simulator=False)
    checks = run_checks(ctx, skip_all)
    print(table(checks))
    failed = [c.name for c in checks if c.status == "FAIL"]
    mode = (
        "simulator" if args.simulator else ("no GPU" if skip_all else ("gpu quick" if args.quick else "gpu"))
    )
    report = {
        "mode": mode,
        "sizes": asdict(ctx.sizes) if ctx else None,
        "machine": info,
        "seconds": time.perf_counter() - t0,
        "checks": [asdict(c) for c in checks],
        "ok": not failed,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"{len(failed)} FAIL ({', '.join(failed) or 'none'}); wrote {args.out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
