"""``tools/test.py --launcher pytorch`` on two gloo CPU processes gives the single process's metrics and detections.

Tiny synthetic nuScenes-mini (one val scene of 3 keyframes: the two shards have 2 and 1 samples), the tiny
CenterPoint config with random weights in a bare ``state_dict`` file. The single-process run scores it with
``--ckpt``; the two-process run with ``--eval-all`` (rank 0 decides, both ranks score the same file). Started as in
``test_engine_distributed.py``: ``torch.multiprocessing.spawn`` inside a subprocess with a timeout, the ranks
finding each other through torchrun's environment variables.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
CONFIG = REPO / "configs" / "tiny_centerpoint_spconv.yaml"
WORLD = 2


def _tool_main(argv: list[str]) -> int:
    spec = importlib.util.spec_from_file_location("perception_test_tool_dist", REPO / "tools" / "test.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.main(argv))


def _worker(rank: int, argv: list[str], port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    if _tool_main(argv) != 0:
        raise SystemExit(f"rank {rank}: test.py failed")


def _launch(argv: list[str], port: int) -> None:
    torch.multiprocessing.spawn(_worker, args=(argv, port), nprocs=WORLD, join=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_gloo_processes_score_like_one(tmp_path: Path) -> None:
    from perception.config import load_config
    from perception.datasets.nuscenes_infos import create_nuscenes_infos
    from perception.datasets.synthetic import SyntheticParams, generate
    from perception.engine.data import build_dataset
    from perception.engine.inference import load_detections
    from perception.models.build import build_detector

    data = tmp_path / "data"
    generate(SyntheticParams(format="nuscenes", scenes=2, samples=3, sweeps=1, cameras="none", seed=4), data)
    create_nuscenes_infos(data, "v1.0-mini", max_sweeps=2, workers=0, progress=False)
    common = [f"data.root={data}", "data.max_sweeps=2"]
    cfg = load_config(CONFIG, common)
    assert cfg.model is not None
    assert len(build_dataset(cfg, "val", "val")) == 3  # shards of 2 and 1 samples
    torch.manual_seed(3)
    ckpt = tmp_path / "ckpt" / "checkpoint_epoch_1.pth"
    ckpt.parent.mkdir()
    torch.save(build_detector(cfg.model, cfg.data).state_dict(), ckpt)

    one = [str(CONFIG), "--ckpt", str(ckpt), "--save-dets", "--no-progress"]
    assert _tool_main([*one, "--set", *common, f"output_root={tmp_path / 'one'}"]) == 0

    two = [
        str(CONFIG),
        "--eval-all",
        str(ckpt.parent),
        "--save-dets",
        "--no-progress",
        "--launcher",
        "pytorch",
    ]
    two += ["--set", *common, f"output_root={tmp_path / 'two'}"]
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_test_distributed as t; " + (
        f"t._launch({two!r}, {_free_port()})"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]

    evals = [tmp_path / run / CONFIG.stem / "default" / "eval" for run in ("one", "two")]
    (name,) = [p.name for p in evals[0].iterdir()]
    assert (evals[1] / "eval_all_list.txt").read_text().split() == [name]  # written once, by rank 0
    metrics = [json.loads((e / name / "val" / "metrics.json").read_text()) for e in evals]
    assert metrics[0] == metrics[1]
    assert json.loads((evals[1] / "eval_all.json").read_text()) == {name: metrics[0]}
    (dets_one, _), (dets_two, _) = (load_detections(e / name / "val" / "detections.pth") for e in evals)
    assert list(dets_one) == list(dets_two)  # every sample once, in dataset order
    for token, d in dets_one.items():
        other = dets_two[token]
        assert torch.equal(d.boxes.tensor, other.boxes.tensor) and torch.equal(d.scores, other.scores)
        assert torch.equal(d.labels, other.labels)
    assert sum(len(d.scores) for d in dets_one.values()) > 0  # random weights still detect something
    assert proc.stdout.count("results in ") == 1  # rank 0 prints, rank 1 does not
