"""The training loop on the stand-in detector: exact resumption (bit-identical weights on the CPU in deterministic
mode), NaN / inf handling (the step is skipped, the weights untouched), bf16 autocast, checkpoints written by the
loop, the learning-rate curve across a resume, and the loss falling."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_engine_standin import StandInDetector, SyntheticSet

from perception.engine.amp import MixedPrecision
from perception.engine.checkpoint import load_checkpoint
from perception.engine.rng import seed_everything, set_deterministic
from perception.engine.trainer import Trainer
from perception.train_config import TrainConfig


@pytest.fixture(autouse=True)
def _one_thread_deterministic() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    set_deterministic(False)


def _trainer(run_dir: Path | None, **cfg_kwargs: object) -> Trainer:
    seed_everything(0)
    kwargs: dict[str, object] = dict(batch_size=4, epochs=3, log_interval=5, deterministic=True, keep_last=10)
    kwargs.update(cfg_kwargs)
    cfg = TrainConfig(**kwargs)  # type: ignore[arg-type]
    set_deterministic(cfg.deterministic)
    return Trainer(
        model=StandInDetector(),
        train_set=SyntheticSet(size=18),
        cfg=cfg,
        run_dir=run_dir,
        class_names=("car", "pedestrian"),
        config_dict={"note": "test"},
        show_progress=False,
    )


def _weights(t: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


def test_resume_mid_epoch_is_bit_identical(tmp_path: Path) -> None:
    straight = _trainer(tmp_path / "a")
    res_a = straight.fit()
    assert (res_a.epoch, res_a.iteration) == (3, 15)  # 18 samples / batch 4 -> 5 iterations per epoch

    first = _trainer(tmp_path / "b")
    res_b = first.fit(max_iterations=7)  # stops 2 iterations into epoch 2
    assert (res_b.epoch, res_b.iter_in_epoch, res_b.iteration) == (1, 2, 7)
    assert res_b.checkpoint is not None and res_b.checkpoint.name == "checkpoint_epoch_1_iter_2.pth"
    torch.manual_seed(1234)  # disturb every generator: the resume must restore them

    second = _trainer(tmp_path / "b")  # a new process would build everything again
    assert second.resume() == res_b.checkpoint  # auto-resume: the newest checkpoint in ckpt/
    assert second.optimizer.param_groups[0]["lr"] == pytest.approx(straight.schedule.lr_at(7))
    res_c = second.fit()
    assert res_c.iteration == 15
    assert res_b.losses + res_c.losses == res_a.losses  # same batches, same dropout masks, same LR curve
    wa, wc = _weights(straight), _weights(second)
    assert wa.keys() == wc.keys()
    for k in wa:
        assert torch.equal(wa[k], wc[k]), k  # bit for bit, BatchNorm buffers included
    for sa, sc in zip(straight.optimizer.state.values(), second.optimizer.state.values(), strict=True):
        assert torch.equal(sa["exp_avg"], sc["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sc["exp_avg_sq"])


def test_resume_from_epoch_boundary_and_checkpoint_contents(tmp_path: Path) -> None:
    t = _trainer(tmp_path, epochs=2, ckpt_interval=1, keep_last=1)
    t.fit()
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["checkpoint_epoch_2.pth"]  # keep_last=1
    state = load_checkpoint(tmp_path / "ckpt" / files[0])
    assert state.epoch == 2 and state.iter_in_epoch == 0 and state.iteration == 10
    assert state.class_names == ("car", "pedestrian") and state.config == {"note": "test"}
    assert len(state.rng) == 1 and state.world_size == 1
    assert state.scheduler["iteration"] == 10
    again = _trainer(tmp_path, epochs=2)
    again.resume()
    assert again.fit().losses == []  # already finished: nothing to do


def test_resume_refuses_changed_dataset(tmp_path: Path) -> None:
    t = _trainer(tmp_path)
    t.fit(max_iterations=3)
    other = _trainer(tmp_path, batch_size=3)  # 6 iterations per epoch: a different schedule
    with pytest.raises(ValueError, match="differs from this run"):
        other.resume()


def test_resume_refuses_a_weights_only_checkpoint(tmp_path: Path) -> None:
    """What tools/convert_checkpoint.py writes (no optimiser / schedule state) starts runs via --pretrained."""
    import dataclasses

    t = _trainer(tmp_path)
    path = t.fit(max_iterations=3).checkpoint
    assert path is not None
    state = load_checkpoint(path)
    weights_only = dataclasses.replace(state, optimizer={}, scheduler={}, grad_scaler={})
    with pytest.raises(ValueError, match="holds weights only .* --pretrained"):
        _trainer(tmp_path).load_state(weights_only)


def test_nan_loss_skips_step_and_keeps_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    t = _trainer(None, deterministic=False)
    t.fit(max_iterations=2)
    before = _weights(t)
    opt_before = {k: v["exp_avg"].clone() for k, v in enumerate(t.optimizer.state.values())}
    t.model.nan_next = True  # type: ignore[assignment]
    with caplog.at_level("WARNING", logger="perception.engine.trainer"):
        res = t.fit(max_iterations=3)
    assert res.skipped_steps == 1 and math.isnan(res.losses[0])
    assert "non-finite loss" in caplog.text and "step skipped, weights and buffers unchanged" in caplog.text
    after = _weights(t)
    assert all(torch.equal(before[k], after[k]) for k in before), "weights and BatchNorm buffers unchanged"
    assert all(torch.equal(opt_before[k], v["exp_avg"]) for k, v in enumerate(t.optimizer.state.values()))
    assert all(p.grad is None for p in t.model.parameters())
    assert t.iteration == 3  # the schedule moves on
    res = t.fit(max_iterations=5)  # and training continues normally
    assert res.skipped_steps == 0 and all(math.isfinite(v) for v in res.losses)
    assert any(not torch.equal(before[k], v) for k, v in _weights(t).items())


def test_non_finite_gradients_skip_step() -> None:
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    mp = MixedPrecision(False, "cpu")
    before = [p.detach().clone() for p in model.parameters()]
    model.weight.register_hook(lambda g: torch.full_like(g, math.inf))
    loss = model(torch.ones(1, 3)).sum()
    mp.backward(loss)
    result = mp.step(opt, model.parameters(), clip_norm=10.0)
    assert not result.stepped and not math.isfinite(result.grad_norm)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert opt.state == {} or all(len(s) == 0 for s in opt.state.values())


def test_bf16_autocast_training_step() -> None:
    seen: list[torch.dtype] = []
    t = _trainer(None, amp=True, deterministic=False)
    t.model.out.register_forward_hook(lambda m, i, o: seen.append(o.dtype))  # type: ignore[union-attr]
    before = _weights(t)
    res = t.fit(max_iterations=3)
    assert t.mp.describe() == "bf16 autocast on cpu" and not t.mp.uses_scaler
    assert seen and all(d == torch.bfloat16 for d in seen)  # the forward really ran in bf16
    assert res.skipped_steps == 0 and all(math.isfinite(v) for v in res.losses)
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # master weights stay float32
    assert any(not torch.equal(before[k], v) for k, v in _weights(t).items())


def test_loss_falls_over_a_few_dozen_iterations() -> None:
    t = _trainer(
        None, epochs=8, batch_size=6, optimizer={"lr": 0.05}, grad_clip_norm=None, deterministic=False
    )
    res = t.fit()
    assert len(res.losses) == 24
    first, last = sum(res.losses[:4]) / 4, sum(res.losses[-4:]) / 4
    assert last < 0.5 * first, (first, last)


def test_dataset_and_sampler_see_each_epoch() -> None:
    t = _trainer(None, epochs=2)
    t.fit()
    assert t.train_set.epochs_seen == [0, 1]  # type: ignore[attr-defined]  (GT-sampling fade hooks here)


def test_trainer_rejects_bad_inputs() -> None:
    with pytest.raises(TypeError, match="loss\\(batch\\) and predict\\(batch\\)"):
        Trainer(model=torch.nn.Linear(2, 2), train_set=SyntheticSet(), cfg=TrainConfig(), run_dir=None)
    with pytest.raises(ValueError, match="empty"):
        Trainer(model=StandInDetector(), train_set=SyntheticSet(size=0), cfg=TrainConfig(), run_dir=None)
    t = _trainer(None)
    with pytest.raises(ValueError, match="max_iterations"):
        t.fit(max_iterations=-1)


def test_data_order_does_not_depend_on_workers() -> None:
    """Samples are seeded by (seed, epoch, index) and batches by (seed, epoch): worker processes change nothing."""
    in_process = _trainer(None, epochs=2).fit().losses
    with_workers = _trainer(None, epochs=2, workers=2).fit().losses
    assert with_workers == in_process


def test_evaluation_callback_every_interval(tmp_path: Path) -> None:
    calls: list[int] = []

    def evaluate(model: torch.nn.Module, epoch: int) -> dict[str, float]:
        assert not model.training
        calls.append(epoch)
        return {"mAP": 0.1 * epoch, "car_AP": 0.5}

    t = _trainer(tmp_path, epochs=4, eval_interval=2)
    t.evaluate = evaluate
    res = t.fit()
    assert calls == [2, 4] and res.metrics == {"mAP": pytest.approx(0.4), "car_AP": 0.5}
    assert t.model.training
    t.writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("eval/mAP")] == [10, 20]  # global iteration of epochs 2 and 4


def test_numba_kernels_keep_torch_thread_count() -> None:
    """numba's OpenMP layer would reset torch's thread count at the first parallel kernel; aligned, it does not."""
    import numba

    from perception.engine.rng import align_numba_threads
    from perception.ops.points_in_boxes import points_in_boxes

    numba_threads = numba.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert align_numba_threads() == 1
        points_in_boxes(torch.rand(64, 3), torch.tensor([[0.5, 0.5, 0.5, 0.4, 0.4, 0.4, 0.3]]), backend="cpu")
        assert torch.get_num_threads() == 1
    finally:
        numba.set_num_threads(numba_threads)
