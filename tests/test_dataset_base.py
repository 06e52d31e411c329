"""perception.datasets.base: argument checks, epoch forwarding, seeded transform loop, half-open range masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perception.datasets.base import DetectionDataset, check_mode
from perception.grid import VoxelGrid
from perception.structures import Boxes3D, Points, Sample

RANGE = (-10.0, -10.0, -2.0, 10.0, 10.0, 4.0)


class _Tiny(DetectionDataset):
    """Three records of two points each; the sample token is the record."""

    def __init__(self, **kw: object) -> None:
        self.infos = ["a", "b", "c"]
        args = {
            "class_names": ("car",),
            "grid": VoxelGrid(RANGE, (0.5, 0.5, 0.5)),
            "mode": "train",
            "transforms": (),
            "seed": 0,
        }
        args.update(kw)
        self._setup_common(**args)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        self._check_index(index)
        pts = Points(torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]]), ("x", "y", "z"))
        sample = Sample(
            token=self.infos[index],
            points=self._points_in_range(pts),
            boxes=Boxes3D(torch.zeros(0, 7)),
            labels=torch.zeros(0, dtype=torch.int64),
            class_names=self.class_names,
        )
        return self._apply_transforms(sample, index)


class _Record:
    """A transform that records the first draw of its generator and the epochs it was told."""

    def __init__(self) -> None:
        self.draws: list[float] = []
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        self.draws.append(float(rng.random()))
        return sample


def test_len_index_and_point_range() -> None:
    ds = _Tiny()
    assert len(ds) == 3 and ds.epoch == 0 and ds.grid.point_cloud_range == RANGE
    s = ds[1]
    assert s.token == "b" and s.points.tensor.tolist() == [
        [0.0, 0.0, 0.0]
    ]  # x = 10 is on the open upper border
    for bad in (-1, 3):
        with pytest.raises(IndexError, match="out of range for 3 samples"):
            ds[bad]


def test_centres_in_range_half_open_and_nan() -> None:
    ds = _Tiny()
    centres = np.array(
        [
            [0, 0, 0, 1, 1, 1, 0],
            [-10, -10, -2, 1, 1, 1, 0],
            [10, 0, 0, 1, 1, 1, 0],
            [0, 0, np.nan, 1, 1, 1, 0],
        ]
    )
    assert ds._centres_in_range(centres).tolist() == [True, True, False, False]
    assert ds._centres_in_range(np.zeros((0, 9))).shape == (0,)


def test_set_epoch_forwarding_and_seeded_transforms() -> None:
    rec = _Record()
    ds = _Tiny(transforms=[rec, lambda s, rng: s], seed=5)
    ds[0], ds[0], ds[1]
    assert rec.draws[0] == rec.draws[1] != rec.draws[2]  # same (seed, epoch, index) -> same generator
    ds.set_epoch(2)
    assert rec.epochs == [2] and ds.epoch == 2
    ds[0]
    assert rec.draws[3] != rec.draws[0]
    assert rec.draws[3] == float(np.random.default_rng([5, 2, 0]).random())


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"class_names": ()}, "class_names must be non-empty and unique"),
        ({"class_names": ("car", "car")}, "class_names must be non-empty and unique"),
        ({"mode": "eval"}, "mode must be 'train', 'val' or 'test'"),
        ({"grid": (0, 0, 0, 1, 1, 1)}, "grid must be a perception.grid.VoxelGrid"),
    ],
)
def test_bad_arguments(kw: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        _Tiny(**kw)


def test_check_mode() -> None:
    assert [check_mode(m) for m in ("train", "val", "test")] == ["train", "val", "test"]
    with pytest.raises(ValueError, match="got 'Train'"):
        check_mode("Train")
