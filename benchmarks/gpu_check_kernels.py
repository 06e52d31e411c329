"""Part (a) of ``benchmarks/gpu_check.py``: each numba CUDA kernel against its numba CPU result on the same inputs.

Inputs are seeded and realistic (the scan of :func:`perception.datasets.synthetic.make_lidar_scan`, boxes in
clusters within 50 m, a ~30k-pillar nuScenes-size frame); integer outputs must be equal and floats within 1e-5.
Also the pieces every check shares: :class:`Check` rows, the :class:`Context`, :func:`timed` (warm median, with
``torch.cuda.synchronize()`` around GPU calls) and :func:`same` (the comparison). In numba's CUDA simulator the
``"cuda"`` backend runs on CPU tensors (``Context.simulator``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
DEMO_PILLAR = (0.8, 0.8, 8.0)
NUSC_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
NUSC_VOXEL = (0.075, 0.075, 0.2)


@dataclass(frozen=True)
class Sizes:
    """Input sizes of the kernel checks: points, IoU boxes per side, NMS boxes, boxes for points-in-boxes."""

    points: int
    iou_boxes: int
    nms_boxes: int
    pib_boxes: int
    repeats: int


FULL = Sizes(points=30_000, iou_boxes=1000, nms_boxes=4000, pib_boxes=300, repeats=5)
QUICK = Sizes(points=8000, iou_boxes=300, nms_boxes=800, pib_boxes=60, repeats=3)
SIMULATOR = Sizes(points=300, iou_boxes=30, nms_boxes=60, pib_boxes=10, repeats=1)


@dataclass
class Check:
    """One row: ``status`` PASS / FAIL / SKIP, ``detail`` what was compared (or the reason), ``times_ms``."""

    part: str
    name: str
    status: str = "SKIP"
    detail: str = ""
    times_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class Failed(Exception):
    """A comparison that did not hold (the message says what differs)."""


@dataclass
class Context:
    """What the checks share: the device, sizes, output folder, and objects built once (detectors, export)."""

    device: Any
    sizes: Sizes
    out: Path
    simulator: bool
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def on_gpu(self) -> bool:
        return not self.simulator


def timed(ctx: Context, fn: Callable[[], Any], *, gpu: bool) -> tuple[Any, float]:
    """``fn()``'s result and its median wall time in ms (warm: one untimed call first, except in the simulator)."""
    import torch

    sync = gpu and ctx.on_gpu
    out = fn() if ctx.on_gpu else None
    times = []
    for _ in range(ctx.sizes.repeats):
        if sync:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if sync:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return out, statistics.median(times)


def both(ctx: Context, fn: Callable[[str, Any], Any], times: dict[str, float]) -> tuple[Any, Any]:
    """``fn(backend, device)`` on the CPU backend and the CUDA one, results moved to the CPU; times into ``times``."""
    import torch

    cpu, times["cpu"] = timed(ctx, lambda: fn("cpu", torch.device("cpu")), gpu=False)
    gpu, t = timed(ctx, lambda: fn("cuda", ctx.device), gpu=True)
    times["cuda (simulator)" if ctx.simulator else "cuda"] = t
    return cpu, to_cpu(gpu)


def to_cpu(obj: Any) -> Any:
    """Tensors (in tuples, lists, dataclasses) moved to the CPU."""
    import dataclasses

    import torch

    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_cpu(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: to_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        )
    return obj


def same(name: str, a: Any, b: Any, atol: float = 0.0) -> float:
    """Raise :class:`Failed` unless tensors ``a`` (CPU backend) and ``b`` (CUDA) agree: equal (integers, bools,
    ``atol=0``) or within ``atol`` (floats; NaN where the other has NaN). Returns the max abs difference."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        raise Failed(f"{name}: cpu {tuple(a.shape)} {a.dtype}, cuda {tuple(b.shape)} {b.dtype}")
    if a.numel() == 0:
        return 0.0
    if not a.is_floating_point():
        bad = int((a != b).sum())
        if bad:
            raise Failed(f"{name}: {bad} of {a.numel()} entries differ")
        return 0.0
    if not torch.equal(a.isnan(), b.isnan()):
        raise Failed(f"{name}: NaN in different places")
    diff = float((a.nan_to_num(0) - b.nan_to_num(0)).abs().max())
    if diff > atol:
        raise Failed(f"{name}: max abs difference {diff:.3g} > {atol:g}")
    return diff


# ---- inputs -------------------------------------------------------------------------------------------------------


def nuscenes_frame(target: int = 30_000, seed: int = 0) -> Any:
    """float32 ``(N, 5)`` points with about ``target`` occupied 0.3 m pillars in +-54 m: a simulated 10-sweep scan
    plus 3 ground points in each of enough further random cells (density falling with range, as a LiDAR's)."""
    import numpy as np

    from perception.datasets.synthetic import make_lidar_scan

    pts = make_lidar_scan(num_sweeps=10, beams=32, seed=seed)
    cells = np.floor((pts[:, :2] + 54.0) / 0.3).astype(np.int64)
    ok = ((cells >= 0) & (cells < 360)).all(axis=1)
    taken = set((cells[ok, 1] * 360 + cells[ok, 0]).tolist())
    rng = np.random.default_rng(seed)
    scan_cells = len(taken)
    extra: list[int] = []
    while len(taken) < target:
        r, phi = rng.uniform(3.0, 54.0, 4096), rng.uniform(-math.pi, math.pi, 4096)
        xy = np.floor((np.stack([r * np.cos(phi), r * np.sin(phi)], 1) + 54.0) / 0.3).astype(np.int64)
        for key in (xy[:, 1] * 360 + xy[:, 0]).tolist():
            if key not in taken and 0 <= key < 360 * 360:
                taken.add(key)
                extra.append(key)
    extra = extra[: max(0, target - scan_cells)]
    keys = np.repeat(np.asarray(extra, dtype=np.int64), 3)
    ground = np.zeros((len(keys), 5), dtype=np.float32)
    ground[:, 0] = (keys % 360 + rng.uniform(0, 1, len(keys))) * 0.3 - 54.0
    ground[:, 1] = (keys // 360 + rng.uniform(0, 1, len(keys))) * 0.3 - 54.0
    ground[:, 2] = rng.uniform(-2.0, -1.5, len(keys))
    ground[:, 3] = rng.uniform(0, 60, len(keys))
    ground[:, 4] = rng.choice(np.arange(10) * 0.05, len(keys))
    return np.concatenate([pts, ground])


def scan_points(ctx: Context) -> Any:
    """float32 ``(N, 5)`` points of a simulated 32-beam keyframe (seed 0), ``N = sizes.points`` (random subset)."""
    if "points" not in ctx.cache:
        import numpy as np
        import torch

        from perception.datasets.synthetic import make_lidar_scan

        pts = make_lidar_scan(num_sweeps=2, beams=32, seed=0)
        pick = np.sort(np.random.default_rng(0).permutation(len(pts))[: ctx.sizes.points])
        ctx.cache["points"] = torch.from_numpy(np.ascontiguousarray(pts[pick]))
    return ctx.cache["points"]


def random_boxes(n: int, seed: int, *, around: Any = None) -> Any:
    """float32 ``(n, 7)`` boxes in clusters (so that many pairs overlap): cluster centres uniform within 50 m, or
    drawn from the rows of ``around`` (points, so that the boxes hold some); sizes 0.5-6 m, any yaw."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    k = max(1, n // 8)
    if around is None:
        centres = rng.uniform(-50.0, 50.0, (k, 2))
    else:
        centres = around[rng.integers(0, len(around), k), :2].numpy().astype(np.float64)
    boxes = np.zeros((n, 7), dtype=np.float32)
    boxes[:, :2] = centres[rng.integers(0, k, n)] + rng.normal(0, 1.5, (n, 2))
    boxes[:, 2] = rng.uniform(-1.5, 0.5, n)
    boxes[:, 3:6] = rng.uniform(0.5, 6.0, (n, 3))
    boxes[:, 6] = rng.uniform(-math.pi, math.pi, n)
    return torch.from_numpy(boxes)


def pillar_coords(
    ctx: Context, point_range: tuple[float, ...], voxel: tuple[float, ...], points: Any = None
) -> tuple[Any, Any]:
    """``(coords (M, 4) int32, grid shape)`` of the occupied voxels of ``points`` (default: the scan; CPU)."""
    from perception.ops import voxelize

    pts = scan_points(ctx) if points is None else points
    v = voxelize(pts, voxel, point_range, mode="dynamic", backend="cpu")
    return v.coords, v.grid_shape


# ---- (a) kernels ----------------------------------------------------------------------------------------------------


def check_voxelize_hard(ctx: Context, times: dict[str, float]) -> str:
    from perception.ops import voxelize_with_stats

    pts = scan_points(ctx)
    (a, sa), (b, sb) = both(
        ctx,
        lambda be, dev: voxelize_with_stats(pts.to(dev), NUSC_VOXEL, NUSC_RANGE, 10, 60_000, backend=be),
        times,
    )
    for name in ("coords", "counts", "features"):
        same(name, getattr(a, name), getattr(b, name))
    if sa != sb:
        raise Failed(f"stats: cpu {sa}, cuda {sb}")
    return f"{len(pts)} points -> {a.num_voxels} voxels of 0.075 m (max 10 points), exact"


def check_voxelize_dynamic(ctx: Context, times: dict[str, float]) -> str:
    from perception.ops import voxelize

    pts = scan_points(ctx)
    a, b = both(
        ctx, lambda be, dev: voxelize(pts.to(dev), DEMO_PILLAR, DEMO_RANGE, mode="dynamic", backend=be), times
    )
    for name in ("point_to_voxel", "coords", "counts"):
        same(name, getattr(a, name), getattr(b, name))
    return f"{len(pts)} points -> {a.coords.shape[0]} pillars of 0.8 m, exact"


def _check_sets(
    ctx: Context,
    times: dict[str, float],
    rng: tuple,
    voxel: tuple,
    window: int,
    size: int,
    points: Any = None,
) -> str:
    """Both window configurations' rotated sets of a stage with square ``window`` and ``size`` slots per set."""
    from perception.ops import stage_set_partitions

    coords, grid = pillar_coords(ctx, rng, voxel, points)
    shift = (0, window // 2, window // 2)

    def run(be: str, dev: Any) -> Any:
        return stage_set_partitions(
            coords.to(dev), grid, (1, window, window), (1, 1, 1), shift, size, backend=be
        )

    a, b = both(ctx, run, times)
    for c, (pa, pb) in enumerate(zip(a, b, strict=True)):
        for name in ("voxel_index", "mask", "set_window"):
            same(f"config {c} {name}", getattr(pa, name), getattr(pb, name))
        for name in ("window_id", "window_index", "coords_in_window", "voxels_per_window"):
            same(f"config {c} windows.{name}", getattr(pa.windows, name), getattr(pb.windows, name))
    return f"{coords.shape[0]} pillars, grid {grid[1]}x{grid[2]}, window {window}, set {size}: {a[0].num_sets} sets, exact"


def check_set_partition_demo(ctx: Context, times: dict[str, float]) -> str:
    return _check_sets(ctx, times, DEMO_RANGE, DEMO_PILLAR, 16, 36)


def check_set_partition_nuscenes(ctx: Context, times: dict[str, float]) -> str:
    import torch

    frame = None if ctx.simulator else torch.from_numpy(nuscenes_frame())  # ~30k pillars, as a nuScenes frame
    return _check_sets(ctx, times, NUSC_RANGE, (0.3, 0.3, 8.0), 30, 90, frame)


def check_pool_windows(ctx: Context, times: dict[str, float]) -> str:
    from perception.ops import pool_windows

    coords, grid = pillar_coords(ctx, DEMO_RANGE, (0.4, 0.4, 0.5))
    a, b = both(ctx, lambda be, dev: pool_windows(coords.to(dev), grid, (2, 2, 2), backend=be), times)
    for name in ("index", "mask", "pooled_coords", "pooled_index", "slot"):
        same(name, getattr(a, name), getattr(b, name))
    return f"{coords.shape[0]} voxels of grid {grid}, stride 2x2x2 -> {a.num_pooled} pooled, exact"


def check_scatter(ctx: Context, times: dict[str, float]) -> str:
    from perception.ops import scatter, voxelize

    pts = scan_points(ctx)
    v = voxelize(pts, DEMO_PILLAR, DEMO_RANGE, mode="dynamic", backend="cpu")
    m = int(v.coords.shape[0])
    diffs = []
    for reduce in ("sum", "mean", "max"):
        sub: dict[str, float] = {}

        def run(be: str, dev: Any, r: str = reduce) -> Any:
            return scatter(pts.to(dev), v.point_to_voxel.to(dev), m, r, be)  # type: ignore[arg-type]

        a, b = both(ctx, run, sub)
        diffs.append(f"{reduce} {same(reduce, a, b, atol=1e-5):.2g}")
        times.update({f"{reduce} {k}": t for k, t in sub.items()})
    return f"{len(pts)} x 5 features into {m} pillars; max abs diff: {', '.join(diffs)}"


def check_iou3d(ctx: Context, times: dict[str, float]) -> str:
    from perception.ops import boxes_iou_3d, boxes_iou_bev

    n = ctx.sizes.iou_boxes
    a_boxes, b_boxes = random_boxes(2 * n, 1).split(n)  # one set of clusters, half the boxes on each side
    out = []
    for name, fn in (("bev", boxes_iou_bev), ("3d", boxes_iou_3d)):
        sub: dict[str, float] = {}

        def run(be: str, dev: Any, f: Callable[..., Any] = fn) -> Any:
            return f(a_boxes.to(dev), b_boxes.to(dev), backend=be)

        a, b = both(ctx, run, sub)
        out.append(f"{name} {int((a > 0).sum())} overlapping, max diff {same(name, a, b, atol=1e-5):.2g}")
        times.update({f"{name} {k}": t for k, t in sub.items()})
    return f"{n} x {n} boxes within 50 m: " + "; ".join(out)


def check_nms(ctx: Context, times: dict[str, float]) -> str:
    import torch

    from perception.ops import circle_nms, nms_bev

    n = ctx.sizes.nms_boxes
    boxes = random_boxes(n, 3)
    scores = torch.rand(n, generator=torch.Generator().manual_seed(3))
    out = []
    for name, fn, arg in (("bev", nms_bev, 0.2), ("circle", circle_nms, 1.0)):
        sub: dict[str, float] = {}

        def run(be: str, dev: Any, f: Callable[..., Any] = fn, x: float = arg) -> Any:
            return f(boxes.to(dev), scores.to(dev), x, 1000, None, backend=be)

        a, b = both(ctx, run, sub)
        same(name, a, b)
        out.append(f"{name} kept {len(a)}")
        times.update({f"{name} {k}": t for k, t in sub.items()})
    return f"{n} boxes (pre_max 1000): " + ", ".join(out) + ", same indices"


def check_points_in_boxes(ctx: Context, times: dict[str, float]) -> str:
    from perception.ops import points_in_boxes

    pts = scan_points(ctx)
    boxes = random_boxes(ctx.sizes.pib_boxes, 4, around=pts)
    (ia, ca), (ib, cb) = both(
        ctx, lambda be, dev: points_in_boxes(pts.to(dev), boxes.to(dev), backend=be), times
    )
    same("point_box_index", ia, ib)
    same("points_per_box", ca, cb)
    return f"{len(pts)} points, {len(boxes)} boxes: {int((ia >= 0).sum())} inside, exact"


KERNELS: list[tuple[str, Callable[[Context, dict[str, float]], str]]] = [
    ("voxelize hard", check_voxelize_hard),
    ("voxelize dynamic", check_voxelize_dynamic),
    ("set_partition demo", check_set_partition_demo),
    ("set_partition nuScenes", check_set_partition_nuscenes),
    ("pool_windows", check_pool_windows),
    ("scatter", check_scatter),
    ("iou3d", check_iou3d),
    ("nms", check_nms),
    ("points_in_boxes", check_points_in_boxes),
]
