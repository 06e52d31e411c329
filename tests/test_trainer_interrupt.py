"""Ctrl-C during training (``perception.engine.interrupt``) on the stand-in detector (BatchNorm + dropout).

Wherever SIGINT lands -- data loading, before / inside the BatchNorm forward, backward, before / after the
optimiser step, logging, a checkpoint write, evaluation, DataLoader workers -- the checkpoint written holds exactly
the state after the last completed iteration: resuming from it and finishing gives parameters, BatchNorm buffers
and optimiser state bit-identical to an uninterrupted run. A second Ctrl-C stops at once and writes nothing;
evaluation leaves the generators alone; the previous SIGINT handler is back after ``fit``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from test_engine_standin import StandInDetector, SyntheticSet

from perception.engine.checkpoint import load_checkpoint
from perception.engine.rng import seed_everything, set_deterministic
from perception.engine.trainer import Trainer, TrainingInterrupted
from perception.structures import Sample
from perception.train_config import TrainConfig

ITERS_PER_EPOCH = 5  # 18 samples, batch 4
EPOCHS = 3


@pytest.fixture(autouse=True)
def _one_thread_deterministic() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    set_deterministic(False)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "SIGINT handler not restored"


class _HookedSet(SyntheticSet):
    """:class:`SyntheticSet` calling ``on_item(index)`` before each sample is made (in a worker, if any)."""

    def __init__(self) -> None:
        super().__init__(size=18)
        self.epoch = -1
        self.on_item: Callable[[int, int], None] | None = None

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.epoch = epoch

    def __getitem__(self, index: int) -> Sample:
        if self.on_item is not None:
            self.on_item(self.epoch, index)
        return super().__getitem__(index)


def _trainer(run_dir: Path | None, **cfg_kwargs: object) -> Trainer:
    seed_everything(0)
    kwargs: dict[str, object] = dict(
        batch_size=4, epochs=EPOCHS, log_interval=1, deterministic=True, keep_last=20
    )
    kwargs.update(cfg_kwargs)
    cfg = TrainConfig(**kwargs)  # type: ignore[arg-type]
    set_deterministic(cfg.deterministic)
    return Trainer(
        model=StandInDetector(),
        train_set=_HookedSet(),
        cfg=cfg,
        run_dir=run_dir,
        class_names=("car", "pedestrian"),
        show_progress=False,
    )


def _evaluate(model: torch.nn.Module, epoch: int) -> dict[str, float]:
    """An evaluation that draws from the global generators (as a DataLoader without a generator does)."""
    return {"score": float(torch.rand(()))}


def _state(t: Trainer) -> dict[str, torch.Tensor]:
    """Parameters, BatchNorm buffers (running mean / var / count) and optimiser moments."""
    out = {f"model.{k}": v.detach().clone() for k, v in t.model.state_dict().items()}
    for i, s in enumerate(t.optimizer.state.values()):
        out.update({f"optim.{i}.{k}": torch.as_tensor(v).clone() for k, v in s.items()})
    return out


def _assert_same(a: Trainer, b: Trainer) -> None:
    assert (a.epoch, a.iter_in_epoch, a.iteration) == (b.epoch, b.iter_in_epoch, b.iteration)
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not differ, f"differ from the uninterrupted run: {differ}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trainer]:
    """The uninterrupted run (one thread, as every run here: module fixtures start before the autouse one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t = _trainer(tmp_path_factory.mktemp("reference"))
    t.fit()
    set_deterministic(False)
    torch.set_num_threads(threads)
    yield t


def _sigint(times: int = 1) -> None:
    for _ in range(times):
        signal.raise_signal(signal.SIGINT)


class _Trigger:
    """Send SIGINT ``times`` times at the ``at``-th call (1-based)."""

    def __init__(self, at: int, times: int = 1) -> None:
        self.at, self.times, self.calls = at, times, 0

    def __call__(self, *_: object) -> None:
        self.calls += 1
        if self.calls == self.at:
            _sigint(self.times)


def _arm(t: Trainer, point: str, trigger: _Trigger) -> None:
    """Call ``trigger`` at ``point`` of every iteration."""
    model = t.model
    if point == "data":
        t.train_set.on_item = lambda epoch, index: trigger()  # type: ignore[attr-defined]
    elif point == "forward_start":
        model.point_mlp.register_forward_pre_hook(lambda m, i: trigger())  # type: ignore[union-attr]
    elif point == "batchnorm_done":  # running mean / var / count already updated
        model.point_mlp[1].register_forward_hook(lambda m, i, o: trigger())  # type: ignore[index]
    elif point == "forward_end":
        model.out.register_forward_hook(lambda m, i, o: trigger())  # type: ignore[union-attr]
    elif point == "backward":
        model.out.weight.register_hook(lambda g: trigger())  # type: ignore[union-attr]
    elif point == "optimizer_start":
        t.optimizer.register_step_pre_hook(lambda o, a, k: trigger())
    elif point == "optimizer_done":
        t.optimizer.register_step_post_hook(lambda o, a, k: trigger())
    elif point == "logging":  # after the counters advanced
        add = t.writer.add_scalars
        t.writer.add_scalars = lambda *a, **k: (trigger(), add(*a, **k))[1]  # type: ignore[method-assign]
    else:
        raise AssertionError(point)


def _resume_and_finish(run_dir: Path, **cfg_kwargs: object) -> Trainer:
    t = _trainer(run_dir, **cfg_kwargs)
    t.resume()
    t.fit()
    return t


# (point, call that gets the SIGINT, iteration the interrupted run stops after)
STEP_POINTS = [
    ("forward_start", 8, 8),
    ("batchnorm_done", 8, 8),
    ("batchnorm_done", 1, 1),
    ("forward_end", 7, 7),
    ("backward", 8, 8),
    ("backward", 10, 10),  # the last iteration of epoch 2
    ("optimizer_start", 12, 12),
    ("optimizer_done", 8, 8),
    ("logging", 8, 8),
    ("data", 30, 7),  # the 30th sample is in batch 8 (4 a batch; 2 in the last of an epoch)
]


@pytest.mark.parametrize(("point", "at", "stops_after"), STEP_POINTS)
def test_ctrl_c_checkpoint_is_last_completed_iteration(
    tmp_path: Path, reference: Trainer, point: str, at: int, stops_after: int
) -> None:
    t = _trainer(tmp_path)
    _arm(t, point, _Trigger(at))
    with pytest.raises(KeyboardInterrupt) as info:
        t.fit()
    assert isinstance(info.value, TrainingInterrupted) and info.value.exact
    assert info.value.iteration == stops_after == t.iteration
    assert info.value.checkpoint is not None
    assert load_checkpoint(info.value.checkpoint).iteration == stops_after
    assert "resumes from it" in str(info.value)
    _assert_same(reference, _resume_and_finish(tmp_path))


def test_ctrl_c_during_checkpoint_write_finishes_the_write(tmp_path: Path, reference: Trainer) -> None:
    t = _trainer(tmp_path)
    assert t.ckpt is not None
    save = t.ckpt.save
    t.ckpt.save = lambda state: (_sigint(), save(state))[1]  # type: ignore[method-assign]
    with pytest.raises(TrainingInterrupted) as info:
        t.fit()
    assert info.value.iteration == ITERS_PER_EPOCH  # the first epoch's checkpoint, written once
    assert info.value.checkpoint == tmp_path / "ckpt" / "checkpoint_epoch_1.pth"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint_epoch_1.pth"]
    _assert_same(reference, _resume_and_finish(tmp_path))


def test_ctrl_c_right_after_resume_writes_nothing_new(tmp_path: Path, reference: Trainer) -> None:
    _trainer(tmp_path).fit(max_iterations=7)
    t = _trainer(tmp_path)
    t.resume()
    _arm(t, "data", _Trigger(1))
    with pytest.raises(TrainingInterrupted) as info:
        t.fit()
    assert info.value.checkpoint == tmp_path / "ckpt" / "checkpoint_epoch_1_iter_2.pth"
    assert info.value.iteration == 7
    _assert_same(reference, _resume_and_finish(tmp_path))


def test_second_ctrl_c_stops_at_once_without_checkpoint(
    tmp_path: Path, reference: Trainer, caplog: pytest.LogCaptureFixture
) -> None:
    t = _trainer(tmp_path)
    _arm(t, "batchnorm_done", _Trigger(8, times=2))
    with (
        caplog.at_level("WARNING", logger="perception.engine.trainer"),
        pytest.raises(TrainingInterrupted) as info,
    ):
        t.fit()
    assert not info.value.exact and info.value.checkpoint is None
    assert (
        "interrupted during iteration 8" in caplog.text and "no checkpoint of it was written" in caplog.text
    )
    # only the epoch-1 checkpoint: nothing of the half-done iteration 8
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["checkpoint_epoch_1.pth"]
    with pytest.raises(RuntimeError, match="stopped during iteration 8"):
        t.fit()  # the half-done state cannot be trained on
    _assert_same(reference, _resume_and_finish(tmp_path))  # as after kill -9


def test_without_run_folder_the_trainer_can_go_on(reference: Trainer) -> None:
    t = _trainer(None)
    _arm(t, "backward", _Trigger(9))
    with pytest.raises(TrainingInterrupted) as info:
        t.fit()
    assert info.value.exact and info.value.checkpoint is None and "nothing saved" in str(info.value)
    t.fit()  # the in-memory state is the end of iteration 9: continuing is exact
    _assert_same(reference, t)


def test_ctrl_c_during_evaluation_saves_the_epoch_end(tmp_path: Path) -> None:
    ref = _trainer(tmp_path / "ref", eval_interval=1, ckpt_interval=2)
    ref.evaluate = _evaluate
    ref.fit()
    t = _trainer(tmp_path / "run", eval_interval=1, ckpt_interval=2)
    calls: list[int] = []

    def evaluate(model: torch.nn.Module, epoch: int) -> dict[str, float]:
        calls.append(epoch)
        torch.rand(5)  # the generators move before the Ctrl-C
        _sigint()
        raise AssertionError("Ctrl-C during evaluation must stop it at once")

    t.evaluate = evaluate
    with pytest.raises(TrainingInterrupted) as info:
        t.fit()
    assert calls == [1] and info.value.iteration == ITERS_PER_EPOCH
    assert (
        info.value.checkpoint == tmp_path / "run" / "ckpt" / "checkpoint_epoch_1.pth"
    )  # not an interval epoch
    resumed = _trainer(tmp_path / "run", eval_interval=1, ckpt_interval=2)
    resumed.evaluate = _evaluate
    resumed.resume()
    resumed.fit()
    _assert_same(ref, resumed)


def test_evaluation_leaves_the_generators_alone(tmp_path: Path) -> None:
    """kill -9 after an epoch's evaluation: the resumed run (which skips that evaluation) is still exact."""
    ref = _trainer(tmp_path / "ref", eval_interval=1)
    ref.evaluate = _evaluate
    ref.fit()
    t = _trainer(tmp_path / "run", eval_interval=1)
    t.evaluate = _evaluate
    t.fit(max_iterations=ITERS_PER_EPOCH)  # epoch 1, its checkpoint, its evaluation
    resumed = _trainer(tmp_path / "run", eval_interval=1)
    resumed.evaluate = _evaluate
    resumed.resume()
    resumed.fit()
    _assert_same(ref, resumed)


def _ctrl_c_from_worker(at: int, also_worker: bool) -> Callable[[int, int], None]:
    """In DataLoader worker 0, at its ``at``-th sample of epoch 2: SIGINT to the main process, and with
    ``also_worker`` to the worker too, as a terminal's Ctrl-C reaches the whole process group (a forked worker
    inherits the trainer's handler and goes on). At the first sample it waits half a second first, so that the
    main process is waiting for that batch."""
    seen = [0]

    def on_item(epoch: int, index: int) -> None:
        info = torch.utils.data.get_worker_info()
        if info is None or info.id != 0 or epoch != 1:
            return
        seen[0] += 1
        if seen[0] == at:
            if at == 1:
                time.sleep(0.5)
            os.kill(os.getppid(), signal.SIGINT)
            if also_worker:
                signal.raise_signal(signal.SIGINT)

    return on_item


@pytest.mark.parametrize(
    ("at", "also_worker"),
    [
        (9, False),  # its third batch (the epoch's fifth), asked for once the first has arrived
        (9, True),
        (1, True),  # while the main process waits for the epoch's first batch
    ],
    ids=["main-only", "process-group", "process-group-first-batch"],
)
def test_ctrl_c_with_dataloader_workers(
    tmp_path: Path,
    reference: Trainer,
    at: int,
    also_worker: bool,
) -> None:
    t = _trainer(tmp_path, workers=2)
    t.train_set.on_item = _ctrl_c_from_worker(at, also_worker)  # type: ignore[attr-defined]
    with pytest.raises(TrainingInterrupted) as info:
        t.fit()
    assert info.value.exact and info.value.checkpoint is not None
    assert ITERS_PER_EPOCH <= info.value.iteration < 2 * ITERS_PER_EPOCH
    _assert_same(reference, _resume_and_finish(tmp_path, workers=2))


@pytest.mark.parametrize("ctrl_c", [True, False], ids=["after-ctrl-c", "no-ctrl-c"])
def test_a_failing_batch_fetch_after_ctrl_c_is_the_interrupt(
    tmp_path: Path, reference: Trainer, caplog: pytest.LogCaptureFixture, ctrl_c: bool
) -> None:
    """What the main process sees when the Ctrl-C ended the worker it waits for: the fetch fails. After a Ctrl-C
    that is the clean stop; without one the error is the user's to see."""

    def on_item(epoch: int, index: int) -> None:
        if epoch == 1 and t.iter_in_epoch == 2:
            if ctrl_c:
                _sigint()
            raise RuntimeError("DataLoader worker (pid(s) 12345) exited unexpectedly")

    t = _trainer(tmp_path)
    t.train_set.on_item = on_item  # type: ignore[attr-defined]
    if not ctrl_c:
        with pytest.raises(RuntimeError, match="exited unexpectedly"):
            t.fit()
        return
    with (
        caplog.at_level("INFO", logger="perception.engine.trainer"),
        pytest.raises(TrainingInterrupted) as info,
    ):
        t.fit()
    assert "data loading ended with the Ctrl-C (RuntimeError: DataLoader worker" in caplog.text
    assert info.value.exact and info.value.iteration == ITERS_PER_EPOCH + 2
    _assert_same(reference, _resume_and_finish(tmp_path))


def test_a_handler_of_the_caller_is_left_alone(tmp_path: Path, reference: Trainer) -> None:
    got: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        t = _trainer(tmp_path)
        _arm(t, "batchnorm_done", _Trigger(3))
        t.fit()  # the caller's handler ran; training went on
        assert got == [signal.SIGINT]
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    _assert_same(reference, t)
