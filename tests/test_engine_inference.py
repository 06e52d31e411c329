"""Inference helpers: detections files round trip (what ``--save-dets`` / ``--from-dets`` use), inference over a
data set in order, and the KITTI path of the evaluation (LiDAR-frame detections -> official result files -> AP)
checked against scoring the label files themselves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine_standin import StandInDetector, SyntheticSet

from perception.config import load_config
from perception.engine.inference import evaluate_detections, load_detections, run_inference, save_detections
from perception.structures import Boxes3D, Detections

REPO = Path(__file__).resolve().parents[1]


def test_detections_file_round_trip(tmp_path: Path) -> None:
    dets = {
        "a": Detections(Boxes3D(torch.rand(3, 9)), torch.rand(3), torch.tensor([0, 1, 0])),
        "b": Detections(Boxes3D.empty(with_velocity=True), torch.zeros(0), torch.zeros(0, dtype=torch.int64)),
    }
    path = save_detections(dets, ("car", "pedestrian"), tmp_path / "d" / "dets.pth")
    back, names = load_detections(path)
    assert names == ("car", "pedestrian") and list(back) == ["a", "b"]
    for k in dets:
        assert torch.equal(back[k].boxes.tensor, dets[k].boxes.tensor)
        assert torch.equal(back[k].scores, dets[k].scores) and torch.equal(back[k].labels, dets[k].labels)
    with pytest.raises(FileNotFoundError):
        load_detections(tmp_path / "none.pth")
    (tmp_path / "bad.pth").write_bytes(b"not torch")
    with pytest.raises(ValueError, match="cannot be loaded"):
        load_detections(tmp_path / "bad.pth")
    torch.save({"format_version": 7}, tmp_path / "v7.pth")
    with pytest.raises(ValueError, match="format version"):
        load_detections(tmp_path / "v7.pth")


def test_run_inference_in_order_and_restores_mode() -> None:
    torch.manual_seed(0)
    model = StandInDetector().train()
    data = SyntheticSet(size=5)
    dets = run_inference(model, data, batch_size=2, show_progress=False)
    assert list(dets) == [f"s{i:04d}" for i in range(5)]
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        from perception.structures import Batch

        direct = model.predict(Batch.collate([data[4]]))[0]
    assert torch.allclose(dets["s0004"].boxes.tensor, direct.boxes.tensor, atol=1e-6)
    with pytest.raises(ValueError, match="batch_size"):
        run_inference(model, data, batch_size=0)


def test_run_inference_leaves_the_global_generator_alone() -> None:
    """An evaluation between epochs must not shift the training's random stream (dropout, augmentation)."""
    model = StandInDetector()
    data = SyntheticSet(size=3)
    torch.manual_seed(7)
    run_inference(model, data, batch_size=2, show_progress=False)
    after = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(after, torch.rand(4))


@pytest.mark.slow
def test_kitti_evaluation_matches_scoring_the_labels(tmp_path: Path) -> None:
    from perception.datasets.kitti_infos import create_kitti_infos, infos_path, load_kitti_infos
    from perception.datasets.synthetic import SyntheticParams, generate
    from perception.evaluation.kitti import evaluate
    from perception.formats.kitti_labels import load_label_dirs

    root = tmp_path / "kitti"
    generate(SyntheticParams(format="kitti", scenes=3, samples=2, sweeps=0, cameras="front", seed=3), root)
    create_kitti_infos(root, progress=False, with_gt_database=False)
    cfg = load_config(REPO / "configs" / "demo_kitti.yaml", [f"data.root={root}"])
    infos = load_kitti_infos(infos_path(root, "val"))
    dets = {}
    for info in infos:
        assert info.annos is not None
        keep = np.isin(info.annos.names, cfg.data.class_names)
        boxes = torch.from_numpy(np.asarray(info.annos.boxes_lidar[keep], np.float32))
        labels = torch.tensor(
            [cfg.data.class_names.index(n) for n in info.annos.names[keep]], dtype=torch.int64
        )
        scores = torch.linspace(1.0, 0.5, len(labels)) if len(labels) else torch.zeros(0)
        dets[info.frame_id] = Detections(Boxes3D(boxes), scores.float(), labels)
    metrics = evaluate_detections(cfg, dets, "val", tmp_path / "eval")
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert sorted(p.stem for p in (tmp_path / "eval" / "data").iterdir()) == sorted(dets)

    ids = sorted(dets)
    _, gts, written = load_label_dirs(root / "training" / "label_2", tmp_path / "eval" / "data", ids)
    for gt, dt in zip(gts, written, strict=True):  # 3D parameters survive LiDAR -> camera -> file exactly
        mine = np.isin(gt.names, cfg.data.class_names)
        assert np.allclose(dt.location, gt.location[mine], atol=2e-3)
        assert np.allclose(dt.dimensions, gt.dimensions[mine], atol=2e-3)
        assert np.allclose(np.cos(dt.rotation_y - gt.rotation_y[mine]), 1.0, atol=1e-5)
    for key in ("Car_3d_R40_moderate", "Car_bev_R40_moderate"):
        assert not math.isnan(metrics[key]) and metrics[key] > 0
    # reference: the label files scored against themselves with the same scores (and the labels' own 2D boxes)
    import dataclasses

    ref_dets = [
        dataclasses.replace(g.select(np.isin(g.names, cfg.data.class_names)), score=d.score)
        for g, d in zip(gts, written, strict=True)
    ]
    reference = evaluate(
        gts, ref_dets, [c for c in cfg.data.class_names if metrics.get(f"{c}_3d_R40_easy") is not None]
    )
    for key, value in reference.ap.items():
        if "_3d_" in key or "_bev_" in key:
            assert (math.isnan(value) and math.isnan(metrics[key])) or value == pytest.approx(
                metrics[key], abs=1e-6
            ), key
