#!/usr/bin/env python
"""SparseFusion, measured: LiDAR-only vs camera-only vs fused on the same synthetic data, missing cameras, latency.

    python benchmarks/bench_fusion.py [--out output/bench_fusion] [--val-seed 1]
                                      [--lidar-epochs N] [--fusion-epochs N] [--camera-epochs N]
                                      [--skip-training] [--latency-frames 5] [--eval-split train|val]

Set-up (not timed): the synthetic train set of ``configs/fusion_tiny.yaml`` (sparse 16-beam LiDAR, six cameras) and
a fresh data set with another seed (``OUT/val_data``), never trained on; its 8 ``mini_train`` scenes (80 samples,
``--eval-split train``, the default) or its 2 ``mini_val`` scenes (20 samples) are scored.

Training, each with ``tools/train.py`` on this CPU, wall time measured:

1. ``configs/fusion_tiny_lidar.yaml``: TransFusion-L, LiDAR only (the authors' first stage);
2. ``configs/fusion_tiny.yaml --pretrained <1>``: SparseFusion with the LiDAR branch frozen from (1) (second stage);
3. ``configs/fusion_tiny_camera.yaml``: the camera branch alone (camera-only baseline);
4. ``configs/fusion_tiny_lidar.yaml`` trained afresh for the epochs of (1) plus as many as (2) took: LiDAR-only
   with the same total CPU budget as the fused model.

Evaluation with ``tools/test.py`` (official devkit) on the fresh data: mAP / NDS and per-class AP of (1), (4),
(3) and (2); the fused model with 0, 1, 3 and all 6 cameras removed (``--set data.images.cameras_off=[...]``).
Latency: per-stage wall time of one frame, batch 1, warm (the median of ``--latency-frames`` frames after two
warm-up frames), loading included, for the fused model.

Prints markdown tables and writes them to ``OUT/bench_fusion.md``. Not a test: it trains for real.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine_line, newest_checkpoint, run_logged  # noqa: E402

CONFIGS = REPO / "configs"
LIDAR_CFG, FUSION_CFG, CAMERA_CFG = (
    CONFIGS / "fusion_tiny_lidar.yaml",
    CONFIGS / "fusion_tiny.yaml",
    CONFIGS / "fusion_tiny_camera.yaml",
)
CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
REMOVED = {0: (), 1: ("CAM_FRONT",), 3: ("CAM_FRONT", "CAM_BACK_RIGHT", "CAM_BACK_LEFT"), 6: CAMERAS}
CLASSES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
           "pedestrian", "traffic_cone")  # fmt: skip


def _metrics(run_dir: Path, ckpt: Path, split: str) -> dict[str, float]:
    found = sorted(
        (run_dir / "eval").glob(f"*{ckpt.stem.removeprefix('checkpoint_')}-*/{split}/metrics.json")
    )
    if not found:
        raise FileNotFoundError(f"no metrics for {ckpt} under {run_dir / 'eval'}")
    return json.loads(found[-1].read_text())


def _fmt(v: object) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3f}"  # type: ignore[arg-type]


def _latency(out: Path, fusion_ckpt: Path, frames: int) -> dict[str, tuple[float, float, float]]:
    """Per-stage ms (median, min, max) of one fused frame, batch 1, warm, loading included."""
    import torch

    from perception.config import load_config
    from perception.engine.checkpoint import load_model_weights
    from perception.engine.data import build_dataset, collate_for
    from perception.models.build import build_detector
    from perception.models.stage_timer import StageTimer

    cfg = load_config(FUSION_CFG, [f"data.root={out / 'val_data'}", "synthetic.seed=1"])
    assert cfg.model is not None
    model = build_detector(cfg.model, cfg.data).eval()
    load_model_weights(model, fusion_ckpt, strict=True)
    dataset = build_dataset(cfg, "val", "val")
    collate = collate_for(dataset)
    timer = StageTimer()
    model.stage_timer = timer
    rows: dict[str, list[float]] = {}
    for i in range(frames + 2):
        timer.reset()
        t0 = time.perf_counter()
        batch = collate([dataset[i % len(dataset)]])
        load = time.perf_counter() - t0
        with torch.no_grad():
            t1 = time.perf_counter()
            model.predict(batch)
            total = time.perf_counter() - t1
        if i < 2:
            continue
        for name, sec in {
            "load (points + 6 images)": load,
            **timer.times,
            "frame total": load + total,
        }.items():
            rows.setdefault(name, []).append(sec * 1000)
    return {k: (statistics.median(v), min(v), max(v)) for k, v in rows.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "output" / "bench_fusion")
    p.add_argument("--val-seed", type=int, default=1)
    p.add_argument("--lidar-epochs", type=int, default=None, help="default: the config's train.epochs")
    p.add_argument("--fusion-epochs", type=int, default=None)
    p.add_argument("--camera-epochs", type=int, default=None)
    p.add_argument("--skip-training", action="store_true", help="evaluate the runs already in --out")
    p.add_argument("--latency-frames", type=int, default=5)
    p.add_argument(
        "--eval-split",
        default="train",
        help="split of the fresh data set to score: train (its 8 mini_train scenes, 80 samples, the default) or val "
        "(its 2 mini_val scenes); neither was trained on",
    )
    args = p.parse_args(argv)

    from perception.config import load_config
    from perception.engine.data import prepare_data

    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench_fusion.log"
    py = sys.executable
    common = [f"output_root={out}"]
    val_set = [f"data.root={out / 'val_data'}", f"synthetic.seed={args.val_seed}", *common]
    t0 = time.perf_counter()
    prepare_data(load_config(FUSION_CFG))
    prepare_data(load_config(FUSION_CFG, val_set))
    print(f"set-up (train + fresh val data, info files): {time.perf_counter() - t0:.0f} s", flush=True)

    def train(cfg: Path, tag: str, epochs: int | None, extra: list[str]) -> float:
        cmd = [py, "tools/train.py", str(cfg), "--no-progress", "--extra-tag", tag, *extra]
        if epochs is not None:
            cmd += ["--epochs", str(epochs)]
        return run_logged([*cmd, "--set", *common], log)

    runs = {
        "lidar": out / LIDAR_CFG.stem / "stage1",
        "lidar_same_budget": out / LIDAR_CFG.stem / "same_budget",
        "camera": out / CAMERA_CFG.stem / "camera",
        "fusion": out / FUSION_CFG.stem / "fusion",
    }
    minutes: dict[str, float] = {}
    if not args.skip_training:
        minutes["lidar"] = train(LIDAR_CFG, "stage1", args.lidar_epochs, []) / 60
        lidar_ckpt = newest_checkpoint(runs["lidar"] / "ckpt")
        minutes["fusion"] = train(FUSION_CFG, "fusion", args.fusion_epochs, ["--pretrained", str(lidar_ckpt),
                                  "--pretrained-min-share", "0.05"]) / 60  # fmt: skip
        minutes["camera"] = train(CAMERA_CFG, "camera", args.camera_epochs, []) / 60
        # LiDAR-only with the fused model's total budget (stage 1 + stage 2 wall time): a fresh run with as many
        # more epochs as stage 2 took (a resume may not change the schedule's length)
        lidar_cfg = load_config(LIDAR_CFG)
        assert lidar_cfg.train is not None
        base_epochs = args.lidar_epochs or lidar_cfg.train.epochs
        extra = max(1, round(base_epochs * minutes["fusion"] / max(minutes["lidar"], 1e-6)))
        minutes["lidar_same_budget"] = train(LIDAR_CFG, "same_budget", base_epochs + extra, []) / 60
        (out / "train_minutes.json").write_text(json.dumps(minutes, indent=1))
    elif (out / "train_minutes.json").is_file():
        minutes = json.loads((out / "train_minutes.json").read_text())

    cfg_of = {"lidar": LIDAR_CFG, "lidar_same_budget": LIDAR_CFG, "camera": CAMERA_CFG, "fusion": FUSION_CFG}
    results: dict[str, dict[str, float]] = {}
    for name, run_dir in runs.items():
        ckpt = newest_checkpoint(run_dir / "ckpt")
        run_logged([py, "tools/test.py", str(cfg_of[name]), "--ckpt", str(ckpt), "--extra-tag", run_dir.name,
              "--no-progress", "--split", args.eval_split, "--set", *val_set], log)  # fmt: skip
        results[name] = _metrics(run_dir, ckpt, args.eval_split)
    removed: dict[int, dict[str, float]] = {0: results["fusion"]}
    fusion_ckpt = newest_checkpoint(runs["fusion"] / "ckpt")
    for n in (1, 3, 6):
        tag = f"fusion_{n}_cameras_removed"
        names = "[" + ",".join(REMOVED[n]) + "]"
        run_logged([py, "tools/test.py", str(FUSION_CFG), "--ckpt", str(fusion_ckpt), "--extra-tag", tag, "--no-progress",
              "--split", args.eval_split, "--set", *val_set, f"data.images.cameras_off={names}"], log)  # fmt: skip
        removed[n] = _metrics(out / FUSION_CFG.stem / tag, fusion_ckpt, args.eval_split)
    latency = _latency(out, fusion_ckpt, args.latency_frames)

    label = {
        "lidar": "TransFusion-L (LiDAR only, stage 1)",
        "lidar_same_budget": "TransFusion-L, same total budget as fused",
        "camera": "camera only (camera branch)",
        "fusion": "SparseFusion (stage 1 + stage 2)",
    }
    lines = [machine_line(), "", "| model | train min | mAP | NDS | " + " | ".join(CLASSES) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(CLASSES)]  # fmt: skip
    for name in ("lidar", "lidar_same_budget", "camera", "fusion"):
        r = results[name]
        mins = minutes.get(name)
        spent = "" if mins is None else f"{mins:.1f}"
        if name == "fusion" and mins is not None and "lidar" in minutes:
            spent = f"{minutes['lidar']:.1f} + {mins:.1f}"
        lines.append(
            f"| {label[name]} | {spent} | {_fmt(r.get('mAP'))} | {_fmt(r.get('NDS'))} | "
            + " | ".join(_fmt(r.get(f"{c}_AP")) for c in CLASSES)
            + " |"
        )
    lines += ["", "| cameras removed at inference | SparseFusion mAP | NDS | LiDAR-only mAP: its stage 1 | same budget |",
              "|---|---:|---:|---:|---:|"]  # fmt: skip
    for n, r in removed.items():
        which = ", ".join(REMOVED[n]) if 0 < n < 6 else ("none" if n == 0 else "all six")
        lines.append(
            f"| {n} ({which}) | {_fmt(r.get('mAP'))} | {_fmt(r.get('NDS'))} | "
            f"{_fmt(results['lidar'].get('mAP'))} | {_fmt(results['lidar_same_budget'].get('mAP'))} |"
        )
    lines += ["", "| stage (fused model, batch 1, warm) | median ms | min | max |", "|---|---:|---:|---:|"]
    for name, (med, lo, hi) in latency.items():
        lines.append(f"| {name} | {med:.1f} | {lo:.1f} | {hi:.1f} |")
    text = "\n".join(lines)
    (out / "bench_fusion.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
