"""Inference precision: the CPU's units read from cpuinfo, the auto choice (bf16 only with AMX bf16), bf16 autocast
in the inference API and run_inference with decoding in float32, and the demo detector's bf16 outputs against
fp32 (max relative difference of the head outputs, the strongest detections matched)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import perception
from perception.engine.precision import CpuFeatures, cpu_features, resolve_precision
from perception.models.casting import float32_outputs

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "demo_detector.pth"
AMX = CpuFeatures("Intel Xeon", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"}))
AVX512 = CpuFeatures("AMD EPYC", frozenset({"avx2", "avx512f", "avx512_bf16"}))
OLD = CpuFeatures("old", frozenset({"avx2"}))


def test_cpu_features_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f amx_bf16\n\n")
    cpu_features.cache_clear()
    try:
        f = cpu_features(str(info))
    finally:
        cpu_features.cache_clear()
    assert f.model == "Test CPU 9000" and f.amx_bf16 and not f.avx512_bf16
    assert f.describe() == "Test CPU 9000 (avx2 avx512f amx_bf16)"


def test_auto_is_bf16_only_with_amx(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="perception.engine.precision"):
        auto = resolve_precision("auto", "cpu", features=AMX)
    assert auto.bf16 and "AMX" in auto.reason and "inference precision: bf16 autocast" in caplog.text
    assert not resolve_precision("auto", "cpu", features=AVX512).bf16
    assert not resolve_precision("auto", "cpu", features=OLD).bf16
    assert resolve_precision("bf16", "cpu", features=AVX512).reason.endswith("(AVX-512 bf16)")
    assert "emulated" in resolve_precision("bf16", "cpu", features=OLD).reason
    assert not resolve_precision("fp32", "cpu", features=AMX).bf16
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")


def test_float32_outputs_casts_nested_heads() -> None:
    from dataclasses import dataclass

    @dataclass
    class Out:
        maps: list[torch.Tensor]
        index: torch.Tensor

    out = float32_outputs(Out([torch.zeros(2, dtype=torch.bfloat16)], torch.zeros(2, dtype=torch.long)))
    assert out.maps[0].dtype == torch.float32 and out.index.dtype == torch.long


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    from perception.datasets.synthetic import make_lidar_scan

    pts = make_lidar_scan(num_sweeps=1, beams=32, seed=3)
    pts[:, 4] = 0.0
    return pts


def test_demo_detector_in_bf16(scan: np.ndarray) -> None:
    fp32 = perception.load_detector(CHECKPOINT, device="cpu", precision="fp32")
    bf16 = perception.load_detector(CHECKPOINT, device="cpu", precision="bf16")
    assert bf16.precision.bf16 and not fp32.precision.bf16
    cols = ("x", "y", "z", "intensity", "time_lag")
    batch = fp32.prepare(scan, columns=cols).batch
    with torch.no_grad():
        ref = fp32.model(batch)
        with bf16.precision.autocast("cpu"):
            got = bf16.model(batch)
    ref_maps, got_maps = [t.heatmap for t in ref.tasks], [t.heatmap for t in got.tasks]  # CenterPoint
    assert got_maps[0].dtype == torch.bfloat16  # the head ran in bf16
    rel = max(
        float((g.float() - r).abs().max() / r.abs().max()) for g, r in zip(got_maps, ref_maps, strict=True)
    )
    assert rel < 0.05, rel  # measured about 0.015
    a, b = fp32.detect(scan, columns=cols), bf16.detect(scan, columns=cols)
    assert b.scores.dtype == np.float32 and len(a.scores) >= 5
    for box, name in zip(a.boxes[:5], a.names[:5], strict=True):
        d = np.linalg.norm(b.boxes[:, :2] - box[:2], axis=1)
        assert any(d[i] < 0.3 and b.names[i] == name for i in range(len(d)))
