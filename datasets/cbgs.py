"""Class-balanced grouping and sampling (CBGS, Zhu et al. 2019), the sample resampling of CenterPoint / OpenPCDet.

The resampling (OpenPCDet ``balanced_infos_resampling``, mmdetection3d ``CBGSDataset``) works on *class
occurrences*: a sample containing ``m`` of the detector's classes counts once for each of them. With ``K`` classes,
``n_c`` samples containing class ``c`` and ``N = sum_c n_c`` occurrences, class ``c`` has the fraction
``f_c = n_c / N``; each class then draws ``int(n_c * (1/K) / f_c)`` (about ``N / K``) samples **with replacement**
from the samples containing it, and the result is the concatenation over classes. Rare classes are repeated, so
every class is the reason for about the same number of samples; samples without any of the classes are dropped.
A class with no sample at all draws nothing (the reference divides by zero there).

:class:`ClassBalancedSampler` draws a fresh resampling each epoch (``seed + epoch``) unless
``resample_each_epoch=False`` (the reference resamples once, when the dataset is built), and shuffles it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence

import numpy as np
import torch.utils.data

__all__ = ["class_balanced_indices", "ClassBalancedSampler"]


def class_balanced_indices(
    sample_class_names: Sequence[Collection[str]], class_names: Sequence[str], seed: int | np.random.Generator
) -> np.ndarray:
    """CBGS resampling of a dataset.

    Args:
        sample_class_names: for each of the ``S`` samples, the class names of its ground-truth objects (any
            collection; duplicates and names outside ``class_names`` are ignored).
        class_names: the ``K`` detector classes.
        seed: an int seed or a ``numpy.random.Generator``.

    Returns:
        int64 ``(M,)`` sample indices in ``[0, S)``: for each class in order, its draws (with replacement) from the
        samples containing it. ``M = sum_c int(n_c * (1/K) / (n_c / N))``.
    """
    names = tuple(class_names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"class_names must be non-empty and unique, got {names}")
    column = {c: i for i, c in enumerate(names)}
    per_class: list[list[int]] = [[] for _ in names]
    for s, present in enumerate(sample_class_names):
        if isinstance(present, str):
            raise TypeError(
                f"sample_class_names[{s}] must be a collection of class names, not the string {present!r}"
            )
        for c in set(present):
            if c in column:
                per_class[column[c]].append(s)
    total = sum(len(v) for v in per_class)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = []
    for members in per_class:
        if not members:
            continue
        fraction = len(members) / total
        count = int(len(members) * ((1.0 / len(names)) / fraction))
        out.append(np.asarray(members, dtype=np.int64)[rng.integers(0, len(members), size=count)])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


class ClassBalancedSampler(torch.utils.data.Sampler[int]):
    """A ``DataLoader`` sampler yielding CBGS-resampled dataset indices.

    Args:
        sample_class_names: per dataset sample, its ground-truth class names (see :func:`class_balanced_indices`).
        class_names: the detector classes.
        seed: base seed; epoch ``e`` uses ``seed + e``.
        shuffle: shuffle the resampled indices (otherwise grouped by class, as returned).
        resample_each_epoch: draw a new resampling every epoch (False: the epoch-0 resampling every epoch, only
            the shuffle changes).
        num_replicas, rank: for distributed training, this process yields every ``num_replicas``-th index starting
            at ``rank`` of the (padded by wrapping around) epoch list, so all ranks yield the same count.

    Call :meth:`set_epoch` at the start of every epoch.
    """

    def __init__(
        self,
        sample_class_names: Sequence[Collection[str]],
        class_names: Sequence[str],
        seed: int = 0,
        shuffle: bool = True,
        resample_each_epoch: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}"
            )
        self.sample_class_names = [frozenset(s) for s in sample_class_names]
        self.class_names = tuple(class_names)
        self.seed, self.shuffle, self.resample_each_epoch = (
            int(seed),
            bool(shuffle),
            bool(resample_each_epoch),
        )
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self._total = len(class_balanced_indices(self.sample_class_names, self.class_names, self.seed))
        if self._total == 0:
            raise ValueError(
                f"ClassBalancedSampler: no sample contains any of the classes {self.class_names}"
            )

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def epoch_indices(self) -> np.ndarray:
        """int64 indices this rank yields in the current epoch."""
        rng = np.random.default_rng([self.seed, self.epoch])
        draw_seed = self.seed + (self.epoch if self.resample_each_epoch else 0)
        idx = class_balanced_indices(self.sample_class_names, self.class_names, draw_seed)
        if self.shuffle:
            idx = idx[rng.permutation(len(idx))]
        per_rank = -(-len(idx) // self.num_replicas)
        idx = np.resize(idx, per_rank * self.num_replicas)  # wraps around to pad
        return idx[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices().tolist())

    def __len__(self) -> int:
        return -(-self._total // self.num_replicas)
