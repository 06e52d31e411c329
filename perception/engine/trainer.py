"""The training loop: data -> forward (autocast) -> guarded backward / step -> logs and checkpoints.

The trainer needs only a small protocol from the model (:class:`TrainableModel`): ``loss(batch)`` returning a
dict of weighted scalar loss terms (the total loss is their sum) and ``predict(batch)`` for evaluation. It owns
the optimiser, the one-cycle schedule, mixed precision, distributed data parallelism, checkpoints and logging.

Exact resumption: a checkpoint holds the weights, optimiser, schedule, grad scaler, counters and every rank's
generator states; the data order of an epoch depends only on ``(seed, epoch)`` (:class:`ShardedSampler`, the
datasets' per-sample generators, a dedicated ``DataLoader`` generator), and a run resumed part-way through an
epoch skips the samples already seen. On the CPU in deterministic mode, N iterations straight and N/2 + resume +
N/2 give bit-identical weights. (Data sets must draw their randomness from per-sample generators, as the project's
data sets do, not from global generators inside ``DataLoader`` workers.) Evaluation between epochs leaves every
generator as it was, so it changes nothing in training and a resume from the epoch's checkpoint continues exactly.

Ctrl-C (single process, main thread; :mod:`perception.engine.interrupt`): the running iteration finishes, a
checkpoint of exactly that state is written -- the same state a kill -9 + resume would continue from -- and
:class:`~perception.engine.interrupt.TrainingInterrupted` is raised; during evaluation it stops at once (the state
is the epoch's end). A second Ctrl-C stops at once without a checkpoint. Multi-process runs keep Python's handler:
a Ctrl-C stops them without a checkpoint, and they resume from the newest periodic one.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol, runtime_checkable

import numpy as np
import torch

from perception.engine.amp import MixedPrecision
from perception.engine.checkpoint import (
    CheckpointManager,
    CheckpointState,
    load_checkpoint,
    rng_from_plain,
    rng_to_plain,
)
from perception.engine.data import collate_for
from perception.engine.distributed import (
    DistInfo,
    ShardedSampler,
    SkipSampler,
    all_gather_object,
    all_true,
    barrier,
    convert_sync_batchnorm,
    reduce_mean,
    sync_buffers,
)
from perception.engine.interrupt import InterruptGuard, TrainingInterrupted
from perception.engine.logger import ScalarWriter, progress
from perception.engine.optim import OneCycleSchedule, build_optimizer, effective_lr
from perception.engine.rng import capture_rng_state, restore_rng_state, seed_everything
from perception.models.detector import total_loss
from perception.structures import Batch, Detections, Sample
from perception.train_config import TrainConfig

__all__ = ["FitResult", "TrainableModel", "Trainer", "TrainingInterrupted"]

logger = logging.getLogger(__name__)

Evaluator = Callable[[torch.nn.Module, int], Mapping[str, float]]


@runtime_checkable
class TrainableModel(Protocol):
    """What the engine needs from a detector (an ``nn.Module``)."""

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Weighted scalar loss terms for ``batch``; the total loss is their sum."""
        ...

    def predict(self, batch: Batch) -> list[Detections]:
        """One :class:`Detections` per sample of ``batch``."""
        ...


class _LossForward(torch.nn.Module):
    """``forward(batch) = model.loss(batch)``, so ``DistributedDataParallel`` sees the loss computation."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.model.loss(batch)  # type: ignore[operator]


def _seed_worker(worker_id: int, seed: int, epoch: int, rank: int) -> None:
    """DataLoader worker init: seed Python's and numpy's global generators from (seed, epoch, rank, worker)."""
    state = np.random.SeedSequence([seed, epoch, rank, worker_id]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))


@dataclass
class FitResult:
    """Where :meth:`Trainer.fit` stopped.

    Attributes:
        epoch: completed epochs; iter_in_epoch: iterations into the next epoch; iteration: global iterations.
        checkpoint: the last checkpoint written (None without a run folder).
        skipped_steps: iterations whose step was skipped (non-finite loss or gradients), this call.
        losses: total loss of each iteration of this call (this rank's value; NaN where non-finite).
        metrics: the last evaluation's metrics, if any.
    """

    epoch: int
    iter_in_epoch: int
    iteration: int
    checkpoint: Path | None
    skipped_steps: int
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _FitRun:
    """Running totals of one :meth:`Trainer.fit` call (iteration and time at its start, losses, log window)."""

    start_iter: int
    t_start: float
    history: list[float] = field(default_factory=list)
    skipped: int = 0
    window: dict[str, list[float]] = field(default_factory=dict)


class Trainer:
    """Train ``model`` on ``train_set`` as ``cfg`` says.

    Args:
        model: an ``nn.Module`` implementing :class:`TrainableModel`, already built (and seeded).
        train_set: a dataset of :class:`Sample` (with optional ``set_epoch(epoch)``, e.g. for GT-sampling fade).
        cfg: the ``train:`` section.
        run_dir: the run's folder (``ckpt/`` and ``tensorboard/`` go inside); None: no checkpoints or events.
        dist: this process's place in the job (default: single process on the CPU).
        class_names: stored in checkpoints.
        config_dict: resolved experiment config (``config_to_dict``) stored in checkpoints.
        sampler: training index sampler with ``set_epoch`` and a deterministic order per epoch (default
            :class:`ShardedSampler`, shuffled); it must already be sharded for ``dist``.
        evaluate: ``evaluate(model, epoch) -> metrics``, called on rank 0 every ``cfg.eval_interval`` epochs.
        sync_bn: convert BatchNorm layers to SyncBatchNorm (GPUs only).
        show_progress: tqdm bars on rank 0.
    """

    def __init__(
        self,
        *,
        model: torch.nn.Module,
        train_set: torch.utils.data.Dataset[Sample],
        cfg: TrainConfig,
        run_dir: str | Path | None,
        dist: DistInfo | None = None,
        class_names: Sequence[str] = (),
        config_dict: Mapping[str, Any] | None = None,
        sampler: torch.utils.data.Sampler[int] | None = None,
        evaluate: Evaluator | None = None,
        sync_bn: bool = False,
        show_progress: bool = True,
    ) -> None:
        if not isinstance(model, torch.nn.Module) or not isinstance(model, TrainableModel):
            raise TypeError(
                f"model must be an nn.Module with loss(batch) and predict(batch), got {type(model).__name__}"
            )
        self.cfg = cfg
        self.dist = dist or DistInfo()
        self.train_set = train_set
        self.class_names = tuple(class_names)
        self.config_dict = dict(config_dict or {})
        self.evaluate = evaluate
        self.show_progress = show_progress and self.dist.is_main
        model = model.to(self.dist.device)
        if sync_bn:
            model = convert_sync_batchnorm(model, self.dist)
        self.model = model
        forward: torch.nn.Module = _LossForward(model)
        if self.dist.distributed:
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            forward = torch.nn.parallel.DistributedDataParallel(forward, device_ids=ids)
        self.forward_module = forward
        n = len(train_set)  # type: ignore[arg-type]
        if n < 1:
            raise ValueError("train_set is empty")
        self.sampler = sampler or ShardedSampler(
            n, self.dist.world_size, self.dist.rank, shuffle=True, seed=cfg.seed
        )
        self.iters_per_epoch = -(-len(self.sampler) // cfg.batch_size)  # type: ignore[arg-type]
        if self.iters_per_epoch < 1:
            raise ValueError("the sampler yields no sample for this rank")
        self.total_iters = cfg.epochs * self.iters_per_epoch
        self.lr = effective_lr(
            cfg.optimizer,
            lr_scaling=cfg.lr_scaling,
            per_process_batch=cfg.batch_size,
            world_size=self.dist.world_size,
            reference_batch=cfg.lr_reference_batch,
        )
        self.optimizer = build_optimizer(model, cfg.optimizer, self.lr)
        self.schedule = OneCycleSchedule(self.optimizer, self.lr, self.total_iters, cfg.schedule)
        self.mp = MixedPrecision(cfg.amp, self.dist.device)
        self.run_dir = Path(run_dir).absolute() if run_dir is not None else None
        self.ckpt = (
            CheckpointManager(self.run_dir / "ckpt", cfg.keep_last, clean_stale=self.dist.is_main)
            if self.run_dir is not None
            else None
        )
        self.epoch = 0
        self.iter_in_epoch = 0
        self.iteration = 0
        # (iteration, file) of the checkpoint in ckpt/ that holds the current state, if one does
        self._saved: tuple[int, Path] | None = None
        self._mid_iteration = False  # True from the start of a step until its counters have advanced
        self._log_setup()

    @functools.cached_property
    def writer(self) -> ScalarWriter:
        """TensorBoard scalars under ``run_dir/tensorboard``, opened on first use (not in the constructor), so a
        trainer whose :meth:`resume` is refused leaves no new event file in the run folder."""
        return ScalarWriter(self.run_dir / "tensorboard" if self.run_dir else None, enabled=self.dist.is_main)

    # ---------------------------------------------------------------------------------------------------------
    def _log_setup(self) -> None:
        c = self.cfg
        global_batch = c.batch_size * self.dist.world_size
        logger.info(
            "batch: %d per process x %d process(es) = %d global; %d iterations/epoch x %d epochs = %d iterations",
            c.batch_size,
            self.dist.world_size,
            global_batch,
            self.iters_per_epoch,
            c.epochs,
            self.total_iters,
        )
        logger.info(
            "learning rate: optimizer.lr %.4g for a global batch of %d, lr_scaling=%s -> peak LR %.4g "
            "(one-cycle: start %.4g, pct_start %.2f, moms %s); AdamW weight_decay %.3g; grad clip %s; %s; "
            "distributed backend: %s",
            c.optimizer.lr,
            c.lr_reference_batch,
            c.lr_scaling,
            self.lr,
            self.lr / c.schedule.div_factor,
            c.schedule.pct_start,
            list(c.schedule.moms),
            c.optimizer.weight_decay,
            c.grad_clip_norm,
            self.mp.describe(),
            self.dist.backend or "none (single process)",
        )

    # ---------------------------------------------------------------------------------------------------------
    def checkpoint_state(self) -> CheckpointState:
        """The checkpoint of the current state (a collective: every rank must call it)."""
        rng = all_gather_object(rng_to_plain(capture_rng_state()), self.dist)
        return CheckpointState(
            model={k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            optimizer=self.optimizer.state_dict(),
            scheduler={
                **self.schedule.state_dict(),
                "iteration": self.iteration,
            },  # consistent if interrupted
            grad_scaler=self.mp.state_dict(),
            epoch=self.epoch,
            iter_in_epoch=self.iter_in_epoch,
            iteration=self.iteration,
            rng=list(rng),
            config=dict(self.config_dict) if self.config_dict is not None else None,
            class_names=tuple(self.class_names),
            world_size=self.dist.world_size,
        )

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current state (rank 0 writes; collective). None without a run folder."""
        if self.ckpt is None:
            return None
        sync_buffers(self.model, self.dist)
        state = self.checkpoint_state()
        path = (
            self.ckpt.save(state)
            if self.dist.is_main
            else self.ckpt.directory / self.ckpt.name_for(self.epoch, self.iter_in_epoch)
        )
        barrier(self.dist)
        self._saved = (self.iteration, path)
        if self.dist.is_main:
            logger.info("saved checkpoint %s", path)
        return path

    def load_state(self, state: CheckpointState) -> None:
        """Restore weights, optimiser, schedule, scaler, counters and this rank's RNG from a checkpoint.

        Raises:
            ValueError: a weights-only checkpoint (no optimiser / schedule state, e.g. one written by
                ``tools/convert_checkpoint.py``), which starts a run through ``--pretrained`` instead; a schedule
                or counters that do not fit this run.
        """
        if not state.optimizer or not state.scheduler:
            raise ValueError(
                "the checkpoint holds weights only (no optimiser or schedule state, e.g. written by "
                "tools/convert_checkpoint.py): it cannot be resumed; start a run from it with --pretrained PATH"
            )
        self.model.load_state_dict(state.model)
        self.optimizer.load_state_dict(state.optimizer)
        self.schedule.load_state_dict(state.scheduler)
        self.mp.load_state_dict(state.grad_scaler)
        self.epoch, self.iter_in_epoch = state.epoch, state.iter_in_epoch
        self.iteration = state.iteration
        self._saved, self._mid_iteration = None, False
        if self.iteration != self.epoch * self.iters_per_epoch + self.iter_in_epoch:
            raise ValueError(
                f"checkpoint at epoch {self.epoch} + {self.iter_in_epoch} iterations (global {self.iteration}) "
                f"does not fit {self.iters_per_epoch} iterations per epoch: the dataset, batch size or world size "
                "changed; use --pretrained to start a new run from its weights"
            )
        rngs = state.rng
        if len(rngs) == self.dist.world_size:
            restore_rng_state(rng_from_plain(rngs[self.dist.rank]))
        else:
            logger.warning(
                "checkpoint was written by %d process(es), this run has %d: generators re-seeded, not restored",
                len(rngs),
                self.dist.world_size,
            )
            seed_everything(self.cfg.seed + self.dist.rank + self.iteration)

    def resume(self, path: str | Path | None = None) -> Path | None:
        """Resume from ``path``, or (None) from the newest loadable checkpoint in ``run_dir/ckpt`` if any.

        Returns:
            the checkpoint resumed from, or None (fresh start).

        Raises:
            FileNotFoundError / CheckpointError: an explicit ``path`` that does not load.
            ValueError: the checkpoint does not fit this run (LR schedule, iterations per epoch); nothing in
                ``run_dir`` is written (the TensorBoard writer opens only on first use).
        """
        if path is not None:
            chosen: Path | None = Path(path)
            state = load_checkpoint(path, map_location="cpu")
        else:
            found = self.ckpt.latest_loadable() if self.ckpt is not None else None
            chosen, state = (found[0], found[1]) if found else (None, None)  # type: ignore[assignment]
        if chosen is None or state is None:
            return None
        self.load_state(state)
        if self.ckpt is not None and chosen.absolute().parent == self.ckpt.directory:
            self._saved = (self.iteration, chosen.absolute())
        logger.info(
            "resumed from %s: epoch %d + %d iterations (global iteration %d, next LR %.4g)",
            chosen,
            self.epoch,
            self.iter_in_epoch,
            self.iteration,
            self.schedule.lr_at(self.iteration),
        )
        return chosen

    # ---------------------------------------------------------------------------------------------------------
    def _loader(self) -> torch.utils.data.DataLoader[Sample]:
        for obj in (self.train_set, self.sampler):
            fn = getattr(obj, "set_epoch", None)
            if callable(fn):
                fn(self.epoch)
        skip = self.iter_in_epoch * self.cfg.batch_size
        sampler = SkipSampler(self.sampler, skip) if skip else self.sampler
        seed = int(np.random.SeedSequence([self.cfg.seed, self.epoch, self.dist.rank]).generate_state(1)[0])
        return torch.utils.data.DataLoader(
            self.train_set,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            num_workers=self.cfg.workers,
            collate_fn=collate_for(self.train_set),
            drop_last=False,
            pin_memory=self.dist.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),  # leaves the global generator alone
            worker_init_fn=functools.partial(
                _seed_worker, seed=self.cfg.seed, epoch=self.epoch, rank=self.dist.rank
            ),
        )

    def _train_step(self, batch: Batch) -> tuple[dict[str, float], float, bool, float, float]:
        """One iteration. Returns (loss terms, total loss, stepped, forward seconds, backward seconds)."""
        lr = self.schedule.step()
        t0 = time.perf_counter()
        # BatchNorm running statistics change during the forward: keep a copy to restore if the loss is bad
        buffers = list(self.model.buffers())
        saved = [b.detach().clone() for b in buffers]
        with self.mp.autocast():
            losses = self.forward_module(batch)
        total = total_loss(losses)
        t1 = time.perf_counter()
        finite = all_true(bool(torch.isfinite(total)), self.dist)
        terms = {k: float(v.detach().float()) for k, v in losses.items()}
        if finite:
            self.mp.backward(total)
            result = self.mp.step(self.optimizer, self.model.parameters(), self.cfg.grad_clip_norm)
            stepped = result.stepped
            if not stepped:
                logger.warning(
                    "iteration %d: non-finite gradients (norm %s): step skipped, weights unchanged",
                    self.iteration,
                    result.grad_norm,
                )
            terms["grad_norm"] = result.grad_norm
        else:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for b, s in zip(buffers, saved, strict=True):
                    b.copy_(s)
            stepped = False
            logger.warning(
                "iteration %d: non-finite loss on at least one process (here: total %s, terms %s): step "
                "skipped, weights and buffers unchanged",
                self.iteration,
                float(total.detach()),
                {k: round(v, 5) for k, v in terms.items()},
            )
        terms["lr"] = lr
        return terms, float(total.detach()), stepped, t1 - t0, time.perf_counter() - t1

    def fit(self, max_iterations: int | None = None) -> FitResult:
        """Train until ``cfg.epochs`` are done, or until the global iteration reaches ``max_iterations`` (then a
        checkpoint is written, so a later :meth:`resume` + :meth:`fit` continues exactly).

        Raises:
            TrainingInterrupted: Ctrl-C (see the module docstring); ``exact`` says whether the trainer's state is
                the end of an iteration (then ``checkpoint`` holds it, given a run folder).
            RuntimeError: an earlier call was stopped mid-iteration; resume a new trainer from a checkpoint.
        """
        if max_iterations is not None and max_iterations < 0:
            raise ValueError(f"max_iterations must be >= 0, got {max_iterations}")
        if self._mid_iteration:
            raise RuntimeError(
                f"this trainer was stopped during iteration {self.iteration + 1} (a second Ctrl-C): its state is "
                "partly that iteration's; build a new Trainer and resume() from a checkpoint"
            )
        run = _FitRun(self.iteration, time.perf_counter())
        metrics: dict[str, float] = {}
        last_ckpt: Path | None = None
        if self.epoch >= self.cfg.epochs:
            logger.info("training already finished (%d epochs)", self.epoch)
        guard = InterruptGuard(enabled=not self.dist.distributed, saves=self.ckpt is not None)
        with guard:
            try:
                while self.epoch < self.cfg.epochs:
                    if max_iterations is not None and self.iteration >= max_iterations:
                        break
                    if not self._run_epoch(run, guard, max_iterations):
                        if guard.requested:
                            self._stop_at_safe_point()
                        last_ckpt = self.save_checkpoint()  # max_iterations reached part-way into the epoch
                        break
                    self.epoch += 1
                    self.iter_in_epoch = 0
                    if self.epoch % self.cfg.ckpt_interval == 0 or self.epoch == self.cfg.epochs:
                        last_ckpt = self.save_checkpoint()
                    if guard.requested:
                        self._stop_at_safe_point()
                    if (
                        self.evaluate is not None
                        and self.cfg.eval_interval
                        and self.epoch % self.cfg.eval_interval == 0
                    ):
                        metrics = self._evaluate_between_epochs(guard)
                if guard.requested:  # Ctrl-C while the last checkpoint was written: it holds this state
                    self._stop_at_safe_point()
            except TrainingInterrupted:
                raise
            except KeyboardInterrupt as exc:
                raise self._stopped_at_once(guard) from exc
            finally:
                self.writer.flush()
        sync_buffers(self.model, self.dist)
        return FitResult(
            self.epoch, self.iter_in_epoch, self.iteration, last_ckpt, run.skipped, run.history, metrics
        )

    def _run_epoch(self, run: _FitRun, guard: InterruptGuard, max_iterations: int | None) -> bool:
        """Train the rest of the current epoch.

        Returns:
            True when the epoch is complete; False when it stopped part-way: ``max_iterations`` reached, or a
            Ctrl-C seen at a safe point (after an iteration, or before a fetched batch is used).
        """
        self.forward_module.train()
        bar = progress(
            self._loader(),
            total=self.iters_per_epoch - self.iter_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
            enabled=self.show_progress,
        )
        batches = iter(bar)
        t_data = time.perf_counter()
        while self.iter_in_epoch < self.iters_per_epoch:
            if guard.requested:
                return False
            try:
                batch = next(batches)
            except StopIteration:
                break
            except Exception as err:  # DataLoader workers get the terminal's SIGINT too, and end
                if not guard.requested:
                    raise
                logger.info("data loading ended with the Ctrl-C (%s: %s)", type(err).__name__, err)
                return False
            if guard.requested:  # the batch that arrived with the Ctrl-C is not used
                return False
            batch = batch.to(self.dist.device)
            data_s = time.perf_counter() - t_data
            self._mid_iteration = True
            terms, total, stepped, fwd_s, bwd_s = self._train_step(batch)
            run.skipped += not stepped
            run.history.append(total if math.isfinite(total) else math.nan)
            self.iteration += 1
            self.iter_in_epoch += 1
            self._mid_iteration = False
            for k, v in {**terms, "loss": total, "data": data_s, "forward": fwd_s, "backward": bwd_s}.items():
                run.window.setdefault(k, []).append(v)
            if self.iteration % self.cfg.log_interval == 0 or self.iteration == self.total_iters:
                self._log(run.window, run.start_iter, run.t_start)
                run.window = {}
            t_data = time.perf_counter()
            if max_iterations is not None and self.iteration >= max_iterations:
                return self.iter_in_epoch >= self.iters_per_epoch
        return True

    def _evaluate_between_epochs(self, guard: InterruptGuard) -> dict[str, float]:
        """:meth:`run_evaluation`, leaving every generator as it was; a Ctrl-C stops it at once (the training
        state is the epoch's end, which is what gets saved)."""
        rng = capture_rng_state()
        interrupted = False
        try:
            with guard.raising():
                metrics = self.run_evaluation()
        except KeyboardInterrupt:
            if not guard.installed:
                raise
            interrupted = True
        finally:
            restore_rng_state(rng)
            self.model.train()
        if interrupted:
            logger.warning("Ctrl-C during the evaluation of epoch %d: evaluation stopped", self.epoch)
            self._stop_at_safe_point()
        return metrics

    def _stop_at_safe_point(self) -> NoReturn:
        """After a Ctrl-C, at the end of an iteration: make sure a checkpoint holds this state, then stop."""
        path: Path | None = None
        if self._saved is not None and self._saved[0] == self.iteration and self._saved[1].is_file():
            path = self._saved[1]
            logger.info("Ctrl-C: the newest checkpoint %s already holds this state", path)
        elif self.ckpt is not None:
            path = self.save_checkpoint()
        if path is not None:
            message = (
                f"interrupted by Ctrl-C after iteration {self.iteration} (epoch {self.epoch} + "
                f"{self.iter_in_epoch} iterations); checkpoint {path} holds that state; running the same "
                "command again resumes from it"
            )
        else:
            message = (
                f"interrupted by Ctrl-C after iteration {self.iteration} (epoch {self.epoch} + "
                f"{self.iter_in_epoch} iterations); no run folder, nothing saved; fit() continues from here"
            )
        logger.warning(message)
        raise TrainingInterrupted(message, iteration=self.iteration, exact=True, checkpoint=path)

    def _stopped_at_once(self, guard: InterruptGuard) -> TrainingInterrupted:
        """The error for a ``KeyboardInterrupt`` that was not deferred to a safe point (nothing is saved)."""
        if self._mid_iteration:
            where = f"during iteration {self.iteration + 1}: the state is partly that iteration's, so"
        else:
            where = f"after iteration {self.iteration}:"
        why = (
            "a second Ctrl-C stops at once"
            if guard.installed
            else "in a multi-process run, or with a SIGINT handler other than Python's, Ctrl-C stops at once"
        )
        message = (
            f"interrupted {where} no checkpoint of it was written ({why}); running again resumes from the newest "
            "checkpoint"
        )
        logger.warning(message)
        return TrainingInterrupted(
            message, iteration=self.iteration, exact=not self._mid_iteration, checkpoint=None
        )

    def run_evaluation(self) -> dict[str, float]:
        """Call ``evaluate(model, epoch)`` on rank 0 (others wait) and log the metrics."""
        metrics: dict[str, float] = {}
        if self.evaluate is not None and self.dist.is_main:
            self.model.eval()
            metrics = {k: float(v) for k, v in self.evaluate(self.model, self.epoch).items()}
            self.model.train()
            self.writer.add_scalars({f"eval/{k}": v for k, v in metrics.items()}, self.iteration)
            logger.info(
                "epoch %d evaluation: %s",
                self.epoch,
                ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if "_" not in k),
            )
        barrier(self.dist)
        return metrics

    def _log(self, window: dict[str, list[float]], start_iter: int, t_start: float) -> None:
        means = {k: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan for k, v in window.items()}
        means = reduce_mean(means, self.dist)
        elapsed = time.perf_counter() - t_start
        done = self.iteration - start_iter
        eta = elapsed / max(done, 1) * (self.total_iters - self.iteration)
        timing = {k: means.pop(k) for k in ("data", "forward", "backward")}
        lr = means.pop("lr")
        scalars = {f"train/{k}": v for k, v in means.items()}
        scalars.update({f"time/{k}": v for k, v in timing.items()})
        scalars["train/lr"] = lr
        self.writer.add_scalars(scalars, self.iteration)
        terms = " ".join(f"{k} {v:.4f}" for k, v in means.items() if k not in ("loss", "grad_norm"))
        logger.info(
            "epoch %d/%d iter %d/%d lr %.3e loss %.4f (%s) grad_norm %.3f | data %.3fs fwd %.3fs bwd %.3fs | ETA %s",
            self.epoch + 1,
            self.cfg.epochs,
            self.iteration,
            self.total_iters,
            lr,
            means.get("loss", math.nan),
            terms,
            means.get("grad_norm", math.nan),
            timing["data"],
            timing["forward"],
            timing["backward"],
            time.strftime("%H:%M:%S", time.gmtime(eta)),
        )
