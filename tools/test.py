#!/usr/bin/env python
"""Run a trained detector on a split and score it with the official nuScenes devkit or the KITTI AP.

    python tools/test.py CONFIG --ckpt PATH [--save-dets] [--extra-tag TAG] [--split val] [--set KEY=VALUE ...]
    python tools/test.py CONFIG --eval-all CKPT_DIR          # every checkpoint in the folder not scored yet
    python tools/test.py CONFIG --from-dets FILE             # re-score saved detections, no inference

Results go to ``<output_root>/<config-stem>/<extra-tag>/eval/<checkpoint-stem>-<hash>/<split>/``, where
``<checkpoint-stem>`` is the file name without ``checkpoint_`` and ``.pth`` and ``<hash>`` the first 8 hex digits
of the SHA-256 of the checkpoint file (``eval/epoch_5-1a2b3c4d/val/``): every run names its checkpoints
``checkpoint_epoch_N.pth``, so the results of two runs' checkpoints never share a folder. The folder holds
``checkpoint.json`` (the checkpoint's path, size and SHA-256), ``metrics.json``, the devkit's
``metrics_summary.json`` / ``metrics_details.json`` and ``results_nusc.json`` (nuScenes) or the KITTI result files
``data/<frame>.txt``, and with ``--save-dets`` the raw detections ``detections.pth`` (what ``--from-dets`` reads).
``--from-dets FILE`` writes to ``eval/from_dets/<file-stem>-<hash>/<split>/`` with ``detections_file.json``.
``--eval-all`` appends each scored checkpoint's folder name (``epoch_5-1a2b3c4d``) to ``eval/eval_all_list.txt``
and skips checkpoints whose name is listed (the same content, from any folder), writes ``eval/eval_all.json``
(metrics by folder name) and TensorBoard scalars per epoch to ``tensorboard_eval/``.

Before inference, the ground truth the evaluation will read is checked (nuScenes: the devkit's annotations of the
split; KITTI: the split's label files): a NaN / inf or zero-size box is an error naming the annotation tokens or
``file:line`` (:mod:`perception.evaluation.gt_checks`), not a devkit ``AssertionError`` after the inference.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger("perception.tools.test")


def build_parser() -> argparse.ArgumentParser:
    from perception.config import add_config_args

    p = argparse.ArgumentParser(
        prog="test.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_config_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--ckpt", type=Path, help="checkpoint to evaluate")
    what.add_argument(
        "--eval-all", type=Path, metavar="CKPT_DIR", help="evaluate every checkpoint in this folder"
    )
    what.add_argument("--from-dets", type=Path, metavar="FILE", help="score a detections file of --save-dets")
    p.add_argument("--save-dets", action="store_true", help="also save the raw detections (detections.pth)")
    p.add_argument("--extra-tag", default="default", help="run name under output/<config-stem>/")
    p.add_argument("--split", default=None, help="info split to evaluate (default: train.val_split or 'val')")
    p.add_argument("--batch-size", type=int, default=1, help="samples per inference step")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--amp", action="store_true", help="mixed-precision inference")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _summary(metrics: dict[str, float]) -> str:
    keys = [k for k in ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE") if k in metrics]
    keys = keys or sorted(k for k in metrics if "_R40_moderate" in k)
    return ", ".join(f"{k} {metrics[k]:.4f}" if not math.isnan(metrics[k]) else f"{k} n/a" for k in keys)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from perception.config import ConfigError, load_config
    from perception.engine.checkpoint import CheckpointError

    try:
        cfg = load_config(args.config, args.set)
        return _test(args, cfg)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"test.py: error: {err}", file=sys.stderr)
        return 2


def _test(args: argparse.Namespace, cfg: Any) -> int:
    if args.from_dets is not None and not args.from_dets.is_file():
        raise FileNotFoundError(f"--from-dets {args.from_dets}: no such file")
    if args.ckpt is not None and not args.ckpt.is_file():
        raise FileNotFoundError(f"--ckpt {args.ckpt}: no such checkpoint file")
    if args.eval_all is not None and not args.eval_all.is_dir():
        raise FileNotFoundError(f"--eval-all {args.eval_all}: no such folder")
    import torch

    from perception.engine.checkpoint import CheckpointManager, load_model_weights
    from perception.engine.data import build_dataset, prepare_data
    from perception.engine.inference import (
        evaluate_detections,
        load_detections,
        run_inference,
        save_detections,
    )
    from perception.engine.logger import ScalarWriter, setup_logging
    from perception.engine.paths import FileIdentity, claim_result_dir, result_name, run_dir_for

    run_dir = run_dir_for(args.config, cfg.output_root, args.extra_tag)
    setup_logging(run_dir / "log_test.txt")
    split = args.split or (cfg.train.val_split if cfg.train and cfg.train.val_split else "val")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    eval_root = run_dir / "eval"

    if args.from_dets is not None:
        dets, names = load_detections(args.from_dets)
        if names != tuple(cfg.data.class_names):
            raise ValueError(
                f"{args.from_dets} holds classes {list(names)}, the config has {list(cfg.data.class_names)}"
            )
        ident = FileIdentity.of(args.from_dets)
        out = claim_result_dir(
            eval_root / "from_dets" / result_name(ident) / split, ident, "detections_file.json"
        )
        metrics = evaluate_detections(cfg, dets, split, out)
        print(f"{args.from_dets}: {_summary(metrics)}\nresults in {out}")
        return 0

    if cfg.model is None:
        raise ValueError(f"{args.config}: the config has no 'model:' section")
    from perception.models.build import build_detector

    prepare_data(cfg)
    dataset = build_dataset(cfg, split, "val")  # checks the ground truth the evaluation will read

    def score(ckpt: Path, ident: FileIdentity) -> dict[str, float]:
        model = build_detector(cfg.model, cfg.data)
        load_model_weights(model, ckpt, strict=True).check_class_names(cfg.data.class_names)
        out = claim_result_dir(eval_root / result_name(ident) / split, ident, "checkpoint.json")
        model.to(device)
        dets = run_inference(
            model, dataset, batch_size=args.batch_size, workers=args.workers, device=device, amp=args.amp,
            show_progress=not args.no_progress,
        )  # fmt: skip
        if args.save_dets:
            save_detections(dets, cfg.data.class_names, out / "detections.pth")
        metrics = evaluate_detections(cfg, dets, split, out)
        print(f"{ckpt}: {_summary(metrics)}\nresults in {out}")
        return metrics

    if args.ckpt is not None:
        score(args.ckpt, FileIdentity.of(args.ckpt))
        return 0

    manager = CheckpointManager(args.eval_all, keep_last=1 << 30, clean_stale=False)
    listed = eval_root / "eval_all_list.txt"
    done = set(listed.read_text().split()) if listed.is_file() else set()
    summary_path = eval_root / "eval_all.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    writer = ScalarWriter(run_dir / "tensorboard_eval")
    found = [(c, FileIdentity.of(c)) for c in manager.checkpoints()]
    todo = [(c, ident) for c, ident in found if result_name(ident) not in done]
    if not todo:
        print(f"no new checkpoint in {args.eval_all}: all {len(found)} are listed in {listed}")
    for ckpt, ident in todo:
        metrics = score(ckpt, ident)
        key = CheckpointManager.sort_key(ckpt)
        writer.add_scalars(
            {f"eval/{k}": v for k, v in metrics.items() if not math.isnan(v)}, key[0] if key else 0
        )
        summary[result_name(ident)] = {k: (None if math.isnan(v) else v) for k, v in metrics.items()}
        eval_root.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        with open(listed, "a", encoding="utf-8") as f:
            f.write(result_name(ident) + "\n")
    writer.close()
    return 0


if __name__ == "__main__":
    from perception.engine.malloc import keep_freed_memory

    keep_freed_memory()  # large tensors reuse freed memory instead of faulting in fresh pages (see there)
    sys.exit(main())
