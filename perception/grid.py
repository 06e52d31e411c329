"""The voxel grid: one value object for the point-cloud range, the voxel size and the grid shape.

This module is the one place where the grid's rules live; everything else is handed a :class:`VoxelGrid`
(built once from the config's ``data`` section, :attr:`perception.config_schema.DataConfig.grid`) instead of
recomputing a shape or re-checking a range:

* **Validation**: ``point_cloud_range`` is 6 finite numbers with min < max on every axis, ``voxel_size`` 3 finite
  numbers > 0 (also as float32: the kernels compute in float32).
* **Shape rule**: ``n = floor(float32(float32(hi) - float32(lo)) / float32(size) + 0.5)`` per axis, i.e. the
  float32 quotient rounded half away from zero, as spconv's ``PointToVoxel`` (and our voxelizer) count cells.
* **Whole voxels** (:meth:`VoxelGrid.check_whole_voxels`, required by experiment configs): every extent is
  ``n * size`` within :data:`GRID_TOLERANCE` metres.
* **Range membership** (:meth:`VoxelGrid.contains`): a point is inside when its voxel index
  ``floor((p - lo) / size)`` (float32, one rounding per operation) is in ``[0, n)`` on every axis -- exactly the
  voxelizer's rule, so a point filtered as "in range" always lands in a voxel and vice versa. Non-finite points
  are outside.

numpy only (no torch import); :meth:`~VoxelGrid.contains` accepts numpy arrays and torch tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["GRID_TOLERANCE", "VoxelGrid"]

GRID_TOLERANCE = 1e-4
"""Metres: how far a range extent may be from a whole number of voxels (:meth:`VoxelGrid.check_whole_voxels`)."""

_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


def _numbers(name: str, value: object, n: int) -> tuple[float, ...]:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().tolist()  # type: ignore[attr-defined]
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)) or len(value) != n:
        raise ValueError(f"{name} must be a sequence of {n} numbers, got {value!r}")
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must contain numbers, got {value!r}") from e
    if not all(math.isfinite(v) and math.isfinite(float(np.float32(v))) for v in out):
        raise ValueError(f"{name} must be finite (also as float32), got {value!r}")
    return out


def _f32(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(float(np.float32(v)) for v in values)


@dataclass(frozen=True)
class VoxelGrid:
    """A validated voxel grid.

    Args:
        point_cloud_range: metres, LiDAR frame, ``(x_min, y_min, z_min, x_max, y_max, z_max)``.
        voxel_size: metres ``(vx, vy, vz)``.

    Attributes:
        shape: ``(nz, ny, nx)`` cells (DESIGN order ``[z, y, x]``), by the module's shape rule.

    Raises:
        ValueError: wrong lengths, non-finite values, non-positive sizes, an empty range, a range smaller than
            half a voxel, or a grid too large to index with packed int64 keys.
    """

    point_cloud_range: tuple[float, float, float, float, float, float]
    voxel_size: tuple[float, float, float]
    shape: tuple[int, int, int] = field(init=False)

    def __post_init__(self) -> None:
        rng = _numbers("point_cloud_range", self.point_cloud_range, 6)
        size = _numbers("voxel_size", self.voxel_size, 3)
        if not all(s > 0 and np.float32(s) > 0 for s in size):
            raise ValueError(f"voxel_size must be positive, got {size}")
        for axis, name in enumerate("xyz"):
            if not rng[axis] < rng[axis + 3]:
                raise ValueError(
                    f"point_cloud_range: {name}_min ({rng[axis]}) must be < {name}_max ({rng[axis + 3]})"
                )
        lo, hi, sz = (np.asarray(v, dtype=np.float32) for v in (rng[:3], rng[3:], size))
        cells = [int(math.floor(float(np.float32(hi[a] - lo[a]) / sz[a]) + 0.5)) for a in range(3)]
        if min(cells) < 1:
            raise ValueError(f"point_cloud_range {rng} is smaller than half a voxel {size} on some axis")
        if max(cells) > _INT32_MAX or cells[0] * cells[1] * cells[2] > _INT64_MAX:
            raise ValueError(f"grid {cells[::-1]} (z, y, x) is too large to index with packed int64 keys")
        object.__setattr__(self, "point_cloud_range", rng)
        object.__setattr__(self, "voxel_size", size)
        object.__setattr__(self, "shape", (cells[2], cells[1], cells[0]))

    # ---------------------------------------------------------------------------------------------------------
    # derived values (all from the fields above, by one rule each)

    @property
    def lo(self) -> tuple[float, float, float]:
        """Range minimum ``(x, y, z)`` in metres as the float32 values the kernels use."""
        return _f32(self.point_cloud_range[:3])  # type: ignore[return-value]

    @property
    def hi(self) -> tuple[float, float, float]:
        """Range maximum ``(x, y, z)`` in metres (float32 values)."""
        return _f32(self.point_cloud_range[3:])  # type: ignore[return-value]

    @property
    def size(self) -> tuple[float, float, float]:
        """Voxel size ``(x, y, z)`` in metres as float32 values."""
        return _f32(self.voxel_size)  # type: ignore[return-value]

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        """``(nx, ny, nz)``."""
        return (self.shape[2], self.shape[1], self.shape[0])

    @property
    def is_pillar(self) -> bool:
        """One cell along z."""
        return self.shape[0] == 1

    def bev_size(self, stride: int = 1) -> tuple[int, int]:
        """``(H, W)`` of a BEV map of x/y ``stride`` over the grid: ``ceil(ny / stride), ceil(nx / stride)``."""
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ValueError(f"stride must be an int >= 1, got {stride!r}")
        return (-(-self.shape[1] // stride), -(-self.shape[2] // stride))

    def cell_size(self, stride: int = 1) -> tuple[float, float]:
        """``(x, y)`` metres of one cell of a BEV map of x/y ``stride``."""
        return (self.voxel_size[0] * stride, self.voxel_size[1] * stride)

    # ---------------------------------------------------------------------------------------------------------
    # checks

    def check_whole_voxels(self, tolerance: float = GRID_TOLERANCE) -> None:
        """Raise ``ValueError`` unless every extent is a whole number of voxels (within ``tolerance`` metres)."""
        for axis, name in enumerate("xyz"):
            a, b, v = self.point_cloud_range[axis], self.point_cloud_range[axis + 3], self.voxel_size[axis]
            n = self.shape_xyz[axis]
            if abs((b - a) - n * v) > tolerance:
                raise ValueError(
                    f"point_cloud_range {name} extent {b - a:g} m is not an integer multiple of "
                    f"voxel_size {v:g} m (within {tolerance:g} m): {(b - a) / v:g} voxels"
                )

    def contains(self, xyz: Any, *, use_z: bool = True) -> Any:
        """bool mask ``(N,)``: which of the ``(N, >=3)`` points (x, y, z metres) lie inside the grid.

        Accepts a numpy array (returns a numpy mask) or a torch tensor (returns a tensor on its device). The rule
        is the voxelizer's (module docstring): float32 index ``floor((p - lo) / size)`` in ``[0, n)``; with
        ``use_z=False`` only x and y are checked (``(N, >=2)`` input), as for box centres and pillars.
        """
        d = 3 if use_z else 2
        lo, size, n = self.lo[:d], self.size[:d], self.shape_xyz[:d]
        if hasattr(xyz, "detach"):  # torch, without importing it here
            if xyz.ndim != 2 or xyz.shape[1] < d:
                raise ValueError(f"points must have shape (N, >={d}), got {tuple(xyz.shape)}")
            p = xyz[:, :d].float()
            idx = ((p - p.new_tensor(lo)) / p.new_tensor(size)).floor()
            return ((idx >= 0) & (idx < p.new_tensor(n))).all(dim=1)
        p = np.asarray(xyz)
        if p.ndim != 2 or p.shape[1] < d:
            raise ValueError(f"points must have shape (N, >={d}), got {p.shape}")
        p32 = p[:, :d].astype(np.float32)
        with np.errstate(invalid="ignore"):
            idx = np.floor((p32 - np.asarray(lo, dtype=np.float32)) / np.asarray(size, dtype=np.float32))
            return ((idx >= 0) & (idx < np.asarray(n))).all(axis=1)

    def __repr__(self) -> str:
        return f"VoxelGrid(point_cloud_range={self.point_cloud_range}, voxel_size={self.voxel_size}, shape={self.shape})"
