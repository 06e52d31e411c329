"""Training-time augmentation of :class:`~perception.structures.Sample` objects.

Every transform is a small class with a typed constructor and ``__call__(sample, rng) -> Sample`` that returns a
new sample (inputs are not modified); all randomness comes from the ``numpy.random.Generator`` passed in, so a
pipeline is reproducible for a seed. Transforms with an epoch-dependent behaviour (:class:`GTSampling`) have
``set_epoch(epoch)``; :class:`Compose` forwards it.

Global transforms (:class:`GlobalRotation`, :class:`GlobalScaling`, :class:`RandomFlip`,
:class:`GlobalTranslation`) move the whole LiDAR-frame content by one 4x4 transform ``T``: points, box centres,
sizes, yaws and velocities through :class:`Points` / :class:`Boxes3D`, and the camera rig through
``CameraRig.transform_lidar(T)`` (``cam_to_lidar' = T @ cam_to_lidar``), so projecting a transformed point with
the transformed rig gives the same pixel as before. Images are not changed. After a scaling or a flip
``cam_to_lidar`` is no longer a proper rotation (a scale, or a mirror with determinant -1), but projection and
unprojection through it stay exact.

``perception.datasets.transforms`` also exports :class:`GTSampling` (``gt_sampling.py``), the CBGS sampler
(``cbgs.py``) and the camera image transforms :class:`ImageAugment` and :class:`ViewDropout`
(``image_transforms.py``: image resize / crop / flip folded into the intrinsics, and into ``cam_to_lidar`` as a
mirrored virtual camera for a flip; they compose with the global transforms here in any order).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from perception.grid import VoxelGrid
from perception.structures import Sample

from .base import Transform
from .cbgs import ClassBalancedSampler, class_balanced_indices
from .gt_sampling import GTSampling
from .image_transforms import ImageAugment, ViewDropout

__all__ = [
    "Transform",
    "Compose",
    "GlobalRotation",
    "GlobalScaling",
    "RandomFlip",
    "GlobalTranslation",
    "PointShuffle",
    "PointRangeFilter",
    "ObjectRangeFilter",
    "GTSampling",
    "ClassBalancedSampler",
    "class_balanced_indices",
    "apply_lidar_transform",
    "ImageAugment",
    "ViewDropout",
]


def _check_range(name: str, value: Sequence[float], *, positive: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be two numbers (low, high), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name} must be finite with low <= high, got {value!r}")
    if positive and lo <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return lo, hi


def apply_lidar_transform(sample: Sample, transform: torch.Tensor) -> Sample:
    """Move only the camera rig of ``sample`` by the LiDAR-frame 4x4 ``transform`` (no-op without cameras).

    The global transforms call this after moving points and boxes with their own (exact) methods.
    """
    if sample.cameras is None:
        return sample
    return dataclasses.replace(sample, cameras=sample.cameras.transform_lidar(transform))


class GlobalRotation:
    """Rotate the scene about +z (through the LiDAR origin) by an angle drawn uniformly from ``angle_range``.

    Args:
        angle_range: ``(low, high)`` radians, e.g. ``(-pi/4, pi/4)``.
    """

    def __init__(self, angle_range: Sequence[float]) -> None:
        self.angle_range = _check_range("GlobalRotation.angle_range", angle_range)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        angle = float(rng.uniform(*self.angle_range))
        c, s = math.cos(angle), math.sin(angle)
        t = torch.eye(4, dtype=torch.float64)
        t[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        out = dataclasses.replace(
            sample, points=sample.points.rotate(angle), boxes=sample.boxes.rotate(angle)
        )
        return apply_lidar_transform(out, t)


class GlobalScaling:
    """Scale the scene about the LiDAR origin by a factor drawn uniformly from ``scale_range``.

    Point coordinates, box centres, sizes and velocities are multiplied by the factor; yaw is unchanged.

    Args:
        scale_range: ``(low, high)``, ``0 < low <= high``, e.g. ``(0.95, 1.05)``.
    """

    def __init__(self, scale_range: Sequence[float]) -> None:
        self.scale_range = _check_range("GlobalScaling.scale_range", scale_range, positive=True)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        factor = float(rng.uniform(*self.scale_range))
        t = torch.diag(torch.tensor([factor, factor, factor, 1.0], dtype=torch.float64))
        out = dataclasses.replace(
            sample, points=sample.points.scale(factor), boxes=sample.boxes.scale(factor)
        )
        return apply_lidar_transform(out, t)


class RandomFlip:
    """Mirror the scene, each enabled axis independently with probability ``probability``.

    ``x=True`` enables flipping along the x axis (``y -> -y``, ``yaw -> -yaw``, ``vy -> -vy``); ``y=True`` along
    the y axis (``x -> -x``, ``yaw -> pi - yaw``, ``vx -> -vx``), as :meth:`Points.flip` / :meth:`Boxes3D.flip`.
    One uniform number is drawn per enabled axis (x first), whether or not it flips.
    """

    def __init__(self, x: bool = True, y: bool = False, probability: float = 0.5) -> None:
        if not 0.0 <= float(probability) <= 1.0:
            raise ValueError(f"RandomFlip.probability must lie in [0, 1], got {probability}")
        self.x, self.y, self.probability = bool(x), bool(y), float(probability)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        axes = [a for a, on in (("x", self.x), ("y", self.y)) if on and rng.random() < self.probability]
        out = sample
        for axis in axes:
            t = torch.eye(4, dtype=torch.float64)
            t[1 if axis == "x" else 0, 1 if axis == "x" else 0] = -1.0
            out = dataclasses.replace(out, points=out.points.flip(axis), boxes=out.boxes.flip(axis))
            out = apply_lidar_transform(out, t)
        return out


class GlobalTranslation:
    """Shift the scene by an offset drawn from ``N(0, std)`` independently on x, y, z.

    Args:
        std: ``(3,)`` standard deviations in metres, ``>= 0`` (e.g. ``(0.2, 0.2, 0.2)``).
    """

    def __init__(self, std: Sequence[float]) -> None:
        s = tuple(float(v) for v in std)
        if len(s) != 3 or not all(math.isfinite(v) and v >= 0 for v in s):
            raise ValueError(f"GlobalTranslation.std must be 3 finite values >= 0 (m), got {std!r}")
        self.std = s

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        offset = rng.normal(0.0, 1.0, size=3) * np.asarray(self.std)
        t = torch.eye(4, dtype=torch.float64)
        t[:3, 3] = torch.from_numpy(offset)
        out = dataclasses.replace(
            sample,
            points=sample.points.translate(offset.tolist()),
            boxes=sample.boxes.translate(offset.tolist()),
        )
        return apply_lidar_transform(out, t)


class PointShuffle:
    """Randomly permute the points (so that voxel point caps drop a random subset)."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        perm = torch.from_numpy(rng.permutation(len(sample.points))).to(sample.points.tensor.device)
        return dataclasses.replace(sample, points=sample.points.select(perm))


class PointRangeFilter:
    """Keep the points inside the voxel grid on x, y **and** z (:meth:`VoxelGrid.contains`, the voxelizer's rule:
    a kept point always lands in a voxel); non-finite points are dropped.

    Args:
        grid: the model's voxel grid (``cfg.data.grid``).
    """

    def __init__(self, grid: VoxelGrid) -> None:
        if not isinstance(grid, VoxelGrid):
            raise TypeError(f"PointRangeFilter needs a perception.grid.VoxelGrid, got {type(grid).__name__}")
        self.grid = grid

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return dataclasses.replace(
            sample, points=sample.points.select(sample.points.in_range_mask(self.grid))
        )


class ObjectRangeFilter:
    """Keep boxes (and their labels) whose centre lies in ``min <= c < max`` on x and y (and z if ``use_z``).

    The half-open interval matches :class:`PointRangeFilter` and the voxel grid, so every kept centre falls in a
    BEV cell of the grid. Boxes with no points inside are **kept** (a heavily occluded object is still a real
    object; use the database's ``min_points`` for pasted objects); boxes partly outside the range are kept when
    their centre is inside.

    Args:
        grid: the model's voxel grid (``cfg.data.grid``); the rule is :meth:`VoxelGrid.contains`.
        use_z: also require the centre inside the grid along z (default False, as OpenPCDet and mmdetection3d).
    """

    def __init__(self, grid: VoxelGrid, use_z: bool = False) -> None:
        if not isinstance(grid, VoxelGrid):
            raise TypeError(f"ObjectRangeFilter needs a perception.grid.VoxelGrid, got {type(grid).__name__}")
        self.grid = grid
        self.use_z = bool(use_z)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        keep = self.grid.contains(sample.boxes.center, use_z=self.use_z)
        return dataclasses.replace(sample, boxes=sample.boxes.select(keep), labels=sample.labels[keep])


class Compose:
    """Apply ``transforms`` in order; ``set_epoch`` is forwarded to every transform that has it."""

    def __init__(self, transforms: Iterable[Transform]) -> None:
        self.transforms = list(transforms)
        for i, t in enumerate(self.transforms):
            if not callable(t):
                raise TypeError(
                    f"Compose.transforms[{i}] must be callable(sample, rng), got {type(t).__name__}"
                )

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
            if not isinstance(sample, Sample):
                raise TypeError(f"{type(t).__name__} returned {type(sample).__name__}, expected Sample")
        return sample

    def set_epoch(self, epoch: int) -> None:
        for t in self.transforms:
            set_epoch = getattr(t, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"
