"""Box <-> regression-target coding on a BEV feature map, shared by the CenterPoint and TransFusion heads.

A BEV feature map of total stride ``s`` over a voxel grid of voxel size ``(vx, vy, vz)`` starting at
``point_cloud_range[:3]`` has cells of ``s * vx`` by ``s * vy`` metres. The *cell coordinate* of a point is the
continuous position in cell units, ``u = (x - x_min) / (s * vx)`` (column, x) and ``v = (y - y_min) / (s * vy)``
(row, y); cell ``(col, row)`` covers ``[col, col + 1) x [row, row + 1)``, and its flat index in an ``(H, W)`` map is
``row * W + col``.

A box is coded relative to a *reference position* in cell units (``ref``; CenterPoint: the integer cell holding
the centre, ``floor(u, v)``; TransFusion: the query's position) as the row::

    [u - ref_u, v - ref_v, z, log(dx), log(dy), log(dz), sin(yaw), cos(yaw)(, vx, vy)]

(``CODE_NAMES``; ``z`` is the box-centre height in metres, sizes in metres, velocities in m/s). 7-column boxes give
8-column codes and 9-column boxes 10-column codes; :meth:`CenterBoxCoder.decode` inverts the mapping.

The coder holds no grid rules of its own: range, voxel size, the map size ``(H, W)`` and the cell size all come
from the one :class:`~perception.grid.VoxelGrid` (``grid.bev_size(stride)``, ``grid.cell_size(stride)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from perception._validate import check_tensor
from perception.grid import VoxelGrid

from .config_common import CODE_NAMES, code_size

__all__ = ["CODE_NAMES", "CenterBoxCoder", "EncodedBoxes"]

MIN_SIZE = 1e-3
"""Box sizes are clamped to at least this many metres before the log, so degenerate boxes code to finite values."""

MAX_LOG_SIZE = 10.0
"""Decoded log sizes are clamped to ``[-MAX_LOG_SIZE, MAX_LOG_SIZE]`` (sizes up to ~22 km) so that an untrained
head never decodes an infinite box."""


@dataclass
class EncodedBoxes:
    """Regression targets of ``N`` boxes.

    Attributes:
        cells: int64 ``(N, 2)`` ``[col, row]``: the feature-map cell holding each box centre (``floor`` of the cell
            coordinate; may lie outside the map, see ``inside``).
        codes: float32 ``(N, 8|10)`` in ``CODE_NAMES`` order, relative to the reference positions.
        inside: bool ``(N,)``: the centre cell lies inside the ``(H, W)`` feature map.
    """

    cells: torch.Tensor
    codes: torch.Tensor
    inside: torch.Tensor


class CenterBoxCoder:
    """Codes boxes relative to positions on a BEV feature map (see the module docstring).

    Args:
        grid: the voxel grid (:class:`~perception.grid.VoxelGrid`: range, voxel size and shape, validated there).
        feature_stride: total x/y stride of the feature map w.r.t. the voxel grid (e.g. 8 for CenterPoint's spconv
            backbone, 1 or 2 for DSVT pillars).

    Attributes:
        feature_map_size: ``(H, W)`` of the feature map, ``grid.bev_size(feature_stride)``: ``H = ceil(ny /
            stride)`` rows by ``W = ceil(nx / stride)`` columns (a strided convolution with padding rounds up).
        cell_size: ``(x, y)`` metres of one feature-map cell, ``grid.cell_size(feature_stride)``.
    """

    def __init__(self, grid: VoxelGrid, feature_stride: int) -> None:
        if not isinstance(grid, VoxelGrid):
            raise TypeError(f"grid must be a perception.grid.VoxelGrid, got {type(grid).__name__}")
        self.grid = grid
        self.feature_map_size: tuple[int, int] = grid.bev_size(feature_stride)
        self.feature_stride = feature_stride
        self.cell_size: tuple[float, float] = grid.cell_size(feature_stride)
        self._origin = grid.point_cloud_range[:2]

    def __repr__(self) -> str:
        return (
            f"CenterBoxCoder({self.grid!r}, feature_stride={self.feature_stride}, "
            f"feature_map_size={self.feature_map_size})"
        )

    @staticmethod
    def code_size(with_velocity: bool) -> int:
        """10 with velocity, 8 without (:func:`~.config_common.code_size`)."""
        return code_size(with_velocity)

    def to_cell_coords(self, xy: torch.Tensor) -> torch.Tensor:
        """Metric BEV positions ``(..., 2)`` ``[x, y]`` -> continuous cell coordinates ``(..., 2)`` ``[u, v]``."""
        origin = xy.new_tensor(self._origin)
        return (xy - origin) / xy.new_tensor(self.cell_size)

    def to_metric(self, uv: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_cell_coords`: ``(..., 2)`` ``[u, v]`` -> ``[x, y]`` metres."""
        origin = uv.new_tensor(self._origin)
        return uv * uv.new_tensor(self.cell_size) + origin

    def cell_centers(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """float32 ``(H * W, 2)`` ``[u, v]`` of every cell centre (``col + 0.5, row + 0.5``), row-major (flat index
        ``row * W + col``) -- the query positions TransFusion uses."""
        h, w = self.feature_map_size
        rows, cols = torch.meshgrid(
            torch.arange(h, dtype=torch.float32, device=device),
            torch.arange(w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        return torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1) + 0.5

    def encode(self, boxes: torch.Tensor, reference: torch.Tensor | None = None) -> EncodedBoxes:
        """Code boxes.

        Args:
            boxes: float32 ``(N, 7|9)`` ``[x, y, z, dx, dy, dz, yaw(, vx, vy)]`` in the LiDAR frame; finite, sizes
                ``>= 0`` (sizes below ``MIN_SIZE`` are coded as ``MIN_SIZE``).
            reference: optional float ``(N, 2)`` ``[u, v]`` positions in cell units that the offsets are taken
                from; default: the centre cell ``floor(u, v)`` (CenterPoint), giving offsets in ``[0, 1)``.

        Returns:
            :class:`EncodedBoxes` with ``codes`` float32 ``(N, 8|10)``.

        Raises:
            TypeError / ValueError: wrong shape or dtype, non-finite values, negative sizes, bad ``reference``.
        """
        b = check_tensor("boxes", boxes, ndim=2, dtype=(torch.float32, torch.float64))
        if b.shape[1] not in (7, 9):
            raise ValueError(
                f"boxes must be (N, 7) or (N, 9) [x, y, z, dx, dy, dz, yaw(, vx, vy)], got {tuple(b.shape)}"
            )
        if b.shape[0] and not bool(torch.isfinite(b).all()):
            raise ValueError("boxes contains NaN or inf")
        if b.shape[0] and bool((b[:, 3:6] < 0).any()):
            raise ValueError("boxes has a negative size (dx, dy, dz must be >= 0)")
        b = b.double()
        uv = self.to_cell_coords(b[:, :2])
        cells = torch.floor(uv).long()
        if reference is None:
            ref = cells.double()
        else:
            ref = check_tensor("reference", reference, shape=(b.shape[0], 2)).double()
            if ref.shape[0] and not bool(torch.isfinite(ref).all()):
                raise ValueError("reference contains NaN or inf")
        parts = [
            uv - ref,
            b[:, 2:3],
            torch.log(b[:, 3:6].clamp(min=MIN_SIZE)),
            torch.sin(b[:, 6:7]),
            torch.cos(b[:, 6:7]),
        ]
        if b.shape[1] == 9:
            parts.append(b[:, 7:9])
        h, w = self.feature_map_size
        inside = (cells[:, 0] >= 0) & (cells[:, 0] < w) & (cells[:, 1] >= 0) & (cells[:, 1] < h)
        return EncodedBoxes(cells=cells, codes=torch.cat(parts, dim=1).float(), inside=inside)

    def decode(self, codes: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`encode`.

        Args:
            codes: float ``(..., 8|10)`` in ``CODE_NAMES`` order (predicted or encoded).
            reference: float or int ``(..., 2)`` ``[u, v]`` reference positions in cell units (the integer cell for
                CenterPoint, the query position for TransFusion), same leading shape.

        Returns:
            float32 ``(..., 7|9)`` boxes ``[x, y, z, dx, dy, dz, yaw(, vx, vy)]`` in the LiDAR frame; ``yaw =
            atan2(sin, cos)`` in ``(-pi, pi]``; log sizes are clamped to ``+-MAX_LOG_SIZE`` before ``exp``.
        """
        c = check_tensor("codes", codes, dtype=(torch.float16, torch.bfloat16, torch.float32, torch.float64))
        if c.ndim < 1 or c.shape[-1] not in (8, 10):
            raise ValueError(f"codes must have shape (..., 8) or (..., 10), got {tuple(c.shape)}")
        ref = check_tensor("reference", reference, shape=tuple(c.shape[:-1]) + (2,))
        c = c.float()
        xy = self.to_metric(c[..., 0:2] + ref.float())
        dims = torch.exp(c[..., 3:6].clamp(min=-MAX_LOG_SIZE, max=MAX_LOG_SIZE))
        yaw = torch.atan2(c[..., 6:7], c[..., 7:8])
        parts = [xy, c[..., 2:3], dims, yaw]
        if c.shape[-1] == 10:
            parts.append(c[..., 8:10])
        return torch.cat(parts, dim=-1)
