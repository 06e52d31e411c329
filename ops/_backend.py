"""Backend selection and torch <-> numba CUDA array plumbing shared by every op.

Every op in :mod:`perception.ops` has three implementations:

* ``"torch"`` -- the plain-torch reference (any device; slow but obviously correct),
* ``"cpu"``   -- numba ``@njit`` kernels, used for CPU tensors,
* ``"cuda"``  -- numba CUDA kernels, used for CUDA tensors.

``backend=None`` picks from the device of the input tensors. ``backend="cuda"`` on CPU tensors is allowed
only for testing: the inputs are copied to (simulated) device memory and the results copied back. This is how
the CUDA kernels are tested without a GPU, with ``NUMBA_ENABLE_CUDASIM=1`` set before numba is imported.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch

Backend = Literal["torch", "cpu", "cuda"]
BACKENDS: tuple[Backend, ...] = ("torch", "cpu", "cuda")


def pick_backend(tensor: torch.Tensor, backend: str | None = None) -> Backend:
    """Return the backend to run an op with.

    Args:
        tensor: the op's main input; its device decides when ``backend`` is None.
        backend: ``None`` (by device), ``"torch"``, ``"cpu"`` or ``"cuda"``.

    Raises:
        ValueError: unknown backend name, or ``"cpu"`` asked for a CUDA tensor.
    """
    if backend is None:
        return "cuda" if tensor.is_cuda else "cpu"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "cpu" and tensor.is_cuda:
        raise ValueError("backend='cpu' needs CPU tensors; move the input with .cpu() or use backend='cuda'")
    return backend  # type: ignore[return-value]


def cuda_simulator_enabled() -> bool:
    """True when numba's CUDA simulator is switched on (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") == "1"


def numba_cuda() -> Any:
    """Import and return ``numba.cuda`` lazily (importing it costs time and may fail without a driver)."""
    from numba import cuda

    return cuda


def check_cuda_usable(tensor: torch.Tensor) -> None:
    """Raise a clear error when the CUDA backend cannot run for ``tensor``.

    CUDA tensors need a working numba CUDA driver; CPU tensors need the simulator.
    """
    cuda = numba_cuda()
    if tensor.is_cuda:
        if not cuda.is_available():
            raise RuntimeError("numba.cuda cannot see a GPU although the tensor is on CUDA; check numba-cuda")
        return
    if not cuda_simulator_enabled():
        raise RuntimeError(
            "backend='cuda' on CPU tensors runs only in numba's CUDA simulator: set NUMBA_ENABLE_CUDASIM=1 "
            "before numba is imported, or pass CUDA tensors"
        )


def to_device_array(tensor: torch.Tensor) -> Any:
    """A numba CUDA array viewing ``tensor``.

    CUDA tensors are wrapped zero-copy through ``__cuda_array_interface__`` (writes land in the tensor).
    CPU tensors (simulator only) are copied; call :func:`copy_back` after the kernel for outputs.
    """
    cuda = numba_cuda()
    t = tensor.contiguous()
    if t.is_cuda:
        return cuda.as_cuda_array(t.detach())
    return cuda.to_device(t.detach().numpy())


def copy_back(device_array: Any, tensor: torch.Tensor) -> None:
    """Copy a kernel output back into ``tensor`` when it was a CPU tensor (no-op for CUDA tensors)."""
    if tensor.is_cuda:
        return
    tensor.copy_(torch.from_numpy(device_array.copy_to_host()))


def launch_stream(tensor: torch.Tensor) -> Any:
    """The numba stream to launch on: torch's current stream for CUDA tensors, the default stream otherwise."""
    cuda = numba_cuda()
    if tensor.is_cuda:
        return cuda.external_stream(torch.cuda.current_stream(tensor.device).cuda_stream)
    return 0


def blocks_for(n: int, threads: int = 256) -> int:
    """Number of blocks of ``threads`` threads covering ``n`` items (at least 1)."""
    return max(1, (n + threads - 1) // threads)


def match_torch_threads() -> int:
    """Call before a ``parallel=True`` numba kernel: use as many threads as torch does, and return that number.

    numba's OpenMP threading layer shares the OpenMP runtime with torch and sets the runtime's thread count before
    every parallel region (default: all cores). Without this, the first parallel numba kernel silently raises
    torch's thread count (e.g. from ``OMP_NUM_THREADS=1`` under ``torchrun`` to the core count), oversubscribing
    shared machines and DataLoader workers. Setting numba's count to torch's keeps both unchanged.
    """
    import numba

    wanted = torch.get_num_threads()
    n = max(1, min(wanted, int(numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)  # the first call starts numba's layer, which resets the OpenMP runtime ...
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)  # ... so give torch its count back
    return n
