"""perception.engine.threads: thread counts from the cores that are free."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perception.engine import threads
from perception.engine.threads import apply_threads, busy_cores_elsewhere, choose_threads


def test_explicit_counts_and_bad_values() -> None:
    assert choose_threads(3).threads == 3
    assert choose_threads("2").threads == 2
    for bad in (0, -1, "x", 1.5j):
        with pytest.raises(ValueError, match="threads must be 'auto' or a positive integer"):
            choose_threads(bad)  # type: ignore[arg-type]


def test_auto_takes_omp_num_threads_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    choice = choose_threads("auto")
    assert choice.threads == 1 and "OMP_NUM_THREADS" in choice.reason


def test_auto_leaves_out_cores_busy_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda sample_s=0.2: 1.7)
    choice = choose_threads("auto")
    assert choice.threads == 2 and choice.busy_elsewhere == 1.7
    monkeypatch.setattr(threads, "busy_cores_elsewhere", lambda sample_s=0.2: 9.0)
    assert choose_threads("auto").threads == 1  # never fewer than one


def test_busy_cores_from_proc_stat_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two /proc/stat snapshots: cpu0 fully busy (by another process), cpu1 idle -> 1.0 busy core."""
    assert busy_cores_elsewhere(0.0, tmp_path / "missing") == 0.0  # not Linux: no sample, every core
    stat = tmp_path / "stat"
    snapshots = iter(
        [
            "cpu  0 0 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0\n",
            "cpu  0 0 0 0 0 0 0 0\ncpu0 200 0 0 100 0 0 0 0\ncpu1 0 0 0 300 0 0 0 0\n",
        ]
    )
    real_ticks = threads._cpu_ticks

    def ticks(path: Path, cpus: set[int]) -> tuple[int, int]:
        stat.write_text(next(snapshots))
        return real_ticks(path, cpus)

    monkeypatch.setattr(threads, "_cpu_ticks", ticks)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(threads, "_own_ticks", lambda: 0)
    assert busy_cores_elsewhere(0.0, stat) == pytest.approx(1.0)


def test_cgroup_quota_caps_the_usable_cores(tmp_path: Path) -> None:
    f = tmp_path / "cpu.max"
    f.write_text("150000 100000\n")
    assert threads._cgroup_cpu_limit(f) == 2
    f.write_text("max 100000\n")
    assert threads._cgroup_cpu_limit(f) is None
    assert threads._cgroup_cpu_limit(tmp_path / "none") is None


def test_apply_sets_torch_and_numba_together() -> None:
    import numba

    before = torch.get_num_threads()
    try:
        assert apply_threads(choose_threads(1)) == 1
        assert torch.get_num_threads() == 1 and numba.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_auto_shares_the_cores_among_a_jobs_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun (LOCAL_WORLD_SIZE > 1) each process gets its share, without sampling the others' load."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(threads, "usable_cores", lambda: 5)

    def no_sample(sample_s: float = 0.2) -> float:
        raise AssertionError("sampled the load of the job's own processes")

    monkeypatch.setattr(threads, "busy_cores_elsewhere", no_sample)
    choice = choose_threads("auto")
    assert choice.threads == 2 and "shared by 2 processes" in choice.reason
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert choose_threads("auto").threads == 1
    assert choose_threads(3).threads == 3  # an explicit count is still taken as given


def test_tools_take_threads(tmp_path: Path) -> None:
    """``--threads`` on the tools' parsers (default auto); a bad value is a clean error of test.py."""
    import argparse
    import subprocess
    import sys

    from perception.engine.threads import add_threads_argument

    p = argparse.ArgumentParser()
    add_threads_argument(p)
    assert p.parse_args([]).threads == "auto" and p.parse_args(["--threads", "1"]).threads == "1"
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, str(repo / "tools" / "test.py"), str(repo / "configs" / "demo_detector.yaml"),
         "--ckpt", str(tmp_path / "none.pth"), "--threads", "zero"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2 and "threads must be 'auto' or a positive integer" in run.stderr
    for tool in ("infer.py", "demo.py"):
        helped = subprocess.run(
            [sys.executable, str(repo / "tools" / tool), "--help"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert helped.returncode == 0 and "--threads auto|N" in helped.stdout
