"""Plain-torch reference for :func:`perception.ops.voxelize` (any device; sorting instead of hashing).

Same semantics as the numba kernels, written for obviousness: the voxel index per axis is
``floor((p - lo) / size)`` in float32 (as spconv), kept when ``0 <= index < grid`` on every axis; points with any
non-finite value are dropped first. Voxels are numbered in order of their first point in the input; each point's
rank is its position among its voxel's points in input order.
"""

from __future__ import annotations

import torch

KEY_OUT_OF_RANGE = -1
KEY_NON_FINITE = -2


Grid = tuple[tuple[float, float, float], tuple[float, float, float], tuple[int, int, int]]
"""``(lo_xyz, size_xyz, (nx, ny, nz))``: range minimum and voxel size (float32 values) and grid size."""

AssignResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int, int]
"""``(point_to_voxel, rank, voxel_keys, counts, num_non_finite, num_out_of_range)``, see :func:`assign`."""


def point_keys(points: torch.Tensor, batch: torch.Tensor | None, spec: Grid) -> torch.Tensor:
    """int64 ``(N,)`` packed voxel key ``((b * nz + z) * ny + y) * nx + x`` per point, or -1 / -2 when dropped.

    Args:
        points: float32 ``(N, C)``; batch: int64 ``(N,)`` or None (all batch 0); spec: the grid.
    """
    dev = points.device
    lo = torch.tensor(spec[0], dtype=torch.float32, device=dev)
    size = torch.tensor(spec[1], dtype=torch.float32, device=dev)
    gridf = torch.tensor(spec[2], dtype=torch.float32, device=dev)
    q = (points[:, :3] - lo) / size  # float32, one rounding per operation as in spconv
    finite = torch.isfinite(points).all(dim=1)
    inside = ((q >= 0) & (q < gridf)).all(dim=1) & finite
    idx = torch.where(inside[:, None], q, torch.zeros_like(q)).floor().to(torch.int64)
    nx, ny, nz = spec[2]
    b = batch if batch is not None else torch.zeros(points.shape[0], dtype=torch.int64, device=dev)
    keys = ((b * nz + idx[:, 2]) * ny + idx[:, 1]) * nx + idx[:, 0]
    keys = torch.where(inside, keys, torch.full_like(keys, KEY_OUT_OF_RANGE))
    return torch.where(finite, keys, torch.full_like(keys, KEY_NON_FINITE))


def assign(points: torch.Tensor, batch: torch.Tensor | None, spec: Grid) -> AssignResult:
    """Number the voxels in order of their first point and rank each voxel's points in input order.

    Returns:
        point_to_voxel: int64 ``(N,)`` voxel id or -1; rank: int64 ``(N,)`` position of the point among its
        voxel's points in input order (-1 when dropped); voxel_keys: int64 ``(M,)``; counts: int64 ``(M,)``;
        the numbers of non-finite and of out-of-range points.
    """
    keys = point_keys(points, batch, spec)
    n = keys.shape[0]
    dev = keys.device
    valid = keys >= 0
    point_ids = torch.nonzero(valid).flatten()
    uniq, inverse = torch.unique(keys[point_ids], return_inverse=True)
    m = uniq.shape[0]
    first = torch.full((m,), n, dtype=torch.int64, device=dev)
    first.scatter_reduce_(0, inverse, point_ids, reduce="amin")
    by_first = torch.argsort(first)  # sorted-unique position of the voxel with the k-th earliest first point
    new_id = torch.empty_like(by_first)
    new_id[by_first] = torch.arange(m, device=dev)
    vid = new_id[inverse]
    counts = torch.bincount(vid, minlength=m)
    # rank: position in a stable sort by voxel id minus the voxel's start offset
    order = torch.argsort(vid, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    rank_valid = torch.empty_like(vid)
    rank_valid[order] = torch.arange(vid.shape[0], device=dev) - starts[vid[order]]
    point_to_voxel = torch.full((n,), -1, dtype=torch.int64, device=dev)
    rank = torch.full((n,), -1, dtype=torch.int64, device=dev)
    point_to_voxel[point_ids] = vid
    rank[point_ids] = rank_valid
    return (
        point_to_voxel,
        rank,
        uniq[by_first],
        counts,
        int((keys == KEY_NON_FINITE).sum()),
        int((keys == KEY_OUT_OF_RANGE).sum()),
    )


def gather_features(
    points: torch.Tensor, point_to_voxel: torch.Tensor, rank: torch.Tensor, num_voxels: int, max_points: int
) -> torch.Tensor:
    """float32 ``(num_voxels, max_points, C)``: point ``i`` at ``[point_to_voxel[i], rank[i]]``, zeros elsewhere."""
    out = points.new_zeros((num_voxels, max_points, points.shape[1]))
    keep = (point_to_voxel >= 0) & (point_to_voxel < num_voxels) & (rank < max_points)
    out[point_to_voxel[keep], rank[keep]] = points[keep]
    return out


def decode_keys(voxel_keys: torch.Tensor, grid_xyz: tuple[int, int, int]) -> torch.Tensor:
    """int32 ``(M, 4)`` ``[b, z, y, x]`` from int64 keys ``(M,)``; ``grid_xyz`` is ``(nx, ny, nz)``."""
    nx, ny, nz = grid_xyz
    x = voxel_keys % nx
    rest = voxel_keys // nx
    y = rest % ny
    rest = rest // ny
    z = rest % nz
    b = rest // nz
    return torch.stack([b, z, y, x], dim=1).to(torch.int32)
