"""The one rule for annotation boxes a data set may not hand on silently, shared by the info builders (nuScenes,
KITTI) and the evaluation's pre-flight check.

* **Non-finite** (NaN / inf in a centre, size, rotation or velocity that the box is built from): the annotation is
  broken; info creation and evaluation refuse it with an error naming the annotation (nuScenes token, KITTI
  ``file:line``).
* **Zero size** (any of ``dx, dy, dz`` (nuScenes ``width, length, height``; KITTI ``h, w, l``) ``<= 0``): no object
  has it and the regression targets would train on it as a 1 mm box; info creation drops such boxes (and their
  GT-database entries) with a warning that counts them and names them, evaluation refuses them (the devkit's
  ``scale_iou`` asserts sizes ``> 0``, after the whole inference).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BoxProblems", "box_problems", "name_some"]


class BoxProblems:
    """Per-box flags of :func:`box_problems`: ``nonfinite`` and ``zero_size`` bool ``(K,)`` (a non-finite box is
    only flagged ``nonfinite``)."""

    __slots__ = ("nonfinite", "zero_size")

    def __init__(self, nonfinite: np.ndarray, zero_size: np.ndarray) -> None:
        self.nonfinite = nonfinite
        self.zero_size = zero_size

    @property
    def any(self) -> bool:
        return bool(self.nonfinite.any() or self.zero_size.any())


def box_problems(values: np.ndarray, sizes: np.ndarray) -> BoxProblems:
    """Flag the boxes that break the rule of this module.

    Args:
        values: float ``(K, M)`` everything each box is built from (centre, size, rotation, ...), checked for
            NaN / inf.
        sizes: float ``(K, 3)`` the box sizes, in any order of the three axes.

    Returns:
        :class:`BoxProblems` with bool ``(K,)`` masks.
    """
    values = np.asarray(values, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    k = len(sizes)
    values = values.reshape(k, -1) if k else values.reshape(0, 0)  # (0, -1) is ambiguous for numpy
    sizes = sizes.reshape(k, 3)
    nonfinite = ~np.isfinite(values).all(axis=1) | ~np.isfinite(sizes).all(axis=1)
    zero_size = ~nonfinite & (np.where(np.isfinite(sizes), sizes, 1.0) <= 0).any(axis=1)
    return BoxProblems(nonfinite, zero_size)


def name_some(names: Sequence[str] | np.ndarray, limit: int = 5) -> str:
    """``"a, b, c"`` or ``"a, b, c, d, e and 7 more"``: the first ``limit`` of ``names`` for a message."""
    names = [str(n) for n in names]
    head = ", ".join(names[:limit])
    return head if len(names) <= limit else f"{head} and {len(names) - limit} more"
