"""Wall time per stage of a forward pass, recorded only when asked (benchmarks); free otherwise.

A detector holds ``stage_timer: StageTimer | None`` (None by default) and wraps each stage in
``with self.timed("name"):``; with a timer set, the stage's wall time (a CUDA synchronisation first and last when
the tensors live on a GPU) is added to ``timer.times[name]``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["StageTimer"]


class StageTimer:
    """Accumulates seconds per stage name over the forward passes it is attached to.

    Args:
        cuda: synchronise the current CUDA device around each stage (set it when the model runs on a GPU).
    """

    def __init__(self, *, cuda: bool = False) -> None:
        self.cuda = cuda
        self.times: dict[str, float] = {}

    def reset(self) -> None:
        self.times.clear()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
