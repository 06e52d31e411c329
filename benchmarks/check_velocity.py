#!/usr/bin/env python
"""Velocity per class, where the devkit's mAVE comes from: a checkpoint's predicted vs true velocity at matched
val objects.

    python benchmarks/check_velocity.py --ckpt checkpoints/demo_detector.pth \\
        [--config checkpoints/demo_detector.yaml] [--set data.root=... synthetic.seed=1] [--score 0.3] [--every 4]

Runs the model (float32, eval) on every ``--every``-th sample of the config's ``--split`` (default ``val``); a
ground-truth box is matched to the nearest detection of its class within 1 m (centre distance, score above
``--score``). Per class it prints the matched count, the moving ones (true speed > 1 m/s), their mean true and
predicted speed, the mean cosine between predicted and true velocity, the mean velocity error of all matches (m/s)
and the mean predicted speed of the non-moving ones. A diagnosis, not the official metric (``tools/test.py`` scores
that).

With ``--units`` (a CenterPoint head) it also prints, per class, how many hidden units of each regression branch of
the class's task are active (above 0) at the cells of its ground-truth centres, over all boxes of the samples run
(matched or not): a ReLU branch with 0 there outputs its bias at those objects and gets no gradient from them,
which is what kept the bus / trailer velocity at 0 m/s (``model.head.centerpoint.branch_negative_slope``).
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
    p.add_argument("--split", default="val", help="the info split to run on (train: without augmentation)")
    p.add_argument(
        "--units", action="store_true", help="also the active hidden units of the regression branches"
    )
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
    ds = build_dataset(det.config, args.split, "val")
    names = det.config.data.class_names
    rows: list[tuple[float, ...]] = []
    model = det.model.eval()
    head = model.head
    shared: list[torch.Tensor] = []  # the head's shared features of the last sample (B = 1, C, H, W)
    units: dict[tuple[int, str], list[int]] = {}  # (class, branch) -> active hidden units at each centre
    if args.units:

        def keep(_module: object, _inputs: object, output: torch.Tensor) -> None:
            shared[:] = [output]

        head.shared_conv.register_forward_hook(keep)
    for i in range(0, len(ds), max(1, args.every)):  # type: ignore[arg-type]
        sample = ds[i]
        with torch.no_grad():
            (out,) = model.predict(Batch.collate([sample]))
            if args.units:
                _count_units(head, shared[0], sample, units)
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
    if args.units:
        print(
            f"\n| class | {' | '.join(BRANCHES)} |  (mean active hidden units at the centres, of the width)"
        )
        print("|---|" + "---:|" * len(BRANCHES))
        for c in range(len(names)):
            if (c, BRANCHES[0]) in units:
                cells = " | ".join(f"{np.mean(units.get((c, b), [0])):.1f}" for b in BRANCHES)
                print(f"| {names[c]} | {cells} |")
    return 0


BRANCHES = ("offset", "height", "log_dims", "rot", "velocity")


def _count_units(head, x, sample, units) -> None:  # type: ignore[no-untyped-def]
    """Add, per ground-truth box of ``sample`` inside the map, the active hidden units of each regression branch
    of its task at its centre cell to ``units[(class, branch)]`` (``x``: the head's shared features)."""
    import torch

    task_of = {int(c): t for t, classes in enumerate(head.task_classes) for c in classes}
    h, w = x.shape[-2:]
    cells = head.coder.to_cell_coords(sample.boxes.tensor[:, :2]).floor().long()  # (K, 2) [u, v]
    hidden: dict[tuple[int, str], torch.Tensor] = {}
    for k, label in enumerate(sample.labels.tolist()):
        u, v = cells[k].tolist()
        if not (0 <= u < w and 0 <= v < h):
            continue
        t = task_of[label]
        for b in BRANCHES:
            branch = getattr(head.task_heads[t], b)
            if branch is None and b == "velocity":
                branch = head.shared_velocity
            if branch is None:
                continue
            if (t, b) not in hidden:
                hidden[(t, b)] = branch.layers[:-1](x)[0]  # (C, H, W) after the last hidden activation
            units.setdefault((label, b), []).append(int((hidden[(t, b)][:, v, u] > 0).sum()))


if __name__ == "__main__":
    raise SystemExit(main())
