"""perception.models.cpu_linear: the oneDNN route equals F.linear (+ activation) and is taken only where it may."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from perception.models.cpu_linear import ACTIVATIONS, linear, onednn_linear_available, uses_onednn

needs_onednn = pytest.mark.skipif(
    not onednn_linear_available(), reason="this torch build has no oneDNN linear op"
)


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str | None) -> torch.Tensor:
    out = F.linear(x, w, b)
    return out if act is None else ACTIVATIONS[act](out)


@needs_onednn
@pytest.mark.parametrize("act", [None, "gelu", "relu"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(0, 32), (1, 32), (517, 128), (3, 41, 256)])
def test_onednn_route_equals_f_linear(shape: tuple[int, ...], bias: bool, act: str | None) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(96, shape[-1], generator=g) / shape[-1] ** 0.5
    b = torch.randn(96, generator=g) if bias else None
    with torch.no_grad():
        assert uses_onednn(x, w)
        got = linear(x, w, b, act)
    assert got.shape == (*shape[:-1], 96) and got.dtype == torch.float32
    torch.testing.assert_close(got, _reference(x, w, b, act), atol=1e-5, rtol=1e-5)


@needs_onednn
@pytest.mark.parametrize("rows", [0, 3, 700])
def test_fused_residual_is_the_same_addition(rows: int) -> None:
    """residual + linear(x): the fused oneDNN add gives bit for bit the separate float32 addition."""
    g = torch.Generator().manual_seed(3)
    x, w, b = (
        torch.randn(rows, 256, generator=g),
        torch.randn(128, 256, generator=g),
        torch.randn(128, generator=g),
    )
    r = torch.randn(rows, 256, generator=g)[:, ::2]  # strided residual
    with torch.no_grad():
        got = linear(x, w, b, residual=r)
        assert torch.equal(got, r + linear(x, w, b))
    torch.testing.assert_close(got, r + F.linear(x, w, b), atol=1e-4, rtol=1e-5)


def test_residual_falls_back_when_not_fusable() -> None:
    """Broadcast or non-float32 residuals, and autocast, take the plain addition."""
    g = torch.Generator().manual_seed(4)
    x, w, b = torch.randn(9, 16, generator=g), torch.randn(8, 16, generator=g), torch.randn(8, generator=g)
    with torch.no_grad():
        row = torch.randn(8, generator=g)
        torch.testing.assert_close(linear(x, w, b, residual=row), row + F.linear(x, w, b))
        r64 = torch.randn(9, 8, generator=g, dtype=torch.float64)
        assert linear(x, w, b, residual=r64).dtype == torch.float64
        with torch.autocast("cpu", dtype=torch.bfloat16):
            r = torch.randn(9, 8, generator=g)
            out = linear(x, w, b, residual=r)
        assert out.dtype == torch.float32  # float32 residual + bfloat16 product
        torch.testing.assert_close(out, r + F.linear(x, w, b), atol=0.1, rtol=0.02)
    with pytest.raises(ValueError, match="residual"):
        linear(x, w, b, "relu", residual=torch.zeros(9, 8))


@needs_onednn
def test_onednn_route_takes_strided_inputs_and_weight_slices() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 256, generator=g)[:, 64:192]  # row stride 256
    w = torch.randn(384, 128, generator=g)
    with torch.no_grad():
        got = linear(x, w[128:256], None)
    torch.testing.assert_close(got, F.linear(x, w[128:256]), atol=1e-5, rtol=1e-5)


def test_falls_back_where_onednn_does_not_apply() -> None:
    """With autograd recording, under autocast, or for other dtypes: F.linear itself, so the results match
    bit for bit, gradients flow and autocast picks the dtype."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 32, generator=g)
    w = torch.randn(16, 32, generator=g, requires_grad=True)
    b = torch.randn(16, generator=g)
    assert not uses_onednn(x, w)  # grad enabled and w requires grad
    out = linear(x, w, b, "gelu")
    assert torch.equal(out, F.gelu(F.linear(x, w, b)))
    out.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn(x, w)
        assert linear(x, w, b).dtype == torch.bfloat16
    with torch.no_grad():
        xd, wd = x.double(), w.detach().double()
        assert not uses_onednn(xd, wd)
        assert torch.equal(linear(xd, wd, b.double(), "relu"), F.relu(F.linear(xd, wd, b.double())))


def test_rejects_unknown_activation() -> None:
    with pytest.raises(ValueError, match="activation"):
        linear(torch.randn(2, 3), torch.randn(4, 3), None, "tanh")
