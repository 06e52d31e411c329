"""Inference linear layers through oneDNN on the CPU (``F.linear`` runs MKL's sgemm).

Why: on CPUs where MKL picks a slower code path (AMD processors get MKL's AVX2 kernels, not its AVX-512 ones),
the oneDNN inner product that torch ships (``torch.ops.mkldnn._linear_pointwise``, the op torch.compile uses for
CPU linear layers) is about twice as fast on the tall, narrow matrices of a transformer over voxels (tens of
thousands of rows, 128-256 channels). It computes the same product (results agree to float32 rounding; the
summation order inside the dot products may differ) and can apply the activation, or add a residual, in the same
pass.

:func:`linear` takes that route only where it is a drop-in replacement: float32 CPU tensors, autocast off, no
autograd graph being recorded (the op has no backward), not tracing / exporting, and the op present in this torch
build. Everywhere else it is ``F.linear`` followed by the activation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"gelu": F.gelu, "relu": F.relu}
"""Activations :func:`linear` can fuse: ``"gelu"`` (exact, erf form, as ``F.gelu``) and ``"relu"``."""


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch build has the oneDNN linear op (``torch.ops.mkldnn._linear_pointwise``)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._linear_pointwise.default  # noqa: B018 (raises when the op is missing)
    except (AttributeError, RuntimeError):
        return False
    return True


def exporting() -> bool:
    """Whether torch is tracing, scripting or compiling (exported graphs keep the plain ops)."""
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling())


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` would run ``x`` with ``weight`` through oneDNN (see the module docstring)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and not exporting()
        and onednn_linear_available()
    )


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = None,
    *,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``activation(x @ weight.T + bias)``, or ``residual + (x @ weight.T + bias)``.

    Args:
        x: float ``(..., K)``.
        weight: ``(N, K)``.
        bias: ``(N,)`` or ``None``.
        activation: ``None``, ``"gelu"`` or ``"relu"`` (see :data:`ACTIVATIONS`).
        residual: ``(..., N)`` added to the output (not with an activation); the one float32 addition of
            ``residual + out``, also when fused.

    Returns:
        ``(..., N)``, in the dtype ``F.linear`` gives (autocast applies as usual; with ``residual``, the promoted
        dtype of the sum).
    """
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if residual is not None and activation is not None:
        raise ValueError("linear adds a residual only without an activation")
    if uses_onednn(x, weight) and (residual is None or _fusable_residual(residual, x, weight)):
        op = torch.ops.mkldnn._linear_pointwise
        if residual is not None:
            return op.binary(x, residual, weight, bias, "add")
        attr, algorithm = (activation or "none"), ("none" if activation == "gelu" else "")
        return op(x, weight, bias, attr, [], algorithm)
    out = F.linear(x, weight, bias)
    if residual is not None:
        return residual + out
    return out if activation is None else ACTIVATIONS[activation](out)


def _fusable_residual(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The fused add needs a float32 residual of exactly the output's shape (no broadcasting), without autograd."""
    return (
        residual.dtype == torch.float32
        and residual.shape == (*x.shape[:-1], weight.shape[0])
        and not (torch.is_grad_enabled() and residual.requires_grad)
    )


__all__ = ["ACTIVATIONS", "exporting", "linear", "onednn_linear_available", "uses_onednn"]
