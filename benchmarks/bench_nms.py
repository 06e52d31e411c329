"""Benchmark: rotated NMS, circle NMS, IoU matrix and points-in-boxes -- numba CPU kernels vs the torch references.

Run: ``.venv/bin/python benchmarks/bench_nms.py`` (prints a markdown table). Both sides run in this process with 2
threads (torch and numba), interleaved; each row gives the median and [min, max] over the repeats. The first-call
JIT compile times are measured in a subprocess with an empty numba cache directory (a cold compile, what a user's
first run pays once; later runs load the ``cache=True`` kernels from disk).

Inputs: detections jittered around objects spread over a 100 m x 100 m scene (so NMS really suppresses), scored
uniformly at random; 300k points uniformly in the scene x [-2, 4] m.
"""

from __future__ import annotations

import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

THREADS = 2


def detections(n: int, objects: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` boxes ``(n, 7)`` jittered around ``objects`` objects, and uniform scores ``(n,)``."""
    g = torch.Generator().manual_seed(seed)
    base = torch.cat(
        [
            (torch.rand(objects, 2, generator=g) - 0.5) * 100,
            torch.rand(objects, 1, generator=g) - 0.5,
            torch.rand(objects, 3, generator=g) * torch.tensor([3.0, 1.0, 1.0])
            + torch.tensor([1.5, 1.0, 1.2]),
            torch.rand(objects, 1, generator=g) * 2 * math.pi,
        ],
        dim=1,
    )
    which = torch.randint(0, objects, (n,), generator=g)
    jitter = torch.randn(n, 7, generator=g) * torch.tensor([0.5, 0.5, 0.1, 0.2, 0.1, 0.1, 0.2])
    boxes = base[which] + jitter
    boxes[:, 3:6] = boxes[:, 3:6].clamp(min=0.2)
    return boxes, torch.rand(n, generator=g)


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Interleaved timings in ms (one warm-up call each)."""
    for fn in fns.values():
        fn()
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[name].append((time.perf_counter() - t0) * 1e3)
    return out


def fmt(ms: list[float]) -> str:
    return f"{statistics.median(ms):.2f} [{min(ms):.2f}, {max(ms):.2f}]"


COLD_SNIPPET = """
import time, torch
t = {}
from perception.ops.iou3d import boxes_iou_bev
from perception.ops.nms import nms_bev, circle_nms
from perception.ops.points_in_boxes import points_in_boxes
b = torch.tensor([[0, 0, 0, 4, 2, 1.5, 0.1], [1, 0, 0, 4, 2, 1.5, 0.2]])
s = torch.tensor([0.9, 0.8])
for name, fn in [("boxes_iou_bev/3d (iou_matrix)", lambda: boxes_iou_bev(b, b)),
                 ("nms_bev", lambda: nms_bev(b, s, 0.5)),
                 ("circle_nms", lambda: circle_nms(b, s, 1.0)),
                 ("points_in_boxes", lambda: points_in_boxes(b[:, :3].contiguous(), b))]:
    t0 = time.perf_counter(); fn(); t[name] = time.perf_counter() - t0
print(repr(t))
"""


def cold_compile_times() -> dict[str, float]:
    """First-call times (s) in a fresh interpreter with an empty numba cache."""
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, NUMBA_NUM_THREADS=str(THREADS))
        res = subprocess.run(
            [sys.executable, "-c", COLD_SNIPPET], env=env, capture_output=True, text=True, check=True
        )
    return eval(res.stdout.strip().splitlines()[-1])  # noqa: S307 -- our own subprocess' repr of a dict


def main() -> None:
    torch.set_num_threads(THREADS)
    import numba

    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    from perception.ops.iou3d import boxes_iou_3d, boxes_iou_bev
    from perception.ops.nms import circle_nms, nms_bev
    from perception.ops.points_in_boxes import points_in_boxes

    rows: list[tuple[str, str, str, str]] = []
    load_before = os.getloadavg()[0]

    def compare(label: str, ours: Callable[[], object], ref: Callable[[], object], repeats: int) -> None:
        t = timed({"ours": ours, "ref": ref}, repeats)
        speedup = statistics.median(t["ref"]) / statistics.median(t["ours"])
        rows.append((label, fmt(t["ours"]), fmt(t["ref"]), f"{speedup:.1f}x"))

    for n, thr in ((1000, 0.2), (4096, 0.2), (4096, 0.7)):
        boxes, scores = detections(n, objects=max(50, n // 20), seed=n)
        kept = nms_bev(boxes, scores, thr, 4096, 500, backend="cpu")
        same = torch.equal(kept, nms_bev(boxes, scores, thr, 4096, 500, backend="torch"))
        compare(
            f"nms_bev {n} boxes, IoU > {thr}, pre 4096 / post 500 (kept {len(kept)}, identical: {same})",
            lambda b=boxes, s=scores, t=thr: nms_bev(b, s, t, 4096, 500, backend="cpu"),
            lambda b=boxes, s=scores, t=thr: nms_bev(b, s, t, 4096, 500, backend="torch"),
            repeats=5,
        )
    boxes, scores = detections(4096, objects=200, seed=7)
    kept = circle_nms(boxes, scores, 1.0, post_max=500, backend="cpu")
    compare(
        f"circle_nms 4096 boxes, 1 m, post 500 (kept {len(kept)})",
        lambda: circle_nms(boxes, scores, 1.0, post_max=500, backend="cpu"),
        lambda: circle_nms(boxes, scores, 1.0, post_max=500, backend="torch"),
        repeats=5,
    )
    a, _ = detections(500, objects=100, seed=1)
    b, _ = detections(500, objects=100, seed=2)
    compare(
        "boxes_iou_bev 500 x 500",
        lambda: boxes_iou_bev(a, b, backend="cpu"),
        lambda: boxes_iou_bev(a, b, backend="torch"),
        repeats=5,
    )
    compare(
        "boxes_iou_3d 500 x 500",
        lambda: boxes_iou_3d(a, b, backend="cpu"),
        lambda: boxes_iou_3d(a, b, backend="torch"),
        repeats=5,
    )
    g = torch.Generator().manual_seed(3)
    points = torch.cat(
        [(torch.rand(300_000, 2, generator=g) - 0.5) * 100, torch.rand(300_000, 1, generator=g) * 6 - 2],
        dim=1,
    )
    boxes, _ = detections(100, objects=100, seed=4)
    inside = int((points_in_boxes(points, boxes)[0] >= 0).sum())
    compare(
        f"points_in_boxes 300k points x 100 boxes ({inside} inside)",
        lambda: points_in_boxes(points, boxes, backend="cpu"),
        lambda: points_in_boxes(points, boxes, backend="torch"),
        repeats=3,
    )

    print(
        f"threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}; "
        f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}, "
        f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')}; "
        f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other processes skew timings)"
    )
    print()
    print("| case | ours, numba CPU (ms) | torch reference (ms) | speed-up |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("| first call, cold numba cache | seconds |")
    print("|---|---|")
    for name, sec in cold_compile_times().items():
        print(f"| {name} | {sec:.2f} |")


if __name__ == "__main__":
    main()
