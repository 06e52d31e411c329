"""CBGS resampling against a direct transcription of the reference algorithm, and the sampler."""

from __future__ import annotations

import numpy as np
import pytest

from perception.datasets.cbgs import ClassBalancedSampler, class_balanced_indices

CLASSES = ("car", "pedestrian", "bicycle", "bus")


def toy_dataset() -> list[set[str]]:
    """Skewed: 600 car-only, 250 car+pedestrian, 40 bicycle(+car), 10 bus, 100 empty / other classes."""
    samples = [{"car"}] * 600 + [{"car", "pedestrian"}] * 250 + [{"bicycle", "car"}] * 40 + [{"bus"}] * 10
    samples += [set()] * 50 + [{"traffic_cone"}] * 50
    return [set(s) for s in samples]


def reference_resampling(
    infos: list[set[str]], class_names: tuple[str, ...], rng: np.random.RandomState
) -> list:
    """The published algorithm, step by step: per-class sample lists, class fractions over all occurrences,
    ratio = (1/K) / fraction, draw int(len * ratio) with replacement per class."""
    cls_infos: dict[str, list[int]] = {c: [] for c in class_names}
    for i, info in enumerate(infos):
        for name in set(info):
            if name in class_names:
                cls_infos[name].append(i)
    duplicated = sum(len(v) for v in cls_infos.values())
    dist = {k: len(v) / duplicated for k, v in cls_infos.items()}
    frac = 1.0 / len(class_names)
    out: list[int] = []
    for name, members in cls_infos.items():
        out += rng.choice(members, int(len(members) * (frac / dist[name]))).tolist()
    return out


def class_fractions(indices: np.ndarray | list[int], infos: list[set[str]]) -> np.ndarray:
    counts = np.array([sum(c in infos[i] for i in indices) for c in CLASSES], dtype=np.float64)
    return counts / counts.sum()


def test_matches_reference_counts_and_fractions() -> None:
    infos = toy_dataset()
    ours = class_balanced_indices(infos, CLASSES, seed=0)
    ref = reference_resampling(infos, CLASSES, np.random.RandomState(0))
    assert ours.dtype == np.int64 and len(ours) == len(ref)
    # occurrences: car 890, ped 250, bicycle 40, bus 10 -> N = 1190, each class draws int(1190 / 4) = 297
    assert len(ours) == 4 * 297
    blocks = np.split(ours, [297, 594, 891])
    for block, cls in zip(blocks, CLASSES, strict=True):
        assert all(cls in infos[i] for i in block)  # each class draws only samples containing it
    assert set(ours.tolist()) <= set(range(900))  # samples without a listed class are never drawn
    before = class_fractions(np.arange(len(infos)), infos)
    after_ours, after_ref = class_fractions(ours, infos), class_fractions(ref, infos)
    # the known answer in expectation: the car block adds car (+ pedestrian w.p. 250/890, bicycle w.p. 40/890),
    # the pedestrian and bicycle blocks each add car too, the bus block only bus
    expected = np.array([3 * 297, 297 * (1 + 250 / 890), 297 * (1 + 40 / 890), 297])
    expected /= expected.sum()
    assert before[3] < 0.01 and expected[3] > 0.15
    np.testing.assert_allclose(after_ours, expected, atol=0.02)
    np.testing.assert_allclose(after_ref, expected, atol=0.02)
    # average over seeds: the expected fractions agree closely
    mean_ours = np.mean(
        [class_fractions(class_balanced_indices(infos, CLASSES, s), infos) for s in range(5)], 0
    )
    mean_ref = np.mean(
        [
            class_fractions(reference_resampling(infos, CLASSES, np.random.RandomState(s)), infos)
            for s in range(5)
        ],
        0,
    )
    np.testing.assert_allclose(mean_ours, mean_ref, atol=0.015)


def test_deterministic_and_edge_cases() -> None:
    infos = toy_dataset()
    assert np.array_equal(
        class_balanced_indices(infos, CLASSES, 3), class_balanced_indices(infos, CLASSES, 3)
    )
    assert not np.array_equal(
        class_balanced_indices(infos, CLASSES, 3), class_balanced_indices(infos, CLASSES, 4)
    )
    # a class without any sample draws nothing (the reference would divide by zero)
    out = class_balanced_indices([{"car"}, {"car", "bus"}], ("car", "bus", "truck"), 0)
    assert len(out) == 2 * int(3 / 3)  # N = 3 occurrences, K = 3 -> 1 draw each for car and bus
    assert class_balanced_indices([set(), {"x"}], CLASSES, 0).shape == (0,)
    with pytest.raises(TypeError, match="not the string"):
        class_balanced_indices(["car"], CLASSES, 0)
    with pytest.raises(ValueError, match="unique"):
        class_balanced_indices([{"car"}], ("car", "car"), 0)


def test_sampler_epochs_and_ranks() -> None:
    infos = toy_dataset()
    sampler = ClassBalancedSampler(infos, CLASSES, seed=1)
    assert len(sampler) == 4 * 297
    e0 = list(sampler)
    assert e0 == list(sampler)  # same epoch, same order
    assert sorted(e0) != e0  # shuffled
    sampler.set_epoch(1)
    e1 = list(sampler)
    assert len(e1) == len(e0) and e1 != e0
    assert sorted(e1) != sorted(e0)  # resampled each epoch
    fixed = ClassBalancedSampler(infos, CLASSES, seed=1, resample_each_epoch=False)
    f0 = list(fixed)
    fixed.set_epoch(1)
    assert sorted(list(fixed)) == sorted(f0) and list(fixed) != f0  # same draw, new order
    ranks = [ClassBalancedSampler(infos, CLASSES, seed=1, num_replicas=5, rank=r) for r in range(5)]
    parts = [list(r) for r in ranks]
    assert all(len(p) == len(ranks[0]) == 238 for p in parts)  # ceil(1188 / 5), padded by wrapping
    merged = [p[i] for i in range(238) for p in parts][: len(e0)]
    assert merged == e0  # the ranks interleave back into the single-process order
    with pytest.raises(ValueError, match="no sample contains"):
        ClassBalancedSampler([set()], CLASSES)
    with pytest.raises(ValueError, match="rank"):
        ClassBalancedSampler(infos, CLASSES, num_replicas=2, rank=2)
