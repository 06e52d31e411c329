"""Custom ops of the stack: numba CPU kernels, numba CUDA kernels, and a plain-torch reference for each.

The device of the input tensors picks the backend (CPU tensors -> numba ``@njit``; CUDA tensors -> ``numba.cuda``);
``backend="torch"`` forces the reference. See :mod:`perception.ops._backend`.
"""

from perception.ops.iou3d import boxes_iou_3d, boxes_iou_bev
from perception.ops.nms import circle_nms, nms_bev
from perception.ops.points_in_boxes import points_in_boxes
from perception.ops.pool_windows import PoolWindows, pool_windows
from perception.ops.scatter import scatter
from perception.ops.set_partition import (
    SetPartition,
    WindowConfig,
    WindowPartition,
    set_partition,
    stage_set_partitions,
    stage_window_configs,
    window_partition,
)
from perception.ops.voxelize import VoxelGrid, VoxelStats, make_grid, voxelize, voxelize_with_stats

__all__ = [
    "PoolWindows",
    "SetPartition",
    "VoxelGrid",
    "VoxelStats",
    "WindowConfig",
    "WindowPartition",
    "boxes_iou_3d",
    "boxes_iou_bev",
    "circle_nms",
    "make_grid",
    "nms_bev",
    "points_in_boxes",
    "pool_windows",
    "scatter",
    "set_partition",
    "stage_set_partitions",
    "stage_window_configs",
    "voxelize",
    "voxelize_with_stats",
    "window_partition",
]
