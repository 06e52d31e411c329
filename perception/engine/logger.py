"""Run logging: a log file plus console, tqdm progress bars with ETA, and TensorBoard scalars.

Only rank 0 writes the log file, draws progress bars and writes TensorBoard events; other ranks log warnings and
errors to the console, prefixed with their rank.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

__all__ = ["ScalarWriter", "progress", "setup_logging"]

T = TypeVar("T")
_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
_HANDLER_TAG = "_perception_engine_handler"


def setup_logging(log_file: str | Path | None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Configure the ``perception`` logger for a run and return it.

    Rank 0: ``level`` to the console (stderr) and to ``log_file`` (appended, so a resumed run continues the same
    file). Other ranks: warnings and errors to the console only. Calling it again replaces the handlers it added
    before (e.g. one run after another in the same process).
    """
    log = logging.getLogger("perception")
    for h in list(log.handlers):
        if getattr(h, _HANDLER_TAG, False):
            log.removeHandler(h)
            h.close()
    log.setLevel(level if rank == 0 else logging.WARNING)
    log.propagate = False
    fmt = logging.Formatter(_FORMAT if rank == 0 else f"[rank {rank}] {_FORMAT}", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and rank == 0:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, encoding="utf-8"))
    for h in handlers:
        h.setFormatter(fmt)
        setattr(h, _HANDLER_TAG, True)
        log.addHandler(h)
    return log


def progress(
    iterable: Iterable[T], *, total: int | None, desc: str, enabled: bool, **kwargs: Any
) -> Iterable[T]:
    """A tqdm bar (elapsed, rate and ETA) around ``iterable`` when ``enabled``, else ``iterable`` itself."""
    if not enabled:
        return iterable
    return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False, **kwargs)


class ScalarWriter:
    """TensorBoard scalars under ``log_dir`` (rank 0 only; other ranks get a no-op writer).

    Tags are written as given (``train/loss``, ``train/lr``, ``time/data``, ...).
    """

    def __init__(self, log_dir: str | Path | None, enabled: bool = True) -> None:
        self._writer = None
        if enabled and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def add_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Write each ``tag -> value`` at global ``step``."""
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
