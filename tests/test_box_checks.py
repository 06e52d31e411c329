"""The shared annotation-box rule (perception.formats.box_checks)."""

from __future__ import annotations

import numpy as np

from perception.formats.box_checks import box_problems, name_some


def test_flags_nonfinite_and_zero_size_boxes_separately() -> None:
    sizes = np.array([[1, 2, 3], [0, 2, 3], [1, np.nan, 3], [1, 2, -1], [1, 2, 3]], dtype=np.float64)
    values = np.zeros((5, 4))
    values[4, 3] = np.inf  # a bad rotation on an otherwise good box
    p = box_problems(values, sizes)
    assert p.nonfinite.tolist() == [False, False, True, False, True]
    assert p.zero_size.tolist() == [False, True, False, True, False]
    assert p.any
    assert not box_problems(np.zeros((0, 4)), np.zeros((0, 3))).any


def test_name_some_counts_the_rest() -> None:
    assert name_some(["a", "b"]) == "a, b"
    assert name_some([str(i) for i in range(8)], limit=3) == "0, 1, 2 and 5 more"
