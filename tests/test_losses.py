"""Shared detection losses vs straightforward float64 references written element by element."""

from __future__ import annotations

import math

import pytest
import torch

from perception.models.losses import (
    clamped_sigmoid,
    gaussian_focal_loss,
    sigmoid_focal_loss,
    weighted_l1_loss,
)


def _gaussian_focal_reference(logits: torch.Tensor, target: torch.Tensor, eps: float = 1e-4) -> float:
    """Element-by-element CornerNet loss with CenterPoint's clamped sigmoid, in Python floats."""
    total, num_pos = 0.0, 0
    for x, y in zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True):
        p = min(max(1.0 / (1.0 + math.exp(-x)), eps), 1.0 - eps)
        if y == 1.0:
            num_pos += 1
            total += -((1 - p) ** 2) * math.log(p)
        else:
            total += -((1 - y) ** 4) * p**2 * math.log(1 - p)
    return total / max(num_pos, 1)


def _heatmap_target(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(2, 3, 6, 7, generator=g) * 0.9
    target[0, 1, 2, 3] = 1.0
    target[1, 2, 4, 5] = 1.0
    target[1, 0, 0, 0] = 1.0
    target[0, 0, :2, :2] = 0.0
    return target


def test_gaussian_focal_matches_reference() -> None:
    target = _heatmap_target(0)
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(1)) * 3
    got = gaussian_focal_loss(logits, target)
    assert got.dtype == torch.float32 and got.ndim == 0
    assert got.item() == pytest.approx(_gaussian_focal_reference(logits, target), rel=1e-5)
    # probabilities in, same value
    probs = torch.sigmoid(logits)
    assert gaussian_focal_loss(probs, target, from_logits=False).item() == pytest.approx(got.item(), rel=1e-5)


def test_gaussian_focal_no_positives_is_normalised_by_one() -> None:
    target = torch.rand(1, 2, 4, 4, generator=torch.Generator().manual_seed(2)) * 0.5
    logits = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    got = gaussian_focal_loss(logits, target)
    assert got.item() == pytest.approx(_gaussian_focal_reference(logits, target), rel=1e-5)
    assert got.item() > 0
    # avg_factor overrides the normaliser
    assert gaussian_focal_loss(logits, target, avg_factor=4.0).item() == pytest.approx(
        got.item() / 4, rel=1e-6
    )


def test_gaussian_focal_near_zero_for_perfect_and_large_for_wrong() -> None:
    # the minimiser is a confident one-hot at the centres (soft targets only down-weight the negatives)
    target = _heatmap_target(4)
    perfect = torch.where(target == 1, 20.0, -20.0)
    assert gaussian_focal_loss(perfect, target).item() < 1e-6
    assert gaussian_focal_loss(-perfect, target).item() > 1.0
    as_target = torch.logit(target.clamp(1e-6, 1 - 1e-6))  # predicting the soft target itself costs more
    assert gaussian_focal_loss(as_target, target).item() > gaussian_focal_loss(perfect, target).item() + 0.1


def test_gaussian_focal_gradient_and_clamp() -> None:
    target = _heatmap_target(5)
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    logits[0, 0, 5, 6] = 50.0  # clamped cell: no gradient, as CenterPoint
    logits.requires_grad_(True)
    gaussian_focal_loss(logits, target).backward()
    assert logits.grad is not None and bool(torch.isfinite(logits.grad).all())
    assert logits.grad[0, 0, 5, 6].item() == 0.0
    # compare with autograd through an independent float64 formula
    x = logits.detach().clone().requires_grad_(True)
    p = torch.sigmoid(x).clamp(1e-4, 1 - 1e-4)
    pos = target == 1
    ref = -torch.where(pos, (1 - p) ** 2 * torch.log(p), (1 - target) ** 4 * p**2 * torch.log(1 - p)).sum()
    (ref / pos.sum()).backward()
    torch.testing.assert_close(logits.grad, x.grad.float().double(), rtol=1e-4, atol=1e-6)


def test_clamped_sigmoid_range() -> None:
    p = clamped_sigmoid(torch.tensor([-100.0, 0.0, 100.0]))
    assert p.tolist() == pytest.approx([1e-4, 0.5, 1 - 1e-4])


def _sigmoid_focal_reference(x: float, y: float, alpha: float, gamma: float) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    pos = -((1 - p) ** gamma) * math.log(p)
    neg = -(p**gamma) * math.log(1 - p)
    if alpha >= 0:
        pos, neg = alpha * pos, (1 - alpha) * neg
    return y * pos + (1 - y) * neg  # linear in y: also the soft-target definition via BCE


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.5)])
def test_sigmoid_focal_matches_reference_hard_targets(alpha: float, gamma: float) -> None:
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(20, 4, generator=g) * 3
    targets = torch.nn.functional.one_hot(torch.randint(0, 5, (20,), generator=g), 5)[:, :4].float()
    got = sigmoid_focal_loss(logits, targets, alpha, gamma)
    ref = torch.tensor(
        [
            _sigmoid_focal_reference(x, y, alpha, gamma)
            for x, y in zip(logits.flatten().tolist(), targets.flatten().tolist(), strict=True)
        ]
    ).view(20, 4)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert sigmoid_focal_loss(logits, targets, alpha, gamma, "sum").item() == pytest.approx(
        ref.sum().item(), rel=1e-5
    )
    assert sigmoid_focal_loss(logits, targets, alpha, gamma, "mean").item() == pytest.approx(
        ref.mean().item(), rel=1e-5
    )
    w = torch.rand(20, 1, generator=g)
    assert sigmoid_focal_loss(
        logits, targets, alpha, gamma, "mean", weight=w, avg_factor=3.0
    ).item() == pytest.approx((ref * w).sum().item() / 3.0, rel=1e-5)


def test_sigmoid_focal_gamma_zero_is_weighted_bce_and_stable() -> None:
    logits = torch.tensor([-200.0, -3.0, 0.0, 4.0, 200.0])
    targets = torch.tensor([1.0, 0.0, 1.0, 0.3, 0.0])
    got = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(got, ref)
    assert bool(torch.isfinite(sigmoid_focal_loss(logits, targets)).all())


def test_weighted_l1() -> None:
    g = torch.Generator().manual_seed(8)
    pred, target = torch.randn(2, 5, 10, generator=g), torch.randn(2, 5, 10, generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0]], dtype=torch.float32)[..., None]
    code_w = torch.tensor([1.0] * 8 + [0.2, 0.2])
    pred[0, 3] = float("nan")  # padded slot: ignored because its weight is 0
    target[1, 4] = float("inf")
    got = weighted_l1_loss(pred, target, mask * code_w, reduction="mean", avg_factor=4.0)
    ref = 0.0
    for b in range(2):
        for k in range(5):
            if mask[b, k, 0] > 0:
                ref += sum(
                    code_w[j].item() * abs(pred[b, k, j].item() - target[b, k, j].item()) for j in range(10)
                )
    assert got.item() == pytest.approx(ref / 4.0, rel=1e-5)
    assert weighted_l1_loss(pred[0, :2], target[0, :2]).item() == pytest.approx(
        (pred[0, :2] - target[0, :2]).abs().sum().item(), rel=1e-6
    )
    p = pred.clone().requires_grad_(True)
    weighted_l1_loss(p, target, mask * code_w).backward()
    assert p.grad is not None and bool(torch.isfinite(p.grad).all())
    assert p.grad[0, 3].abs().sum().item() == 0.0
    torch.testing.assert_close(p.grad[0, 0], torch.sign(pred[0, 0] - target[0, 0]) * code_w)
    # a non-finite value under a non-zero weight is not hidden
    bad = target.clone()
    bad[0, 0, 0] = float("nan")
    assert torch.isnan(weighted_l1_loss(pred, bad, mask))


def test_losses_under_bf16_inputs_compute_in_float32() -> None:
    target = _heatmap_target(9)
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(10))
    a = gaussian_focal_loss(logits.bfloat16(), target)
    b = gaussian_focal_loss(logits.bfloat16().float(), target)
    assert a.dtype == torch.float32 and a.item() == pytest.approx(b.item(), rel=1e-6)
    assert weighted_l1_loss(logits.bfloat16(), target).dtype == torch.float32
    assert sigmoid_focal_loss(logits.bfloat16(), target, reduction="sum").dtype == torch.float32


def test_loss_errors() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="same shape"):
        gaussian_focal_loss(x, torch.zeros(3, 2))
    with pytest.raises(TypeError, match="target must have dtype"):
        gaussian_focal_loss(x, torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="pred must be a torch.Tensor"):
        weighted_l1_loss([1.0], x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match="avg_factor"):
        gaussian_focal_loss(x, x, avg_factor=0.0)
    with pytest.raises(ValueError, match="avg_factor is only used"):
        weighted_l1_loss(x, x, reduction="sum", avg_factor=2.0)
    with pytest.raises(ValueError, match="does not broadcast"):
        weighted_l1_loss(x, x, torch.ones(4))
    with pytest.raises(ValueError, match="gamma"):
        sigmoid_focal_loss(x, x, gamma=-1.0)
