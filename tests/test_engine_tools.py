"""``tools/train.py`` + ``tools/test.py`` end to end on a tiny synthetic nuScenes-mini set with the tiny
CenterPoint config: the output folder layout, TensorBoard scalars (every loss term, LR, data / forward / backward
time), the loss falling over two dozen iterations, stop + auto-resume from the command line, official devkit
metrics, re-scoring saved detections without inference giving the same metrics, and Ctrl-C (exit status 130, a
checkpoint of the last completed iteration, resumed by the same command)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny_centerpoint_spconv.yaml"
pytestmark = pytest.mark.slow


def _run(tool: str, *args: str, tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd, env = _command(tool, *args, tmp=tmp)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)


def _command(tool: str, *args: str, tmp: Path) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of ``tools/<tool> CONFIG *args`` on the tiny data set under ``tmp``."""
    overrides = [
        f"data.root={tmp / 'data'}",
        f"output_root={tmp / 'out'}",
        "synthetic.scenes=2",
        "synthetic.samples=2",
        "synthetic.sweeps=1",
        "synthetic.cameras=none",
    ]
    cmd = [
        sys.executable,
        str(REPO / "tools" / tool),
        str(CONFIG),
        *args,
        "--no-progress",
        "--set",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return cmd, env


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train 12 epochs x 2 iterations (2 samples, batch 1), stopping after 11 iterations and resuming."""
    tmp = tmp_path_factory.mktemp("tools")
    train_args = ["--epochs", "12", "--batch-size", "1", "--set", "train.log_interval=1", "train.keep_last=2"]
    first = _run("train.py", *train_args, "--max-iterations", "11", tmp=tmp)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp / "out" / "tiny_centerpoint_spconv" / "default"
    assert (run / "ckpt" / "checkpoint_epoch_5_iter_1.pth").is_file()
    second = _run("train.py", *train_args, tmp=tmp)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stderr and "checkpoint_epoch_5_iter_1.pth" in second.stderr
    return run


def test_train_output_layout_and_logs(trained: Path) -> None:
    assert sorted(p.name for p in trained.iterdir()) >= ["ckpt", "config.yaml", "log.txt", "tensorboard"]
    assert sorted(p.name for p in (trained / "ckpt").iterdir()) == [
        "checkpoint_epoch_11.pth",
        "checkpoint_epoch_12.pth",
    ]  # keep_last=2
    from perception.config import load_config

    saved = load_config(trained / "config.yaml")
    assert saved.train is not None and saved.train.epochs == 12 and saved.train.batch_size == 1
    assert saved.model is not None
    log = (trained / "log.txt").read_text()
    assert "1 per process x 1 process(es) = 1 global" in log and "peak LR" in log
    assert "resumed from" in log  # the resumed run appends to the same log


def test_tensorboard_scalars_and_loss_falls(trained: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(trained / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/lr", "train/grad_norm", "time/data", "time/forward", "time/backward"):
        assert tag in tags, sorted(tags)
    assert {f"train/task{i}.heatmap" for i in range(6)} <= tags and "train/task0.bbox" in tags
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(loss) == list(range(1, 25))  # every iteration of both invocations, no gap at the resume
    first, last = sum(loss[i] for i in range(1, 5)) / 4, sum(loss[i] for i in range(21, 25)) / 4
    assert last < 0.5 * first, (first, last)
    lr = [e.value for e in acc.Scalars("train/lr")]
    assert max(lr) == pytest.approx(3e-3, rel=0.05) and lr[-1] < lr[0]  # one-cycle: up, then below the start


def test_test_py_official_metrics_and_rescoring(trained: Path) -> None:
    from perception.engine.paths import FileIdentity, result_name

    tmp = trained.parents[2]
    name = {e: result_name(FileIdentity.of(trained / "ckpt" / f"checkpoint_epoch_{e}.pth")) for e in (11, 12)}
    # --eval-all scores every checkpoint of the folder not listed as done yet: mark epoch 11 done
    (trained / "eval").mkdir(exist_ok=True)
    (trained / "eval" / "eval_all_list.txt").write_text(name[11] + "\n")
    res = _run("test.py", "--eval-all", str(trained / "ckpt"), "--save-dets", tmp=tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (trained / "eval" / "eval_all_list.txt").read_text().split() == [name[11], name[12]]
    assert not (trained / "eval" / name[11]).exists()
    summary = json.loads((trained / "eval" / "eval_all.json").read_text())
    assert list(summary) == [name[12]]
    assert any((trained / "tensorboard_eval").iterdir())
    out = trained / "eval" / name[12] / "val"
    for file in (
        "checkpoint.json",
        "metrics.json",
        "metrics_summary.json",
        "metrics_details.json",
        "results_nusc.json",
        "detections.pth",
    ):
        assert (out / file).is_file(), file
    metrics = json.loads((out / "metrics.json").read_text())
    devkit = json.loads((out / "metrics_summary.json").read_text())
    assert metrics["mAP"] == devkit["mean_ap"] and metrics["NDS"] == devkit["nd_score"]
    assert 0.0 <= metrics["NDS"] <= 1.0 and "car_AP" in metrics
    assert "NDS" in res.stdout

    again = _run("test.py", "--from-dets", str(out / "detections.pth"), tmp=tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    dets_name = result_name(FileIdentity.of(out / "detections.pth"))
    rescored = json.loads((trained / "eval" / "from_dets" / dets_name / "val" / "metrics.json").read_text())
    assert rescored == metrics
    assert summary[name[12]] == metrics


def test_gt_sampling_augmentation_and_fade(trained: Path) -> None:
    """``train.augment.gt_sampling`` pastes database objects (built by the same run) until the fade epochs."""
    from perception.config import load_config
    from perception.engine.data import build_dataset, build_train_transforms

    tmp = trained.parents[2]
    overrides = [
        f"data.root={tmp / 'data'}",
        "train.epochs=2",
        "train.augment.gt_sampling.sample_counts={car: 30, pedestrian: 30}",
        "train.augment.gt_sampling.fade_last_epochs=1",
        "train.augment.flip_x=true",
        "train.augment.rotation=[-0.3, 0.3]",
    ]
    cfg = load_config(CONFIG, overrides)
    assert cfg.train is not None
    plain = build_dataset(cfg, "train", "val")[0]
    data = build_dataset(cfg, "train", "train", train=cfg.train)
    data.set_epoch(0)  # type: ignore[attr-defined]
    pasted = data[0]
    data.set_epoch(1)  # type: ignore[attr-defined]
    faded = data[0]
    assert len(pasted.boxes) > len(plain.boxes) and len(pasted.points) != len(plain.points)
    assert len(faded.boxes) == len(plain.boxes)  # GT sampling off in the last epoch; flip / rotation stay on
    assert not torch.equal(faded.points.tensor, plain.points.tensor)
    bad = load_config(CONFIG, [*overrides, "train.augment.gt_sampling.sample_counts={Car: 3}"])
    assert bad.train is not None
    with pytest.raises(ValueError, match="not in data.class_names"):
        build_train_transforms(bad, bad.train)


def _load_tool(name: str) -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_tool_{name}", REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tools_report_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train, test = _load_tool("train"), _load_tool("test")
    no_model = tmp_path / "nomodel.yaml"
    no_model.write_text(
        (REPO / "configs" / "demo_nuscenes_mini.yaml").read_text().replace("../", str(REPO) + "/")
    )
    assert train.main([str(no_model), "--set", "train.epochs=0"]) == 2  # type: ignore[attr-defined]
    assert "train.epochs" in capsys.readouterr().err
    assert train.main([str(no_model)]) == 2  # type: ignore[attr-defined]
    assert "no 'model:' section" in capsys.readouterr().err
    out = f"output_root={tmp_path / 'out'}"
    missing = str(tmp_path / "missing.pth")
    assert train.main([str(CONFIG), "--ckpt", missing, "--set", out]) == 2  # type: ignore[attr-defined]
    assert "--ckpt" in capsys.readouterr().err
    assert test.main([str(CONFIG), "--ckpt", missing, "--set", out]) == 2  # type: ignore[attr-defined]
    assert "missing.pth: no such checkpoint" in capsys.readouterr().err
    assert test.main([str(CONFIG), "--from-dets", missing, "--set", out]) == 2  # type: ignore[attr-defined]
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written for bad usage
    with pytest.raises(SystemExit):
        test.main([str(CONFIG), "--ckpt", missing, "--from-dets", missing])  # type: ignore[attr-defined]
    assert "not allowed with argument" in capsys.readouterr().err


def test_ctrl_c_in_train_py_saves_the_last_iteration_and_resumes(trained: Path) -> None:
    """SIGINT mid-run: exit status 130, one log line naming the checkpoint of the last completed iteration, and
    the same command resumes from it."""
    import re
    import signal

    from perception.engine.checkpoint import load_checkpoint

    tmp = trained.parents[2]
    args = ["--epochs", "40", "--batch-size", "1", "--extra-tag", "ctrl_c", "--set", "train.log_interval=1"]
    cmd, env = _command("train.py", *args, tmp=tmp)
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp) as proc:
        assert proc.stderr is not None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if " iter 3/80 " in line:
                proc.send_signal(signal.SIGINT)
                break
        lines += proc.stderr.readlines()
        assert proc.wait(timeout=120) == 130, "".join(lines)[-3000:]
    err = "".join(lines)
    assert "Ctrl-C: finishing the current iteration, then stopping and saving a checkpoint" in err
    m = re.search(
        r"interrupted by Ctrl-C after iteration (\d+) \(.*\); checkpoint (\S+) holds that state", err
    )
    assert m is not None, err[-3000:]
    assert "Traceback" not in err
    iteration, checkpoint = int(m.group(1)), Path(m.group(2))
    assert iteration >= 3 and load_checkpoint(checkpoint).iteration == iteration
    again = _run("train.py", *args, "--max-iterations", str(iteration + 1), tmp=tmp)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {checkpoint}" in again.stderr


def test_test_py_with_the_exported_dense_part_in_onnxruntime(trained: Path) -> None:
    """tools/export.py on the trained checkpoint, then tools/test.py --onnx: the official metrics equal torch's."""
    from perception.engine.paths import FileIdentity, result_name

    tmp = trained.parents[2]
    ckpt = trained / "ckpt" / "checkpoint_epoch_12.pth"
    export = tmp / "export"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "export.py"), "--ckpt", str(ckpt), "--out", str(export)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ref = _run("test.py", "--ckpt", str(ckpt), "--extra-tag", "torch_ref", tmp=tmp)
    assert ref.returncode == 0, ref.stderr[-3000:]
    onnx = _run("test.py", "--ckpt", str(ckpt), "--extra-tag", "onnx", "--onnx", str(export), tmp=tmp)
    assert onnx.returncode == 0, onnx.stderr[-3000:]
    name = result_name(FileIdentity.of(ckpt))
    run = trained.parent
    a = json.loads((run / "torch_ref" / "eval" / name / "val" / "metrics.json").read_text())
    b = json.loads((run / "onnx" / "eval" / name / "val_onnx" / "metrics.json").read_text())
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, float) and value == value:
            assert abs(b[key] - value) <= 1e-3, key
    # an export of other weights is refused, naming the mismatch
    other = trained / "ckpt" / "checkpoint_epoch_11.pth"
    bad = _run("test.py", "--ckpt", str(other), "--extra-tag", "onnx_bad", "--onnx", str(export), tmp=tmp)
    assert bad.returncode == 2 and "export it again" in bad.stderr
