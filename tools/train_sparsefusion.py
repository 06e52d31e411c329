#!/usr/bin/env python
"""Two-stage SparseFusion training, as the authors do it: the LiDAR detector first, then the fusion model with the
LiDAR branch frozen and loaded from stage 1's last checkpoint.

    python tools/train_sparsefusion.py CONFIG [--lidar-config CONFIG] [--lidar-epochs N] [--epochs N]
                                       [--extra-tag TAG] [--dry-run] [--set KEY=VALUE ...]

Stage 1: ``tools/train.py`` on ``--lidar-config`` (run ``<TAG>_lidar``), or, without it, on ``CONFIG`` itself
with ``--set model.fusion=null data.use_cameras=false`` (the same LiDAR detector without the fusion section).
Stage 2: ``tools/train.py CONFIG --pretrained <stage 1's last checkpoint>`` (run ``<TAG>``); the ``--set``
overrides go to both stages. Each stage resumes from its own newest checkpoint, so running the command again after
an interruption continues where it stopped (a finished stage 1 is not retrained). ``--dry-run`` prints the two
commands (stage 2's with the checkpoint stage 1 will write).

Examples::

    python tools/train_sparsefusion.py configs/fusion_tiny.yaml --lidar-config configs/fusion_tiny_lidar.yaml
    python tools/train_sparsefusion.py configs/sparsefusion_nuscenes.yaml --set data.root=/data/nuscenes
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE1_SETS = ("model.fusion=null", "data.use_cameras=false")
"""Overrides that turn a SparseFusion config into its LiDAR detector (stage 1 without ``--lidar-config``)."""

PRETRAINED_MIN_SHARE = "0.05"
"""Stage 2 loads the LiDAR tensors only (a small share of the fused model's); ``tools/train.py`` still refuses the
run unless every frozen LiDAR tensor was loaded."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="the SparseFusion config (model.fusion set)")
    p.add_argument(
        "--lidar-config", type=Path, default=None, help="stage 1 config (default: CONFIG, LiDAR only)"
    )
    p.add_argument(
        "--lidar-epochs", type=int, default=None, help="stage 1 epochs (default: its train.epochs)"
    )
    p.add_argument("--epochs", type=int, default=None, help="stage 2 epochs (default: CONFIG's train.epochs)")
    p.add_argument("--extra-tag", default="default", help="stage 2 run name; stage 1 is <TAG>_lidar")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for both stages")
    return p


def stage_commands(args: argparse.Namespace) -> tuple[list[str], list[str], Path]:
    """``(stage 1 command, stage 2 command, stage 1's checkpoint folder)``; stage 2's ``--pretrained`` is filled
    in by :func:`main` once stage 1 has run (``PRETRAINED`` here)."""
    from perception.config import load_config
    from perception.engine.paths import run_dir_for

    py, train = sys.executable, str(REPO / "tools" / "train.py")
    tag1 = f"{args.extra_tag}_lidar"
    if args.lidar_config is not None:
        cfg1, sets1 = args.lidar_config, list(args.set)
    else:
        cfg1, sets1 = args.config, [*args.set, *STAGE1_SETS]
    loaded = load_config(cfg1, sets1)
    if loaded.model is None or loaded.model.fusion is not None:
        raise SystemExit(f"stage 1 config {cfg1} must be a LiDAR detector without model.fusion")
    fused = load_config(args.config, list(args.set))
    if fused.model is None or fused.model.fusion is None:
        raise SystemExit(f"{args.config} has no model.fusion section: it is not a SparseFusion config")
    first = [py, train, str(cfg1), "--no-progress", "--extra-tag", tag1]
    if args.lidar_epochs is not None:
        first += ["--epochs", str(args.lidar_epochs)]
    if sets1:
        first += ["--set", *sets1]
    second = [py, train, str(args.config), "--no-progress", "--extra-tag", args.extra_tag]
    second += ["--pretrained", "PRETRAINED", "--pretrained-min-share", PRETRAINED_MIN_SHARE]
    if args.epochs is not None:
        second += ["--epochs", str(args.epochs)]
    if args.set:
        second += ["--set", *args.set]
    return first, second, run_dir_for(cfg1, loaded.output_root, tag1) / "ckpt"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from perception.engine.checkpoint import CheckpointManager

    first, second, ckpt_dir = stage_commands(args)
    if args.dry_run:
        print("stage 1:", shlex.join(first))
        print("stage 2:", shlex.join(second).replace("PRETRAINED", str(ckpt_dir / "<last checkpoint>")))
        return 0
    print("stage 1:", shlex.join(first), flush=True)
    code = subprocess.run(first, cwd=REPO, check=False).returncode
    if code != 0:
        print(f"stage 1 failed (exit {code})", file=sys.stderr)
        return code
    found = CheckpointManager(ckpt_dir, keep_last=1, clean_stale=False).checkpoints()
    if not found:
        print(f"stage 1 wrote no checkpoint in {ckpt_dir}", file=sys.stderr)
        return 2
    second = [str(found[-1]) if a == "PRETRAINED" else a for a in second]
    print("stage 2:", shlex.join(second), flush=True)
    return subprocess.run(second, cwd=REPO, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())
