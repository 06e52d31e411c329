"""Two CPU processes with gloo: both ranks end with identical weights (although they start from different random
initialisations and see different samples), a NaN loss on one rank makes both skip the step, rank 0 writes one
checkpoint holding both ranks' generator states, and the sharded sampler splits every epoch disjointly.

The processes are started with ``torch.multiprocessing.spawn`` inside a subprocess (with a timeout, so a
deadlocked collective fails the test instead of hanging the suite); they find each other through the same
environment variables ``torchrun`` sets.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.engine.checkpoint import load_checkpoint
from perception.engine.distributed import DistInfo, ShardedSampler, SkipSampler, init_distributed

TESTS = Path(__file__).resolve().parent
WORLD = 2


def _worker(rank: int, out_dir: str, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from test_engine_standin import StandInDetector, SyntheticSet

    from perception.engine.distributed import cleanup_distributed
    from perception.engine.rng import seed_everything
    from perception.engine.trainer import Trainer
    from perception.train_config import TrainConfig

    dist = init_distributed("pytorch", timeout_minutes=2)
    seed_everything(100 + rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = StandInDetector()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(batch_size=2, epochs=2, log_interval=2, lr_scaling="linear", lr_reference_batch=2)
    t = Trainer(
        model=model, train_set=SyntheticSet(size=12), cfg=cfg, run_dir=Path(out_dir) / "run", dist=dist,
        class_names=("car", "pedestrian"), show_progress=False,
    )  # fmt: skip
    first = t.fit(max_iterations=2)
    if rank == 1:
        model.nan_next = True  # only rank 1 sees a NaN loss
    nan = t.fit(max_iterations=3)
    rest = t.fit()
    torch.save(
        {
            "initial": initial,
            "final": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "losses": first.losses + nan.losses + rest.losses,
            "nan_skipped": nan.skipped_steps,
            "rest_skipped": rest.skipped_steps,
            "iteration": t.iteration,
            "lr": t.lr,
            "indices": t.sampler.epoch_indices().tolist(),  # type: ignore[attr-defined]
        },
        Path(out_dir) / f"rank{rank}.pt",
    )
    cleanup_distributed(dist)


def _launch(out_dir: str, port: int) -> None:
    torch.multiprocessing.spawn(_worker, args=(out_dir, port), nprocs=WORLD, join=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(tmp_path: Path) -> None:
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_engine_distributed as t; " + (
        f"t._launch({str(tmp_path)!r}, {_free_port()})"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))

    assert any(not torch.equal(r0["initial"][k], r1["initial"][k]) for k in r0["initial"])
    for k in r0["final"]:
        assert torch.equal(r0["final"][k], r1["final"][k]), k
    assert any(not torch.equal(r0["final"][k], r0["initial"][k]) for k in r0["final"])
    assert r0["losses"] != r1["losses"]  # each rank trained on its own share of the data
    assert set(r0["indices"]).isdisjoint(r1["indices"])
    assert r0["nan_skipped"] == r1["nan_skipped"] == 1  # NaN on rank 1 only: both skipped the step
    assert r0["rest_skipped"] == r1["rest_skipped"] == 0
    assert r0["iteration"] == r1["iteration"] == 6  # 12 samples / 2 ranks / batch 2 = 3 per epoch, 2 epochs
    assert r0["lr"] == pytest.approx(3e-3 * 2)  # linear scaling: global batch 4 vs reference 2

    ckpts = sorted(p.name for p in (tmp_path / "run" / "ckpt").iterdir())
    # stopped after 2 iterations (mid-epoch), then at 3 (= end of epoch 1), then the end of epoch 2
    assert ckpts == ["checkpoint_epoch_0_iter_2.pth", "checkpoint_epoch_1.pth", "checkpoint_epoch_2.pth"]
    state = load_checkpoint(tmp_path / "run" / "ckpt" / ckpts[-1])
    assert state.world_size == 2 and len(state.rng) == 2
    assert not torch.equal(state.rng[0]["torch"], state.rng[1]["torch"])
    for k, v in r0["final"].items():
        assert torch.equal(state.model[k], v), k


def test_sharded_sampler_partitions_each_epoch() -> None:
    samplers = [ShardedSampler(11, num_replicas=3, rank=r, seed=5) for r in range(3)]
    for epoch in (0, 1):
        parts = []
        for s in samplers:
            s.set_epoch(epoch)
            parts.append(list(s))
        assert all(len(p) == 4 for p in parts)  # ceil(11 / 3), padded by wrapping around
        assert sorted(set().union(*map(set, parts))) == list(range(11))
        assert sum(len(p) for p in parts) == 12
    samplers[0].set_epoch(0)
    e0 = list(samplers[0])
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != e0  # reshuffled per epoch
    samplers[0].set_epoch(0)
    assert list(samplers[0]) == e0  # deterministic per (seed, epoch)
    assert list(SkipSampler(samplers[0], 3)) == e0[3:]
    assert list(ShardedSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="non-empty"):
        ShardedSampler(0)
    with pytest.raises(ValueError, match="rank"):
        ShardedSampler(5, num_replicas=2, rank=2)
    assert isinstance(np.asarray(e0), np.ndarray)


def test_init_distributed_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert init_distributed("none") == DistInfo(device=torch.device("cpu"))
    with pytest.raises(ValueError, match="launcher"):
        init_distributed("slurm")  # type: ignore[arg-type]
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="RANK set by torchrun"):
        init_distributed("pytorch")


def test_sync_bn_on_cpu_is_a_clear_error() -> None:
    from perception.engine.distributed import convert_sync_batchnorm

    with pytest.raises(ValueError, match="--sync-bn needs GPUs"):
        convert_sync_batchnorm(torch.nn.BatchNorm1d(3), DistInfo())
