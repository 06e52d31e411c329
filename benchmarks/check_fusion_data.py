"""Does the camera have something to add? LiDAR points vs image height of the ground truth of a config's val split.

Run: ``.venv/bin/python benchmarks/check_fusion_data.py CONFIG [--set KEY=VALUE ...] [--limit N]``. The data
set is prepared as ``tools/train.py`` does it (a synthetic set is generated when missing) and loaded in ``val``
mode with the cameras on (``data.use_cameras`` is forced true; ``data.images`` gives the network image size,
else the files' resolution).

Per class and distance band (BEV distance of the box centre from the LiDAR origin) it prints a markdown table
with the number of objects, the median LiDAR points inside the box (every point the model is given: all
sweeps; ``--keyframe-only`` counts only ``time_lag == 0``) and the median projected 2D box height in pixels at
the network image size (the tallest over the valid cameras that see the box centre with all 8 corners in front
of the camera; the box's vertical extent clipped to the image). Objects seen by no camera have no height.
The last column is the share of objects with **<= 5 LiDAR points but >= 8 px tall** in some camera ("LiDAR sees
poorly, camera sees well").
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perception.config import add_config_args, load_config  # noqa: E402
from perception.structures import Sample  # noqa: E402

#: Distance bands (m), half-open.
BANDS = ((0.0, 20.0), (20.0, 30.0), (30.0, 40.0), (40.0, float("inf")))
FEW_POINTS, TALL_PX = 5, 8.0


def box_heights_px(sample: Sample) -> np.ndarray:
    """float ``(K,)``: the tallest projected height (px) of each GT box over the valid cameras, NaN if none."""
    k = len(sample.boxes)
    if sample.cameras is None or k == 0:
        return np.full(k, np.nan)
    rig = sample.cameras
    corners = sample.boxes.corners()  # (K, 8, 3)
    uv, depth, _ = rig.project(corners.reshape(-1, 3))
    uv, depth = uv.reshape(len(rig), k, 8, 2), depth.reshape(len(rig), k, 8)
    _, centre_depth, centre_visible = rig.project(sample.boxes.center.contiguous())
    h = rig.image_sizes[:, 0].float()[:, None]
    top = uv[..., 1].amin(dim=2).clamp(min=0).minimum(h)
    bottom = uv[..., 1].amax(dim=2).clamp(min=0).minimum(h)
    ok = centre_visible & (depth > 0.1).all(dim=2) & rig.valid[:, None]
    heights = torch.where(ok, bottom - top, torch.full_like(top, float("nan")))
    out = heights.nan_to_num(-1.0).amax(dim=0).numpy()
    return np.where(out < 0, np.nan, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_args(p)
    p.add_argument("--limit", type=int, default=0, help="at most this many val samples (0: all)")
    p.add_argument("--keyframe-only", action="store_true", help="count only keyframe points (time_lag == 0)")
    args = p.parse_args(argv)
    cfg = load_config(args.config, [*args.set, "data.use_cameras=true"])

    from perception.engine.data import build_dataset, prepare_data
    from perception.ops.points_in_boxes import points_in_boxes

    prepare_data(cfg)
    train = cfg.train
    dataset = build_dataset(cfg, (train.val_split if train else None) or "val", "val")
    n = len(dataset) if args.limit <= 0 else min(args.limit, len(dataset))  # type: ignore[arg-type]
    rows: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    size = None
    for i in range(n):
        s = dataset[i]
        pts = s.points
        if args.keyframe_only and "time_lag" in pts.channels:
            pts = pts.select(pts.channel("time_lag") == 0)
        _, counts = points_in_boxes(pts.xyz.contiguous(), s.boxes.tensor[:, :7].contiguous())
        heights = box_heights_px(s)
        dist = torch.linalg.norm(s.boxes.center[:, :2], dim=1).numpy()
        if s.images is not None:
            size = tuple(s.images.shape[-2:])
        for j in range(len(s.boxes)):
            band = next(b for b, (lo, hi) in enumerate(BANDS) if lo <= dist[j] < hi)
            rows[(s.class_names[int(s.labels[j])], band)].append((int(counts[j]), float(heights[j])))
    print(f"{args.config}: {n} val samples, images {size[0]}x{size[1]} px" if size else f"{args.config}: {n}")
    print()
    print(f"| class | distance (m) | objects | median LiDAR points | median height (px) | <= {FEW_POINTS} pts & "
          f">= {TALL_PX:g} px |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|")
    total, poor_total = 0, 0
    for name in cfg.data.class_names:
        for b, (lo, hi) in enumerate(BANDS):
            items = rows.get((name, b))
            if not items:
                continue
            pts_arr = np.array([c for c, _ in items])
            h_arr = np.array([h for _, h in items])
            seen = h_arr[np.isfinite(h_arr)]
            poor = int(((pts_arr <= FEW_POINTS) & np.nan_to_num(h_arr >= TALL_PX, nan=False)).sum())
            total, poor_total = total + len(items), poor_total + poor
            band = f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">= {lo:g}"
            med_h = f"{np.median(seen):.1f}" if len(seen) else "-"
            print(f"| {name} | {band} | {len(items)} | {np.median(pts_arr):.0f} | {med_h} | "
                  f"{100 * poor / len(items):.0f} % |")  # fmt: skip
    print(f"| **all** | | {total} | | | {100 * poor_total / max(total, 1):.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
