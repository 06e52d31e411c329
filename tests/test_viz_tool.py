"""Saved detections back in the LiDAR frame (nuScenes results JSON, KITTI result files) and
``tools/visualize.py --headless`` end to end on a tiny synthetic nuScenes set."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from perception.datasets.kitti_calib import KittiCalib, boxes_lidar_to_camera
from perception.formats.kitti_labels import KittiObjects, write_result_file
from perception.grid import VoxelGrid
from perception.structures import Detections
from perception.viz import o3d_render
from perception.viz.detections_io import global_boxes_to_lidar, load_kitti_results, load_nuscenes_results

REPO = Path(__file__).resolve().parents[1]
NUSC_NAMES = ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier", "motorcycle", "bicycle",
              "pedestrian", "traffic_cone")  # fmt: skip


def _wrap(a: torch.Tensor) -> torch.Tensor:
    return torch.atan2(torch.sin(a), torch.cos(a))


@pytest.fixture(scope="module")
def nusc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("viz_nusc")
    run = [sys.executable, str(REPO / "tools" / "create_data.py")]
    subprocess.run(
        [*run, "synthetic", "--format", "nuscenes", "--out", str(root), "--scenes", "2", "--samples", "2",
         "--sweeps", "9", "--cameras", "none", "--objects", "12", "--seed", "3"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*run, "nuscenes", "--root", str(root), "--version", "v1.0-mini", "--max-sweeps", "2", "--no-gt-database",
         "--quiet"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(  # and those of the shipped demo detector: keyframe + the 9th sweep (data.sweep_stride 9)
        [*run, "nuscenes", "--root", str(root), "--version", "v1.0-mini", "--max-sweeps", "2", "--sweep-stride",
         "9", "--no-gt-database", "--quiet"],
        check=True, capture_output=True,
    )  # fmt: skip
    return root


def _dataset(root: Path):  # type: ignore[no-untyped-def]
    from perception.datasets.nuscenes import NuScenesDataset, infos_path_for

    return NuScenesDataset(
        infos_path=infos_path_for(root, "v1.0-mini", 2, "val"),
        root=root,
        class_names=NUSC_NAMES,
        grid=VoxelGrid((-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), (0.3, 0.3, 8.0)),
        max_sweeps=2,
        mode="val",
    )


@pytest.fixture(scope="module")
def results_json(nusc_root: Path) -> tuple[Path, dict[str, Detections]]:
    """The ground truth of the val samples written as detections by the evaluator's own writer."""
    from nuscenes import NuScenes

    from perception.evaluation.nuscenes_results import detections_to_nusc_results, write_results_json

    ds = _dataset(nusc_root)
    dets = {}
    for i in range(len(ds) - 1):  # the last sample gets no results
        s = ds[i]
        scores = torch.linspace(0.95, 0.05, len(s.boxes))
        dets[s.token] = Detections(s.boxes, scores, s.labels)
    nusc = NuScenes("v1.0-mini", str(nusc_root), verbose=False)
    res = detections_to_nusc_results(nusc, dets, NUSC_NAMES, filter_range=False)
    res["results"]["not-a-sample"] = []
    res["results"][next(iter(dets))].append(
        {**res["results"][next(iter(dets))][0], "detection_name": "animal"}
    )
    return write_results_json(res, nusc_root / "results" / "results_nusc.json"), dets


def test_nuscenes_results_round_trip(
    nusc_root: Path, results_json: tuple[Path, dict[str, Detections]]
) -> None:
    path, dets = results_json
    ds = _dataset(nusc_root)
    poses = {info.token: info.ego_to_global @ info.lidar_to_ego for info in ds.infos}
    loaded = load_nuscenes_results(path, poses, NUSC_NAMES)
    assert loaded.unknown_tokens == ["not-a-sample"] and loaded.skipped_classes == {"animal": 1}
    assert loaded.missing_tokens == [ds.infos[-1].token]
    for token, want in dets.items():
        got = loaded.by_token[token]
        order = torch.argsort(want.scores, descending=True)  # the writer sorts by score
        w = want.boxes.tensor[order]
        assert got.boxes.tensor.shape == w.shape and len(w) > 0
        torch.testing.assert_close(got.boxes.tensor[:, :6], w[:, :6], atol=2e-3, rtol=0)
        assert _wrap(got.boxes.tensor[:, 6] - w[:, 6]).abs().max() < 1e-4
        torch.testing.assert_close(got.boxes.tensor[:, 7:], w[:, 7:], atol=2e-3, rtol=0)
        assert torch.equal(got.labels, want.labels[order])
        torch.testing.assert_close(got.scores, want.scores[order])


def test_global_box_conversion_and_errors(tmp_path: Path) -> None:
    # LiDAR x is global y (and the LiDAR sits at (100, 50, 2)): a box heading +y globally heads +x in LiDAR
    pose = np.eye(4)
    pose[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]  # LiDAR x -> global y
    pose[:3, 3] = [100.0, 50.0, 2.0]
    rec = {"translation": [100.0, 60.0, 1.0], "size": [2.0, 4.0, 1.5], "rotation": [math.cos(math.pi / 4), 0, 0,
           math.sin(math.pi / 4)], "velocity": [0.0, 3.0]}  # fmt: skip
    box = global_boxes_to_lidar([rec], pose)[0]
    np.testing.assert_allclose(box, [10.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.0, 3.0, 0.0], atol=1e-9)
    assert global_boxes_to_lidar([], pose).shape == (0, 9)
    with pytest.raises(ValueError, match="rotation must be 4 finite numbers"):
        global_boxes_to_lidar([{**rec, "rotation": [1.0, 0.0]}], pose)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not a JSON file"):
        load_nuscenes_results(bad, {}, NUSC_NAMES)
    bad.write_text(json.dumps({"meta": {}}))
    with pytest.raises(ValueError, match="results object"):
        load_nuscenes_results(bad, {}, NUSC_NAMES)
    bad.write_text(json.dumps({"results": {"t": [{**rec, "detection_name": "car"}]}}))
    with pytest.raises(ValueError, match="detection_score"):
        load_nuscenes_results(bad, {"t": pose}, NUSC_NAMES)


def _calib() -> KittiCalib:
    p2 = np.array([[700.0, 0.0, 600.0, 45.0], [0.0, 700.0, 180.0, -0.3], [0.0, 0.0, 1.0, 0.003]])
    r0 = np.array([[0.9999, 0.0098, -0.0074], [-0.0099, 0.9999, -0.0043], [0.0074, 0.0044, 1.0]])
    r0, _ = np.linalg.qr(r0)
    r0 *= np.sign(np.diag(r0))[None]
    tr = np.array([[0.0, -1.0, 0.0, 0.01], [0.0, 0.0, -1.0, -0.07], [1.0, 0.0, 0.0, -0.27]])
    return KittiCalib(P={2: p2}, R0_rect=r0, Tr_velo_to_cam=tr)


def test_kitti_results_round_trip(tmp_path: Path) -> None:
    calib = _calib()
    boxes = np.array([[12.0, 3.0, -0.8, 4.0, 1.7, 1.5, 0.4], [20.0, -5.0, -0.9, 0.8, 0.6, 1.8, -2.5]])
    loc, dims, ry = boxes_lidar_to_camera(boxes, calib)
    objs = KittiObjects(
        names=["Car", "pedestrian", "DontCare"],
        truncated=[-1, -1, -1],
        occluded=[-1, -1, -1],
        alpha=[-10, -10, -10],
        bbox=np.zeros((3, 4)),
        dimensions=np.vstack([dims, [-1, -1, -1]]),
        location=np.vstack([loc, [-1000, -1000, -1000]]),
        rotation_y=[*ry, -10],
        score=[0.9, 0.4, 1.0],
    )
    write_result_file(tmp_path / "000007.txt", objs)
    write_result_file(tmp_path / "000099.txt", objs.select(np.array([0])))  # a frame not in the split
    loaded = load_kitti_results(
        tmp_path, {"000007": calib, "000008": calib}, ("Car", "Pedestrian", "Cyclist")
    )
    assert loaded.unknown_tokens == ["000099"] and loaded.missing_tokens == ["000008"]
    assert loaded.skipped_classes == {"DontCare": 1}
    got = loaded.by_token["000007"]
    assert got.labels.tolist() == [0, 1]  # class names match case-insensitively
    torch.testing.assert_close(got.scores, torch.tensor([0.9, 0.4]))
    torch.testing.assert_close(got.boxes.tensor[:, :6], torch.tensor(boxes[:, :6], dtype=torch.float32))
    assert _wrap(got.boxes.tensor[:, 6] - torch.tensor(boxes[:, 6], dtype=torch.float32)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="folder"):
        load_kitti_results(tmp_path / "000007.txt", {}, ("Car",))


def _load_tool():  # tools/ is not a package
    spec = importlib.util.spec_from_file_location(
        "perception_visualize_tool", REPO / "tools" / "visualize.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_visualize_tool_headless(
    nusc_root: Path, results_json: tuple[Path, dict[str, Detections]], tmp_path: Path
) -> None:
    if not o3d_render.offscreen_status().available:
        pytest.skip(f"open3d off-screen rendering unavailable: {o3d_render.offscreen_status().reason}")
    path, dets = results_json
    out = tmp_path / "pics"
    tool = _load_tool()
    argv = ["--data", str(REPO / "configs" / "demo_nuscenes_mini.yaml"), "--set", f"data.root={nusc_root}",
            "data.max_sweeps=2", "--dets", str(path), "--headless", str(out), "--size", "320x240",
            "--view", "bev", "--score-threshold", "0.5"]  # fmt: skip
    assert tool.main(argv) == 0
    token = next(iter(dets))
    img = np.asarray(Image.open(out / f"{token}_render.png").convert("RGB"))
    assert img.shape == (240, 320, 3) and len(np.unique(img.reshape(-1, 3), axis=0)) > 20
    assert (img == 255).all(axis=2).sum() > 30  # white ground truth
    class_rgb = {tuple(round(255 * c) for c in col) for col in _class_rgbs()}
    present = {tuple(c) for c in np.unique(img.reshape(-1, 3), axis=0)}
    assert present & class_rgb  # class-coloured predictions above the threshold
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{i.token}_render.png" for i in _dataset(nusc_root).infos
    )


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("visualize.py: error: "), err
    assert "Traceback" not in err
    return err.strip().removeprefix("visualize.py: error: ")


def test_visualize_tool_errors_are_one_message(
    nusc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated point file, a bad ``--set`` and a missing info file: the message, exit status 2, no traceback."""
    tool = _load_tool()
    root = tmp_path / "nusc"
    shutil.copytree(nusc_root, root)
    scan = root / _dataset(root).infos[0].lidar_path
    size = scan.stat().st_size
    with open(scan, "r+b") as f:
        f.truncate(size - 7)
    config = str(REPO / "configs" / "demo_nuscenes_mini.yaml")
    base = [
        "--data",
        config,
        "--headless",
        str(tmp_path / "pics"),
        "--matplotlib",
        "--set",
        f"data.root={root}",
    ]
    assert tool.main([*base, "data.max_sweeps=2"]) == 2
    assert _one_error_line(capsys.readouterr().err) == (
        f"{scan}: size {size - 7} bytes is not a multiple of 20 bytes (5 float32 values per point); the file is "
        "truncated or not a 5-channel scan"
    )
    assert tool.main([*base, "data.max_sweeps=2", "data.max_sweep=3"]) == 2
    msg = _one_error_line(capsys.readouterr().err)
    assert "data.max_sweep: unknown key (in --set data.max_sweep=3)" in msg
    kitti = ["--data", str(REPO / "configs" / "demo_kitti.yaml"), "--set", f"data.root={tmp_path}"]
    assert tool.main([*kitti, "--headless", str(tmp_path / "pics")]) == 2
    assert _one_error_line(capsys.readouterr().err).startswith(
        f"info file {tmp_path / 'kitti_infos_val.pkl'}"
    )


def _class_rgbs() -> list[tuple[float, float, float]]:
    from perception.viz.colours import class_colour, hex_to_rgb

    return [hex_to_rgb(class_colour(n)) for n in NUSC_NAMES]
