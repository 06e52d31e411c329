"""Thread counts from the cores that are actually free, for torch's intra-op pool and numba's parallel kernels.

torch and numba's parallel kernels share one OpenMP runtime here (numba's OpenMP threading layer), and an OpenMP
team splits each parallel region into equal static chunks, then waits at a barrier. When another process holds one
of the cores, the thread that shares a core with it finishes its chunk late and the others spin at the barrier:
with one of two cores held by a training job, the demo detector's frame took 1845 ms at two threads against 156 ms
at one (``benchmarks/bench_frame.py --demo-only --threads 2`` / ``auto``). So pick the count from the cores free
*now* (:func:`choose_threads`, ``--threads auto``, the tools' default):

1. the cores this process may run on (``os.sched_getaffinity``; a cgroup CPU quota, as containers set, caps it);
2. minus the cores that other processes kept busy over a short sample (``/proc/stat`` per CPU, 0.2 s, our own
   process's CPU time over the same interval subtracted, rounded to whole cores);
3. at least 1. An explicit count (``--threads N``, or ``OMP_NUM_THREADS`` set by the user) is taken as given.

The choice is made once, at start-up, and logged with its reason (:class:`ThreadChoice`); a load that starts later
is not followed. :func:`apply_threads` sets torch's count and makes numba's parallel kernels use the same count
(:func:`perception.ops._backend.match_torch_threads`), so the two never run more threads than chosen together.
Several processes of one job (``torchrun``'s ``LOCAL_WORLD_SIZE`` > 1) start together and would each see the
others as load, so ``auto`` gives each its share of the usable cores instead of sampling.

The library itself (``perception.load_detector``) leaves a user's thread settings alone: call
:func:`use_free_cores` from your own program. ``tools/test.py``, ``tools/infer.py`` and ``tools/demo.py`` take
``--threads auto|N`` (:func:`add_threads_argument`, default ``auto``) and report the choice (test.py in its run
log). ``tools/train.py`` keeps torch's own count (all usable cores): a training run's thread count must not depend
on the load at its start, since reductions summed by another number of threads round differently and an exact
resume needs the same ones.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ThreadChoice",
    "add_threads_argument",
    "apply_threads",
    "busy_cores_elsewhere",
    "choose_threads",
    "use_free_cores",
]


@dataclass(frozen=True)
class ThreadChoice:
    """How many threads to run and why.

    Attributes:
        threads: the count for torch's intra-op pool and numba's parallel kernels (>= 1).
        usable_cores: cores this process may run on (affinity mask, capped by a cgroup CPU quota).
        busy_elsewhere: cores other processes kept busy during the sample (0.0 when not sampled).
        reason: one line for the log.
    """

    threads: int
    usable_cores: int
    busy_elsewhere: float
    reason: str


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota when one is set."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_limit(Path("/sys/fs/cgroup/cpu.max"))
    return max(1, min(n, quota)) if quota is not None else max(1, n)


def _cgroup_cpu_limit(path: Path) -> int | None:
    """Whole cores allowed by ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``), None without a limit."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, int(float(quota) / float(period) + 0.5))


def _cpu_ticks(stat: Path, cpus: set[int]) -> tuple[int, int]:
    """(busy, total) clock ticks summed over ``cpus`` from a ``/proc/stat`` snapshot."""
    busy = total = 0
    for line in stat.read_text().splitlines():
        name = line.split(maxsplit=1)[0]
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        fields = [int(v) for v in line.split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        total += sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
        busy += sum(fields[:8]) - idle
    return busy, total


def _own_ticks() -> int:
    """This process's user + system CPU time in clock ticks (all its threads)."""
    t = os.times()
    return int((t.user + t.system) * os.sysconf("SC_CLK_TCK"))


def busy_cores_elsewhere(sample_s: float = 0.2, stat: Path = Path("/proc/stat")) -> float:
    """Cores (of those this process may use) that other processes kept busy over ``sample_s`` seconds.

    Returns 0.0 where ``/proc/stat`` cannot be read (not Linux): the caller then uses every usable core.
    """
    try:
        cpus = os.sched_getaffinity(0)
        busy0, total0 = _cpu_ticks(stat, cpus)
        own0 = _own_ticks()
        time.sleep(sample_s)
        busy1, total1 = _cpu_ticks(stat, cpus)
        own1 = _own_ticks()
    except (OSError, AttributeError, ValueError, IndexError):
        return 0.0
    total = total1 - total0
    if total <= 0:
        return 0.0
    busy = max(0, (busy1 - busy0) - (own1 - own0))
    return len(cpus) * busy / total


def choose_threads(requested: int | str = "auto", sample_s: float = 0.2) -> ThreadChoice:
    """The thread count for ``requested``: ``"auto"`` (free cores, see the module docstring) or a count.

    Raises:
        ValueError: ``requested`` is neither ``"auto"`` nor a positive integer (or its string).
    """
    cores = usable_cores()
    if requested != "auto":
        try:
            n = int(requested)
        except (TypeError, ValueError):
            n = 0
        if n < 1:
            raise ValueError(f"threads must be 'auto' or a positive integer, got {requested!r}")
        return ThreadChoice(n, cores, 0.0, f"{n} thread(s) as requested ({cores} usable core(s))")
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return ThreadChoice(int(env), cores, 0.0, f"{env} thread(s) from OMP_NUM_THREADS")
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if local.isdigit() and int(local) > 1:
        n = max(1, cores // int(local))
        return ThreadChoice(
            n, cores, 0.0, f"{n} thread(s): {cores} usable core(s) shared by {local} processes"
        )
    busy = busy_cores_elsewhere(sample_s) if cores > 1 else 0.0
    n = max(1, cores - int(busy + 0.5))
    why = f"{n} thread(s): {cores} usable core(s), {busy:.1f} busy with other processes"
    return ThreadChoice(n, cores, busy, why)


def apply_threads(choice: ThreadChoice) -> int:
    """Set torch's intra-op thread count to ``choice.threads`` and numba's parallel kernels to match; returns it.

    It logs nothing: the caller prints or logs ``choice.reason`` where its run's output goes."""
    import torch

    from perception.ops._backend import match_torch_threads

    torch.set_num_threads(choice.threads)
    return match_torch_threads()


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads auto|N`` (default ``auto``) on a tool's parser; pass its value to :func:`use_free_cores`."""
    parser.add_argument(
        "--threads",
        default="auto",
        metavar="auto|N",
        help="threads for torch and numba together; auto (default): the cores free at start-up "
        "(perception.engine.threads)",
    )


def use_free_cores(requested: int | str = "auto") -> ThreadChoice:
    """:func:`choose_threads` then :func:`apply_threads`: what ``--threads`` does in the tools."""
    choice = choose_threads(requested)
    apply_threads(choice)
    return choice
