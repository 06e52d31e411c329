"""``benchmarks/gpu_check.py``: every numba CUDA kernel check passes in numba's CUDA simulator (CUDA backend vs
numba CPU on the same inputs, the script's ``--simulator --quick`` smoke mode); without a GPU every check is a
visible SKIP and the exit code 0; a failing or crashing check makes the exit code 1 and lands in the JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
KERNEL_CHECKS = [
    "voxelize hard",
    "voxelize dynamic",
    "set_partition demo",
    "set_partition nuScenes",
    "pool_windows",
    "scatter",
    "iou3d",
    "nms",
    "points_in_boxes",
]


def _run(tmp_path: Path, *args: str, simulator: bool) -> tuple[subprocess.CompletedProcess[str], dict]:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if simulator:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    report = json.loads((tmp_path / "gpu_check.json").read_text()) if done.returncode in (0, 1) else {}
    return done, report


@pytest.mark.cudasim
def test_simulator_kernel_checks_pass(tmp_path: Path) -> None:
    done, report = _run(tmp_path, "--simulator", "--quick", simulator=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["mode"] == "simulator" and report["ok"] and report["sizes"]["points"] == 300
    kernels = [c for c in report["checks"] if c["part"] == "a"]
    assert [c["name"] for c in kernels] == KERNEL_CHECKS
    for c in kernels:
        assert c["status"] == "PASS", c
        assert c["times_ms"] and all("cuda (simulator)" in k or "cpu" in k for k in c["times_ms"]), c
    by_name = {c["name"]: c for c in kernels}
    assert "exact" in by_name["voxelize hard"]["detail"] and "same indices" in by_name["nms"]["detail"]
    assert " 0 overlapping" not in by_name["iou3d"]["detail"]  # the boxes do overlap
    assert not by_name["points_in_boxes"]["detail"].endswith(": 0 inside, exact")
    others = [c for c in report["checks"] if c["part"] != "a"]
    assert len(others) == 6 and all(c["status"] == "SKIP" for c in others)
    assert all(c["detail"] == "--simulator: kernel checks only" for c in others)
    assert "numba CUDA simulator" in report["machine"]["gpu"] and "SKIP (--simulator" in done.stdout


def test_without_a_gpu_every_check_skips(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("torch sees a CUDA device here: the checks run instead of skipping")
    done, report = _run(tmp_path, simulator=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["mode"] == "no GPU" and report["ok"] and len(report["checks"]) == 15
    assert all(c["status"] == "SKIP" and c["detail"] == "no CUDA device" for c in report["checks"])
    assert "SKIP (no CUDA device)" in done.stdout and "0 FAIL" in done.stdout


def _script(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    spec = importlib.util.spec_from_file_location("_gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "_gpu_check", module)  # dataclasses look their module up there
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts benchmarks/ first
    spec.loader.exec_module(module)
    return module


def test_a_failed_check_fails_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script(monkeypatch)

    def differs(ctx: object, times: dict[str, float]) -> str:
        raise script.Failed("coords: 3 of 10 entries differ")

    def crashes(ctx: object, times: dict[str, float]) -> str:
        raise RuntimeError("numba.cuda cannot see a GPU")

    monkeypatch.setattr(script, "KERNELS", [("differs", differs), ("crashes", crashes)])
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    assert script.main(["--simulator", "--out", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    first, second = report["checks"][:2]
    assert not report["ok"] and first["status"] == second["status"] == "FAIL"
    assert first["detail"] == "coords: 3 of 10 entries differ" and first["error"] is None
    assert second["detail"] == "RuntimeError: numba.cuda cannot see a GPU" and "Traceback" in second["error"]
