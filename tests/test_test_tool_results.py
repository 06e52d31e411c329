"""``tools/test.py`` never lets results of different checkpoints (or detection files) share a folder.

Every run names its checkpoints ``checkpoint_epoch_N.pth`` and the tag defaults to ``default``: result folders are
named after the file's content (``epoch_1-<8 hex of its SHA-256>``), ``--eval-all`` keys its done-list and summary
on that name, and ``--from-dets`` does the same for detection files. Tiny synthetic nuScenes-mini, the tiny
CenterPoint config with two different random initialisations standing in for two runs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from perception.engine.paths import FileIdentity, claim_result_dir, result_name

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny_centerpoint_spconv.yaml"
SWEEPS = 2


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Data (one mini_val scene of 2 keyframes) and two runs' ``ckpt/checkpoint_epoch_1.pth`` of other weights."""
    from perception.config import load_config
    from perception.datasets.nuscenes_infos import create_nuscenes_infos
    from perception.datasets.synthetic import SyntheticParams, generate
    from perception.models.build import build_detector

    tmp = tmp_path_factory.mktemp("test_tool")
    data = tmp / "data"
    generate(SyntheticParams(format="nuscenes", scenes=2, samples=2, sweeps=1, cameras="none", seed=2), data)
    create_nuscenes_infos(data, "v1.0-mini", max_sweeps=SWEEPS, workers=0, progress=False)
    overrides = [f"data.root={data}", f"data.max_sweeps={SWEEPS}", f"output_root={tmp / 'out'}"]
    cfg = load_config(CONFIG, overrides)
    assert cfg.model is not None
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_detector(cfg.model, cfg.data)
        ckpt = tmp / f"run{seed}" / "ckpt" / "checkpoint_epoch_1.pth"
        ckpt.parent.mkdir(parents=True)
        torch.save(model.state_dict(), ckpt)
        runs.append(ckpt)
    return {"overrides": overrides, "runs": runs, "eval": tmp / "out" / CONFIG.stem / "default" / "eval"}


def _tool() -> Any:
    spec = importlib.util.spec_from_file_location("perception_test_tool", REPO / "tools" / "test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(setup: dict[str, Any], *args: str) -> None:
    assert _tool().main([str(CONFIG), *args, "--no-progress", "--set", *setup["overrides"]]) == 0


def _name(path: Path) -> str:
    return f"epoch_1-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}"


def test_two_runs_checkpoints_of_one_name_keep_both_results(setup: dict[str, Any]) -> None:
    first, second = setup["runs"]
    eval_root: Path = setup["eval"]
    _run(setup, "--eval-all", str(first.parent), "--save-dets")
    _run(setup, "--eval-all", str(second.parent), "--save-dets")  # same file name, other content: scored too
    names = [_name(first), _name(second)]
    assert names[0] != names[1]
    assert (eval_root / "eval_all_list.txt").read_text().split() == names
    summary = json.loads((eval_root / "eval_all.json").read_text())
    assert sorted(summary) == sorted(names)
    for ckpt, name in zip((first, second), names, strict=True):
        out = eval_root / name / "val"
        assert json.loads((out / "metrics.json").read_text()) == summary[name]
        assert json.loads((out / "checkpoint.json").read_text()) == {
            "path": str(ckpt),
            "size": ckpt.stat().st_size,
            "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(),
        }
    assert summary[names[0]] != summary[names[1]]  # other weights, other metrics: neither overwrote the other

    # scoring the first run again finds its checkpoint listed: nothing is recomputed
    listed = (eval_root / "eval_all_list.txt").read_text()
    _run(setup, "--eval-all", str(first.parent))
    assert (eval_root / "eval_all_list.txt").read_text() == listed

    # --from-dets of two detections.pth files: two folders named after each file's content
    for name in names:
        _run(setup, "--from-dets", str(eval_root / name / "val" / "detections.pth"))
    for name in names:
        dets = eval_root / name / "val" / "detections.pth"
        out = (
            eval_root
            / "from_dets"
            / f"detections-{hashlib.sha256(dets.read_bytes()).hexdigest()[:8]}"
            / "val"
        )
        assert json.loads((out / "metrics.json").read_text()) == summary[name]
        assert json.loads((out / "detections_file.json").read_text())["path"] == str(dets)


def test_a_result_folder_of_other_content_is_refused(tmp_path: Path) -> None:
    """Should two files' hashes share the folder name's 8 hex digits, the second is refused, never merged."""
    a, b = tmp_path / "a" / "checkpoint_epoch_3.pth", tmp_path / "b" / "checkpoint_epoch_3.pth"
    for path, text in ((a, b"run a"), (b, b"run b")):
        path.parent.mkdir()
        path.write_bytes(text)
    ia, ib = FileIdentity.of(a), FileIdentity.of(b)
    assert result_name(ia) == f"epoch_3-{hashlib.sha256(b'run a').hexdigest()[:8]}" != result_name(ib)
    out = claim_result_dir(tmp_path / "eval" / "epoch_3-same" / "val", ia, "checkpoint.json")
    assert claim_result_dir(out, ia, "checkpoint.json") == out  # the same content may be scored again
    with pytest.raises(ValueError) as err:
        claim_result_dir(out, ib, "checkpoint.json")
    assert str(err.value) == (
        f"{out} holds the results of another file ({out / 'checkpoint.json'}: sha256 {ia.sha256}), not of {b} "
        f"(sha256 {ib.sha256}); move that folder away to score this file"
    )
