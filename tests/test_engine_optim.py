"""AdamW + one-cycle schedule: curve shape (OpenPCDet adam_onecycle semantics), momentum cycling, LR scaling,
and resuming from a saved state continuing the very same LR curve and optimiser trajectory."""

from __future__ import annotations

import io
import math

import pytest
import torch

from perception.engine.optim import OneCycleSchedule, build_optimizer, effective_lr
from perception.train_config import OneCycleConfig, OptimizerConfig, TrainConfig

CYCLE = OneCycleConfig(div_factor=10.0, pct_start=0.4, moms=(0.95, 0.85), final_div_factor=1e4)


def _setup(total: int = 50, lr: float = 0.01) -> tuple[torch.nn.Module, torch.optim.AdamW, OneCycleSchedule]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = build_optimizer(model, OptimizerConfig(lr=lr, weight_decay=0.01), lr)
    return model, opt, OneCycleSchedule(opt, lr, total, CYCLE)


def test_curve_endpoints_and_shape() -> None:
    _, _, sched = _setup(total=100, lr=0.01)
    lrs = [sched.lr_at(i) for i in range(101)]
    moms = [sched.momentum_at(i) for i in range(101)]
    assert lrs[0] == pytest.approx(0.001)  # lr / div_factor
    assert lrs[40] == pytest.approx(0.01)  # peak at pct_start * total
    assert lrs[100] == pytest.approx(0.001 / 1e4)  # lr / div_factor / final_div_factor
    assert all(a < b for a, b in zip(lrs[:40], lrs[1:41], strict=True))  # rising
    assert all(a > b for a, b in zip(lrs[40:100], lrs[41:101], strict=True))  # falling
    assert (
        moms[0] == pytest.approx(0.95)
        and moms[40] == pytest.approx(0.85)
        and moms[100] == pytest.approx(0.95)
    )
    # cosine halfway through the rise: the mean of start and peak
    assert lrs[20] == pytest.approx((0.001 + 0.01) / 2)
    assert moms[20] == pytest.approx((0.95 + 0.85) / 2)


def test_step_sets_lr_and_beta1_on_optimizer() -> None:
    _, opt, sched = _setup(total=10)
    for i in range(10):
        lr = sched.step()
        assert lr == pytest.approx(sched.lr_at(i))
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(lr)
            assert g["betas"][0] == pytest.approx(sched.momentum_at(i))
            assert g["betas"][1] == pytest.approx(0.99)


def _train(
    model: torch.nn.Module, opt: torch.optim.Optimizer, sched: OneCycleSchedule, steps: range
) -> list[float]:
    lrs = []
    for i in steps:
        gen = torch.Generator().manual_seed(i)
        x = torch.randn(8, 4, generator=gen)
        lrs.append(sched.step())
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return lrs


def test_resume_continues_same_curve_and_weights() -> None:
    model, opt, sched = _setup(total=30)
    straight = _train(model, opt, sched, range(30))

    model2, opt2, sched2 = _setup(total=30)
    first = _train(model2, opt2, sched2, range(15))
    buf = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict(), "sched": sched2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    model3, opt3, sched3 = _setup(total=30)  # fresh objects, as after a restart
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    sched3.load_state_dict(saved["sched"])
    assert opt3.param_groups[0]["lr"] == pytest.approx(sched.lr_at(15))
    second = _train(model3, opt3, sched3, range(15, 30))
    assert first + second == straight
    for a, b in zip(model.parameters(), model3.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_a_different_curve() -> None:
    _, _, sched = _setup(total=30)
    state = sched.state_dict()
    _, _, other = _setup(total=40)
    with pytest.raises(ValueError, match="differs from this run"):
        other.load_state_dict(state)


def test_effective_lr_scaling_is_explicit() -> None:
    opt = OptimizerConfig(lr=0.004)
    assert (
        effective_lr(opt, lr_scaling="none", per_process_batch=4, world_size=8, reference_batch=16) == 0.004
    )
    assert effective_lr(opt, lr_scaling="linear", per_process_batch=4, world_size=8, reference_batch=16) == (
        pytest.approx(0.008)
    )
    with pytest.raises(ValueError, match="lr_scaling"):
        effective_lr(opt, lr_scaling="sqrt", per_process_batch=4, world_size=1, reference_batch=16)
    with pytest.raises(ValueError, match="world_size=0"):
        effective_lr(opt, lr_scaling="none", per_process_batch=4, world_size=0, reference_batch=16)


def test_bad_arguments() -> None:
    _, opt, _ = _setup()
    with pytest.raises(ValueError, match="total_iters"):
        OneCycleSchedule(opt, 0.01, 0, CYCLE)
    with pytest.raises(ValueError, match="lr_max"):
        OneCycleSchedule(opt, math.nan, 10, CYCLE)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(frozen, OptimizerConfig(), 0.01)


def test_train_config_validation() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="pct_start"):
        OneCycleConfig(pct_start=1.5)
    with pytest.raises(ValidationError, match="fade_last_epochs"):
        TrainConfig(epochs=2, augment={"gt_sampling": {"sample_counts": {"car": 2}, "fade_last_epochs": 3}})
    with pytest.raises(ValidationError, match="extra"):
        TrainConfig(batchsize=2)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="rotation"):
        TrainConfig(augment={"rotation": (0.5, -0.5)})
