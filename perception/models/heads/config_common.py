"""Torch-free facts both detection heads and their configs read (one place each):

* the box-code layout :data:`CODE_NAMES` and :func:`code_size` (the :class:`~.box_coder.CenterBoxCoder` codes,
  the heads' regression outputs and the configs' ``code_weights`` lengths all follow it);
* :func:`default_code_weights` (1 for every column, 0.2 for the velocities, as CenterPoint / TransFusion);
* :func:`check_head_input`: the BEV map a head reads must have a whole-number stride ``s`` over the voxel grid,
  equal to the head's ``feature_stride`` when the config writes one, and the size ``grid.bev_size(s)``;
* :func:`check_class_names`: the detector's class list is non-empty and unique.

Imports only the standard library and the base layer (:mod:`perception.grid`, :mod:`perception.shapes`), so the
config loader can import the head configs without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from perception.grid import VoxelGrid
from perception.shapes import MapShape

__all__ = ["CODE_NAMES", "check_class_names", "check_head_input", "code_size", "default_code_weights"]

CODE_NAMES: tuple[str, ...] = (
    "offset_x",
    "offset_y",
    "z",
    "log_dx",
    "log_dy",
    "log_dz",
    "sin_yaw",
    "cos_yaw",
    "vx",
    "vy",
)
"""Names of the box-code columns, in order (the first 8 for boxes without velocity)."""


def code_size(with_velocity: bool) -> int:
    """Box-code columns: 10 with velocity, 8 without."""
    return 10 if with_velocity else 8


def default_code_weights(with_velocity: bool) -> tuple[float, ...]:
    """``code_size`` L1 weights in :data:`CODE_NAMES` order: 1.0, and 0.2 for ``vx, vy`` (CenterPoint nuScenes)."""
    return (1.0,) * 8 + ((0.2, 0.2) if with_velocity else ())


def check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """``class_names`` as a tuple; ``ValueError`` when empty or repeated."""
    names = tuple(class_names)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"data.class_names must be non-empty unique names, got {list(names)}")
    return names


def check_head_input(key: str, feature_stride: int | None, input: MapShape, grid: VoxelGrid) -> int:
    """The head's feature stride for the map ``input`` over ``grid`` (a whole number).

    Args:
        key: the head's config key for messages, e.g. ``"model.head.centerpoint"``.
        feature_stride: the stride the config writes, or ``None`` (then any whole stride is accepted).
        input: the BEV map the head reads.
        grid: the voxel grid of the data.

    Raises:
        ValueError: a fractional stride, a written ``feature_stride`` that differs (names ``key.feature_stride``),
            or a map size other than ``grid.bev_size(stride)``.
    """
    stride = Fraction(input.stride)
    if stride.denominator != 1:
        raise ValueError(
            f"the head's feature stride would be {float(stride):g}; it must be a whole number "
            "(model.backbone_3d stride x model.bev_backbone stride)"
        )
    if feature_stride is not None and feature_stride != stride:
        raise ValueError(f"{key}.feature_stride is {feature_stride} but the BEV map has stride {int(stride)}")
    expected = grid.bev_size(int(stride))
    if tuple(input.size) != expected:
        raise ValueError(
            f"the head's input map would be {tuple(input.size)} but the head expects ceil(grid / {int(stride)}) = "
            f"{expected} for the grid {grid.shape}"
        )
    if input.channels < 1:
        raise ValueError(f"the head's input map needs >= 1 channels, got {input}")
    return int(stride)
