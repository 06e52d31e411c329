"""Ctrl-C during training: finish the running iteration, then stop at a state a checkpoint holds exactly.

A ``KeyboardInterrupt`` raised wherever SIGINT lands can stop an iteration half-way: the BatchNorm running
statistics already include the forward pass, or the optimiser has stepped while the counters have not. A
checkpoint of that state replays part of the iteration on resume, and the weights drift from an uninterrupted
run. :class:`InterruptGuard` replaces Python's SIGINT handler while the trainer runs:

* the first Ctrl-C only sets :attr:`InterruptGuard.requested` (and writes one line to stderr); the trainer looks
  at it at its safe points (after an iteration, once the counters have advanced; before a fetched batch is used;
  after an epoch's bookkeeping), writes a checkpoint there and raises :class:`TrainingInterrupted`;
* a second Ctrl-C raises ``KeyboardInterrupt`` at once: the state may be mid-iteration, so nothing is saved;
* inside :meth:`InterruptGuard.raising` (evaluation, which leaves the training state alone) a Ctrl-C raises at
  once: waiting for a long evaluation to end gains nothing.

DataLoader workers forked while it is installed inherit it: the first Ctrl-C leaves them working (the main
process stops at its next safe point and ends them), a second one ends them. Workers that do end at the first
(another start method) make the main process's wait for their batch fail; after a Ctrl-C the trainer takes that
failure for the interrupt.

It is installed only in the main thread and only where SIGINT has Python's default handler (the one that raises
``KeyboardInterrupt``): an ignored SIGINT (``SIG_IGN``, e.g. a background job), ``SIG_DFL`` or a handler of the
caller's stay as they are. The previous handler is back when the ``with`` block ends.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType

__all__ = ["InterruptGuard", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C (a ``KeyboardInterrupt``, so code that catches that still does).

    Args:
        message: one line for the user: where it stopped, what was saved, how to go on.

    Attributes:
        iteration: global iterations done when it stopped.
        exact: the trainer's state is the end of iteration ``iteration`` (False: a second Ctrl-C, or a
            ``KeyboardInterrupt`` without :class:`InterruptGuard`, stopped it mid-iteration).
        checkpoint: the checkpoint holding exactly that state (written at the stop, or the newest one when it
            already held it); None when none does.
    """

    def __init__(self, message: str, *, iteration: int, exact: bool, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.message = message
        self.iteration = iteration
        self.exact = exact
        self.checkpoint = checkpoint


_FIRST_NOTICE = (
    "\nCtrl-C: finishing the current iteration, then stopping{save} (Ctrl-C again stops at once, "
    "without a checkpoint)\n"
)


class InterruptGuard:
    """Defer SIGINT to the trainer's safe points while the ``with`` block runs (see the module docstring).

    Args:
        enabled: False leaves SIGINT alone (multi-process runs: ranks would stop at different iterations).
        saves: whether the stop writes a checkpoint (only changes the line printed at the first Ctrl-C).
    """

    def __init__(self, *, enabled: bool = True, saves: bool = True) -> None:
        self.enabled = enabled
        self.requested = False
        self.installed = False
        self._raise_now = False
        self._notice = _FIRST_NOTICE.format(save=" and saving a checkpoint" if saves else "").encode()
        self._previous: object = None
        self._pid = -1

    def __enter__(self) -> InterruptGuard:
        if (
            self.enabled
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._pid = os.getpid()
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]
            self.installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested or self._raise_now:
            self.requested = True
            raise KeyboardInterrupt
        self.requested = True
        if os.getpid() != self._pid:  # a forked DataLoader worker: it goes on until the main process stops it
            return
        try:  # os.write, not print / logging: a handler may run in the middle of a buffered write to stderr
            os.write(2, self._notice)
        except OSError:
            pass

    @contextmanager
    def raising(self) -> Iterator[None]:
        """Inside: a Ctrl-C raises ``KeyboardInterrupt`` at once (for phases that leave the state alone)."""
        self._raise_now = True
        try:
            yield
        finally:
            self._raise_now = False
