"""Synthetic nuScenes: the official devkit loads it, its counts agree, and its evaluator scores GT as perfect."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.loaders import add_center_dist, filter_eval_boxes, load_gt
from nuscenes.eval.detection.constants import DETECTION_NAMES
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box, view_points
from nuscenes.utils.splits import create_splits_scenes
from PIL import Image
from pyquaternion import Quaternion

from perception.datasets.synthetic.classes import CLASSES

VERSION = "v1.0-mini"
_spec = importlib.util.spec_from_file_location(
    "create_data", Path(__file__).parents[1] / "tools" / "create_data.py"
)
assert _spec is not None and _spec.loader is not None
_create_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_create_data)
create_data = _create_data.main


@pytest.fixture(scope="module")
def dataroot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nuscenes")
    args = [
        "synthetic",
        "--format",
        "nuscenes",
        "--out",
        str(root),
        "--scenes",
        "4",
        "--samples",
        "3",
        "--sweeps",
        "2",
        "--cameras",
        "front",
        "--objects",
        "25",
        "--seed",
        "3",
    ]
    assert create_data(args) == 0
    return root


@pytest.fixture(scope="module")
def nusc(dataroot: Path) -> NuScenes:
    return NuScenes(VERSION, str(dataroot), verbose=False)


def _global_points(nusc: NuScenes, sd_token: str) -> np.ndarray:
    """Keyframe points in the global frame, exactly as the devkit moves them (sensor -> ego -> global)."""
    sd = nusc.get("sample_data", sd_token)
    pc = LidarPointCloud.from_file(os.path.join(nusc.dataroot, sd["filename"]))
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
    pc.translate(np.array(cs["translation"]))
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
    pc.translate(np.array(pose["translation"]))
    return pc.points[:3]


def test_tables_and_links(nusc: NuScenes, dataroot: Path) -> None:
    for table in nusc.table_names:
        assert len(getattr(nusc, table)) > 0, table
    splits = create_splits_scenes()
    names = {s["name"] for s in nusc.scene}
    assert names & set(splits["mini_train"]) and names & set(splits["mini_val"])
    assert names <= set(splits["mini_train"]) | set(splits["mini_val"])
    for scene in nusc.scene:
        chain = [nusc.get("sample", scene["first_sample_token"])]
        while chain[-1]["next"]:
            chain.append(nusc.get("sample", chain[-1]["next"]))
        assert chain[-1]["token"] == scene["last_sample_token"] and len(chain) == scene["nbr_samples"] == 3
        assert np.all(np.diff([s["timestamp"] for s in chain]) == 500_000)  # 2 Hz keyframes
        for sample in chain:
            assert set(sample["data"]) == {"LIDAR_TOP", "CAM_FRONT"}
            lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
            assert lidar["is_key_frame"] and lidar["timestamp"] == sample["timestamp"]
            sweeps = [nusc.get("sample_data", lidar["prev"])]
            sweeps.append(nusc.get("sample_data", sweeps[0]["prev"]))
            assert [s["is_key_frame"] for s in sweeps] == [False, False]
            assert [lidar["timestamp"] - s["timestamp"] for s in sweeps] == [50_000, 100_000]  # 20 Hz
            assert all(s["filename"].startswith("sweeps/LIDAR_TOP/") for s in sweeps)
            assert os.path.getsize(dataroot / lidar["filename"]) % 20 == 0  # float32 x 5
    for inst in nusc.instance:
        anns = [nusc.get("sample_annotation", inst["first_annotation_token"])]
        while anns[-1]["next"]:
            anns.append(nusc.get("sample_annotation", anns[-1]["next"]))
        assert (
            len(anns) == inst["nbr_annotations"] >= 2 and anns[-1]["token"] == inst["last_annotation_token"]
        )
        assert all(a["instance_token"] == inst["token"] for a in anns)
        assert all(len(a["attribute_tokens"]) <= 1 and a["num_radar_pts"] == 0 for a in anns)
    tokens = [r["token"] for t in nusc.table_names for r in getattr(nusc, t) if t != "visibility"]
    assert all(len(tok) == 32 and int(tok, 16) >= 0 for tok in tokens)


def test_multisweep_and_map(nusc: NuScenes) -> None:
    sample = nusc.sample[-1]
    pc, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=3)
    np.testing.assert_allclose(np.unique(times), [0.0, 0.05, 0.1], atol=1e-6)
    assert 25_000 * 3 < pc.nbr_points() < 40_000 * 3
    log = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])
    mask = nusc.get("map", log["map_token"])["mask"]
    poses = [nusc.get("ego_pose", sd["ego_pose_token"])["translation"] for sd in nusc.sample_data]
    xy = np.array(poses)[:, :2].T
    assert mask.is_on_mask(xy[0], xy[1]).all()  # the ego drives on the drivable-area mask


def test_num_lidar_pts_equals_devkit_points_in_box(nusc: NuScenes) -> None:
    checked = 0
    for sample in nusc.sample:
        xyz = _global_points(nusc, sample["data"]["LIDAR_TOP"])
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            assert int(points_in_box(nusc.get_box(ann_token), xyz).sum()) == ann["num_lidar_pts"], ann_token
            checked += 1
    assert checked == len(nusc.sample_annotation) > 100
    assert sum(a["num_lidar_pts"] > 0 for a in nusc.sample_annotation) > 0.5 * checked


def test_every_class_in_val_within_range_with_points(nusc: NuScenes) -> None:
    cfg = config_factory("detection_cvpr_2019")
    gt = load_gt(nusc, "mini_val", DetectionBox, verbose=False)
    gt = filter_eval_boxes(nusc, add_center_dist(nusc, gt), cfg.class_range, verbose=False)
    per_class = {name: 0 for name in DETECTION_NAMES}
    for box in gt.all:
        per_class[box.detection_name] += 1
    assert all(n > 0 for n in per_class.values()), per_class


def test_official_eval_scores_ground_truth_perfectly(nusc: NuScenes, tmp_path: Path) -> None:
    val_scenes = set(create_splits_scenes()["mini_val"])
    results = {}
    for sample in nusc.sample:
        if nusc.get("scene", sample["scene_token"])["name"] not in val_scenes:
            continue
        boxes = []
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            name = category_to_detection_name(ann["category_name"])
            if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
                continue
            attr = (
                nusc.get("attribute", ann["attribute_tokens"][0])["name"] if ann["attribute_tokens"] else ""
            )
            boxes.append(
                {
                    "sample_token": sample["token"],
                    "translation": ann["translation"],
                    "size": ann["size"],
                    "rotation": ann["rotation"],
                    "velocity": list(nusc.box_velocity(ann_token)[:2]),
                    "detection_name": name,
                    "detection_score": 0.9,
                    "attribute_name": attr,
                }
            )
        results[sample["token"]] = boxes
    meta = {
        "use_camera": False,
        "use_lidar": True,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": meta, "results": results}))
    evaluator = DetectionEval(
        nusc,
        config_factory("detection_cvpr_2019"),
        str(path),
        "mini_val",
        str(tmp_path / "eval"),
        verbose=False,
    )
    metrics, _ = evaluator.evaluate()
    assert metrics.mean_ap == pytest.approx(1.0, abs=1e-9)
    assert metrics.nd_score == pytest.approx(1.0, abs=1e-9)
    assert all(v == pytest.approx(0.0, abs=1e-9) for v in metrics.tp_errors.values())


def test_velocities_and_attributes_agree(nusc: NuScenes) -> None:
    moving = {"vehicle.moving", "cycle.with_rider", "pedestrian.moving"}
    static = {"vehicle.parked", "cycle.without_rider", "pedestrian.standing", "pedestrian.sitting_lying_down"}
    seen = set()
    for ann in nusc.sample_annotation:
        speed = float(np.linalg.norm(nusc.box_velocity(ann["token"])[:2]))
        attrs = {nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]}
        seen |= attrs
        if attrs & moving:
            assert speed > 0.5, (ann["category_name"], attrs, speed)
        elif attrs & static or not attrs:
            assert speed < 1e-9, (ann["category_name"], attrs, speed)
        if ann["category_name"].startswith("human.pedestrian") and attrs & moving:
            assert speed < 2.0
    assert {"vehicle.moving", "vehicle.parked", "pedestrian.moving"} <= seen


def test_camera_renders_objects_in_class_colour(nusc: NuScenes, dataroot: Path) -> None:
    matched = 0
    for sample in nusc.sample:
        sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
        image = np.asarray(Image.open(dataroot / sd["filename"]), dtype=np.float64)
        assert image.shape == (900, 1600, 3)
        _, boxes, intrinsic = nusc.get_sample_data(sd["token"])
        colours = {c.category: np.array(c.color, dtype=np.float64) for c in CLASSES}
        best = None
        for box in boxes:  # the nearest object whose centre is in the image is not hidden by another object
            u, v = view_points(box.center[:, None], intrinsic, normalize=True)[:2, 0]
            if box.center[2] > 1.0 and 0 <= u < 1600 and 0 <= v < 900 and box.name in colours:
                if best is None or box.center[2] < best[0]:
                    best = (box.center[2], box.name, int(u), int(v))
        if best is None:
            continue
        pixel = image[best[3], best[2]]
        ref = colours[best[1]]
        cosine = pixel @ ref / (np.linalg.norm(pixel) * np.linalg.norm(ref))
        matched += cosine > 0.97
    assert matched >= len(nusc.sample) - 1


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    def run(out: Path, seed: int) -> dict[str, bytes]:
        args = [
            "synthetic",
            "--format",
            "nuscenes",
            "--out",
            str(out),
            "--scenes",
            "2",
            "--samples",
            "2",
            "--sweeps",
            "1",
            "--cameras",
            "all",
            "--objects",
            "8",
            "--seed",
            str(seed),
        ]
        assert create_data(args) == 0
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    a, b, c = run(tmp_path / "a", 11), run(tmp_path / "b", 11), run(tmp_path / "c", 12)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert sum(k.startswith("samples/CAM_") for k in a) == 2 * 2 * 6  # six cameras per keyframe
    assert a["v1.0-mini/sample_annotation.json"] != c["v1.0-mini/sample_annotation.json"]
