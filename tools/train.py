#!/usr/bin/env python
"""Train a detector.

    python tools/train.py CONFIG [--batch-size N] [--epochs N] [--workers N] [--ckpt PATH] [--pretrained PATH]
                          [--amp] [--launcher none|pytorch] [--sync-bn] [--extra-tag TAG] [--seed N]
                          [--deterministic] [--set KEY=VALUE ...]

    torchrun --nproc-per-node 2 tools/train.py CONFIG --launcher pytorch     # 2 processes (gloo on CPU, nccl on GPU)

Outputs go to ``<output_root>/<config-stem>/<extra-tag>/``: ``log.txt``, ``config.yaml`` (the resolved config),
``ckpt/checkpoint_epoch_<N>.pth``, ``tensorboard/`` and ``eval/epoch_<N>/`` (with ``train.eval_interval``).
Without ``--ckpt`` a run resumes from the newest loadable checkpoint in its ``ckpt/`` folder (a corrupt newest file
is skipped with a warning); a resume the checkpoint refuses (its LR schedule -- LR, epochs, batch or world size --
differs from the run's) exits with status 2, logs the reason in ``log.txt`` too and changes no other file of the
run folder (``config.yaml`` is written only once the resume check passed). ``--pretrained`` loads only matching
weights into a fresh run (it stops, naming what did not match, when less than ``--pretrained-min-share``,
default 0.5, of the model's tensors fit; convert OpenPCDet checkpoints with ``tools/convert_checkpoint.py``).
The command-line flags override the config's ``train:`` keys (``--batch-size`` is per process; the global batch
and the LR used are logged). The data set (synthetic, if the config says so) and its
info files are created when missing.

Ctrl-C finishes the running iteration, writes a checkpoint of exactly that state (the log names it) and exits
with status 130; the same command resumes from it. A second Ctrl-C stops at once without a checkpoint.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("perception.tools.train")


def build_parser() -> argparse.ArgumentParser:
    from perception.cli import ToolParser  # OpenPCDet's --a_b spellings, --cfg_file
    from perception.config import add_config_args

    p = ToolParser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument(
        "--batch-size", type=int, default=None, help="samples per process and step (train.batch_size)"
    )
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (train.epochs)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers per process (train.workers)")
    p.add_argument(
        "--ckpt", type=Path, default=None, help="checkpoint to resume from (default: newest in ckpt/)"
    )
    p.add_argument("--pretrained", type=Path, default=None, help="initialise matching weights from this file")
    p.add_argument(
        "--pretrained-min-share",
        type=float,
        default=None,
        help="least share of the model's tensors (parameters and buffers) --pretrained must load, else stop "
        "with the names that did not match (default 0.5)",
    )
    p.add_argument(
        "--amp", action="store_true", help="mixed precision: bf16 on CPU, fp16 + grad scaler on GPU"
    )
    p.add_argument(
        "--launcher", choices=["none", "pytorch"], default="none", help="pytorch: started by torchrun"
    )
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (GPUs only)")
    p.add_argument("--extra-tag", default="default", help="run name under output/<config-stem>/")
    p.add_argument("--seed", type=int, default=None, help="random seed (train.seed)")
    p.add_argument(
        "--deterministic", action="store_true", help="deterministic algorithms (train.deterministic)"
    )
    p.add_argument(
        "--max-iterations",
        type=int,
        default=None,
        help="stop once this many iterations are done in total (a checkpoint is written; run again to continue)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """The command-line flags as ``--set`` items (applied after the config's own ``--set``)."""
    items = []
    for flag, key in (
        ("batch_size", "batch_size"),
        ("epochs", "epochs"),
        ("workers", "workers"),
        ("seed", "seed"),
    ):
        value = getattr(args, flag)
        if value is not None:
            items.append(f"train.{key}={int(value)}")
    if args.amp:
        items.append("train.amp=true")
    if args.deterministic:
        items.append("train.deterministic=true")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from perception.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, [*args.set, *_flag_overrides(args)])
        if cfg.model is None:
            raise ConfigError(
                f"{args.config}: the config has no 'model:' section; nothing to train (a data-only config; a "
                "detector config on the same data, e.g. configs/kitti_centerpoint_spconv.yaml for "
                "configs/demo_kitti.yaml, names it as base)"
            )
        return _train(args, cfg)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        from perception.engine.interrupt import TrainingInterrupted

        if not isinstance(stop, TrainingInterrupted):  # a TrainingInterrupted has logged where it stopped
            print(
                "train.py: interrupted by Ctrl-C outside the training loop (nothing saved)", file=sys.stderr
            )
        return 130


def _train(args: argparse.Namespace, cfg: object) -> int:
    for flag, path in (("--ckpt", args.ckpt), ("--pretrained", args.pretrained)):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    import torch

    from perception.config import config_to_dict, save_config
    from perception.config_schema import ExperimentConfig
    from perception.engine.checkpoint import load_model_weights
    from perception.engine.data import build_dataset, build_train_sampler, prepare_data
    from perception.engine.distributed import barrier, cleanup_distributed, init_distributed
    from perception.engine.inference import evaluate_detections, run_inference
    from perception.engine.logger import setup_logging
    from perception.engine.paths import run_dir_for
    from perception.engine.rng import align_numba_threads, seed_everything, set_deterministic
    from perception.engine.trainer import Trainer
    from perception.models.build import build_detector
    from perception.train_config import TrainConfig

    assert isinstance(cfg, ExperimentConfig)
    if cfg.train is None:
        cfg = cfg.model_copy(update={"train": TrainConfig()})
    train = cfg.train
    assert train is not None and cfg.model is not None
    run_dir = run_dir_for(args.config, cfg.output_root, args.extra_tag)
    dist = init_distributed(args.launcher)
    try:
        setup_logging(run_dir / "log.txt", dist.rank)
        if dist.is_main:
            logger.info("command: %s", shlex.join([sys.argv[0], *(sys.argv[1:])]))
            logger.info("run folder: %s", run_dir)
        threads = align_numba_threads()
        logger.info("threads per process: %d (torch and numba)", threads)
        seed_everything(train.seed + dist.rank)
        set_deterministic(train.deterministic)
        if dist.is_main:
            prepare_data(cfg, workers=train.workers)
        barrier(dist)
        split = train.split or "train"
        val_split = train.val_split or "val"
        train_set = build_dataset(cfg, split, "train", train=train)
        sampler = build_train_sampler(train_set, train, dist)
        logger.info(
            "training set: %s split '%s', %d samples (%d per epoch and process)",
            cfg.data.dataset,
            split,
            len(train_set),
            len(sampler),
        )
        model = build_detector(cfg.model, cfg.data)
        pretrained = (
            load_model_weights(model, args.pretrained, strict=False, min_share=args.pretrained_min_share)
            if args.pretrained is not None
            else None
        )
        logger.info(
            "model: %s, %.2f M parameters",
            type(model).__name__,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )

        # Built (and its ground truth checked) before the first iteration: bad val annotations stop the run now,
        # not at the first evaluation after an epoch of training.
        val_set = build_dataset(cfg, val_split, "val") if train.eval_interval else None

        def evaluate(m: torch.nn.Module, epoch: int) -> dict[str, float]:
            assert val_set is not None  # evaluate is only called with train.eval_interval set
            dets = run_inference(
                m, val_set, batch_size=train.batch_size, workers=train.workers, device=dist.device,
                amp=train.amp, show_progress=not args.no_progress,
            )  # fmt: skip
            return evaluate_detections(cfg, dets, val_split, run_dir / "eval" / f"epoch_{epoch}" / val_split)

        trainer = Trainer(
            model=model,
            train_set=train_set,
            cfg=train,
            run_dir=run_dir,
            dist=dist,
            class_names=cfg.data.class_names,
            config_dict=config_to_dict(cfg),
            sampler=sampler,
            evaluate=evaluate,
            sync_bn=args.sync_bn,
            show_progress=not args.no_progress,
        )
        try:
            resumed = trainer.resume(args.ckpt)
        except ValueError as err:  # CheckpointError included; the run folder is left as it was, save log.txt
            logger.error("resume refused: %s", err)
            return 2
        unloaded = _frozen_without_weights(model, pretrained.match.loaded if pretrained else ())
        if resumed is None and unloaded:
            logger.error(
                "%d frozen tensors (model.fusion.freeze_lidar) would keep their random initial values, e.g. %s: "
                "start from a LiDAR-only checkpoint with --pretrained PATH, or set model.fusion.freeze_lidar=false",
                len(unloaded),
                ", ".join(unloaded[:3]),
            )
            return 2
        if dist.is_main:  # only now: a refused resume leaves the config its checkpoints were made with
            save_config(cfg, run_dir / "config.yaml")
        result = trainer.fit(max_iterations=args.max_iterations)
        trainer.writer.close()
        logger.info(
            "stopped at epoch %d + %d iterations (global %d); %d step(s) skipped; last checkpoint: %s",
            result.epoch,
            result.iter_in_epoch,
            result.iteration,
            result.skipped_steps,
            result.checkpoint,
        )
    finally:
        cleanup_distributed(dist)
    return 0


def _frozen_without_weights(model: object, loaded: tuple[str, ...]) -> list[str]:
    """State-dict keys of the model's frozen stages (``frozen_state_keys()``, SparseFusion's LiDAR branch with
    ``freeze_lidar``) that ``--pretrained`` did not load."""
    keys = getattr(model, "frozen_state_keys", None)
    if keys is None:
        return []
    have = set(loaded)
    return [k for k in keys() if k not in have]


if __name__ == "__main__":
    from perception.engine.malloc import keep_freed_memory

    keep_freed_memory()  # large tensors reuse freed memory instead of faulting in fresh pages (see there)
    sys.exit(main())
