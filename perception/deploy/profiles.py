"""TensorRT optimisation profiles from the frames a detector sees: min / opt / max of every dynamic axis.

A DSVT graph's dynamic axes are the voxel counts per stage (``voxels{s}``) and the set counts per stage and window
configuration (``sets{s}_{c}``, :mod:`.dsvt_graph`); a dense graph's is the batch. An engine built for a profile
runs any input inside it, and runs fastest near ``opt``; an input beyond ``max`` is refused. So the profile comes
from the data (:func:`profile_from_sizes`): ``min`` the smallest size seen, ``opt`` the median, ``max`` the
largest with a margin; never from constants tuned to another dataset. :func:`bucket_profiles` splits the frames
by voxel count into a few buckets with one profile each (an engine holds several profiles; the runtime picks the
first whose range holds the frame, :meth:`ShapeProfile.covers`), each with its own ``opt``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .manifest import TensorSpec

__all__ = ["ShapeProfile", "bucket_profiles", "profile_from_sizes"]


@dataclass(frozen=True)
class ShapeProfile:
    """``dims[name] = (min, opt, max)`` of every dynamic axis."""

    dims: dict[str, tuple[int, int, int]]

    def covers(self, sizes: Mapping[str, int]) -> bool:
        """Whether every axis size of ``sizes`` lies in ``[min, max]``."""
        return all(lo <= sizes[name] <= hi for name, (lo, _, hi) in self.dims.items())

    def shapes(self, spec: TensorSpec) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The ``(min, opt, max)`` shapes of one input (its static axes as they are)."""

        def at(i: int) -> tuple[int, ...]:
            return tuple(self.dims[d][i] if isinstance(d, str) else int(d) for d in spec.shape)

        return at(0), at(1), at(2)

    def trtexec_flags(self, inputs: Sequence[TensorSpec]) -> str:
        """``--minShapes=... --optShapes=... --maxShapes=...`` for the inputs with a dynamic axis."""
        dynamic = [s for s in inputs if any(isinstance(d, str) for d in s.shape)]
        flags = []
        for i, flag in enumerate(("minShapes", "optShapes", "maxShapes")):
            items = [f"{s.name}:{'x'.join(str(v) for v in self.shapes(s)[i])}" for s in dynamic]
            flags.append(f"--{flag}={','.join(items)}")
        return " ".join(flags)


def _check(sizes: Sequence[Mapping[str, int]]) -> list[str]:
    if not sizes:
        raise ValueError("a profile needs the sizes of at least one frame")
    names = list(sizes[0])
    for i, s in enumerate(sizes):
        if list(s) != names:
            raise ValueError(f"frame {i} has axes {sorted(s)}, frame 0 {sorted(names)}")
        bad = {k: v for k, v in s.items() if int(v) < 1}
        if bad:
            raise ValueError(f"frame {i} has empty axes {bad}: a graph input needs at least one row")
    return names


def profile_from_sizes(sizes: Sequence[Mapping[str, int]], *, margin: float = 0.25) -> ShapeProfile:
    """One profile over all frames: ``min`` the smallest size, ``opt`` the median, ``max`` the largest x
    ``1 + margin`` (rounded up), per axis.

    Args:
        sizes: per frame, axis name -> size (the same axes in every frame).
        margin: headroom above the largest size seen (frames of other scenes are larger).

    Raises:
        ValueError: no frames, different axes, an axis of size 0, or ``margin < 0``.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    names = _check(sizes)
    dims = {}
    for name in names:
        vals = sorted(int(s[name]) for s in sizes)
        lo, hi = vals[0], vals[-1] + math.ceil(round(vals[-1] * margin, 6))
        dims[name] = (lo, int(statistics.median_low(vals)), max(hi, lo))
    return ShapeProfile(dims)


def bucket_profiles(
    sizes: Sequence[Mapping[str, int]], buckets: int, *, by: str, margin: float = 0.25
) -> tuple[ShapeProfile, ...]:
    """``buckets`` profiles over the frames sorted by axis ``by`` (equal frame counts per bucket).

    Bucket ``i``'s range starts where bucket ``i - 1``'s ends (the first from 1, so a frame smaller than any
    seen still fits), and its ``opt`` is its frames' median; the last gets the ``margin``. Every frame seen lies
    in the range of its bucket.

    Raises:
        ValueError: ``buckets < 1``, more buckets than frames, or ``by`` not an axis.
    """
    names = _check(sizes)
    if by not in names:
        raise ValueError(f"by must be one of the axes {names}, got {by!r}")
    if buckets < 1 or buckets > len(sizes):
        raise ValueError(f"buckets must lie in [1, {len(sizes)}] (the frame count), got {buckets}")
    ordered = sorted(sizes, key=lambda s: int(s[by]))
    out: list[ShapeProfile] = []
    prev_hi: dict[str, int] = {}
    for b in range(buckets):
        part = ordered[b * len(ordered) // buckets : (b + 1) * len(ordered) // buckets]
        last = b == buckets - 1
        p = profile_from_sizes(part, margin=margin if last else 0.0)
        dims = {}
        for name, (lo, opt, hi) in p.dims.items():
            start = 1 if b == 0 else min(prev_hi[name] + 1, lo)
            dims[name] = (start, max(opt, start), max(hi, opt, start))
            prev_hi[name] = dims[name][2]
        out.append(ShapeProfile(dims))
    return tuple(out)
