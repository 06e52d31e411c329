"""Small validation helpers that produce errors naming the field and what was expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_tensor(
    name: str,
    value: object,
    *,
    ndim: int | None = None,
    shape: Sequence[int | None] | None = None,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
) -> torch.Tensor:
    """Check that ``value`` is a tensor of the given rank / shape / dtype; ``None`` in ``shape`` matches any size.

    Raises:
        TypeError: not a tensor, or wrong dtype.
        ValueError: wrong rank or shape.
    """
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if shape is not None:
        ok = value.ndim == len(shape) and all(
            s is None or s == d for s, d in zip(shape, value.shape, strict=False)
        )
        if not ok:
            parts = ["*" if s is None else str(s) for s in shape]
            want = "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
            raise ValueError(f"{name} must have shape {want}, got {tuple(value.shape)}")
    elif ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if value.dtype not in allowed:
            names = " or ".join(str(d).replace("torch.", "") for d in allowed)
            raise TypeError(f"{name} must have dtype {names}, got {str(value.dtype).replace('torch.', '')}")
    return value
