"""Inference precision: float32 or bf16 autocast, chosen by the user or from the CPU's matrix units.

``precision="auto"`` (the default of :func:`perception.load_detector`, ``tools/test.py``, ``tools/infer.py``) runs
bf16 autocast on a CPU with AMX bf16 tiles (``amx_bf16`` in ``/proc/cpuinfo``; there a bf16 matrix product runs
4x float32 or more), float32 elsewhere (CPUs without them, or with only AVX-512 bf16 instructions, where bf16 is
1.3-2x; and GPUs, where the project has not measured it). ``"bf16"`` / ``"fp32"`` force the choice. The choice
and its reason are logged once per process and kept in :class:`InferencePrecision`.

Under bf16 autocast the linear layers, attention products and convolutions run in bf16 (oneDNN on the CPU);
LayerNorm and softmax accumulate in float32 inside their kernels; the head's outputs are cast to float32 before
decoding (:meth:`~perception.models.detector.VoxelDetector.predict`), so heatmap peaks, box decoding and NMS run in
float32.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["CpuFeatures", "InferencePrecision", "cpu_features", "resolve_precision"]

log = logging.getLogger(__name__)

CHOICES = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model name and the instruction-set flags that matter for the matrix products."""

    model: str
    flags: frozenset[str]

    @property
    def amx_bf16(self) -> bool:
        return "amx_bf16" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    def describe(self) -> str:
        shown = [
            f
            for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
            if f in self.flags
        ]
        return f"{self.model or 'unknown CPU'} ({' '.join(shown) or 'no avx2/avx512/amx'})"


@lru_cache(maxsize=1)
def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> CpuFeatures:
    """The CPU's flags from ``cpuinfo`` (Linux); elsewhere torch's reported CPU capability stands in."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        cap = str(torch.backends.cpu.get_cpu_capability()).lower()
        flags = {"avx2"} if "avx2" in cap else set()
        if "avx512" in cap:
            flags |= {"avx512f"}
        return CpuFeatures("", frozenset(flags))
    lines = text.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    return CpuFeatures(model, frozenset(flags))


@dataclass(frozen=True)
class InferencePrecision:
    """The precision inference runs in.

    Attributes:
        name: ``"fp32"`` or ``"bf16"``.
        requested: what the user asked for (``"auto"``, ``"fp32"``, ``"bf16"``).
        reason: why, in words (logged).
    """

    name: str
    requested: str
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    @contextlib.contextmanager
    def autocast(self, device: torch.device | str) -> Iterator[None]:
        """bf16 autocast on ``device`` when :attr:`bf16`, else nothing."""
        device = torch.device(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            yield


_logged: set[tuple[str, str, str]] = set()


def resolve_precision(
    requested: str, device: torch.device | str, *, features: CpuFeatures | None = None
) -> InferencePrecision:
    """The precision for ``requested`` (``"auto"``, ``"fp32"``, ``"bf16"``) on ``device`` (module docstring).

    Raises:
        ValueError: another ``requested``; ``"bf16"`` on a CUDA device without bf16 support.
    """
    if requested not in CHOICES:
        raise ValueError(f"precision must be one of {CHOICES}, got {requested!r}")
    dev = torch.device(device)
    cpu = features or cpu_features()
    if requested == "fp32":
        out = InferencePrecision("fp32", requested, "float32 as requested")
    elif requested == "bf16":
        if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"precision bf16: {dev} does not support bf16")
        unit = (
            "AMX tiles"
            if dev.type == "cpu" and cpu.amx_bf16
            else "AVX-512 bf16"
            if dev.type == "cpu" and cpu.avx512_bf16
            else "no bf16 unit: emulated, may be slower than float32"
            if dev.type == "cpu"
            else dev.type
        )
        out = InferencePrecision("bf16", requested, f"bf16 autocast as requested ({unit})")
    elif dev.type == "cpu" and cpu.amx_bf16:
        out = InferencePrecision("bf16", requested, f"bf16 autocast: the CPU has AMX bf16 ({cpu.describe()})")
    elif dev.type == "cpu":
        out = InferencePrecision("fp32", requested, f"float32: the CPU has no AMX bf16 ({cpu.describe()})")
    else:
        out = InferencePrecision("fp32", requested, f"float32 on {dev.type}")
    key = (out.name, requested, dev.type)
    if key not in _logged:
        _logged.add(key)
        log.info("inference precision: %s", out.reason)
    return out
