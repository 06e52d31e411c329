"""The evaluation's ground truth is checked before any inference (perception.evaluation.gt_checks): a NaN or
zero-size val box is a ValueError naming the nuScenes annotation token or the KITTI ``file:line``, raised by
``build_dataset(..., "val")`` (what ``tools/test.py`` and the training-time evaluation build first) and by the
evaluation itself, instead of the devkit's bare ``AssertionError`` after the inference."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from nuscenes import NuScenes
from nuscenes.eval.detection.utils import category_to_detection_name

from perception.config import load_config
from perception.engine.data import build_dataset
from perception.evaluation.nuscenes import split_sample_tokens
from perception.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
NUSC_CONFIG = REPO / "configs" / "tiny_centerpoint_spconv.yaml"
KITTI_CONFIG = REPO / "configs" / "demo_kitti.yaml"
SWEEPS = 2


@pytest.fixture(scope="module")
def nusc_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic v1.0-mini (one mini_train and one mini_val scene, 2 keyframes each) with infos built."""
    from perception.datasets.nuscenes_infos import create_nuscenes_infos
    from perception.datasets.synthetic import SyntheticParams, generate

    root = tmp_path_factory.mktemp("gt_nusc")
    generate(SyntheticParams(format="nuscenes", scenes=2, samples=2, sweeps=1, cameras="none", seed=5), root)
    create_nuscenes_infos(root, "v1.0-mini", max_sweeps=SWEEPS, workers=0, progress=False)
    return root


@pytest.fixture
def nusc_root(nusc_source: Path, tmp_path: Path) -> Path:
    root = tmp_path / "nusc"
    shutil.copytree(nusc_source, root)
    return root


def _nusc_cfg(root: Path, *extra: str) -> Any:
    return load_config(NUSC_CONFIG, [f"data.root={root}", f"data.max_sweeps={SWEEPS}", *extra])


def _detection_annotations(root: Path, eval_set: str) -> list[str]:
    """Tokens of the annotations of ``eval_set`` whose category the devkit scores (what ``load_gt`` keeps)."""
    nusc = NuScenes(version="v1.0-mini", dataroot=str(root), verbose=False)
    return [
        a
        for s in split_sample_tokens(nusc, eval_set)
        for a in nusc.get("sample", s)["anns"]
        if category_to_detection_name(nusc.get("sample_annotation", a)["category_name"]) is not None
    ]


def _edit_annotations(root: Path, edits: dict[str, tuple[str, int, float]]) -> None:
    """Set ``record[field][index] = value`` for the annotation of each token in ``sample_annotation.json``."""
    path = root / "v1.0-mini" / "sample_annotation.json"
    table = json.loads(path.read_text())
    for rec in table:
        if rec["token"] in edits:
            field, index, value = edits[rec["token"]]
            rec[field][index] = value
    path.write_text(json.dumps(table))


def test_nuscenes_zero_size_and_nan_val_boxes_fail_before_inference(nusc_root: Path) -> None:
    cfg = _nusc_cfg(nusc_root)
    assert len(build_dataset(cfg, "val", "val")) == 2  # clean ground truth passes
    zero, nan, fine = _detection_annotations(nusc_root, "mini_val")[:3]
    _edit_annotations(nusc_root, {zero: ("size", 2, 0.0), nan: ("translation", 1, math.nan)})
    with pytest.raises(ValueError) as err:
        build_dataset(cfg, "val", "val")  # the table changed: checked again, not taken from the last pass
    msg = str(err.value)
    assert msg.startswith(
        f"{nusc_root / 'v1.0-mini' / 'sample_annotation.json'}: 2 annotation(s) of the nuScenes"
    )
    assert f"1 with NaN / inf in translation, size or rotation ({nan})" in msg
    assert f"1 of zero size, a width, length or height <= 0 ({zero})" in msg
    assert fine not in msg and "'mini_val'" in msg
    assert len(build_dataset(cfg, "train", "train", train=TrainConfig())) == 2  # only evaluation is refused


def test_nuscenes_check_reads_only_the_eval_split_and_detection_classes(nusc_root: Path) -> None:
    nusc = NuScenes(version="v1.0-mini", dataroot=str(nusc_root), verbose=False)
    val = set(split_sample_tokens(nusc, "mini_val"))
    train_ann = _detection_annotations(nusc_root, "mini_train")[0]
    other = next(  # an annotation of a category the devkit does not score, in the val split
        (
            a["token"]
            for a in nusc.sample_annotation
            if a["sample_token"] in val and category_to_detection_name(a["category_name"]) is None
        ),
        None,
    )
    edits = {train_ann: ("size", 0, 0.0)}
    if other is not None:
        edits[other] = ("size", 1, 0.0)
    _edit_annotations(nusc_root, edits)
    assert len(build_dataset(_nusc_cfg(nusc_root), "val", "val")) == 2
    with pytest.raises(ValueError, match=f"'mini_train' cannot be scored: 1 of zero size.*{train_ann}"):
        build_dataset(_nusc_cfg(nusc_root), "train", "val")


def test_nuscenes_evaluation_refuses_bad_ground_truth_with_a_message(nusc_root: Path, tmp_path: Path) -> None:
    """``--from-dets`` runs no inference: the evaluation checks before calling the devkit."""
    from perception.engine.inference import evaluate_detections
    from perception.structures import Boxes3D, Detections

    cfg = _nusc_cfg(nusc_root)
    nusc = NuScenes(version="v1.0-mini", dataroot=str(nusc_root), verbose=False)
    empty = Detections(Boxes3D.empty(with_velocity=True), *_empty_scores_labels())
    dets = {t: empty for t in split_sample_tokens(nusc, "mini_val")}
    zero = _detection_annotations(nusc_root, "mini_val")[0]
    _edit_annotations(nusc_root, {zero: ("size", 0, -1.0)})
    with pytest.raises(ValueError, match=f"1 of zero size.*{zero}"):
        evaluate_detections(cfg, dets, "val", tmp_path / "eval")


def _empty_scores_labels() -> tuple[Any, Any]:
    import torch

    return torch.zeros(0), torch.zeros(0, dtype=torch.int64)


def test_tools_test_refuses_bad_ground_truth_before_loading_the_model(
    nusc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zero = _detection_annotations(nusc_root, "mini_val")[0]
    _edit_annotations(nusc_root, {zero: ("size", 1, 0.0)})
    not_a_checkpoint = tmp_path / "checkpoint_epoch_1.pth"
    not_a_checkpoint.write_bytes(b"never loaded: the ground truth is checked first")
    tool = _load_tool("test")
    argv = [str(NUSC_CONFIG), "--ckpt", str(not_a_checkpoint), "--no-progress", "--set"]
    argv += [f"data.root={nusc_root}", f"data.max_sweeps={SWEEPS}", f"output_root={tmp_path / 'out'}"]
    assert tool.main(argv) == 2
    # log records (e.g. the note that the fixture's synthetic set was made with other settings) are not errors
    lines = capsys.readouterr().err.strip().splitlines()
    err = [
        line for line in lines if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ", line)
    ]
    assert len(err) == 1 and err[0].startswith("test.py: error: ") and zero in err[0]
    assert "of zero size" in err[0] and "cannot be loaded" not in err[0]


def _load_tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kitti_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from perception.datasets.kitti_infos import create_kitti_infos
    from perception.datasets.synthetic import SyntheticParams, generate

    root = tmp_path_factory.mktemp("gt_kitti")
    generate(SyntheticParams(format="kitti", scenes=3, samples=2, sweeps=0, cameras="front", seed=3), root)
    create_kitti_infos(root, progress=False, with_gt_database=False)
    return root


@pytest.fixture
def kitti_root(kitti_source: Path, tmp_path: Path) -> Path:
    root = tmp_path / "kitti"
    shutil.copytree(kitti_source, root)
    return root


def _val_label(root: Path) -> tuple[Path, list[str], int]:
    """A val label file, its lines, and the index of its first object line that is not DontCare."""
    from perception.formats.kitti_labels import read_ids

    for fid in read_ids(root / "ImageSets" / "val.txt"):
        path = root / "training" / "label_2" / f"{fid}.txt"
        lines = path.read_text().splitlines()
        hits = [k for k, line in enumerate(lines) if line.split() and line.split()[0] != "DontCare"]
        if hits:
            return path, lines, hits[0]
    raise AssertionError("the synthetic val split has no labelled object")


def _zero_height(line: str) -> str:
    cols = line.split()
    cols[8] = "0"  # h (columns: type truncated occluded alpha x1 y1 x2 y2 h w l x y z ry)
    return " ".join(cols)


def test_kitti_zero_size_val_box_names_file_and_line(kitti_root: Path) -> None:
    cfg = load_config(KITTI_CONFIG, [f"data.root={kitti_root}"])
    assert len(build_dataset(cfg, "val", "val")) > 0
    path, lines, k = _val_label(kitti_root)
    lines[k] = _zero_height(lines[k])
    path.write_text("\n" + "\n".join(lines) + "\n")  # a leading blank line: the object is on line k + 2
    with pytest.raises(ValueError) as err:
        build_dataset(cfg, "val", "val")
    assert str(err.value) == (
        f"1 KITTI label box(es) the evaluation cannot score, of zero size (h, w or l <= 0): {path}:{k + 2}; "
        "fix or remove these lines"
    )
    assert len(build_dataset(cfg, "train", "train", train=TrainConfig())) > 0  # only evaluation is refused


def test_kitti_dontcare_sizes_are_not_boxes(kitti_root: Path, tmp_path: Path) -> None:
    """DontCare regions carry -1 sizes by convention; a NaN is refused by the label reader with file:line."""
    from perception.evaluation.gt_checks import check_kitti_labels

    label = tmp_path / "labels" / "000000.txt"
    label.parent.mkdir()
    car = "Car 0.00 0 -1.57 100.0 150.0 200.0 250.0 1.5 1.6 3.9 1.0 1.7 20.0 -1.57"
    dontcare = "DontCare -1 -1 -10 500.0 160.0 540.0 190.0 -1 -1 -1 -1000 -1000 -1000 -10"
    label.write_text(f"{car}\n{dontcare}\n")
    check_kitti_labels(label.parent, ["000000"])
    label.write_text(f"{car}\n{car.replace(' 1.6 ', ' nan ')}\n")
    with pytest.raises(ValueError, match=r"000000.txt:2: non-finite value\(s\) \['nan'\]"):
        check_kitti_labels(label.parent, ["000000"])


def test_eval_kitti_cli_refuses_zero_size_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, det = tmp_path / "gt", tmp_path / "det"
    gt.mkdir()
    det.mkdir()
    car = "Car 0.00 0 -1.57 100.0 150.0 200.0 250.0 1.5 1.6 3.9 1.0 1.7 20.0 -1.57"
    (gt / "000000.txt").write_text(f"{car}\n{car.replace(' 3.9 ', ' 0 ')}\n")
    (det / "000000.txt").write_text(f"{car} 0.9\n")
    assert _load_tool("eval_kitti").main([str(gt), str(det)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: 1 KITTI label box(es) the evaluation cannot score, of zero size (h, w or l <= 0): "
        f"{gt / '000000.txt'}:2; fix or remove these lines"
    )
