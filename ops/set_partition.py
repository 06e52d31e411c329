"""DSVT window partition and rotated-set partition (public API, validation, backend dispatch).

DSVT (Wang et al., "DSVT: Dynamic Sparse Voxel Transformer with Rotated Sets", CVPR 2023) runs attention inside
*sets* of voxels. Each stage uses two window configurations (:func:`stage_window_configs`): the base window
unshifted, and the base window times a hybrid factor, shifted. For one configuration:

* :func:`window_partition` puts every voxel in a window: with ``s = coordinate + shift`` per axis, the window is
  ``s // window`` and the in-window coordinate ``s % window``. A window's id is
  ``b * nw + wx * (nwy * nwz) + wy * nwz + wz`` with ``nw* = ceil(n* / w*) + 1`` windows per axis (one extra for
  the shift), exactly as the DSVT authors number them; windows are indexed ``0..W-1`` in ascending id order.
* :func:`set_partition` splits a window with ``n`` voxels into ``M = ceil(n / set_size)`` sets of exactly
  ``set_size`` slots. The window's voxels are sorted by in-window coordinate, y-major (then x, then z) for order 0
  and x-major (then y, then z) for order 1; slot ``t`` (``0 <= t < M * set_size``) takes the voxel at sorted
  position ``floor(t * n / (M * set_size))``, which spreads the voxels evenly and pads by repetition. A slot that
  repeats the voxel of the slot before it in the same set is masked (``True`` = ignore, as a key padding mask).
  Sets are ordered by window index, then by set number inside the window.

Conventions (project-wide, not DSVT's): all shapes and triples are in ``(z, y, x)`` order to match voxel
coordinates ``[b, z, y, x]`` and grid shape ``[nz, ny, nx]``. DSVT configs list ``(x, y, z)``; reverse them
(DSVT's pillar config ``sparse_shape [468, 468, 1]``, ``window_shape [12, 12, 1]``, ``hybrid_factor [2, 2, 1]``,
``shift [6, 6, 0]`` becomes ``(1, 468, 468)``, ``(1, 12, 12)``, ``(1, 2, 2)``, ``(0, 6, 6)``). Shifts must lie in
``[0, window]`` per axis (coordinates never go negative; a shift of ``-k`` partitions like ``window - k``). As in
DSVT, the z shift is ignored when the window spans the whole grid height (``wz == nz``).

Backends: ``"torch"`` (reference), ``"cpu"`` (numba), ``"cuda"`` (numba CUDA); ``None`` picks by device.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from perception._validate import check_tensor

from ._backend import pick_backend
from .set_partition_torch import set_partition_torch, window_partition_torch

Int3 = tuple[int, int, int]


@dataclass(frozen=True)
class WindowConfig:
    """One window configuration of a DSVT stage: ``window_shape`` ``(wz, wy, wx)`` and ``shift`` ``(sz, sy, sx)``."""

    window_shape: Int3
    shift: Int3


@dataclass(frozen=True)
class WindowPartition:
    """Window of every voxel.

    Attributes:
        window_id: ``(M,)`` int64 DSVT window id ``b * nw + wx * (nwy * nwz) + wy * nwz + wz``.
        window_index: ``(M,)`` int64 index of the voxel's window among the non-empty windows, ``0..W-1``, in
            ascending ``window_id`` order.
        coords_in_window: ``(M, 3)`` int32 ``[z, y, x]`` inside the window, each in ``[0, window_shape)``.
        voxels_per_window: ``(W,)`` int64 number of voxels in each window (all ``>= 1``).
        window_shape: ``(wz, wy, wx)``.
        shift: effective shift ``(sz, sy, sx)`` (z forced to 0 when ``wz == nz``).
        windows_per_sample: ``(nwz, nwy, nwx)`` = ``ceil(n / w) + 1`` per axis.
    """

    window_id: torch.Tensor
    window_index: torch.Tensor
    coords_in_window: torch.Tensor
    voxels_per_window: torch.Tensor
    window_shape: Int3
    shift: Int3
    windows_per_sample: Int3

    @property
    def num_windows(self) -> int:
        """Number of non-empty windows ``W``."""
        return int(self.voxels_per_window.numel())


@dataclass(frozen=True)
class SetPartition:
    """Rotated sets of one window configuration.

    Attributes:
        voxel_index: ``(2, S, set_size)`` int64 voxel (row of ``coords``) in each slot; order 0 sorts a window
            y-major (y, x, z), order 1 x-major (x, y, z).
        mask: ``(2, S, set_size)`` bool, True where a slot repeats the voxel of the slot before it (padding).
        set_window: ``(S,)`` int64 window index (``windows.window_index`` space) of each set.
        windows: the window partition the sets were built from.
        set_size: slots per set.
    """

    voxel_index: torch.Tensor
    mask: torch.Tensor
    set_window: torch.Tensor
    windows: WindowPartition
    set_size: int

    @property
    def num_sets(self) -> int:
        """Number of sets ``S``."""
        return int(self.set_window.numel())


def as_int3(name: str, value: Sequence[int], *, minimum: int) -> Int3:
    """Three ints ``(z, y, x)``, each ``>= minimum``, or a TypeError / ValueError naming ``name``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise TypeError(f"{name} must be a sequence of 3 ints (z, y, x), got {value!r}")
    try:
        if any(isinstance(v, bool) for v in value):
            raise TypeError
        out = [operator.index(v) for v in value]
    except TypeError:
        raise TypeError(f"{name} must contain ints (z, y, x), got {value!r}") from None
    if min(out) < minimum:
        raise ValueError(f"{name} entries must be >= {minimum}, got {tuple(out)}")
    return out[0], out[1], out[2]


def check_coords(coords: object, sparse_shape: Int3) -> torch.Tensor:
    """Validate voxel coordinates ``(M, 4)`` int32/int64 ``[b, z, y, x]`` against ``sparse_shape`` ``(nz, ny, nx)``.

    Raises:
        TypeError: not a tensor or not an integer dtype.
        ValueError: wrong shape, negative batch index, or a coordinate outside ``[0, n)`` on its axis.
    """
    c = check_tensor("coords", coords, shape=(None, 4), dtype=(torch.int32, torch.int64))
    if c.shape[0] == 0:
        return c
    if c.is_cuda:
        lo, hi = c.min(dim=0).values.tolist(), c.max(dim=0).values.tolist()
    else:  # one single-threaded numba pass: far cheaper than torch's or numpy's column reductions
        from .set_partition_cpu import column_range

        lo, hi = column_range(c.contiguous().numpy())
    if lo[0] < 0:
        raise ValueError(f"coords batch index (column 0) must be >= 0, got minimum {lo[0]}")
    for axis, name in ((1, "z"), (2, "y"), (3, "x")):
        n = sparse_shape[axis - 1]
        if lo[axis] < 0 or hi[axis] >= n:
            raise ValueError(
                f"coords {name} (column {axis}) must lie in [0, {n}) for sparse_shape {sparse_shape}, "
                f"got range [{lo[axis]}, {hi[axis]}]"
            )
    return c


def _geometry(
    sparse_shape: Sequence[int], window_shape: Sequence[int], shift: Sequence[int]
) -> tuple[Int3, Int3, Int3, Int3]:
    grid_shape = as_int3("sparse_shape", sparse_shape, minimum=1)
    window = as_int3("window_shape", window_shape, minimum=1)
    sh = as_int3("shift", shift, minimum=0)
    for axis, name in enumerate("zyx"):
        if sh[axis] > window[axis]:
            raise ValueError(
                f"shift must lie in [0, window_shape] per axis; {name}: {sh[axis]} > {window[axis]}"
            )
    if window[0] == grid_shape[0]:
        sh = (0, sh[1], sh[2])
    grid = tuple(math.ceil(grid_shape[a] / window[a]) + 1 for a in range(3))
    return grid_shape, window, sh, (grid[0], grid[1], grid[2])


def _window_partition(
    coords: torch.Tensor, window: Int3, shift: Int3, grid: Int3, backend: str
) -> WindowPartition:
    if coords.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=coords.device)
        cin = torch.zeros((0, 3), dtype=torch.int32, device=coords.device)
        return WindowPartition(empty, empty.clone(), cin, empty.clone(), window, shift, grid)
    if backend == "torch":
        out = window_partition_torch(coords, window, shift, grid)
    elif backend == "cpu":
        from .set_partition_cpu import window_partition_cpu

        out = window_partition_cpu(coords, window, shift, grid)
    else:
        from .set_partition_cuda import window_partition_cuda

        out = window_partition_cuda(coords, window, shift, grid)
    return WindowPartition(*out, window_shape=window, shift=shift, windows_per_sample=grid)


def window_partition(
    coords: torch.Tensor,
    sparse_shape: Sequence[int],
    window_shape: Sequence[int],
    shift: Sequence[int] = (0, 0, 0),
    *,
    backend: str | None = None,
) -> WindowPartition:
    """Assign every voxel to a DSVT window.

    Args:
        coords: ``(M, 4)`` int32 (or int64) voxel coordinates ``[b, z, y, x]``, each inside ``sparse_shape``.
        sparse_shape: grid shape ``(nz, ny, nx)`` in voxels.
        window_shape: window shape ``(wz, wy, wx)`` in voxels.
        shift: ``(sz, sy, sx)``, each in ``[0, window]``, added to the coordinates before windowing.
        backend: ``None`` (by device), ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        :class:`WindowPartition` on the device of ``coords``.
    """
    grid_shape, window, sh, grid = _geometry(sparse_shape, window_shape, shift)
    c = check_coords(coords, grid_shape)
    return _window_partition(c, window, sh, grid, pick_backend(c, backend))


def _check_set_size(set_size: object) -> int:
    if isinstance(set_size, bool) or not isinstance(set_size, int):
        raise TypeError(f"set_size must be an int, got {type(set_size).__name__}")
    if set_size < 1:
        raise ValueError(f"set_size must be >= 1, got {set_size}")
    return set_size


def set_partition(
    coords: torch.Tensor,
    sparse_shape: Sequence[int],
    window_shape: Sequence[int],
    set_size: int,
    shift: Sequence[int] = (0, 0, 0),
    *,
    backend: str | None = None,
) -> SetPartition:
    """Partition voxels into DSVT's window-bounded, equal-size rotated sets (see the module docstring).

    Args:
        coords: ``(M, 4)`` int32 (or int64) ``[b, z, y, x]``; no two rows may be equal.
        sparse_shape: ``(nz, ny, nx)``.
        window_shape: ``(wz, wy, wx)``.
        set_size: slots per set (DSVT: 36 for pillars, 48 for 3D voxels).
        shift: ``(sz, sy, sx)`` in ``[0, window]``.
        backend: ``None`` (by device), ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        :class:`SetPartition`; with ``M == 0`` it has zero sets.

    Raises:
        ValueError: bad geometry, coordinates outside the grid, or duplicate voxels.
    """
    size = _check_set_size(set_size)
    grid_shape, window, sh, grid = _geometry(sparse_shape, window_shape, shift)
    c = check_coords(coords, grid_shape)
    chosen = pick_backend(c, backend)
    windows = _window_partition(c, window, sh, grid, chosen)
    if c.shape[0] == 0:
        inds = torch.zeros((2, 0, size), dtype=torch.long, device=c.device)
        return SetPartition(inds, inds.bool(), inds.new_zeros(0), windows, size)
    args = (windows.window_index, windows.voxels_per_window, windows.coords_in_window, window, size)
    if chosen == "torch":
        out = set_partition_torch(*args)
    elif chosen == "cpu":
        from .set_partition_cpu import set_partition_cpu

        out = set_partition_cpu(*args)
    else:
        from .set_partition_cuda import set_partition_cuda

        out = set_partition_cuda(*args)
    return SetPartition(*out, windows=windows, set_size=size)


def stage_window_configs(
    window_shape: Sequence[int],
    hybrid_factor: Sequence[int],
    shift: Sequence[int],
    base_shift: Sequence[int] = (0, 0, 0),
) -> tuple[WindowConfig, WindowConfig]:
    """The two window configurations of a DSVT stage, as DSVT's input layer builds them.

    Args:
        window_shape: base window ``(wz, wy, wx)``.
        hybrid_factor: ``(hz, hy, hx)``; the second configuration's window is ``window_shape * hybrid_factor``.
        shift: shift of the second configuration ``(sz, sy, sx)`` (DSVT pillars: ``(0, 6, 6)``).
        base_shift: shift of the first configuration (DSVT: ``(0, 0, 0)``).

    Returns:
        ``(base, hybrid)`` configurations.
    """
    base = as_int3("window_shape", window_shape, minimum=1)
    factor = as_int3("hybrid_factor", hybrid_factor, minimum=1)
    hybrid = (base[0] * factor[0], base[1] * factor[1], base[2] * factor[2])
    return (
        WindowConfig(base, as_int3("base_shift", base_shift, minimum=0)),
        WindowConfig(hybrid, as_int3("shift", shift, minimum=0)),
    )


def stage_set_partitions(
    coords: torch.Tensor,
    sparse_shape: Sequence[int],
    window_shape: Sequence[int],
    hybrid_factor: Sequence[int],
    shift: Sequence[int],
    set_size: int,
    base_shift: Sequence[int] = (0, 0, 0),
    *,
    backend: str | None = None,
) -> tuple[SetPartition, SetPartition]:
    """Set partitions of both window configurations of a stage (DSVT's ``shift0`` and ``shift1``).

    Arguments as in :func:`stage_window_configs` and :func:`set_partition`.
    """
    configs = stage_window_configs(window_shape, hybrid_factor, shift, base_shift)
    first, second = (
        set_partition(coords, sparse_shape, cfg.window_shape, set_size, cfg.shift, backend=backend)
        for cfg in configs
    )
    return first, second
