"""``tools/train_sparsefusion.py``: the two commands it runs (dry run), refusal of configs that are not a LiDAR
stage-1 / SparseFusion stage-2 pair, and both stages for real on a tiny synthetic set with six cameras: stage 2
starts from stage 1's last checkpoint and leaves the frozen LiDAR branch's weights exactly as stage 1 wrote them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "train_sparsefusion.py"
FUSION, LIDAR = REPO / "configs" / "fusion_tiny.yaml", REPO / "configs" / "fusion_tiny_lidar.yaml"


def _run(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd
    )


def test_dry_run_prints_both_stages(tmp_path: Path) -> None:
    done = _run(
        str(FUSION),
        "--dry-run",
        "--epochs",
        "3",
        "--extra-tag",
        "x",
        "--set",
        f"output_root={tmp_path}",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    first, second = done.stdout.strip().splitlines()
    assert first.startswith("stage 1:") and "--extra-tag x_lidar" in first
    assert "model.fusion=null data.use_cameras=false" in first and "--epochs" not in first
    assert second.startswith("stage 2:") and "--extra-tag x" in second and "--epochs 3" in second
    assert f"--pretrained {tmp_path}/fusion_tiny/x_lidar/ckpt/" in second
    with_lidar = _run(
        str(FUSION),
        "--lidar-config",
        str(LIDAR),
        "--dry-run",
        "--set",
        f"output_root={tmp_path}",
        cwd=tmp_path,
    )
    assert with_lidar.returncode == 0 and "fusion_tiny_lidar.yaml" in with_lidar.stdout
    assert f"{tmp_path}/fusion_tiny_lidar/default_lidar/ckpt/" in with_lidar.stdout
    assert "model.fusion=null" not in with_lidar.stdout
    assert not any(tmp_path.iterdir())  # nothing written


def test_refuses_configs_that_are_not_a_stage_pair(tmp_path: Path) -> None:
    lidar_only = _run(str(LIDAR), "--dry-run", cwd=tmp_path)
    assert lidar_only.returncode != 0 and "no model.fusion section" in lidar_only.stderr
    fused_first = _run(str(FUSION), "--lidar-config", str(FUSION), "--dry-run", cwd=tmp_path)
    assert fused_first.returncode != 0 and "must be a LiDAR detector" in fused_first.stderr


@pytest.mark.slow
def test_two_stages_for_real(tmp_path: Path) -> None:
    sets = [
        f"data.root={tmp_path / 'data'}",
        f"output_root={tmp_path / 'out'}",
        "synthetic.scenes=2",
        "synthetic.samples=2",
        "train.batch_size=1",
        "model.head.transfusion.num_proposals=16",
    ]
    done = _run(
        str(FUSION),
        "--lidar-config",
        str(LIDAR),
        "--lidar-epochs",
        "1",
        "--epochs",
        "1",
        "--set",
        *sets,
        cwd=tmp_path,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    stage1 = tmp_path / "out" / "fusion_tiny_lidar" / "default_lidar" / "ckpt" / "checkpoint_epoch_1.pth"
    stage2 = tmp_path / "out" / "fusion_tiny" / "default" / "ckpt" / "checkpoint_epoch_1.pth"
    assert stage1.is_file() and stage2.is_file()
    assert f"--pretrained {stage1}" in done.stdout
    lidar = torch.load(stage1, map_location="cpu", weights_only=True)["model"]
    fused = torch.load(stage2, map_location="cpu", weights_only=True)["model"]
    assert set(lidar) < set(fused) and any(k.startswith("camera_branch.") for k in fused)
    for key, value in lidar.items():
        assert torch.equal(fused[key], value), key  # the frozen LiDAR branch, BatchNorm statistics included
