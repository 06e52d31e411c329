#!/usr/bin/env python
"""Velocity per class, where the devkit's mAVE comes from: a checkpoint's predicted vs true velocity at matched
val objects.

    python benchmarks/check_velocity.py --ckpt checkpoints/demo_detector.pth \\
        [--config checkpoints/demo_detector.yaml] [--set data.root=... synthetic.seed=1] [--score 0.3] [--every 4]

Runs the model (float32, eval) on every ``--every``-th sample of the config's ``val`` split; a ground-truth box is
matched to the nearest detection of its class within 1 m (centre distance, score above ``--score``). Per class
it prints the matched count, the moving ones (true speed > 1 m/s), their mean true and predicted speed, the mean
cosine between predicted and true velocity, the mean velocity error of all matches (m/s) and the mean predicted
speed of the non-moving ones. A diagnosis, not the official metric (``tools/test.py`` scores that).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import machine_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--config", type=Path, default=None, help="default: the config stored in the checkpoint")
    p.add_argument("--set", nargs="*", default=[], dest="overrides", help="config overrides (needs --config)")
    p.add_argument("--score", type=float, default=0.3)
    p.add_argument("--every", type=int, default=4)
    args = p.parse_args(argv)

    import torch

    import perception
    from perception.engine.data import build_dataset, prepare_data
    from perception.structures import Batch

    print(machine_line())
    det = perception.load_detector(
        args.ckpt, device="cpu", config=args.config, overrides=args.overrides, precision="fp32"
    )
    prepare_data(det.config)
    ds = build_dataset(det.config, "val", "val")
    names = det.config.data.class_names
    rows: list[tuple[float, ...]] = []
    model = det.model.eval()
    for i in range(0, len(ds), max(1, args.every)):  # type: ignore[arg-type]
        sample = ds[i]
        with torch.no_grad():
            (out,) = model.predict(Batch.collate([sample]))
        keep = out.scores > args.score
        pred, plab = out.boxes.tensor[keep], out.labels[keep]
        gt = sample.boxes.tensor
        for k in range(len(gt)):
            same = plab == sample.labels[k]
            if not bool(same.any()):
                continue
            dist = torch.linalg.norm(pred[:, :2] - gt[k, :2], dim=1).masked_fill(~same, float("inf"))
            j = int(dist.argmin())
            if float(dist[j]) < 1.0:
                rows.append((float(sample.labels[k]), *gt[k, 7:9].tolist(), *pred[j, 7:9].tolist()))
    r = np.array(rows, dtype=np.float64).reshape(-1, 5)
    print(
        "| class | matched | moving | true speed | predicted speed | cosine | error m/s | static: predicted speed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for c in range(len(names)):
        m = r[:, 0] == c
        if not m.any():
            continue
        g, q = r[m, 1:3], r[m, 3:5]
        gs, qs = np.linalg.norm(g, axis=1), np.linalg.norm(q, axis=1)
        mv = gs > 1.0
        cos = (g * q).sum(1) / (gs * qs + 1e-6)

        def mean(x: np.ndarray) -> str:
            return f"{x.mean():.2f}" if len(x) else "-"

        print(
            f"| {names[c]} | {int(m.sum())} | {int(mv.sum())} | {mean(gs[mv])} | {mean(qs[mv])} | {mean(cos[mv])} "
            f"| {mean(np.linalg.norm(g - q, axis=1))} | {mean(qs[~mv])} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
