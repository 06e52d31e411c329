#!/usr/bin/env python
"""Learning, measured: official nuScenes mAP / NDS on a fresh synthetic val split against CPU training wall time.

    python benchmarks/bench_learning.py [--budget-min 30] [--evals 4] [--config configs/demo_detector.yaml]
                                         [--val-seed 1] [--out output/bench_learning]

1. Set-up (not counted as training time): the config's synthetic train set is generated when
   missing, and a *fresh* synthetic data set with another seed (``--val-seed``) is generated in ``OUT/val_data``;
   its val scenes (``mini_val`` or ``val``, by the data version) are the evaluation split.
2. Calibration: ``tools/train.py`` runs 4, 24 and again 4 iterations in throw-away runs (the second short one,
   with numba's kernel cache filled, is the one timed) to measure seconds per iteration;
   the number of epochs is chosen so that the whole one-cycle schedule fits into ``--budget-min`` (``--epochs``
   overrides this).
3. Training from scratch with ``tools/train.py`` (one run, same schedule throughout), stopped with
   ``--max-iterations`` at ``--evals`` evenly spaced points and resumed; the training wall time is the sum of these
   processes' wall times (start-up included). A chunk that would overrun the budget is shortened to fit.
4. After each chunk ``tools/test.py`` scores the newest checkpoint in float32 (``--precision fp32``, the same on
   every CPU) on the fresh val split with the official devkit (evaluation time is not counted as training time).

Prints a markdown table (training minutes, iterations, epochs, mAP, NDS, the five mean TP errors and a few
per-class APs) and writes it to ``OUT/bench_learning.md``. Not a test: it trains for real and takes the budget plus a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import newest_checkpoint, run_logged  # noqa: E402

CLASSES_SHOWN = ("car", "pedestrian", "barrier", "traffic_cone", "bus", "bicycle")
#: The devkit's mean true-positive errors, the part of NDS beside mAP (translation, scale, orientation, velocity,
#: attribute).
TP_ERRORS = ("mATE", "mASE", "mAOE", "mAVE", "mAAE")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "demo_detector.yaml")
    p.add_argument("--budget-min", type=float, default=30.0, help="training wall-time budget in minutes")
    p.add_argument("--evals", type=int, default=4, help="evaluation points over the run")
    p.add_argument("--epochs", type=int, default=None, help="fix the schedule length instead of calibrating")
    p.add_argument("--val-seed", type=int, default=1, help="seed of the fresh val data set")
    p.add_argument("--out", type=Path, default=REPO / "output" / "bench_learning")
    args = p.parse_args(argv)
    if args.budget_min <= 0 or args.evals < 1:
        p.error("--budget-min must be > 0 and --evals >= 1")

    from perception.config import load_config
    from perception.engine.data import eval_set_name, prepare_data
    from perception.engine.paths import FileIdentity, result_name

    out = args.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "bench_learning.log"
    py = sys.executable
    cfg = load_config(args.config)
    if cfg.train is None or cfg.synthetic is None:
        p.error(f"{args.config} needs 'train:' and 'synthetic:' sections")
    if cfg.synthetic.seed == args.val_seed:
        p.error(f"--val-seed must differ from the training data seed ({cfg.synthetic.seed})")
    val_root = out / "val_data"
    common = [f"output_root={out}"]
    val_set = [f"data.root={val_root}", f"synthetic.seed={args.val_seed}", *common]

    t0 = time.perf_counter()
    prepare_data(cfg)
    prepare_data(load_config(args.config, val_set))
    print(f"set-up (train + fresh val data, info files): {time.perf_counter() - t0:.0f} s", flush=True)

    iters_per_epoch = math.ceil(_num_train_samples(cfg) / cfg.train.batch_size)
    budget = args.budget_min * 60.0
    train = [py, "tools/train.py", str(args.config), "--no-progress"]
    if args.epochs is None:
        # throw-away runs of 4, 4 + 20 and again 4 iterations: the difference cancels start-up costs, and the
        # short run timed is the one after the others, when numba's on-disk cache is filled (the first run of a
        # fresh checkout compiles its kernels, which would make the difference, and the schedule, too short)
        tag = "calibrate"

        def timed(iterations: int) -> float:
            t = run_logged(
                [*train, "--extra-tag", tag, "--max-iterations", str(iterations), "--set", *common], log
            )
            shutil.rmtree(out / Path(args.config).stem / tag)
            return t

        timed(4)
        t_long = timed(24)
        t_short = timed(4)
        sec_per_iter = max(t_long - t_short, 1e-3) / 20
        startup = max(t_short - 4 * sec_per_iter, 0.0)
        usable = 0.95 * budget - args.evals * startup  # every chunk pays the start-up once
        epochs = max(1, int(usable / sec_per_iter / iters_per_epoch))
        print(
            f"calibration: {sec_per_iter:.2f} s/iteration, {startup:.0f} s start-up -> {epochs} epochs of "
            f"{iters_per_epoch} iterations",
            flush=True,
        )
    else:
        epochs = args.epochs
    total = epochs * iters_per_epoch

    tag = f"bench_{epochs}ep"
    run_dir = out / Path(args.config).stem / tag
    if run_dir.exists():
        p.error(f"{run_dir} exists (a previous run); remove it or pass another --out")
    stops = sorted({max(1, round(total * (i + 1) / args.evals)) for i in range(args.evals)})
    rows: list[dict[str, object]] = []
    trained, done = 0.0, 0
    for stop in stops:
        remaining = budget - trained
        if remaining <= 0:
            break
        if rows and trained > 0:  # shorten a chunk that would overrun the budget
            rate = trained / done
            stop = min(stop, done + max(1, int(remaining / rate)))
        trained += run_logged(
            [
                *train,
                "--extra-tag",
                tag,
                "--epochs",
                str(epochs),
                "--max-iterations",
                str(stop),
                "--set",
                *common,
            ],
            log,
        )
        done = stop
        ckpt = newest_checkpoint(run_dir / "ckpt")
        run_logged(
            [py, "tools/test.py", str(args.config), "--ckpt", str(ckpt), "--extra-tag", tag, "--no-progress",
             "--precision", "fp32", "--set", *val_set],
            log,
        )  # fmt: skip
        result = run_dir / "eval" / result_name(FileIdentity.of(ckpt)) / "val"  # where tools/test.py writes
        metrics = json.loads((result / "metrics.json").read_text())
        rows.append(
            {"minutes": trained / 60, "iterations": done, "epochs": done / iters_per_epoch, **metrics}
        )
        print(_table(rows[-1:], header=len(rows) == 1), flush=True)

    table = _table(rows, header=True)
    intro = (
        f"{args.config.name}: batch {cfg.train.batch_size}, {epochs} epochs x {iters_per_epoch} iterations, "
        f"{os.cpu_count()} CPU cores, torch threads {_threads()}; val: fresh synthetic {eval_set_name(cfg, 'val')} (seed {args.val_seed})"
    )
    (out / "bench_learning.md").write_text(intro + "\n\n" + table + "\n", encoding="utf-8")
    print("\n" + intro + "\n\n" + table)
    return 0


def _threads() -> int:
    """The torch intra-op threads the training processes get (``OMP_NUM_THREADS`` when set, as train.py)."""
    import torch

    return torch.get_num_threads()


def _num_train_samples(cfg: object) -> int:
    from perception.engine.data import build_dataset

    return len(build_dataset(cfg, "train", "train", train=cfg.train))  # type: ignore[arg-type, attr-defined]


def _table(rows: list[dict[str, object]], header: bool) -> str:
    def num(v: object) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{float(v):.3f}"  # type: ignore[arg-type]

    cols = [
        "train min",
        "iterations",
        "epochs",
        "mAP",
        "NDS",
        *TP_ERRORS,
        *[f"{c} AP" for c in CLASSES_SHOWN],
    ]
    lines = []
    if header:
        lines += ["| " + " | ".join(cols) + " |", "|" + "---:|" * len(cols)]
    for r in rows:
        vals = [
            f"{r['minutes']:.1f}",
            str(r["iterations"]),
            f"{r['epochs']:.2f}",
            num(r.get("mAP")),
            num(r.get("NDS")),
            *[num(r.get(k)) for k in TP_ERRORS],
        ]
        vals += [num(r.get(f"{c}_AP")) for c in CLASSES_SHOWN]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
