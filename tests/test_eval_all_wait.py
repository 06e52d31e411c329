"""``tools/test.py --eval-all DIR --max-waiting-mins N`` waits for the checkpoints of a running training.

A thread plays the training: once the first checkpoint is scored, it writes the next checkpoint the way
:func:`perception.io_atomic.atomic_write` does (a hidden ``.tmp-*`` file filled in two halves, then renamed), so the
waiting tool sees a half-written temporary file first; it must score the complete file only, then stop at once
because that file is the last epoch's (``train.epochs=2``). Without new files it stops after the timeout. Tiny
synthetic nuScenes-mini, the tiny CenterPoint config, random weights in bare ``state_dict`` files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny_centerpoint_spconv.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The data and two checkpoint payloads (bytes of other random weights)."""
    from perception.config import load_config
    from perception.datasets.nuscenes_infos import create_nuscenes_infos
    from perception.datasets.synthetic import SyntheticParams, generate
    from perception.models.build import build_detector

    tmp = tmp_path_factory.mktemp("eval_all_wait")
    data = tmp / "data"
    generate(SyntheticParams(format="nuscenes", scenes=2, samples=2, sweeps=1, cameras="none", seed=2), data)
    create_nuscenes_infos(data, "v1.0-mini", max_sweeps=2, workers=0, progress=False)
    overrides = [f"data.root={data}", "data.max_sweeps=2", "train.epochs=2"]
    cfg = load_config(CONFIG, overrides)
    assert cfg.model is not None
    payloads = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        buf = io.BytesIO()
        torch.save(build_detector(cfg.model, cfg.data).state_dict(), buf)
        payloads.append(buf.getvalue())
    return {"overrides": overrides, "payloads": payloads}


def _main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("perception_test_tool_wait", REPO / "tools" / "test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(argv))


def _name(epoch: int, payload: bytes) -> str:
    return f"epoch_{epoch}-{hashlib.sha256(payload).hexdigest()[:8]}"


def test_waits_for_a_checkpoint_being_written_and_stops_at_the_last_epoch(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = setup["payloads"]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint_epoch_1.pth").write_bytes(first)
    temp = ckpt / ".tmp-checkpoint_epoch_2.pth.x1y2.tmp"
    seen_temp = threading.Event()

    listed = tmp_path / "out" / CONFIG.stem / "default" / "eval" / "eval_all_list.txt"

    def training() -> None:
        give_up = time.monotonic() + 120  # should the tool fail before scoring, join() still returns
        while not listed.is_file() and time.monotonic() < give_up:  # epoch 1 is scored: the tool now waits
            time.sleep(0.1)
        time.sleep(0.5)
        with open(temp, "wb") as f:  # half a checkpoint, visible under its temporary name
            f.write(second[: len(second) // 2])
            f.flush()
            seen_temp.set()
            time.sleep(2.0)
            f.write(second[len(second) // 2 :])
        os.replace(temp, ckpt / "checkpoint_epoch_2.pth")

    thread = threading.Thread(target=training)
    thread.start()
    try:
        argv = [
            str(CONFIG),
            "--eval_all",
            "--ckpt_dir",
            str(ckpt),
            "--max_waiting_mins",
            "2",
            "--poll-seconds",
            "0.2",
        ]
        code = _main(
            [*argv, "--no-progress", "--set", *setup["overrides"], f"output_root={tmp_path / 'out'}"]
        )
    finally:
        thread.join()
    assert code == 0
    assert seen_temp.is_set()
    eval_root = tmp_path / "out" / CONFIG.stem / "default" / "eval"
    names = [_name(1, first), _name(2, second)]
    assert (eval_root / "eval_all_list.txt").read_text().split() == names
    assert sorted(json.loads((eval_root / "eval_all.json").read_text())) == sorted(names)
    record = json.loads((eval_root / names[1] / "val" / "checkpoint.json").read_text())
    assert record["sha256"] == hashlib.sha256(second).hexdigest()  # the complete file, never the half
    out = capsys.readouterr().out
    assert (
        f"waiting for new checkpoints in {ckpt} (up to 2 min, looking every 0.2 s; the last epoch is 2)"
        in out
    )
    assert out.rstrip().endswith(
        "checkpoint_epoch_2.pth (the last epoch, train.epochs = 2) is scored: stopping"
    )


def test_stops_when_no_checkpoint_appears_within_the_timeout(
    setup: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _ = setup["payloads"]
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint_epoch_1.pth").write_bytes(first)
    (ckpt / ".tmp-checkpoint_epoch_2.pth.dead.tmp").write_bytes(b"a write that was interrupted")
    argv = [str(CONFIG), "--eval-all", str(ckpt), "--max-waiting-mins", "0.01", "--poll-seconds", "0.2"]
    out_root = f"output_root={tmp_path / 'out'}"
    assert _main([*argv, "--no-progress", "--set", *setup["overrides"], out_root]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(
        f"no new checkpoint in {ckpt} for 0.01 min (--max-waiting-mins): stopping, 1 scored"
    )
    assert (ckpt / ".tmp-checkpoint_epoch_2.pth.dead.tmp").is_file()  # the training's file: left alone
    eval_root = tmp_path / "out" / CONFIG.stem / "default" / "eval"
    assert (eval_root / "eval_all_list.txt").read_text().split() == [_name(1, first)]

    # run again: nothing new, the default (no waiting) says so and stops
    assert (
        _main([str(CONFIG), "--eval-all", str(ckpt), "--no-progress", "--set", *setup["overrides"], out_root])
        == 0
    )
    listed = eval_root / "eval_all_list.txt"
    assert capsys.readouterr().out == f"no new checkpoint in {ckpt}: all 1 are listed in {listed}\n"
