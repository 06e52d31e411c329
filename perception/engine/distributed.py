"""Multi-process training and evaluation on ``torch.distributed`` (launched by ``torchrun``): set-up, sampling, reductions.

``launcher="pytorch"`` reads what ``torchrun`` exports (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins the process group: NCCL when CUDA is available (one GPU per process,
``cuda:LOCAL_RANK``), gloo on the CPU. Multi-node works the same way (``torchrun --nnodes ... --rdzv-endpoint``).
``launcher="none"`` is a single process.

Every process loads ``batch_size`` samples per step (the per-GPU batch); the global batch is ``batch_size *
world_size``. :class:`ShardedSampler` gives each rank a disjoint, equally long share of a seeded per-epoch
permutation, and can start part-way through an epoch for exact resumption.

Evaluation (``tools/test.py --launcher pytorch``): each rank runs inference on every ``world_size``-th sample
(:func:`perception.engine.inference.run_inference` with ``dist``) and :func:`gather_object` brings the
detections to rank 0, which scores and writes the results; the metrics equal a single process's.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "ShardedSampler",
    "SkipSampler",
    "all_gather_object",
    "all_true",
    "barrier",
    "cleanup_distributed",
    "convert_sync_batchnorm",
    "gather_object",
    "init_distributed",
    "reduce_mean",
    "sync_buffers",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        local_rank: rank on this node (selects the GPU).
        world_size: number of processes.
        backend: ``"gloo"``, ``"nccl"`` or None (single process, no process group).
        device: this process's device.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def _env_int(name: str) -> int:
    value = os.environ.get(name)
    if value is None:
        raise RuntimeError(
            f"--launcher pytorch needs the environment variable {name} set by torchrun, e.g. "
            "torchrun --nproc-per-node 2 tools/train.py CONFIG --launcher pytorch"
        )
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(
    launcher: Literal["none", "pytorch"], *, timeout_minutes: float = 30.0, device: str | None = None
) -> DistInfo:
    """Set up this process: a single process (``"none"``) or a member of a ``torchrun`` job (``"pytorch"``).

    Args:
        launcher: ``"none"`` or ``"pytorch"``.
        timeout_minutes: collective-operation timeout.
        device: force ``"cpu"`` or ``"cuda"``; default: CUDA when available.

    Raises:
        ValueError: an unknown launcher or device.
        RuntimeError: ``"pytorch"`` without torchrun's environment, or CUDA requested but unavailable.
    """
    if launcher not in ("none", "pytorch"):
        raise ValueError(f"launcher must be 'none' or 'pytorch', got {launcher!r}")
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}")
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but torch sees no GPU")
    if launcher == "none":
        return DistInfo(device=torch.device("cuda", 0) if use_cuda else torch.device("cpu"))
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend=backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return DistInfo(rank=rank, local_rank=local, world_size=world, backend=backend, device=dev)


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group (if any), all ranks together.

    The barrier first: a rank that tears down its gloo connections while a peer is still using them makes the
    peer's transport thread abort the process (``terminate called without an active exception``, SIGABRT).
    """
    if info.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_true(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` is True on every rank (a collective: every rank must call it)."""
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([0 if flag else 1], dtype=torch.int32, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return int(t.item()) == 0


def reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Mean over ranks of a dict of floats with the same keys on every rank (collective)."""
    if not info.distributed or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def all_gather_object(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (collective; picklable objects)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, info: DistInfo, dst: int = 0) -> list[Any] | None:
    """``[obj of rank 0, obj of rank 1, ...]`` on rank ``dst``, None on the others (collective; picklable objects).

    Single process: ``[obj]``. Unlike :func:`all_gather_object`, only ``dst`` holds the whole list in memory.
    """
    if not info.distributed:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def sync_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank (collective).

    ``DistributedDataParallel`` keeps the parameters identical, but each rank's last forward updates its own
    BatchNorm statistics; after this call the whole state is identical on every rank.
    """
    if not info.distributed:
        return
    with torch.no_grad():
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def convert_sync_batchnorm(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """Replace BatchNorm layers by ``torch.nn.SyncBatchNorm`` (``--sync-bn``).

    Raises:
        ValueError: on the CPU: torch's SyncBatchNorm only runs on GPUs, so asking for it there is an error rather
            than a silent no-op.
    """
    if info.device.type != "cuda":
        raise ValueError(
            "--sync-bn needs GPUs: torch.nn.SyncBatchNorm does not run on the CPU (gloo). Train without --sync-bn"
        )
    if not info.distributed:
        logger.warning("--sync-bn with a single process changes nothing (statistics are already global)")
        return model
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


class ShardedSampler(torch.utils.data.Sampler[int]):
    """Seeded per-epoch permutation of ``range(size)`` split across ranks (like ``DistributedSampler``).

    The permutation (``shuffle``) is drawn from ``numpy.random.default_rng([seed, epoch])``, independent of any
    global generator; it is padded by wrapping around so every rank yields ``ceil(size / num_replicas)`` indices;
    rank ``r`` takes positions ``r, r + num_replicas, ...``.

    Args:
        size: dataset length, ``>= 1``.
        num_replicas, rank: the job's world size and this process's rank.
        shuffle: permute every epoch (otherwise in order).
        seed: base seed, the same on every rank.
    """

    def __init__(
        self, size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0
    ) -> None:
        if size < 1:
            raise ValueError(f"ShardedSampler needs a non-empty dataset, got size {size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}"
            )
        self.size, self.num_replicas, self.rank = int(size), int(num_replicas), int(rank)
        self.shuffle, self.seed, self.epoch = bool(shuffle), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def epoch_indices(self) -> np.ndarray:
        """int64 indices this rank yields in the current epoch."""
        idx = (
            np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
            if self.shuffle
            else np.arange(self.size)
        )
        idx = np.resize(idx, len(self) * self.num_replicas)
        return idx[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices().tolist())

    def __len__(self) -> int:
        return -(-self.size // self.num_replicas)


class SkipSampler(torch.utils.data.Sampler[int]):
    """Yield the indices of ``inner`` from position ``skip`` on (resuming part-way through an epoch).

    ``inner`` must yield the same sequence when iterated again for the same epoch (both samplers here do).
    """

    def __init__(self, inner: torch.utils.data.Sampler[int], skip: int) -> None:
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        self.inner, self.skip = inner, int(skip)

    def __iter__(self) -> Iterator[int]:
        for i, index in enumerate(self.inner):
            if i >= self.skip:
                yield index

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)  # type: ignore[arg-type]
