"""Checkpoints: atomic writes (a failure mid-write leaves the previous file intact and no temporary file),
keep-last-K, auto-resume skipping a corrupt newest file with a warning, generator-state round trips, and loading
weights strictly (``--ckpt``) or leniently (``--pretrained``)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import perception.engine.checkpoint as ckpt_mod
from perception.engine.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    CheckpointManager,
    CheckpointState,
    atomic_torch_save,
    load_checkpoint,
    load_model_weights,
    rng_from_plain,
    rng_to_plain,
)
from perception.engine.rng import capture_rng_state, restore_rng_state


def _state(epoch: int, iter_in_epoch: int = 0, value: float = 0.0) -> CheckpointState:
    return CheckpointState(
        model={"w": torch.full((3,), value)},
        optimizer={},
        scheduler={},
        grad_scaler={},
        epoch=epoch,
        iter_in_epoch=iter_in_epoch,
        iteration=epoch * 10 + iter_in_epoch,
        rng=[rng_to_plain(capture_rng_state())],
        config={"data": {"dataset": "nuscenes"}},
        class_names=("car",),
        world_size=1,
    )


def test_failure_mid_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=3)
    first = mgr.save(_state(1, value=1.0))
    before = first.read_bytes()

    real_save = torch.save

    def failing_save(obj: Any, f: Any) -> None:
        real_save(obj, f)
        f.flush()
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt_mod.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        mgr.save(_state(1, value=2.0))  # same name: would overwrite checkpoint_epoch_1.pth
    with pytest.raises(OSError, match="disk full"):
        mgr.save(_state(2, value=2.0))
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_epoch_1.pth"]  # no temporary files
    assert first.read_bytes() == before
    assert torch.equal(load_checkpoint(first).model["w"], torch.full((3,), 1.0))


def test_interrupted_write_leftover_is_cleaned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stale = tmp_path / ".tmp-checkpoint_epoch_3.pth.1234.deadbeef"
    stale.write_bytes(b"partial")
    keep = tmp_path / "checkpoint_epoch_2.pth"
    atomic_torch_save(_state(2).to_dict(), keep)
    with caplog.at_level("WARNING", logger="perception.engine.checkpoint"):
        mgr = CheckpointManager(tmp_path, keep_last=2)
    assert not stale.exists() and keep.exists()
    assert "stale temporary checkpoint" in caplog.text
    assert mgr.checkpoints() == [keep]


def test_keep_last_k_and_ordering(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for e in range(1, 5):
        mgr.save(_state(e))
    assert [p.name for p in mgr.checkpoints()] == ["checkpoint_epoch_3.pth", "checkpoint_epoch_4.pth"]
    mgr.save(_state(4, iter_in_epoch=7))  # stopped 7 iterations into epoch 5: newer than epoch 4
    assert [p.name for p in mgr.checkpoints()] == ["checkpoint_epoch_4.pth", "checkpoint_epoch_4_iter_7.pth"]
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert len(mgr.checkpoints()) == 2
    with pytest.raises(TypeError, match="CheckpointState"):
        mgr.save({"epoch": 5})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_auto_resume_skips_corrupt_newest_with_warning(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep_last=5)
    mgr.save(_state(1, value=1.0))
    newest = mgr.save(_state(2, value=2.0))
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated, as after a crash of a non-atomic writer
    (tmp_path / "checkpoint_epoch_3.pth").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint") as record:
        found = mgr.latest_loadable()
    assert len(record) == 2
    assert found is not None
    path, state = found
    assert path.name == "checkpoint_epoch_1.pth" and state.epoch == 1


def test_auto_resume_nothing_to_resume(tmp_path: Path) -> None:
    assert CheckpointManager(tmp_path, keep_last=1).latest_loadable() is None


def test_load_checkpoint_rejects_wrong_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "nope.pth")
    atomic_torch_save({"format_version": 99}, tmp_path / "v99.pth")
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(tmp_path / "v99.pth")
    state = _state(1).to_dict()
    del state["rng"]
    atomic_torch_save(state, tmp_path / "norng.pth")
    with pytest.raises(CheckpointError, match="missing keys \\['rng'\\]"):
        load_checkpoint(tmp_path / "norng.pth")
    bad = {**_state(1).to_dict(), "epoch": "1"}
    atomic_torch_save(bad, tmp_path / "badepoch.pth")
    with pytest.raises(CheckpointError, match="badepoch.pth: 'epoch' must be an int"):
        load_checkpoint(tmp_path / "badepoch.pth")
    bad = {**_state(1).to_dict(), "class_names": "car"}
    atomic_torch_save(bad, tmp_path / "badnames.pth")
    with pytest.raises(CheckpointError, match="'class_names' must be a list of strings"):
        load_checkpoint(tmp_path / "badnames.pth")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, r"unknown keys \['extra'\]"),
        ({"model": {"w": [1.0, 2.0]}}, r"'model' must map names to tensors; bad entries \['w'\]"),
        ({"optimizer": []}, r"'optimizer' must be a dict, got list"),
        ({"iteration": -1}, r"'iteration' must be an int >= 0"),
        ({"world_size": 0}, r"'world_size' must be an int >= 1"),
        ({"rng": [{"python": []}]}, r"'rng' must be a list of per-rank generator states"),
        ({"config": "cfg.yaml"}, r"'config' must be a dict or None"),
    ],
)
def test_from_dict_names_the_file_and_the_bad_key(change: dict[str, Any], message: str) -> None:
    data = {**_state(1).to_dict(), **change}
    with pytest.raises(CheckpointError, match=f"^run/ckpt.pth: {message}"):
        CheckpointState.from_dict(data, "run/ckpt.pth")


def test_state_round_trips_through_its_dict() -> None:
    state = _state(3, iter_in_epoch=2, value=4.0)
    data = state.to_dict()
    assert data["format_version"] == FORMAT_VERSION and data["class_names"] == ["car"]
    again = CheckpointState.from_dict(data)
    assert again.epoch == 3 and again.iter_in_epoch == 2 and again.class_names == ("car",)
    assert torch.equal(again.model["w"], state.model["w"]) and again.config == state.config
    del data["world_size"]  # written before world_size existed: one process
    assert CheckpointState.from_dict(data).world_size == 1


def test_shipped_demo_checkpoint_loads() -> None:
    """The checkpoint shipped with the repository (written before the typed state) reads through the class."""
    path = Path(__file__).resolve().parents[1] / "checkpoints" / "demo_detector.pth"
    state = load_checkpoint(path)
    assert state.format_version == FORMAT_VERSION and state.world_size >= 1
    assert state.epoch > 0 and state.iteration > 0 and len(state.class_names) == 10
    assert state.config is not None and "model" in state.config and len(state.model) > 100
    from perception.config import config_from_dict
    from perception.models.build import build_detector

    cfg = config_from_dict(state.config, base_dir=path.parent)
    assert cfg.model is not None and tuple(cfg.data.class_names) == state.class_names
    model = build_detector(cfg.model, cfg.data)
    loaded = load_model_weights(model, path, strict=True)  # every tensor fits the rebuilt detector
    assert loaded.checkpoint is not None and loaded.class_names == state.class_names
    loaded.check_class_names(cfg.data.class_names)
    with pytest.raises(ValueError, match="was trained on classes"):
        loaded.check_class_names(("car",))


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    path = CheckpointManager(tmp_path, keep_last=1).save(_state(1))
    torch.load(path, weights_only=True)  # no pickled numpy / python objects inside


def test_rng_state_round_trip() -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    plain = rng_to_plain(capture_rng_state())
    expected = (random.random(), np.random.standard_normal(3), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    restore_rng_state(rng_from_plain(plain))
    got = (random.random(), np.random.standard_normal(3), torch.rand(3))
    assert got[0] == expected[0]
    assert np.array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])
    with pytest.raises(ValueError, match="missing"):
        restore_rng_state({"python": random.getstate()})


def test_load_model_weights_strict_and_pretrained(tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    state = _state(1)
    state.model = src.state_dict()
    path = CheckpointManager(tmp_path, keep_last=1).save(state)

    same = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    load_model_weights(same, path, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(same.parameters(), src.parameters(), strict=True))

    other = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 5))  # different head size
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model_weights(other, path, strict=True)
    head_before = other[1].weight.detach().clone()
    load_model_weights(other, path, strict=False)  # --pretrained: matching tensors only
    assert torch.equal(other[0].weight, src[0].weight)
    assert torch.equal(other[1].weight, head_before)

    bare = tmp_path / "bare.pth"
    torch.save(src.state_dict(), bare)  # a plain state_dict file also works for --pretrained
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    loaded = load_model_weights(fresh, bare, strict=True)
    assert torch.equal(fresh[1].bias, src[1].bias)
    assert loaded.checkpoint is None and loaded.class_names == ()


def _net() -> torch.nn.Sequential:
    """Conv + BatchNorm + Linear: 6 parameters and 3 BatchNorm buffers (counted too)."""
    return torch.nn.Sequential(
        torch.nn.Conv1d(2, 4, 1), torch.nn.BatchNorm1d(4), torch.nn.Flatten(), torch.nn.Linear(4, 3)
    )


def test_pretrained_counts_add_up_and_name_what_did_not_match(tmp_path: Path, caplog) -> None:
    torch.manual_seed(0)
    src = _net()
    weights = dict(src.state_dict())
    weights["3.weight"] = torch.zeros(5, 4)  # another head size
    del weights["3.bias"]
    weights["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(weights, path)
    model = _net()
    with caplog.at_level("INFO", logger="perception.engine.checkpoint"):
        loaded = load_model_weights(model, path, strict=False)
    match = loaded.match
    assert match is not None
    # 9 entries: conv w/b, bn w/b + running_mean/var + num_batches_tracked, linear w/b; 6 parameters + 3 buffers
    assert (match.total, match.parameters) == (9, 6)
    assert len(match.loaded) + len(match.missing) + len(match.shape_mismatch) == match.total
    assert (len(match.loaded), match.missing, match.unexpected) == (7, ("3.bias",), ("extra.weight",))
    assert match.shape_mismatch == ("3.weight (5, 4) vs (3, 4)",)
    assert torch.equal(model[1].running_mean, src[1].running_mean)
    assert caplog.messages == [
        f"loaded 7/9 model tensors (6 parameters + 3 buffers, BatchNorm statistics included): missing 1, "
        f"shape mismatch 1; unexpected in the file 1 from {path} (missing ['3.bias']; shape mismatch "
        f"['3.weight (5, 4) vs (3, 4)']; unexpected ['extra.weight'])"
    ]


def test_pretrained_below_the_share_fails_and_loads_nothing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    renamed = {f"module.{k}": v for k, v in _net().state_dict().items()}  # nothing fits: 0 of 9
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_model_weights(model, path, strict=False)
    assert str(err.value) == (
        f"{path}: only 0 of the model's 9 tensors fit (0% < --pretrained-min-share 0.5); nothing loaded. "
        "loaded 0/9 model tensors (6 parameters + 3 buffers, BatchNorm statistics included): missing 9, "
        "shape mismatch 0; unexpected in the file 9; missing ['0.weight', '0.bias', '1.weight', '1.bias', "
        "'1.running_mean'] and 4 more; unexpected ['module.0.bias', 'module.0.weight', 'module.1.bias', "
        "'module.1.num_batches_tracked', 'module.1.running_mean'] and 4 more"
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    load_model_weights(model, path, strict=False, min_share=0.0)  # the user's explicit choice: loads 0
    with pytest.raises(ValueError, match="min_share must lie in"):
        load_model_weights(model, path, strict=False, min_share=1.5)


def test_openpcdet_and_unrelated_files_are_refused_with_advice(tmp_path: Path) -> None:
    model = _net()
    pcdet = tmp_path / "pcdet.pth"
    torch.save({"model_state": model.state_dict(), "epoch": 3, "optimizer_state": {}}, pcdet)
    for strict in (True, False):
        with pytest.raises(CheckpointError) as err:
            load_model_weights(model, pcdet, strict=strict)
        assert str(err.value) == (
            f"{pcdet} is an OpenPCDet-style checkpoint (a 'model_state' entry): its key names differ from ours; "
            f"convert it first: python tools/convert_checkpoint.py --from openpcdet {pcdet} --config CONFIG "
            "--out converted.pth"
        )
    other = tmp_path / "other.pth"
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, other)
    with pytest.raises(
        CheckpointError,
        match=r"neither a checkpoint of this project .*entries \['epoch', "
        r"'state_dict'\] are not tensors",
    ):
        load_model_weights(model, other, strict=False)
