"""Mixed precision: bf16 autocast on the CPU, fp16 autocast + gradient scaling on GPUs, guarded optimiser steps.

:class:`MixedPrecision` wraps the three places precision matters: the forward (``with mp.autocast():``), the
backward (``mp.backward(loss)``, which scales the loss for fp16) and the step (``mp.step(...)``, which unscales,
clips, and refuses to apply non-finite gradients). A non-finite *loss* must be caught before ``backward`` (the
trainer does, agreeing across processes); a non-finite *gradient* is caught here: without a scaler the step is
skipped and the gradients dropped, with the fp16 scaler the scaler skips it and lowers its scale (normal fp16
dynamics). Either way the weights and the optimiser state stay untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MixedPrecision", "StepResult"]


@dataclass(frozen=True)
class StepResult:
    """Outcome of :meth:`MixedPrecision.step`.

    Attributes:
        stepped: the optimiser updated the weights.
        grad_norm: global L2 norm of the (unscaled) gradients before clipping; ``inf`` / ``nan`` if non-finite.
    """

    stepped: bool
    grad_norm: float


class MixedPrecision:
    """Autocast + optional gradient scaler for ``device``.

    Args:
        enabled: use mixed precision. On ``cpu``: bf16 autocast, no scaler (bf16 has float32's range). On
            ``cuda``: fp16 autocast with a ``torch.amp.GradScaler``. Disabled: plain float32.
        device: the training device.
    """

    def __init__(self, enabled: bool, device: torch.device | str) -> None:
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"mixed precision supports cpu and cuda devices, got {self.device}")
        self.enabled = bool(enabled)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.device.type == "cuda")

    @property
    def uses_scaler(self) -> bool:
        return self.scaler.is_enabled()

    def describe(self) -> str:
        if not self.enabled:
            return "float32 (mixed precision off)"
        name = "fp16 + grad scaler" if self.uses_scaler else "bf16"
        return f"{name} autocast on {self.device.type}"

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast context for the forward pass (a no-op when disabled)."""
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.enabled):
            yield

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled when the fp16 scaler is on."""
        self.scaler.scale(loss).backward() if self.uses_scaler else loss.backward()

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        params: Iterable[torch.nn.Parameter],
        clip_norm: float | None,
    ) -> StepResult:
        """Unscale, measure / clip the gradient norm, and step unless the gradients are non-finite.

        Gradients are zeroed (set to None) afterwards in every case.
        """
        params = [p for p in params if p.grad is not None]
        if self.uses_scaler:
            self.scaler.unscale_(optimizer)
        if params:
            max_norm = clip_norm if clip_norm is not None else math.inf
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        else:
            norm = 0.0
        finite = math.isfinite(norm)
        if self.uses_scaler:
            scale_before = self.scaler.get_scale()
            self.scaler.step(optimizer)  # skips internally when it found inf / nan
            self.scaler.update()
            stepped = finite and self.scaler.get_scale() >= scale_before
        elif finite:
            optimizer.step()
            stepped = True
        else:
            stepped = False
        optimizer.zero_grad(set_to_none=True)
        return StepResult(stepped=stepped, grad_norm=norm)

    def state_dict(self) -> dict[str, Any]:
        """The grad scaler's state (``{}`` without a scaler)."""
        return self.scaler.state_dict() if self.uses_scaler else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.uses_scaler and state:
            self.scaler.load_state_dict(state)
