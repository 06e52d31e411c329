#!/usr/bin/env python
"""Run a trained detector on a split and score it with the official nuScenes devkit or the KITTI AP.

    python tools/test.py CONFIG --ckpt PATH [--save-dets] [--extra-tag TAG] [--split val] [--precision auto|fp32|bf16] [--onnx DIR [--precision fp32|fp16|int8]] [--set KEY=VALUE ...]
    python tools/test.py CONFIG --eval-all CKPT_DIR          # every checkpoint in the folder not scored yet
    python tools/test.py CONFIG --eval-all [--ckpt-dir DIR]  # the same, OpenPCDet's form (default DIR: the run's ckpt/)
    python tools/test.py CONFIG --eval-all CKPT_DIR --max-waiting-mins 30   # also wait for a running training's
    python tools/test.py CONFIG --from-dets FILE             # re-score saved detections, no inference
    torchrun --nproc-per-node 2 tools/test.py CONFIG --ckpt PATH --launcher pytorch   # inference on 2 processes

OpenPCDet's spellings work too: ``--cfg_file CONFIG`` for the positional config, and ``--a_b`` for every ``--a-b``
flag (``--eval_all --ckpt_dir DIR``, ``--batch_size``, ``--extra_tag``, ``--max_waiting_mins``).

Results go to ``<output_root>/<config-stem>/<extra-tag>/eval/<checkpoint-stem>-<hash>/<split>/``, where
``<checkpoint-stem>`` is the file name without ``checkpoint_`` and ``.pth`` and ``<hash>`` the first 8 hex digits
of the SHA-256 of the checkpoint file (``eval/epoch_5-1a2b3c4d/val/``): every run names its checkpoints
``checkpoint_epoch_N.pth``, so the results of two runs' checkpoints never share a folder. The folder holds
``checkpoint.json`` (the checkpoint's path, size and SHA-256), ``metrics.json``, the devkit's
``metrics_summary.json`` / ``metrics_details.json`` and ``results_nusc.json`` (nuScenes) or the KITTI result files
``data/<frame>.txt`` and ``kitti_ap.txt`` (the AP blocks of the devkit's Python port, as OpenPCDet prints them:
``Car AP@0.70, 0.70, 0.70:`` / ``bbox AP:`` / ``bev  AP:`` / ``3d   AP:`` / ``aos  AP:``, R11 and ``AP_R40``, strict
and loose IoU; also logged), and with ``--save-dets`` the raw detections ``detections.pth`` (what ``--from-dets``
reads). KITTI ``--split test`` (no labels) writes the submission files ``data/<frame>.txt`` (one per frame, empty
without detections) and scores nothing.
``--from-dets FILE`` writes to ``eval/from_dets/<file-stem>-<hash>/<split>/`` with ``detections_file.json``.
``--eval-all`` appends each scored checkpoint's folder name (``epoch_5-1a2b3c4d``) to ``eval/eval_all_list.txt``
and skips checkpoints whose name is listed (the same content, from any folder), writes ``eval/eval_all.json``
(metrics by folder name) and TensorBoard scalars per epoch to ``tensorboard_eval/``. With ``--max-waiting-mins N``
(default 0: score what is there and stop; OpenPCDet waits 30) it then polls the folder every ``--poll-seconds``
(30) and scores each new checkpoint, oldest first, until no new one appeared for ``N`` minutes or the checkpoint of
the last epoch (``train.epochs`` of the checkpoint's config) is scored. Only ``checkpoint_epoch_*.pth`` files are
read: training writes a checkpoint to a hidden temporary file and renames it, so a listed file is complete.

``--launcher pytorch`` (under ``torchrun``): rank ``r`` of ``W`` runs inference on samples ``r, r + W, ...``,
rank 0 gathers the detections, scores them and writes every file (the metrics equal a single process's); gloo on
the CPU, nccl on GPUs (see :mod:`perception.engine.distributed`).

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
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

logger = logging.getLogger("perception.tools.test")


def _minutes(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of minutes >= 0, got {text!r}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from perception.cli import ToolParser
    from perception.config import add_config_args
    from perception.engine.threads import add_threads_argument

    p = ToolParser(prog="test.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--ckpt", type=Path, help="checkpoint to evaluate")
    what.add_argument(
        "--eval-all",
        type=Path,
        nargs="?",
        const=True,
        metavar="CKPT_DIR",
        help="evaluate every checkpoint in CKPT_DIR; without CKPT_DIR: in --ckpt-dir, else the run's ckpt/",
    )
    what.add_argument("--from-dets", type=Path, metavar="FILE", help="score a detections file of --save-dets")
    p.add_argument("--ckpt-dir", type=Path, metavar="DIR", help="the folder of --eval-all (OpenPCDet's form)")
    p.add_argument(
        "--max-waiting-mins",
        type=_minutes,
        default=0.0,
        metavar="N",
        help="--eval-all: wait up to N minutes for each new checkpoint (default 0: do not wait)",
    )
    p.add_argument(
        "--poll-seconds",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="--eval-all: look for new checkpoints this often",
    )
    p.add_argument(
        "--launcher", choices=["none", "pytorch"], default="none", help="pytorch: started by torchrun"
    )
    p.add_argument("--save-dets", action="store_true", help="also save the raw detections (detections.pth)")
    p.add_argument("--extra-tag", default="default", help="run name under output/<config-stem>/")
    p.add_argument("--split", default=None, help="info split to evaluate (default: train.val_split or 'val')")
    p.add_argument("--batch-size", type=int, default=1, help="samples per inference step")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--amp", action="store_true", help="mixed-precision inference")
    p.add_argument(
        "--onnx",
        type=Path,
        default=None,
        metavar="DIR",
        help="run the exported graph (the DSVT network after the VFE, or the dense part of other detectors) in "
        "onnxruntime from this tools/export.py folder of --ckpt; results go to eval/<checkpoint>/<split>_onnx/ "
        "(_onnx_int8/, _onnx_fp16/ for --precision)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16", "int8"),
        default="auto",
        help="torch: auto (bf16 autocast on a CPU with AMX bf16, else fp32), fp32 or bf16 (results in "
        "<split>_bf16/); with --onnx: which of the export's files runs, fp32 (auto), fp16 or int8",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threads_argument(p)
    return p


def _summary(metrics: dict[str, float]) -> str:
    keys = [k for k in ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE") if k in metrics]
    keys = keys or sorted(k for k in metrics if k.endswith("_R40_moderate"))
    return ", ".join(f"{k} {metrics[k]:.4f}" if not math.isnan(metrics[k]) else f"{k} n/a" for k in keys)


def _unlabelled(cfg: Any, split: str) -> bool:
    """The KITTI test split: frames under ``testing/`` without labels (inference and result files only)."""
    return bool(cfg.data.dataset == "kitti" and split == "test")


def _score_or_write(cfg: Any, dets: Any, split: str, out: Path, source: Path) -> dict[str, float]:
    """Score ``dets`` into ``out`` and print the summary; on the KITTI test split write the submission files
    (``out/data/<frame>.txt``, one per frame, empty without detections) and score nothing (empty metrics)."""
    from perception.engine.inference import evaluate_detections, write_kitti_results

    if _unlabelled(cfg, split):
        data = write_kitti_results(cfg, dets, split, out)
        print(
            f"{source}: KITTI split {split!r} has no labels, nothing scored; {len(dets)} result files (KITTI "
            f"format, one per frame) in {data}",
            flush=True,
        )
        return {}
    metrics = evaluate_detections(cfg, dets, split, out)
    print(f"{source}: {_summary(metrics)}\nresults in {out}", flush=True)
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from perception.config import ConfigError, load_config
    from perception.engine.checkpoint import CheckpointError
    from perception.engine.threads import use_free_cores

    try:
        args.thread_choice = use_free_cores(args.threads)  # logged with the run, below
        cfg = load_config(args.config, args.set)
        return _test(args, cfg)
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"test.py: error: {err}", file=sys.stderr)
        return 2


def _eval_all_folder(args: argparse.Namespace, run_dir: Path) -> Path | None:
    """The folder ``--eval-all`` scores (its value, ``--ckpt-dir``, or the run's ``ckpt/``), checked; None without
    ``--eval-all``."""
    if args.eval_all is None:
        for flag, value in (("--ckpt-dir", args.ckpt_dir), ("--max-waiting-mins", args.max_waiting_mins)):
            if value:
                raise ValueError(f"{flag} is read by --eval-all only (OpenPCDet: --eval_all --ckpt_dir DIR)")
        return None
    if args.eval_all is True:
        folder = args.ckpt_dir if args.ckpt_dir is not None else run_dir / "ckpt"
    elif args.ckpt_dir is not None:
        raise ValueError(f"--eval-all {args.eval_all} and --ckpt-dir {args.ckpt_dir}: give the folder once")
    else:
        folder = args.eval_all
    if folder.is_file():
        raise ValueError(
            f"--eval-all {folder}: a file, not a folder of checkpoints (score one file with --ckpt)"
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"--eval-all {folder}: no such folder")
    return Path(folder)


def _test(args: argparse.Namespace, cfg: Any) -> int:
    if args.from_dets is not None and not args.from_dets.is_file():
        raise FileNotFoundError(f"--from-dets {args.from_dets}: no such file")
    if args.ckpt is not None and not args.ckpt.is_file():
        raise FileNotFoundError(f"--ckpt {args.ckpt}: no such checkpoint file")
    if args.amp and args.precision not in ("auto", None):
        raise ValueError("give --amp or --precision, not both")
    if args.onnx is None and args.precision in ("fp16", "int8"):
        raise ValueError(f"--precision {args.precision} is an exported file's: it needs --onnx DIR")
    if args.onnx is not None:
        if args.ckpt is None or args.amp:
            raise ValueError("--onnx scores one --ckpt (its tools/export.py folder), without --amp")
        if args.precision == "bf16":
            raise ValueError("--onnx runs an exported file: --precision fp32, fp16 or int8")
        if not (args.onnx / "manifest.json").is_file():
            raise FileNotFoundError(f"--onnx {args.onnx}: no manifest.json (write it with tools/export.py)")
    from perception.engine.distributed import cleanup_distributed, init_distributed
    from perception.engine.paths import run_dir_for

    run_dir = run_dir_for(args.config, cfg.output_root, args.extra_tag)
    folder = _eval_all_folder(args, run_dir)
    try:
        info = init_distributed(args.launcher)
    except RuntimeError as err:
        raise ValueError(str(err).replace("tools/train.py", "tools/test.py")) from err
    try:
        return _test_ranks(args, cfg, run_dir, folder, info)
    finally:
        cleanup_distributed(info)


def _test_ranks(args: argparse.Namespace, cfg: Any, run_dir: Path, folder: Path | None, info: Any) -> int:
    """:func:`_test` on every rank of the job (one rank without ``--launcher pytorch``); rank 0 writes."""
    from perception.engine.checkpoint import load_model_weights
    from perception.engine.data import build_dataset, prepare_data
    from perception.engine.distributed import barrier
    from perception.engine.inference import load_detections, run_inference, save_detections
    from perception.engine.logger import setup_logging
    from perception.engine.paths import FileIdentity, claim_result_dir, result_name

    setup_logging(run_dir / "log_test.txt", info.rank)
    logger.info("threads: %s", args.thread_choice.reason)
    split = args.split or (cfg.train.val_split if cfg.train and cfg.train.val_split else "val")
    eval_root = run_dir / "eval"

    if args.from_dets is not None:
        if not info.is_main:
            return 0  # no inference: rank 0 scores the file
        dets, names = load_detections(args.from_dets)
        if names != tuple(cfg.data.class_names):
            raise ValueError(
                f"{args.from_dets} holds classes {list(names)}, the config has {list(cfg.data.class_names)}"
            )
        ident = FileIdentity.of(args.from_dets)
        out = claim_result_dir(
            eval_root / "from_dets" / result_name(ident) / split, ident, "detections_file.json"
        )
        _score_or_write(cfg, dets, split, out, args.from_dets)
        return 0

    if cfg.model is None:
        raise ValueError(
            f"{args.config}: the config has no 'model:' section (a data-only config; a detector config on the "
            "same data, e.g. configs/kitti_centerpoint_spconv.yaml for configs/demo_kitti.yaml, names it as base)"
        )
    from perception.models.build import build_detector

    if info.is_main:
        prepare_data(cfg)
    barrier(info)
    # val mode checks the ground truth the evaluation will read; the KITTI test split has none
    dataset = build_dataset(cfg, split, "test" if _unlabelled(cfg, split) else "val")

    # torch inference precision (logged); --amp keeps its training-style meaning, an export runs its own file
    precision = None
    if args.onnx is None and not args.amp:
        from perception.engine.precision import resolve_precision

        precision = resolve_precision(args.precision, info.device)

    def score(ckpt: Path, ident: FileIdentity | None) -> Scored:
        """Score one checkpoint on every rank; ``ident`` and the returned metrics on rank 0 only."""
        model = build_detector(cfg.model, cfg.data)
        loaded = load_model_weights(model, ckpt, strict=True)
        loaded.check_class_names(cfg.data.class_names)
        train = loaded.checkpoint.config.get("train") if loaded.checkpoint is not None else None
        epochs = train.get("epochs") if isinstance(train, dict) else None
        epochs = epochs if isinstance(epochs, int) else None
        out = None
        if ident is not None:  # rank 0: a folder of other content is refused before the inference
            if args.onnx is not None:
                onnx_precision = "fp32" if args.precision == "auto" else args.precision
                leaf = f"{split}_onnx" + ("" if onnx_precision == "fp32" else f"_{onnx_precision}")
            else:
                leaf = split + ("_bf16" if precision is not None and precision.bf16 else "")
            out = claim_result_dir(eval_root / result_name(ident) / leaf, ident, "checkpoint.json")
        model.to(info.device)
        if args.onnx is not None:
            from perception.deploy.manifest import file_sha256
            from perception.deploy.runtime import OnnxModel

            variant = "fp32" if args.precision == "auto" else args.precision
            model = OnnxModel(model, args.onnx, checkpoint_sha256=file_sha256(ckpt), precision=variant)
        dets = run_inference(
            model, dataset, batch_size=args.batch_size, workers=args.workers, device=info.device, amp=args.amp,
            precision=precision, show_progress=not args.no_progress, dist=info,
        )  # fmt: skip
        if out is None:
            return Scored(None, epochs)
        if args.save_dets:
            save_detections(dets, cfg.data.class_names, out / "detections.pth")
        return Scored(_score_or_write(cfg, dets, split, out, ckpt), epochs)

    if args.ckpt is not None:
        score(args.ckpt, FileIdentity.of(args.ckpt) if info.is_main else None)
        return 0
    assert folder is not None
    from perception.train_config import TrainConfig

    final_epoch = (cfg.train or TrainConfig()).epochs
    _eval_all(args, folder, eval_root, run_dir / "tensorboard_eval", score, info, final_epoch)
    return 0


class Scored(NamedTuple):
    """What scoring one checkpoint gave: ``metrics`` (rank 0; None on the others) and ``epochs``, the
    ``train.epochs`` of the checkpoint's config (None for a bare ``state_dict`` file).

    (A NamedTuple, not a dataclass: the tests load this file without registering it in ``sys.modules``.)"""

    metrics: dict[str, float] | None
    epochs: int | None


class _Identities:
    """The checkpoints of a folder with their content identity, hashed once per (size, mtime) of each file."""

    def __init__(self, folder: Path) -> None:
        from perception.engine.checkpoint import CheckpointManager

        self.manager = CheckpointManager(folder, keep_last=1 << 30, clean_stale=False)  # never deletes
        self._cache: dict[Path, tuple[tuple[int, int], Any]] = {}

    def list(self) -> list[tuple[Path, Any]]:
        """``(path, FileIdentity)`` of every ``checkpoint_epoch_*.pth``, oldest first; a file deleted meanwhile
        (a training's ``keep_last``) is left out."""
        from perception.engine.paths import FileIdentity

        found = []
        for path in self.manager.checkpoints():
            try:
                st = path.stat()
                key = (st.st_size, st.st_mtime_ns)
                if path not in self._cache or self._cache[path][0] != key:
                    self._cache[path] = (key, FileIdentity.of(path))
            except FileNotFoundError:
                continue
            found.append((path, self._cache[path][1]))
        return found


def _eval_all(
    args: argparse.Namespace,
    folder: Path,
    eval_root: Path,
    tensorboard: Path,
    score: Any,
    info: Any,
    final_epoch: int,
) -> None:
    """Score every checkpoint of ``folder`` not listed yet, then (``--max-waiting-mins``) wait for new ones.

    Rank 0 lists the folder and decides (score a file, wait, stop); the decision goes to every rank, so all ranks
    score the same checkpoints. ``final_epoch`` is updated from each scored checkpoint's config.
    """
    from perception.engine.checkpoint import CheckpointManager
    from perception.engine.distributed import all_gather_object
    from perception.engine.logger import ScalarWriter
    from perception.engine.paths import result_name

    listed = eval_root / "eval_all_list.txt"
    summary_path = eval_root / "eval_all.json"
    done: set[str] = set()
    summary: dict[str, Any] = {}
    writer = None
    if info.is_main:
        done = set(listed.read_text().split()) if listed.is_file() else set()
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        writer = ScalarWriter(tensorboard)
    files = _Identities(folder)
    wait_s = args.max_waiting_mins * 60.0
    deadline = time.monotonic() + wait_s
    scored, said_waiting = 0, False
    ident = None  # rank 0: the identity of the checkpoint being scored
    while True:
        decision: str | None = None  # a checkpoint to score, "" to wait, None to stop
        if info.is_main:
            found = files.list()
            todo = [(c, ident) for c, ident in found if result_name(ident) not in done]
            last = [c for c, i in found if CheckpointManager.sort_key(c) == (final_epoch, 0)]
            if todo:
                decision, ident = str(todo[0][0]), todo[0][1]
            elif wait_s <= 0:
                if not scored:
                    print(f"no new checkpoint in {folder}: all {len(found)} are listed in {listed}")
            elif last:
                print(f"{last[0].name} (the last epoch, train.epochs = {final_epoch}) is scored: stopping")
            elif time.monotonic() >= deadline:
                print(
                    f"no new checkpoint in {folder} for {args.max_waiting_mins:g} min (--max-waiting-mins): "
                    f"stopping, {scored} scored"
                )
            else:
                decision = ""
                if not said_waiting:
                    print(
                        f"waiting for new checkpoints in {folder} (up to {args.max_waiting_mins:g} min, "
                        f"looking every {args.poll_seconds:g} s; the last epoch is {final_epoch})",
                        flush=True,
                    )
                    said_waiting = True
                time.sleep(max(0.0, min(args.poll_seconds, deadline - time.monotonic())))
        decision = all_gather_object(decision, info)[0]
        if decision is None:
            break
        if decision == "":
            continue
        ckpt = Path(decision)
        result = score(ckpt, ident)
        scored, said_waiting = scored + 1, False
        deadline = time.monotonic() + wait_s
        if result.epochs is not None:
            final_epoch = result.epochs
        if result.metrics is None or ident is None:
            continue
        metrics, name = result.metrics, result_name(ident)
        key = CheckpointManager.sort_key(ckpt)
        assert writer is not None
        writer.add_scalars(
            {f"eval/{k}": v for k, v in metrics.items() if not math.isnan(v)}, key[0] if key else 0
        )
        summary[name] = {k: (None if math.isnan(v) else v) for k, v in metrics.items()}
        eval_root.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        with open(listed, "a", encoding="utf-8") as f:
            f.write(name + "\n")
        done.add(name)
    if writer is not None:
        writer.close()


if __name__ == "__main__":
    from perception.engine.malloc import keep_freed_memory

    keep_freed_memory()  # large tensors reuse freed memory instead of faulting in fresh pages (see there)
    sys.exit(main())
