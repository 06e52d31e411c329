"""Plain-torch reference of DSVT's window and rotated-set partition (the oracle for the numba kernels).

This follows the algorithm of the DSVT authors' input layer step by step (window ids from shifted coordinates,
``unique`` for contiguous window indices, the padded ``windows * window_volume`` lookup table, the
``floor(t * n / (M * set_size))`` slot spreading in float64, and the mask from a roll of the set indices), written
from scratch. It runs on any device. Inputs are assumed validated by :mod:`perception.ops.set_partition`.

Geometry arguments are plain ints in ``(z, y, x)`` order:

* ``window`` -- window shape ``(wz, wy, wx)`` in voxels,
* ``shift`` -- effective shift ``(sz, sy, sx)`` added to the coordinates before dividing by the window,
* ``grid`` -- windows per sample ``(nwz, nwy, nwx)`` (DSVT: ``ceil(n / w) + 1`` per axis).
"""

from __future__ import annotations

import torch

Int3 = tuple[int, int, int]


def window_ids_torch(
    coords: torch.Tensor, window: Int3, shift: Int3, grid: Int3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Window id and in-window coordinate of every voxel.

    Args:
        coords: ``(M, 4)`` int32/int64 ``[b, z, y, x]``, non-negative.

    Returns:
        window_id: ``(M,)`` int64, ``b * nw + wx * (nwy * nwz) + wy * nwz + wz`` with ``nw = nwz * nwy * nwx``
            (DSVT's ``batch_win_inds``: sample-major, then window x, y, z).
        coords_in_window: ``(M, 3)`` int32 ``[z, y, x]`` inside the window.
    """
    c = coords.long()
    wz, wy, wx = window
    nwz, nwy, nwx = grid
    sz = c[:, 1] + shift[0]
    sy = c[:, 2] + shift[1]
    sx = c[:, 3] + shift[2]
    window_id = c[:, 0] * (nwz * nwy * nwx) + (sx // wx) * (nwy * nwz) + (sy // wy) * nwz + sz // wz
    coords_in_window = torch.stack([sz % wz, sy % wy, sx % wx], dim=1).int()
    return window_id, coords_in_window


def window_partition_torch(
    coords: torch.Tensor, window: Int3, shift: Int3, grid: Int3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference window partition.

    Returns:
        window_id ``(M,)`` int64, window_index ``(M,)`` int64 (rank of the window id among the non-empty windows),
        coords_in_window ``(M, 3)`` int32 ``[z, y, x]``, voxels_per_window ``(W,)`` int64.
    """
    window_id, coords_in_window = window_ids_torch(coords, window, shift, grid)
    _, window_index, counts = torch.unique(window_id, sorted=True, return_inverse=True, return_counts=True)
    return window_id, window_index.long(), coords_in_window, counts.long()


def in_window_keys(coords_in_window: torch.Tensor, window: Int3) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort keys of the two rotated orders inside a window, each in ``[0, wz * wy * wx)``.

    The y-major key is ``y * (wx * wz) + x * wz + z``; the x-major key is ``x * (wy * wz) + y * wz + z``.
    """
    wz, wy, wx = window
    c = coords_in_window.long()
    key_y = c[:, 1] * (wx * wz) + c[:, 2] * wz + c[:, 0]
    key_x = c[:, 2] * (wy * wz) + c[:, 1] * wz + c[:, 0]
    return key_y, key_x


def set_partition_torch(
    window_index: torch.Tensor,
    voxels_per_window: torch.Tensor,
    coords_in_window: torch.Tensor,
    window: Int3,
    set_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference rotated-set partition of already window-partitioned voxels.

    Args:
        window_index: ``(M,)`` int64 contiguous window index of each voxel.
        voxels_per_window: ``(W,)`` int64 voxel count of each window.
        coords_in_window: ``(M, 3)`` int32 ``[z, y, x]``.
        window: ``(wz, wy, wx)``.
        set_size: slots per set.

    Returns:
        voxel_index ``(2, S, set_size)`` int64 (order 0: y-major, order 1: x-major), mask ``(2, S, set_size)`` bool
        (True where a slot repeats the voxel of the slot before it), set_window ``(S,)`` int64.

    Raises:
        ValueError: two voxels share a window and an in-window coordinate (duplicate voxel coordinates).
    """
    device = window_index.device
    volume = window[0] * window[1] * window[2]
    num_windows = voxels_per_window.numel()
    sets_per_window = torch.ceil(voxels_per_window.double() / set_size).long()
    set_window = torch.repeat_interleave(torch.arange(num_windows, device=device), sets_per_window)
    first_set = torch.cumsum(sets_per_window, 0) - sets_per_window
    set_in_window = torch.arange(set_window.numel(), device=device) - first_set[set_window]

    # Slot t of a window holds the voxel at sorted position floor(t * n / (M * set_size)) (DSVT Eq. 3).
    t = set_in_window[:, None] * set_size + torch.arange(set_size, device=device)
    n = voxels_per_window[set_window][:, None]
    denom = (sets_per_window[set_window] * set_size)[:, None]
    position = torch.floor((t * n).double() / denom.double()).long()
    select = set_window[:, None] * volume + position

    first_voxel = torch.cumsum(voxels_per_window, 0) - voxels_per_window
    voxel_ids = torch.arange(window_index.numel(), device=device)
    orders = []
    for key in in_window_keys(coords_in_window, window):
        global_key = window_index * volume + key
        sorted_key, order = torch.sort(global_key, stable=True)
        if bool((sorted_key[1:] == sorted_key[:-1]).any()):
            raise ValueError("coords contain duplicate voxels (same batch index and [z, y, x])")
        rank = torch.empty_like(order)
        rank[order] = voxel_ids - first_voxel[window_index[order]]
        lookup = torch.full((num_windows * volume,), -1, dtype=torch.long, device=device)
        lookup[window_index * volume + rank] = voxel_ids
        orders.append(lookup[select])
    voxel_index = torch.stack(orders, 0)
    previous = torch.roll(voxel_index, shifts=1, dims=-1)
    previous[:, :, 0] = -1
    mask = voxel_index == previous
    return voxel_index, mask, set_window
