"""Plumbing shared by the KITTI and nuScenes datasets: argument checks, epoch forwarding, the transform loop
and the point-cloud-range masks.

A dataset subclasses :class:`DetectionDataset`, stores its records in ``self.infos``, calls
:meth:`DetectionDataset._setup_common` in ``__init__`` and, in ``__getitem__``,
:meth:`~DetectionDataset._check_index` first and :meth:`~DetectionDataset._apply_transforms` last. The range is
the model's :class:`~perception.grid.VoxelGrid` and its one membership rule (:meth:`VoxelGrid.contains`, the
voxelizer's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from perception.grid import VoxelGrid
from perception.structures import ImageNorm, Points, Sample

from .image_transforms import ImageLoader

__all__ = ["DetectionDataset", "Mode", "Transform", "check_mode"]


#: A sample transform ``t(sample, rng) -> sample``; ``rng`` is the sample's own generator.
@runtime_checkable
class Transform(Protocol):
    """What every transform provides: ``sample, rng -> sample`` (the one definition; :mod:`.transforms` uses it)."""

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample: ...


Mode = Literal["train", "val", "test"]


def check_mode(mode: Any) -> Mode:
    """``mode`` if it is ``"train"``, ``"val"`` or ``"test"``, else ``ValueError``."""
    if mode not in ("train", "val", "test"):
        raise ValueError(f"mode must be 'train', 'val' or 'test', got {mode!r}")
    return mode  # type: ignore[no-any-return]


class DetectionDataset(torch.utils.data.Dataset[Sample]):
    """Base of the driving datasets: ``len``, ``set_epoch``, per-sample seeded transforms and range masks.

    Attributes set by :meth:`_setup_common`: ``class_names`` (tuple of str), ``grid`` (the voxel grid whose range
    points and boxes are kept in), ``mode``, ``transforms`` (list), ``seed`` and ``epoch`` (0). Subclasses set ``infos`` (a list).
    """

    infos: Sequence[Any]
    class_names: tuple[str, ...]
    grid: VoxelGrid
    mode: Mode
    transforms: list[Transform]
    seed: int
    epoch: int
    #: Camera images (subclasses with cameras set both in ``__init__``).
    use_cameras: bool = False
    images: ImageLoader | None = None

    def _setup_common(
        self,
        *,
        class_names: Sequence[str],
        grid: VoxelGrid,
        mode: Mode,
        transforms: Sequence[Transform],
        seed: int,
    ) -> None:
        """Check and store the arguments every dataset takes (``ValueError`` naming the argument)."""
        self.class_names = tuple(class_names)
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be non-empty and unique, got {self.class_names}")
        if not isinstance(grid, VoxelGrid):
            raise TypeError(
                f"grid must be a perception.grid.VoxelGrid (cfg.data.grid), got {type(grid).__name__}"
            )
        self.grid = grid
        self.mode = check_mode(mode)
        self.transforms = list(transforms)
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def image_norm(self) -> ImageNorm | None:
        """The normalisation a ``DataLoader`` collate applies to this data set's uint8 images
        (``Batch.collate(samples, image_norm)``); None without cameras."""
        if not self.use_cameras:
            return None
        return (self.images or ImageLoader()).norm

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch (seeds the per-sample generators) and forward it to transforms that have ``set_epoch``."""
        self.epoch = int(epoch)
        for t in self.transforms:
            fn = getattr(t, "set_epoch", None)
            if callable(fn):
                fn(epoch)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self.infos):
            raise IndexError(f"index {index} out of range for {len(self.infos)} samples")

    def _points_in_range(self, points: Points) -> Points:
        """The points inside the grid."""
        return points.select(points.in_range_mask(self.grid))

    def _centres_in_range(self, centres: np.ndarray) -> np.ndarray:
        """bool ``(K,)``: which of the ``(K, >=3)`` box centres (x, y, z in metres) lie inside the range."""
        return self.grid.contains(centres)

    def _apply_transforms(self, sample: Sample, index: int) -> Sample:
        """Run the transforms in order with a generator seeded by (``seed``, ``epoch``, ``index``)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        for t in self.transforms:
            sample = t(sample, rng)
        return sample
