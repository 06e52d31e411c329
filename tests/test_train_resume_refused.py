"""A resume that ``tools/train.py`` refuses (the checkpoint's LR schedule differs from the run's) changes no file
in the run folder -- ``config.yaml`` keeps the old LR, no new TensorBoard event file appears, no checkpoint is
touched -- and the reason is in ``log.txt`` as well as on the console, with exit status 2."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny_centerpoint_spconv.yaml"
pytestmark = (
    pytest.mark.slow
)  # two in-process runs of tools/train.py (data set, model builds): ~30 s on 2 cores


def _train_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_tool_train_resume", REPO / "tools" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_perception_logger() -> Iterator[None]:
    """train.main sets up the 'perception' logger for its run (handlers, no propagation); put it back so later
    tests in this process see their log records (caplog) and no handler writes to a closed stream."""
    log = logging.getLogger("perception")
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    yield
    for h in list(log.handlers):
        if h not in handlers:
            log.removeHandler(h)
            h.close()
    log.setLevel(level)
    log.propagate = propagate


def _listing(run: Path, skip: Path) -> dict[str, tuple[int, int]]:
    """``relative path -> (mtime_ns, size)`` of every file under ``run`` except ``skip``."""
    return {
        str(p.relative_to(run)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(run.rglob("*"))
        if p.is_file() and p != skip
    }


def test_refused_resume_changes_no_file_and_logs_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = _train_tool()
    common = [
        str(CONFIG), "--epochs", "2", "--batch-size", "1", "--max-iterations", "1", "--no-progress",
        "--set", f"data.root={tmp_path / 'data'}", f"output_root={tmp_path / 'out'}", "synthetic.scenes=2",
        "synthetic.samples=2", "synthetic.sweeps=1", "synthetic.cameras=none", "train.workers=0",
    ]  # fmt: skip
    assert train.main(common) == 0, capsys.readouterr().err[-3000:]
    run = tmp_path / "out" / "tiny_centerpoint_spconv" / "default"
    log, config = run / "log.txt", run / "config.yaml"
    assert (run / "ckpt" / "checkpoint_epoch_0_iter_1.pth").is_file()
    saved_config, saved_log = config.read_bytes(), log.read_text()
    before = _listing(run, skip=log)
    capsys.readouterr()

    assert train.main([*common, "train.optimizer.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "differs from this run's" in err
    assert config.read_bytes() == saved_config  # still the LR the checkpoint was trained with
    assert _listing(run, skip=log) == before  # no new event file, no checkpoint written or removed
    new_log = log.read_text()
    assert new_log.startswith(saved_log)
    added = new_log[len(saved_log) :]
    assert "resume refused" in added and "differs from this run's" in added and "ERROR" in added
