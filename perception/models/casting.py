"""Casting a head's outputs to float32 (decoding under bf16 autocast runs in float32: see
:mod:`perception.engine.precision`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["float32_outputs"]


def float32_outputs(obj: Any) -> Any:
    """``obj`` (a head output: dataclasses, lists, tensors) with every floating tensor in float32."""
    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.is_floating_point() and obj.dtype != torch.float32 else obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: float32_outputs(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        )
    if isinstance(obj, (list, tuple)):
        return type(obj)(float32_outputs(v) for v in obj)
    return obj
