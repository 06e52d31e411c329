"""scatter: numba CPU vs torch reference vs numba CUDA (simulator), gradients with gradcheck."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perception.ops.scatter import _forward, scatter, scatter_reference

REDUCES = ("sum", "mean", "max")


def random_case(
    n: int, c: int, s: int, seed: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, c, generator=g).to(dtype)
    index = torch.randint(-1, max(s - 2, 0), (n,), generator=g)  # -1 rows, and the last two segments empty
    return feats, index


@pytest.mark.parametrize("reduce", REDUCES)
def test_cpu_matches_reference(reduce: str) -> None:
    feats, index = random_case(5000, 7, 300, seed=0)
    feats[10:20] = feats[0]  # ties for max
    index[10:20] = index[0] if index[0] >= 0 else 0
    ref, ref_arg, ref_counts = scatter_reference(feats, index, 300, reduce)
    out, arg, counts = _forward(feats, index, 300, reduce, "cpu")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, ref_counts)
    if reduce == "max":
        assert torch.equal(out, ref) and torch.equal(arg, ref_arg)
    assert not out[-2:].any()  # empty segments give 0
    assert torch.equal(scatter(feats, index, 300, reduce), out)


@pytest.mark.parametrize("reduce", REDUCES)
def test_cuda_bit_identical_to_cpu(reduce: str, cuda_backend_device: torch.device) -> None:
    feats, index = random_case(300, 3, 40, seed=1)
    feats[5, 1] = float("nan")
    cpu, cpu_arg, cpu_counts = _forward(feats, index, 40, reduce, "cpu")
    dev = cuda_backend_device
    gpu, gpu_arg, gpu_counts = _forward(feats.to(dev), index.to(dev), 40, reduce, "cuda")
    assert torch.equal(cpu.nan_to_num(123.0), gpu.cpu().nan_to_num(123.0))
    assert torch.equal(cpu.isnan(), gpu.cpu().isnan())
    assert torch.equal(cpu_counts, gpu_counts.cpu())
    if reduce == "max":
        assert torch.equal(cpu_arg, gpu_arg.cpu())


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
@pytest.mark.parametrize("reduce", REDUCES)
def test_gradcheck(reduce: str, backend: str, cuda_backend_device: torch.device) -> None:
    dev = cuda_backend_device if backend == "cuda" else torch.device("cpu")
    feats, index = random_case(10, 2, 5, seed=2, dtype=torch.float64)
    feats = feats.to(dev).requires_grad_(True)
    index = index.to(dev)
    assert torch.autograd.gradcheck(lambda f: scatter(f, index, 5, reduce, backend=backend), (feats,))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_max_gradient_goes_to_first_tied_point_and_ignored_rows_get_none(backend: str) -> None:
    feats = torch.tensor([[1.0, 5.0], [3.0, 5.0], [3.0, 2.0], [9.0, 9.0]], requires_grad=True)
    index = torch.tensor([0, 0, 0, -1])
    out = scatter(feats, index, 2, "max", backend=backend)
    assert out.tolist() == [[3.0, 5.0], [0.0, 0.0]]
    out.backward(torch.tensor([[10.0, 20.0], [30.0, 40.0]]))
    assert feats.grad is not None
    assert feats.grad.tolist() == [[0.0, 20.0], [10.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    feats.grad = None
    scatter(feats, index, 2, "mean", backend=backend).sum().backward()
    assert torch.equal(feats.grad, torch.tensor([[1 / 3, 1 / 3]] * 3 + [[0.0, 0.0]]))


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
def test_empty_and_all_ignored(backend: str, cuda_backend_device: torch.device) -> None:
    dev = cuda_backend_device if backend == "cuda" else torch.device("cpu")
    for reduce in REDUCES:
        out = scatter(
            torch.zeros(0, 3, device=dev), torch.zeros(0, dtype=torch.int64, device=dev), 4, reduce, backend
        )
        assert out.shape == (4, 3) and not out.any()
        out = scatter(torch.ones(5, 2, device=dev), torch.full((5,), -1, device=dev), 3, reduce, backend)
        assert out.shape == (3, 2) and not out.any()
        out = scatter(
            torch.zeros(0, 3, device=dev), torch.zeros(0, dtype=torch.int64, device=dev), 0, reduce, backend
        )
        assert out.shape == (0, 3)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_nan_and_inf_propagate(backend: str) -> None:
    feats = torch.tensor([[1.0, float("inf")], [float("nan"), 2.0], [4.0, 3.0], [0.5, 0.5]])
    index = torch.tensor([0, 0, 0, 1])
    s = scatter(feats, index, 2, "sum", backend=backend)
    m = scatter(feats, index, 2, "max", backend=backend)
    assert s[0, 0].isnan() and s[0, 1] == float("inf") and s[1].tolist() == [0.5, 0.5]
    assert m[0, 0].isnan() and m[0, 1] == float("inf") and m[1].tolist() == [0.5, 0.5]


@pytest.mark.parametrize(
    "args,err,match",
    [
        (
            (torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3, dtype=torch.int64), 2),
            TypeError,
            "features must have dtype",
        ),
        ((torch.zeros(3), torch.zeros(3, dtype=torch.int64), 2), ValueError, "features must be 2-D"),
        ((torch.zeros(3, 2), torch.zeros(3, dtype=torch.int32), 2), TypeError, "index must have dtype int64"),
        ((torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64), 2), ValueError, "index must have shape"),
        ((torch.zeros(3, 2), torch.tensor([0, 1, 2]), 2), ValueError, r"index values must be in \[-1, 2\)"),
        ((torch.zeros(3, 2), torch.tensor([0, -2, 1]), 2), ValueError, "index values"),
        ((torch.zeros(3, 2), torch.tensor([0, 0, 1]), -1), ValueError, "num_segments must be an int >= 0"),
        ((torch.zeros(3, 2), torch.tensor([0, 0, 1]), 2.0), ValueError, "num_segments must be an int >= 0"),
    ],
)
def test_bad_inputs(args: tuple, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        scatter(*args)
    with pytest.raises(ValueError, match="reduce must be one of"):
        scatter(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64), 2, "min")  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(0, 40),
    c=st.integers(1, 4),
    s=st.integers(0, 8),
    reduce=st.sampled_from(REDUCES),
    seed=st.integers(0, 2**16),
)
def test_property_cpu_equals_reference(n: int, c: int, s: int, reduce: str, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    feats = torch.randint(-3, 4, (n, c), generator=g).to(
        torch.float64
    )  # small integers: many ties, exact sums
    index = torch.randint(-1, s, (n,), generator=g) if s > 0 else torch.full((n,), -1)
    ref, ref_arg, ref_counts = scatter_reference(feats, index, s, reduce)
    out, arg, counts = _forward(feats, index, s, reduce, "cpu")
    assert torch.equal(counts, ref_counts)
    torch.testing.assert_close(out, ref)
    if reduce == "max":
        assert torch.equal(arg, ref_arg)
        assert torch.equal(out, ref)
    else:
        expect = torch.zeros(s, c, dtype=torch.float64)
        for i in range(n):
            if index[i] >= 0:
                expect[index[i]] += feats[i]
        if reduce == "mean":
            expect /= counts.clamp(min=1)[:, None]
        torch.testing.assert_close(out, expect)
