"""AdamW and the one-cycle learning-rate / momentum schedule (OpenPCDet ``adam_onecycle`` semantics).

The schedule is a pure function of the iteration number (:meth:`OneCycleSchedule.lr_at`), so resuming from a
checkpoint continues exactly the same curve: its state is only the iteration it will apply next.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from perception.train_config import OneCycleConfig, OptimizerConfig

__all__ = ["OneCycleSchedule", "build_optimizer", "effective_lr"]


def effective_lr(
    opt: OptimizerConfig, *, lr_scaling: str, per_process_batch: int, world_size: int, reference_batch: int
) -> float:
    """Peak LR actually used: ``opt.lr``, times ``global_batch / reference_batch`` with ``lr_scaling="linear"``.

    Raises:
        ValueError: an unknown ``lr_scaling`` or non-positive sizes.
    """
    if per_process_batch < 1 or world_size < 1 or reference_batch < 1:
        raise ValueError(
            f"batch sizes and world size must be >= 1, got per_process_batch={per_process_batch}, "
            f"world_size={world_size}, reference_batch={reference_batch}"
        )
    if lr_scaling == "none":
        return float(opt.lr)
    if lr_scaling == "linear":
        return float(opt.lr) * per_process_batch * world_size / reference_batch
    raise ValueError(f"lr_scaling must be 'none' or 'linear', got {lr_scaling!r}")


def build_optimizer(model: torch.nn.Module, opt: OptimizerConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``model`` with peak ``lr`` (the schedule sets the actual LR).

    Raises:
        ValueError: ``model`` has no trainable parameter.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters (requires_grad=True)")
    return torch.optim.AdamW(
        params, lr=lr, betas=(opt.betas[0], opt.betas[1]), eps=opt.eps, weight_decay=opt.weight_decay
    )


def _cos_anneal(start: float, end: float, frac: float) -> float:
    """Cosine interpolation from ``start`` (``frac=0``) to ``end`` (``frac=1``)."""
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * frac))


class OneCycleSchedule:
    """One-cycle LR and Adam ``beta1`` schedule over ``total_iters`` iterations.

    Args:
        optimizer: an Adam-family optimiser (its param groups' ``lr`` and ``betas[0]`` are set).
        lr_max: peak learning rate.
        total_iters: iterations of the whole run (``epochs * iterations_per_epoch``), ``>= 1``.
        cfg: shape of the cycle (div factor, rise fraction, momentum range, final div factor).

    Call :meth:`step` once per iteration **before** ``optimizer.step()``: it applies the values of the current
    iteration and advances. ``state_dict`` / ``load_state_dict`` carry the iteration (and the curve's parameters,
    checked on load so a checkpoint of another run is not silently resumed on a different curve).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, lr_max: float, total_iters: int, cfg: OneCycleConfig
    ) -> None:
        if not (math.isfinite(lr_max) and lr_max > 0):
            raise ValueError(f"lr_max must be finite and > 0, got {lr_max}")
        if not isinstance(total_iters, int) or total_iters < 1:
            raise ValueError(f"total_iters must be an int >= 1, got {total_iters!r}")
        self.optimizer = optimizer
        self.lr_max = float(lr_max)
        self.total_iters = total_iters
        self.cfg = cfg
        self.iteration = 0
        self._apply(0)

    @property
    def rise_iters(self) -> float:
        """Iterations of the rising phase (``pct_start * total_iters``, may be fractional)."""
        return self.cfg.pct_start * self.total_iters

    def lr_at(self, it: int) -> float:
        """Learning rate of iteration ``it`` (0-based; iterations past the end keep the final value)."""
        low = self.lr_max / self.cfg.div_factor
        rise = self.rise_iters
        if it < rise:
            return _cos_anneal(low, self.lr_max, it / rise)
        fall = self.total_iters - rise
        frac = min(1.0, (it - rise) / fall) if fall > 0 else 1.0
        return _cos_anneal(self.lr_max, low / self.cfg.final_div_factor, frac)

    def momentum_at(self, it: int) -> float:
        """Adam ``beta1`` of iteration ``it``: ``moms[0] -> moms[1]`` while the LR rises, back while it falls."""
        high, low = self.cfg.moms
        rise = self.rise_iters
        if it < rise:
            return _cos_anneal(high, low, it / rise)
        fall = self.total_iters - rise
        frac = min(1.0, (it - rise) / fall) if fall > 0 else 1.0
        return _cos_anneal(low, high, frac)

    def _apply(self, it: int) -> None:
        lr, mom = self.lr_at(it), self.momentum_at(it)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if "betas" in group:
                group["betas"] = (mom, group["betas"][1])

    def step(self) -> float:
        """Set the LR / momentum of the current iteration on the optimiser, advance, and return that LR."""
        lr = self.lr_at(self.iteration)
        self._apply(self.iteration)
        self.iteration += 1
        return lr

    def get_last_lr(self) -> float:
        """LR currently set on the first param group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "lr_max": self.lr_max,
            "total_iters": self.total_iters,
            "cfg": self.cfg.model_dump(mode="json"),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state["iteration"]``.

        Raises:
            ValueError: the saved curve (``lr_max``, ``total_iters`` or shape) differs from this schedule's, which
                would silently splice two different LR curves; say so instead.
        """
        saved = (float(state["lr_max"]), int(state["total_iters"]), OneCycleConfig(**state["cfg"]))
        mine = (self.lr_max, self.total_iters, self.cfg)
        if saved != mine:
            raise ValueError(
                f"checkpoint schedule (lr_max, total_iters, cycle) = {saved} differs from this run's {mine}: "
                "resume with the same train.optimizer.lr, schedule, batch size, world size, epochs and dataset, "
                "or start a new run (another --extra-tag) with --pretrained to load only the weights"
            )
        self.iteration = int(state["iteration"])
        self._apply(self.iteration)
