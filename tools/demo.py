"""The main job of `make demo`: synthetic nuScenes-mini -> devkit -> typed sample -> pictures and numbers.

    python tools/demo.py [CONFIG] [--set key=value ...] [--out DIR]

1. Writes a small synthetic dataset in the real nuScenes v1.0-mini layout into ``data.root`` (if missing),
   through ``tools/create_data.py synthetic`` with the config's ``synthetic`` section.
2. Creates its info files (``data.max_sweeps``, through the official devkit) if missing and loads the first
   keyframe of the devkit's ``mini_val`` split through ``NuScenesDataset`` (``val`` mode), the loader training
   and evaluation use.
3. That typed ``Sample`` holds the keyframe plus ``data.max_sweeps - 1`` sweeps moved into its LiDAR frame (the
   synthetic data has ``synthetic.sweeps`` = ``data.max_sweeps - 1`` before each keyframe; data written with fewer
   gives fewer, and a printed note says why), with a time-lag channel, ground-truth boxes and velocities in the
   LiDAR frame (points and box centres inside ``data.point_cloud_range``), and the camera rig.
4. Writes ``output/demo/bev.png`` (top view) and ``output/demo/cameras.png`` (six cameras with projected boxes)
   and prints a table of what was loaded.
5. Runs the shipped detector (``checkpoints/demo_detector.pth``, a DSVT-pillar + CenterPoint model trained on
   other synthetic scenes by the command in ``checkpoints/demo_detector.yaml``) on every sample of the devkit's
   ``mini_val`` split, scores it with the official devkit (prints mAP / NDS and the per-class table; the
   devkit's ``metrics_summary.json`` stays in ``output/demo/``) and writes pictures of predictions vs ground
   truth of the first sample (``detections_render.png`` / ``detections_bev.png``). ``--no-detect`` skips it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "demo_nuscenes_mini.yaml"
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "demo_detector.pth"


def main(argv: list[str] | None = None) -> int:
    from perception.config import add_config_args, config_from_args
    from perception.engine.threads import add_threads_argument, use_free_cores

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", type=Path, nargs="?", default=DEFAULT_CONFIG, help="experiment YAML")
    add_config_args(parser, config_positional=False)
    parser.add_argument("--out", type=Path, default=REPO / "output" / "demo", help="where the pictures go")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="detector weights (default: the shipped one)",
    )
    parser.add_argument(
        "--detector-config",
        type=Path,
        default=None,
        help="experiment YAML of --checkpoint (default: the .yaml beside the checkpoint)",
    )
    parser.add_argument("--no-detect", action="store_true", help="skip the detection + evaluation step")
    add_threads_argument(parser)
    args = parser.parse_args(argv)
    print(f"threads: {use_free_cores(args.threads).reason}")
    cfg = config_from_args(args)
    if cfg.data.dataset != "nuscenes":
        parser.error("the demo runs on nuScenes-format data (data.dataset: nuscenes)")

    t0 = time.perf_counter()
    root = Path(cfg.data.root)
    version = cfg.data.version or "v1.0-mini"
    if not (root / version).is_dir():
        if cfg.synthetic is None:
            parser.error(f"{root / version} does not exist and the config has no 'synthetic' section")
        syn = cfg.synthetic
        cmd = [
            sys.executable, str(REPO / "tools" / "create_data.py"), "synthetic", "--format", "nuscenes",
            "--out", str(root), "--version", syn.version, "--scenes", str(syn.scenes), "--samples",
            str(syn.samples), "--sweeps", str(syn.sweeps), "--cameras", syn.cameras, "--seed", str(syn.seed),
        ]  # fmt: skip
        print("generating synthetic nuScenes data:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    t_gen = time.perf_counter() - t0

    from perception.demo_scene import load_demo_sample, summarize, write_pictures

    t1 = time.perf_counter()
    loaded = load_demo_sample(
        root, version, cfg.data.class_names, cfg.data.grid, cfg.data.max_sweeps, cfg.data.sweep_stride
    )
    t_load = time.perf_counter() - t1
    bev, cams = write_pictures(loaded, cfg.data.point_cloud_range, args.out)
    print(summarize(loaded, t_gen, t_load))
    if loaded.sweeps_note is not None:
        print(f"\nnote: {root}: {loaded.sweeps_note}")
    print(f"\nBEV picture:    {bev}")
    if cams is not None:
        print(f"camera picture: {cams}")
    if args.no_detect:
        return 0

    from perception.demo_scene import detect_and_score, write_detection_pictures
    from perception.evaluation.nuscenes import format_metrics

    det_cfg = args.detector_config or args.checkpoint.with_suffix(".yaml")
    print(
        f"\ndetecting with {args.checkpoint} ({det_cfg.name}) on the {version} validation split ...",
        flush=True,
    )
    # on the demo data, generated above: its version (the detector may have been trained on another split layout,
    # e.g. v1.0-trainval) and no synthetic section (nothing more to generate)
    found = detect_and_score(
        args.checkpoint, det_cfg, root, args.out, overrides=[f"data.version={version}", "synthetic=null"]
    )
    m = found.metrics
    n_dets = sum(len(d.scores) for d in found.detections.values())
    print(
        f"{len(found.detections)} samples of {found.eval_set}, {n_dets} detections; inference "
        f"{found.seconds_inference:.1f} s, devkit evaluation {found.seconds_eval:.1f} s\n"
    )
    print(f"official nuScenes detection metrics: mAP {m.mean_ap:.4f}, NDS {m.nd_score:.4f}\n")
    print(format_metrics(m))
    print(f"\ndevkit summary: {m.output_dir / 'metrics_summary.json'}")
    token = loaded.sample.token
    if token in found.detections:
        for path in write_detection_pictures(
            loaded, found.detections[token], cfg.data.point_cloud_range, args.out
        ):
            print(f"predictions vs ground truth: {path}")
    return 0


if __name__ == "__main__":
    from perception.engine.malloc import keep_freed_memory

    keep_freed_memory()  # large tensors reuse freed memory instead of faulting in fresh pages (see there)
    raise SystemExit(main())
