"""Voxelization by hashing: points -> hard voxels (:class:`Voxels`) or per-point voxel ids (:class:`DynamicVoxels`).

Semantics, identical for the three backends (``"torch"`` reference, numba ``"cpu"``, numba ``"cuda"``):

* Voxel index per axis: ``floor((p - lo) / size)`` evaluated in float32, one rounding per operation, exactly as
  spconv's ``PointToVoxel``; the grid has ``round((hi - lo) / size)`` cells per axis (float32, as spconv). A point
  is kept when ``0 <= index < grid`` on every axis, so points on the upper border ``p == hi`` are dropped (and so
  are points just below ``hi`` whose float32 quotient rounds up to the grid size, as in spconv).
* A point with any non-finite value (any column, not only xyz) is dropped and counted as non-finite; a finite
  point outside the range on any axis is dropped and counted as out of range.
* Order: voxels are numbered in order of their first point in the input (as spconv's CPU ``PointToVoxel``). In
  hard mode each voxel keeps its first ``max_points_per_voxel`` points in input order, and ``max_voxels`` keeps the
  first voxels in that order; points removed by either cap are counted (:class:`VoxelStats`).
* Memory grows with the number of points, never with the grid: the hash table has at most ``next_pow2(2N)``
  ``(key, id)`` rows (it grows with the number of voxels), plus a few ``O(N)`` per-point arrays.
* The CPU backend is serial numba (see :mod:`perception.ops.voxelize_cpu` for why); use DataLoader workers for
  more cores. The CUDA backend runs numba CUDA kernels and a few torch ops on the tensors' device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
import torch

from perception._validate import check_tensor
from perception.grid import VoxelGrid
from perception.structures import DynamicVoxels, Voxels

from ._backend import check_cuda_usable, pick_backend
from .voxelize_torch import decode_keys

Mode = Literal["hard", "dynamic"]
_INT64_MAX = 2**63 - 1
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class VoxelStats:
    """What happened to the input points of one :func:`voxelize` call (counts of points, all batches together).

    Attributes:
        num_points: input points ``N``.
        num_non_finite: dropped because a value is NaN or +-inf.
        num_out_of_range: dropped because outside the range on at least one axis (finite points only).
        num_over_max_voxels: dropped because their voxel came after the first ``max_voxels`` voxels.
        num_over_max_points: dropped because their voxel already had ``max_points_per_voxel`` earlier points.
    """

    num_points: int
    num_non_finite: int
    num_out_of_range: int
    num_over_max_voxels: int = 0
    num_over_max_points: int = 0

    @property
    def num_dropped(self) -> int:
        """All dropped points (the sum of the four reasons)."""
        return (
            self.num_non_finite + self.num_out_of_range + self.num_over_max_voxels + self.num_over_max_points
        )

    @property
    def num_kept(self) -> int:
        return self.num_points - self.num_dropped


def make_grid(
    voxel_size: Sequence[float] | VoxelGrid, point_range: Sequence[float] | None = None
) -> VoxelGrid:
    """The :class:`~perception.grid.VoxelGrid` of ``voxel_size`` ``(x, y, z)`` and ``point_range``
    ``(x0, y0, z0, x1, y1, z1)`` (metres), or ``voxel_size`` itself when it already is a grid.

    The shape rule (float32 quotient rounded half away from zero, as spconv) and every check live in
    :mod:`perception.grid`.

    Raises:
        ValueError: wrong length, non-finite or non-positive sizes, empty range, or a grid too large to pack.
    """
    if isinstance(voxel_size, VoxelGrid):
        if point_range is not None:
            raise ValueError("pass either a VoxelGrid or voxel_size and point_range, not both")
        return voxel_size
    if point_range is None:
        raise ValueError("point_range is required with a voxel_size (or pass a VoxelGrid)")
    return VoxelGrid(point_range, voxel_size)  # type: ignore[arg-type]


def _check_inputs(
    points: object, batch_index: object, max_points_per_voxel: object, max_voxels: object, mode: object
) -> tuple[torch.Tensor, torch.Tensor | None]:
    pts = check_tensor("points", points, ndim=2, dtype=torch.float32)
    if pts.shape[1] < 3:
        raise ValueError(f"points must have shape (N, C) with C >= 3 (x, y, z, ...), got {tuple(pts.shape)}")
    if mode not in ("hard", "dynamic"):
        raise ValueError(f"mode must be 'hard' or 'dynamic', got {mode!r}")
    for name, cap in (("max_points_per_voxel", max_points_per_voxel), ("max_voxels", max_voxels)):
        if cap is None:
            continue
        if mode == "dynamic":
            raise ValueError(f"{name} applies to mode='hard' only; dynamic voxelization keeps every point")
        if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1:
            raise ValueError(f"{name} must be a positive int or None, got {cap!r}")
    if batch_index is None:
        return pts.contiguous(), None
    b = check_tensor("batch_index", batch_index, shape=(pts.shape[0],), dtype=(torch.int32, torch.int64))
    if b.device != pts.device:
        raise ValueError(f"batch_index must be on the device of points ({pts.device}), got {b.device}")
    if b.numel() > 0 and int(b.min()) < 0:
        raise ValueError(f"batch_index must be >= 0, got minimum {int(b.min())}")
    return pts.contiguous(), b.to(torch.int64).contiguous()


def _assign(
    points: torch.Tensor, batch: torch.Tensor | None, grid: VoxelGrid, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
    """torch / cuda backends: ``(point_to_voxel, rank, voxel_keys, counts, num_non_finite, num_out_of_range)``."""
    spec = (grid.lo, grid.size, grid.shape_xyz)
    if backend == "cuda":
        check_cuda_usable(points)
        from . import voxelize_cuda

        return voxelize_cuda.assign(points, batch, spec)
    from . import voxelize_torch

    return voxelize_torch.assign(points, batch, spec)


def _gather(
    points: torch.Tensor, p2v: torch.Tensor, rank: torch.Tensor, m: int, p: int, backend: str
) -> torch.Tensor:
    if backend == "cuda":
        from . import voxelize_cuda

        return voxelize_cuda.gather_features(points, p2v, rank, m, p)
    from .voxelize_torch import gather_features

    return gather_features(points, p2v, rank, m, p)


def _run_cpu(
    points: torch.Tensor,
    batch: torch.Tensor | None,
    grid: VoxelGrid,
    mode: Mode,
    max_points: int | None,
    max_voxels: int | None,
) -> tuple[Voxels | DynamicVoxels, VoxelStats]:
    from .voxelize_cpu import voxelize_arrays

    features, coords, counts, p2v, (n_nf, n_out, over_v, over_p) = voxelize_arrays(
        points.detach().numpy(),
        batch.numpy() if batch is not None else None,
        grid.lo,
        grid.size,
        grid.shape_xyz,
        mode == "hard",
        max_points,
        max_voxels,
    )
    stats = VoxelStats(points.shape[0], n_nf, n_out, num_over_max_voxels=over_v, num_over_max_points=over_p)
    if features is None:
        assert p2v is not None
        return DynamicVoxels(p2v, coords, counts, grid.shape), stats
    return Voxels(features, coords, counts, grid.shape), stats


def voxelize_with_stats(
    points: torch.Tensor,
    voxel_size: Sequence[float] | VoxelGrid,
    point_range: Sequence[float] | None = None,
    max_points_per_voxel: int | None = None,
    max_voxels: int | None = None,
    batch_index: torch.Tensor | None = None,
    mode: Mode = "hard",
    backend: str | None = None,
) -> tuple[Voxels | DynamicVoxels, VoxelStats]:
    """:func:`voxelize` that also returns the :class:`VoxelStats` of dropped points."""
    pts, batch = _check_inputs(points, batch_index, max_points_per_voxel, max_voxels, mode)
    grid = make_grid(voxel_size, point_range)
    if batch is not None and batch.numel() > 0:
        nz, ny, nx = grid.shape
        if int(batch.max()) > min(_INT32_MAX, _INT64_MAX // (nz * ny * nx) - 1):
            raise ValueError(
                f"batch_index up to {int(batch.max())} is too large to pack with grid {grid.shape}"
            )
    be = pick_backend(pts, backend)
    n = pts.shape[0]
    with torch.no_grad():
        if be == "cpu":
            return _run_cpu(pts, batch, grid, mode, max_points_per_voxel, max_voxels)
        p2v, rank, vkeys, counts, n_nf, n_out = _assign(pts, batch, grid, be)
        if mode == "dynamic":
            coords = decode_keys(vkeys, grid.shape_xyz)
            stats = VoxelStats(num_points=n, num_non_finite=n_nf, num_out_of_range=n_out)
            return DynamicVoxels(p2v, coords, counts.to(torch.int32), grid.shape), stats
        m_all = vkeys.shape[0]
        m = m_all if max_voxels is None else min(m_all, int(max_voxels))
        kept_counts = counts[:m]
        if max_points_per_voxel is None:
            p = max(1, int(kept_counts.max()) if m > 0 else 1)
        else:
            p = int(max_points_per_voxel)
        over_voxels = int(counts[m:].sum())
        over_points = int((kept_counts - p).clamp(min=0).sum())
        features = _gather(pts, p2v, rank, m, p, be)
        coords = decode_keys(vkeys[:m].contiguous(), grid.shape_xyz)
        voxels = Voxels(features, coords, kept_counts.clamp(max=p).to(torch.int32), grid.shape)
        stats = VoxelStats(n, n_nf, n_out, num_over_max_voxels=over_voxels, num_over_max_points=over_points)
        return voxels, stats


@overload
def voxelize(
    points: torch.Tensor,
    voxel_size: Sequence[float] | VoxelGrid,
    point_range: Sequence[float] | None = None,
    max_points_per_voxel: int | None = ...,
    max_voxels: int | None = ...,
    batch_index: torch.Tensor | None = ...,
    mode: Literal["hard"] = ...,
    backend: str | None = ...,
) -> Voxels: ...


@overload
def voxelize(
    points: torch.Tensor,
    voxel_size: Sequence[float] | VoxelGrid,
    point_range: Sequence[float] | None = None,
    max_points_per_voxel: int | None = ...,
    max_voxels: int | None = ...,
    batch_index: torch.Tensor | None = ...,
    *,
    mode: Literal["dynamic"],
    backend: str | None = ...,
) -> DynamicVoxels: ...


def voxelize(
    points: torch.Tensor,
    voxel_size: Sequence[float] | VoxelGrid,
    point_range: Sequence[float] | None = None,
    max_points_per_voxel: int | None = None,
    max_voxels: int | None = None,
    batch_index: torch.Tensor | None = None,
    mode: Mode = "hard",
    backend: str | None = None,
) -> Voxels | DynamicVoxels:
    """Group points into voxels with a hash table (semantics and order: see the module docstring).

    Args:
        points: float32 ``(N, C)``, ``C >= 3``, columns ``[x, y, z, ...]`` in metres (LiDAR frame).
        voxel_size: ``(x, y, z)`` voxel size in metres, positive; or a :class:`~perception.grid.VoxelGrid`
            (then ``point_range`` is ``None``).
        point_range: ``(x0, y0, z0, x1, y1, z1)`` in metres; grid ``(nz, ny, nx)`` from :func:`make_grid`.
        max_points_per_voxel: hard mode: ``P``, the points kept per voxel (first ones in input order);
            ``None`` keeps all (``P`` = the largest count, at least 1; mind that ``M * P * C`` can be large).
        max_voxels: hard mode: keep the first ``max_voxels`` voxels (first-occurrence order); ``None`` keeps all.
        batch_index: int32/int64 ``(N,)`` sample index per point (``>= 0``), or ``None`` for one sample (0).
        mode: ``"hard"`` -> :class:`Voxels`; ``"dynamic"`` -> :class:`DynamicVoxels` (no caps allowed).
        backend: ``None`` (by device), ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        :class:`Voxels` with features ``(M, P, C)`` float32 (zero padded), coords int32 ``(M, 4)``
        ``[b, z, y, x]``, counts int32 ``(M,)``; or :class:`DynamicVoxels` with ``point_to_voxel`` int64 ``(N,)``.
        Use :func:`voxelize_with_stats` for the numbers of dropped points.

    Raises:
        TypeError / ValueError: wrong dtype / shape, bad sizes, ranges, caps, batch indices or backend.
    """
    return voxelize_with_stats(
        points, voxel_size, point_range, max_points_per_voxel, max_voxels, batch_index, mode, backend
    )[0]
