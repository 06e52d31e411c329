"""nuScenes evaluation: LiDAR -> global conversion, attributes, results JSON, and the official devkit scores.

The unit tests use hand-made ``calibrated_sensor`` / ``ego_pose`` records; the end-to-end tests generate a tiny
synthetic dataset in the real v1.0 layout and score it with the devkit's ``NuScenesEval``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from nuscenes.eval.detection.constants import DETECTION_NAMES
from nuscenes.utils.data_classes import Box
from pyquaternion import Quaternion

from perception.evaluation.nuscenes import (
    MOVING_SPEED,
    NuScenesMetrics,
    default_attribute,
    detections_to_nusc_results,
    format_metrics,
    write_results_json,
)
from perception.formats.nuscenes_boxes import boxes_from_devkit
from perception.structures import Boxes3D, Detections

CLASSES = tuple(DETECTION_NAMES)


class FakeNusc:
    """The few ``NuScenes`` tables the conversion reads: sample -> LIDAR_TOP sample_data -> calib + pose."""

    version = "v1.0-mini"
    dataroot = "/nowhere"

    def __init__(self, records: dict[str, tuple[dict, dict]]) -> None:
        self.tables: dict[str, dict[str, dict]] = {
            "sample": {},
            "sample_data": {},
            "calibrated_sensor": {},
            "ego_pose": {},
        }
        for token, (cs, pose) in records.items():
            self.tables["sample"][token] = {"token": token, "data": {"LIDAR_TOP": "sd_" + token}}
            self.tables["sample_data"]["sd_" + token] = {
                "calibrated_sensor_token": "cs_" + token,
                "ego_pose_token": "ep_" + token,
            }
            self.tables["calibrated_sensor"]["cs_" + token] = cs
            self.tables["ego_pose"]["ep_" + token] = pose

    def get(self, table: str, token: str) -> dict:
        return self.tables[table][token]


def _record(yaw: float, translation: list[float], tilt: tuple[float, float] = (0.0, 0.0)) -> dict:
    q = (
        Quaternion(axis=[0, 0, 1], radians=yaw)
        * Quaternion(axis=[0, 1, 0], radians=tilt[0])
        * Quaternion(axis=[1, 0, 0], radians=tilt[1])
    )
    return {"rotation": list(q.elements), "translation": translation}


def _global_to_lidar(box: Box, cs: dict, pose: dict) -> Box:
    """What ``NuScenes.get_sample_data`` does to a global annotation (plus the velocity mmdet3d rotates)."""
    box = box.copy()
    box.translate(-np.array(pose["translation"]))
    box.rotate(Quaternion(pose["rotation"]).inverse)
    box.translate(-np.array(cs["translation"]))
    box.rotate(Quaternion(cs["rotation"]).inverse)
    return box


def _random_global_boxes(n: int, seed: int, origin: list[float]) -> list[Box]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        centre = np.array(origin) + rng.uniform([-30, -30, -1], [30, 30, 2])
        wlh = rng.uniform(0.5, 5.0, 3)
        yaw = rng.uniform(-math.pi, math.pi)
        vel = (*rng.normal(0, 4, 2), 0.0)
        out.append(Box(centre, wlh, Quaternion(axis=[0, 0, 1], radians=yaw), velocity=vel))
    return out


def _dets(boxes: Boxes3D, scores: list[float] | None = None, labels: list[int] | None = None) -> Detections:
    n = len(boxes)
    return Detections(
        boxes,
        torch.tensor(scores if scores is not None else [0.5] * n, dtype=torch.float32),
        torch.tensor(labels if labels is not None else [0] * n, dtype=torch.int64),
    )


# ---------------------------------------------------------------------------------------------------------------
# LiDAR -> ego -> global
# ---------------------------------------------------------------------------------------------------------------


def test_round_trip_global_annotation_through_lidar_frame() -> None:
    """devkit GT box -> sensor frame (as get_sample_data) -> Boxes3D -> our global conversion == the original."""
    cs = _record(-1.57, [0.94, 0.0, 1.84])
    pose = _record(2.1, [411.3, 1180.9, 0.0])
    nusc = FakeNusc({"s0": (cs, pose)})
    gt = _random_global_boxes(12, seed=1, origin=pose["translation"])
    ours = boxes_from_devkit([_global_to_lidar(b, cs, pose) for b in gt])
    res = detections_to_nusc_results(nusc, {"s0": _dets(ours)}, CLASSES, filter_range=False)["results"]["s0"]
    assert len(res) == len(gt)
    for b, r in zip(gt, res, strict=True):
        np.testing.assert_allclose(r["translation"], b.center, atol=1e-4)
        np.testing.assert_allclose(r["size"], b.wlh, atol=1e-4)
        np.testing.assert_allclose(r["velocity"], b.velocity[:2], atol=1e-4)
        # same rotation (q and -q are the same rotation)
        assert abs(abs(np.dot(r["rotation"], b.orientation.elements)) - 1.0) < 1e-6
        assert r["sample_token"] == "s0" and r["detection_name"] == "car"


def test_tilted_sensor_and_pose_keep_centres_and_sizes_exact() -> None:
    """With pitch/roll the LiDAR-frame box keeps only its yaw; centres and sizes still come back exactly and the
    global yaw within the tilt."""
    cs = _record(-1.55, [0.9, 0.1, 1.8], tilt=(0.01, -0.008))
    pose = _record(-0.7, [-50.0, 300.0, 0.3], tilt=(0.02, 0.015))
    nusc = FakeNusc({"s0": (cs, pose)})
    gt = _random_global_boxes(8, seed=2, origin=pose["translation"])
    ours = boxes_from_devkit([_global_to_lidar(b, cs, pose) for b in gt])
    res = detections_to_nusc_results(nusc, {"s0": _dets(ours)}, CLASSES, filter_range=False)["results"]["s0"]
    for b, r in zip(gt, res, strict=True):
        np.testing.assert_allclose(r["translation"], b.center, atol=1e-4)
        np.testing.assert_allclose(r["size"], b.wlh, atol=1e-4)
        dyaw = Quaternion(r["rotation"]).yaw_pitch_roll[0] - b.orientation.yaw_pitch_roll[0]
        assert abs(math.remainder(dyaw, 2 * math.pi)) < 0.05
        np.testing.assert_allclose(
            r["velocity"], b.velocity[:2], atol=0.05 * np.linalg.norm(b.velocity) + 1e-4
        )


def test_velocity_is_rotated_not_translated() -> None:
    cs = _record(0.0, [5.0, 5.0, 5.0])
    pose = _record(math.pi / 2, [100.0, -100.0, 0.0])
    nusc = FakeNusc({"s0": (cs, pose)})
    boxes = Boxes3D(torch.tensor([[1.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 3.0, 0.0]]))
    (r,) = detections_to_nusc_results(nusc, {"s0": _dets(boxes)}, CLASSES, filter_range=False)["results"][
        "s0"
    ]
    np.testing.assert_allclose(r["velocity"], [0.0, 3.0], atol=1e-6)  # +x rotated by 90 degrees
    # centre: (1,0,0) + (5,5,5) = (6,5,5), rotated 90 degrees -> (-5,6,5), + (100,-100,0)
    np.testing.assert_allclose(r["translation"], [95.0, -94.0, 5.0], atol=1e-5)
    np.testing.assert_allclose(r["size"], [2.0, 4.0, 1.5], atol=1e-6)  # w, l, h
    assert abs(Quaternion(r["rotation"]).yaw_pitch_roll[0] - math.pi / 2) < 1e-6
    assert r["attribute_name"] == "vehicle.moving"


def test_seven_column_boxes_get_zero_velocity() -> None:
    nusc = FakeNusc({"s0": (_record(0.3, [1, 2, 3]), _record(1.0, [10, 20, 0]))})
    boxes = Boxes3D(torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.4]]))
    (r,) = detections_to_nusc_results(nusc, {"s0": _dets(boxes)}, CLASSES, filter_range=False)["results"][
        "s0"
    ]
    assert r["velocity"] == [0.0, 0.0] and r["attribute_name"] == "vehicle.parked"


# ---------------------------------------------------------------------------------------------------------------
# attributes, cap, range filter
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "moving", "still"),
    [
        ("car", "vehicle.moving", "vehicle.parked"),
        ("truck", "vehicle.moving", "vehicle.parked"),
        ("trailer", "vehicle.moving", "vehicle.parked"),
        ("construction_vehicle", "vehicle.moving", "vehicle.parked"),
        ("bus", "vehicle.moving", "vehicle.stopped"),
        ("bicycle", "cycle.with_rider", "cycle.without_rider"),
        ("motorcycle", "cycle.with_rider", "cycle.without_rider"),
        ("pedestrian", "pedestrian.moving", "pedestrian.standing"),
        ("barrier", "", ""),
        ("traffic_cone", "", ""),
    ],
)
def test_default_attribute_table(name: str, moving: str, still: str) -> None:
    assert default_attribute(name, MOVING_SPEED + 1e-3) == moving
    assert default_attribute(name, MOVING_SPEED) == still  # strictly greater counts as moving
    assert default_attribute(name, 0.0) == still


def test_default_attribute_rejects_unknown_class_and_nan() -> None:
    with pytest.raises(ValueError, match="detection class"):
        default_attribute("Car", 1.0)
    with pytest.raises(ValueError, match="NaN"):
        default_attribute("car", math.nan)


def test_attribute_uses_global_speed_for_every_class() -> None:
    nusc = FakeNusc({"s0": (_record(-1.6, [1, 0, 2]), _record(0.8, [0, 0, 0]))})
    n = len(CLASSES)
    t = torch.zeros((2 * n, 9))
    t[:, 3:6] = 1.0
    t[:n, 7] = 0.15  # still: 0.15 m/s (and 0.15, 0.15 -> 0.21 moving below)
    t[n:, 7:9] = 0.15
    labels = list(range(n)) * 2
    res = detections_to_nusc_results(
        nusc, {"s0": _dets(Boxes3D(t), scores=[0.9] * n + [0.1] * n, labels=labels)}, CLASSES
    )["results"]["s0"]
    for i, r in enumerate(res):
        speed = math.hypot(*r["velocity"])
        assert r["attribute_name"] == default_attribute(CLASSES[labels[i]], speed)
        assert (speed > MOVING_SPEED) == (i >= n)


def test_cap_keeps_the_highest_scores_sorted() -> None:
    nusc = FakeNusc({"s0": (_record(0, [0, 0, 0]), _record(0, [0, 0, 0]))})
    g = torch.Generator().manual_seed(0)
    n = 40
    t = torch.zeros((n, 9))
    t[:, 0] = torch.arange(n, dtype=torch.float32) * 0.5  # x identifies the box, all within 30 m
    t[:, 3:6] = 1.0
    scores = torch.rand(n, generator=g)
    dets = Detections(Boxes3D(t), scores, torch.zeros(n, dtype=torch.int64))
    res = detections_to_nusc_results(nusc, {"s0": dets}, CLASSES, max_boxes_per_sample=7)["results"]["s0"]
    want = torch.argsort(scores, descending=True)[:7]
    assert [round(r["translation"][0] / 0.5) for r in res] == want.tolist()
    assert [r["detection_score"] for r in res] == pytest.approx(scores[want].tolist())


def test_range_filter_matches_the_devkit_rule() -> None:
    """car range is 50 m, pedestrian 40 m, measured in global xy from the ego pose (LiDAR offset included)."""
    nusc = FakeNusc({"s0": (_record(0, [1.0, 0, 1.8]), _record(0.5, [100.0, 50.0, 0.0]))})
    xs = [48.5, 49.5, 38.5, 39.5]  # + 1 m LiDAR offset: 49.5 / 50.5 m for cars, 39.5 / 40.5 m for pedestrians
    t = torch.zeros((4, 9))
    t[:, 0] = torch.tensor(xs)
    t[:, 3:6] = 1.0
    ped = CLASSES.index("pedestrian")
    dets = _dets(Boxes3D(t), scores=[0.4, 0.3, 0.2, 0.1], labels=[0, 0, ped, ped])
    kept = detections_to_nusc_results(nusc, {"s0": dets}, CLASSES)["results"]["s0"]
    assert [r["detection_score"] for r in kept] == pytest.approx([0.4, 0.2])
    everything = detections_to_nusc_results(nusc, {"s0": dets}, CLASSES, filter_range=False)["results"]["s0"]
    assert len(everything) == 4


def test_empty_detections_give_an_empty_list_and_meta() -> None:
    nusc = FakeNusc({"s0": (_record(0, [0, 0, 0]), _record(0, [0, 0, 0]))})
    empty = Detections(Boxes3D.empty(with_velocity=True), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    out = detections_to_nusc_results(nusc, {"s0": empty}, CLASSES)
    assert out["results"] == {"s0": []}
    assert out["meta"]["use_lidar"] is True and out["meta"]["use_camera"] is False


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------


def _one_box(**overrides: Any) -> Detections:
    t = torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.4, 0.0, 0.0]])
    d = {"boxes": Boxes3D(t), "scores": torch.tensor([0.5]), "labels": torch.tensor([0])}
    d.update(overrides)
    return Detections(**d)


@pytest.mark.parametrize(
    ("dets_by_token", "class_names", "match"),
    [
        ({"nope": "DETS"}, CLASSES, "'nope' is not a sample"),
        ({"s0": "DETS"}, ("car", "Pedestrian"), "nuScenes detection classes"),
        ({"s0": _one_box(labels=torch.tensor([10]))}, CLASSES, "outside \\[0, 10\\)"),
        ({"s0": _one_box(labels=torch.tensor([-1]))}, CLASSES, "outside"),
        ({"s0": _one_box(scores=torch.tensor([math.nan]))}, CLASSES, "non-finite scores"),
        (
            {"s0": _one_box(boxes=Boxes3D(torch.tensor([[math.inf, 0, 0, 1, 1, 1, 0, 0, 0]])))},
            CLASSES,
            "non-finite boxes",
        ),
    ],
)
def test_bad_input_is_a_clear_error(dets_by_token: dict, class_names: tuple, match: str) -> None:
    nusc = FakeNusc({"s0": (_record(0, [0, 0, 0]), _record(0, [0, 0, 0]))})
    dets_by_token = {k: _one_box() if v == "DETS" else v for k, v in dets_by_token.items()}
    with pytest.raises(ValueError, match=match):
        detections_to_nusc_results(nusc, dets_by_token, class_names)


def test_wrong_value_type_and_cap() -> None:
    nusc = FakeNusc({"s0": (_record(0, [0, 0, 0]), _record(0, [0, 0, 0]))})
    with pytest.raises(TypeError, match="must be Detections"):
        detections_to_nusc_results(nusc, {"s0": {"boxes": None}}, CLASSES)  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="max_boxes_per_sample"):
        detections_to_nusc_results(nusc, {"s0": _one_box()}, CLASSES, max_boxes_per_sample=0)


# ---------------------------------------------------------------------------------------------------------------
# results JSON, metrics formatting
# ---------------------------------------------------------------------------------------------------------------


def test_write_results_json_is_atomic(tmp_path: Path) -> None:
    nusc = FakeNusc({"s0": (_record(0.2, [1, 0, 2]), _record(1.0, [5, 6, 0]))})
    results = detections_to_nusc_results(nusc, {"s0": _one_box()}, CLASSES)
    path = write_results_json(results, tmp_path / "sub" / "results.json")
    assert json.loads(path.read_text()) == results
    # a failing write leaves the previous file untouched and no temporary behind
    bad = {"meta": {}, "results": {"s0": [{"translation": [math.nan, 0, 0]}]}}
    with pytest.raises(ValueError, match="NaN or inf"):
        write_results_json(bad, path)
    assert json.loads(path.read_text()) == results
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]
    with pytest.raises(ValueError, match="'meta' and 'results'"):
        write_results_json({"results": {}}, path)


def _summary(ap: float, err: float) -> dict:
    aps = {c: {0.5: ap, 1.0: ap, 2.0: ap, 4.0: ap} for c in CLASSES}
    tps = {
        c: {k: err for k in ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")} for c in CLASSES
    }
    tps["traffic_cone"].update(orient_err=math.nan, vel_err=math.nan, attr_err=math.nan)
    tp_means = {k: err for k in tps["car"]}
    return {
        "label_aps": aps,
        "mean_dist_aps": {c: ap for c in CLASSES},
        "mean_ap": ap,
        "label_tp_errors": tps,
        "tp_errors": tp_means,
        "nd_score": (5 * ap + 5 * (1 - err)) / 10,
        "eval_time": 0.1,
    }


def test_metrics_from_summary_and_markdown() -> None:
    m = NuScenesMetrics.from_summary(_summary(0.75, 0.25), "/tmp/x")
    assert m.mean_ap == 0.75 and m.mATE == m.mASE == m.mAOE == m.mAVE == m.mAAE == 0.25
    assert m.class_aps_by_distance["bus"][2.0] == 0.75 and math.isnan(
        m.class_tp_errors["traffic_cone"]["vel_err"]
    )
    flat = m.to_flat_dict()
    assert flat["NDS"] == pytest.approx(0.75) and flat["car_ATE"] == 0.25 and flat["mAAE"] == 0.25
    text = format_metrics(m)
    lines = text.splitlines()
    assert lines[0] == "| mAP | NDS | mATE | mASE | mAOE | mAVE | mAAE |"
    assert lines[2] == "| 0.7500 | 0.7500 | 0.2500 | 0.2500 | 0.2500 | 0.2500 | 0.2500 |"
    assert "| traffic_cone | 0.7500 | 0.2500 | 0.2500 | n/a | n/a | n/a |" in lines
    assert sum(line.startswith("| ") for line in lines) == 2 + 1 + len(CLASSES)


def test_given_attributes_replace_the_default_rule() -> None:
    nusc = FakeNusc({"s0": (_record(0, [0, 0, 0]), _record(0, [0, 0, 0]))})
    two = Detections(
        Boxes3D(torch.tensor([[1.0, 0, 0, 4, 2, 1.5, 0, 0, 0], [5.0, 0, 0, 4, 2, 1.5, 0, 0, 0]])),
        torch.tensor([0.2, 0.8]),
        torch.tensor([0, 5]),
    )
    attrs = {"s0": ["vehicle.stopped", "pedestrian.sitting_lying_down"]}
    res = detections_to_nusc_results(nusc, {"s0": two}, CLASSES, attributes_by_token=attrs)["results"]["s0"]
    # sorted by score; each box keeps its own attribute
    assert [(r["detection_name"], r["attribute_name"]) for r in res] == [
        ("pedestrian", "pedestrian.sitting_lying_down"),
        ("car", "vehicle.stopped"),
    ]
    for bad, match in [
        ({"s0": ["vehicle.stopped"]}, "1 names for 2 detections"),
        ({"s0": ["vehicle.stopped", "pedestrian.flying"]}, "unknown attributes \\['pedestrian.flying'\\]"),
        ({"s0": ["", ""], "s9": []}, "tokens without detections"),
    ]:
        with pytest.raises(ValueError, match=match):
            detections_to_nusc_results(nusc, {"s0": two}, CLASSES, attributes_by_token=bad)


# ---------------------------------------------------------------------------------------------------------------
# end to end: synthetic v1.0-mini data set scored by the official devkit
# ---------------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mini_nusc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny synthetic nuScenes v1.0-mini (2 scenes: one mini_train, one mini_val; 3 keyframes each)."""
    import subprocess
    import sys

    from nuscenes import NuScenes

    root = tmp_path_factory.mktemp("nusc_mini")
    cmd = [sys.executable, str(ROOT / "tools" / "create_data.py"), "synthetic", "--format", "nuscenes"]
    cmd += ["--out", str(root), "--version", "v1.0-mini", "--scenes", "2", "--samples", "3", "--sweeps", "0"]
    cmd += ["--cameras", "none", "--seed", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return NuScenes(version="v1.0-mini", dataroot=str(root), verbose=False)


def _ground_truth_as_detections(
    nusc: Any, tokens: list[str]
) -> tuple[dict[str, Detections], dict[str, list[str]]]:
    """Each sample's annotations read through the devkit into the LiDAR frame (``get_sample_data``), velocities
    from ``box_velocity`` rotated into the same frame, as :class:`Detections` with score 1; plus their attributes.

    Annotations the devkit does not score (no detection class, or no LiDAR/radar point) are left out, as the
    devkit drops them from the ground truth.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    dets, attrs = {}, {}
    for token in tokens:
        lidar = nusc.get("sample", token)["data"]["LIDAR_TOP"]
        sd = nusc.get("sample_data", lidar)
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        to_lidar = Quaternion(cs["rotation"]).inverse * Quaternion(pose["rotation"]).inverse
        _, boxes, _ = nusc.get_sample_data(lidar)
        kept, labels, names = [], [], []
        for box in boxes:
            ann = nusc.get("sample_annotation", box.token)
            name = category_to_detection_name(ann["category_name"])
            if name is None or ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
                continue
            box.velocity = to_lidar.rotate(nusc.box_velocity(box.token))
            kept.append(box)
            labels.append(CLASSES.index(name))
            names.append(
                nusc.get("attribute", ann["attribute_tokens"][0])["name"] if ann["attribute_tokens"] else ""
            )
        boxes3d = boxes_from_devkit(kept)
        dets[token] = Detections(boxes3d, torch.ones(len(boxes3d)), torch.tensor(labels, dtype=torch.int64))
        attrs[token] = names
    return dets, attrs


@pytest.fixture(scope="session")
def mini_val_gt(mini_nusc: Any) -> tuple[dict[str, Detections], dict[str, list[str]]]:
    from perception.evaluation.nuscenes import split_sample_tokens

    return _ground_truth_as_detections(mini_nusc, split_sample_tokens(mini_nusc, "mini_val"))


def _evaluate(nusc: Any, results: dict, out: Path) -> NuScenesMetrics:
    from perception.evaluation.nuscenes import evaluate_nuscenes

    return evaluate_nuscenes(
        nusc, write_results_json(results, out / "results.json"), "mini_val", out / "eval"
    )


def test_ground_truth_as_detections_scores_perfectly(
    mini_nusc: Any, mini_val_gt: tuple, tmp_path: Path
) -> None:
    dets, attrs = mini_val_gt
    assert sum(len(d) for d in dets.values()) > 20
    scored = {int(lab) for d in dets.values() for lab in d.labels}
    assert scored == set(range(len(CLASSES))), "the synthetic mini_val split should hold every class"
    results = detections_to_nusc_results(mini_nusc, dets, CLASSES, attributes_by_token=attrs)
    m = _evaluate(mini_nusc, results, tmp_path)
    assert m.mean_ap == pytest.approx(1.0, abs=1e-6) and m.nd_score == pytest.approx(1.0, abs=1e-6)
    assert all(ap == pytest.approx(1.0, abs=1e-6) for ap in m.class_aps.values())
    for name in ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err"):
        assert m.tp_errors[name] == pytest.approx(0.0, abs=1e-5), name
    # the devkit's own summary files, consistent with the typed result
    summary = json.loads((tmp_path / "eval" / "metrics_summary.json").read_text())
    assert summary["mean_ap"] == pytest.approx(m.mean_ap) and summary["nd_score"] == pytest.approx(m.nd_score)
    assert (tmp_path / "eval" / "metrics_details.json").is_file()
    assert "| car | 1.0000 | 0.0000 |" in format_metrics(m)


def test_default_attributes_follow_the_speed_rule(mini_nusc: Any, mini_val_gt: tuple, tmp_path: Path) -> None:
    dets, attrs = mini_val_gt
    # no range filter here, so every box stays in the detector's order (score 1 everywhere); the devkit drops
    # the out-of-range ones from predictions and ground truth alike
    results = detections_to_nusc_results(mini_nusc, dets, CLASSES, filter_range=False)
    mismatches = 0
    for token, boxes in results["results"].items():
        assert len(boxes) == len(dets[token])
        for box, gt_attr in zip(boxes, attrs[token], strict=True):
            rule = default_attribute(box["detection_name"], math.hypot(*box["velocity"]))
            assert box["attribute_name"] == rule
            mismatches += gt_attr != "" and gt_attr != rule
    m = _evaluate(mini_nusc, results, tmp_path)
    assert m.mean_ap == pytest.approx(1.0, abs=1e-6) and m.mATE == pytest.approx(0.0, abs=1e-5)
    assert (m.mAAE > 1e-6) == (mismatches > 0)


def test_translated_detections_lose_the_tight_thresholds(
    mini_nusc: Any, mini_val_gt: tuple, tmp_path: Path
) -> None:
    """+1.5 m along x: no match at 0.5 m and 1 m, matches at 2 m and 4 m -> AP ~ 0.5, mATE = 1.5 m."""
    dets, attrs = mini_val_gt
    moved = {}
    for token, d in dets.items():
        t = d.boxes.tensor.clone()
        t[:, 0] += 1.5
        moved[token] = Detections(Boxes3D(t), d.scores, d.labels)
    m = _evaluate(
        mini_nusc, detections_to_nusc_results(mini_nusc, moved, CLASSES, attributes_by_token=attrs), tmp_path
    )
    assert m.mATE == pytest.approx(1.5, abs=1e-4)
    for c in CLASSES:
        by_dist = m.class_aps_by_distance[c]
        assert by_dist[0.5] == 0.0 and by_dist[1.0] == 0.0, c
        assert by_dist[2.0] > 0.9 and by_dist[4.0] > 0.9, c
    assert m.mean_ap == pytest.approx(0.5, abs=0.02)
    # NDS = (5 mAP + sum(1 - min(1, err))) / 10 with mATE >= 1 and the four other errors 0
    assert m.nd_score == pytest.approx((5 * m.mean_ap + 4) / 10, abs=1e-6)


_WRONG_ATTRIBUTE = {
    "vehicle.moving": "vehicle.parked",
    "vehicle.parked": "vehicle.moving",
    "vehicle.stopped": "vehicle.moving",
    "cycle.with_rider": "cycle.without_rider",
    "cycle.without_rider": "cycle.with_rider",
    "pedestrian.moving": "pedestrian.standing",
    "pedestrian.standing": "pedestrian.moving",
    "pedestrian.sitting_lying_down": "pedestrian.moving",
    "": "",
}


def test_wrong_attributes_cost_exactly_the_attribute_score(
    mini_nusc: Any, mini_val_gt: tuple, tmp_path: Path
) -> None:
    """Every attribute wrong: AAE = 1 for the eight classes with attributes, NDS = (5 + 4) / 10."""
    dets, attrs = mini_val_gt
    wrong = {token: [_WRONG_ATTRIBUTE[a] for a in names] for token, names in attrs.items()}
    m = _evaluate(
        mini_nusc, detections_to_nusc_results(mini_nusc, dets, CLASSES, attributes_by_token=wrong), tmp_path
    )
    assert m.mean_ap == pytest.approx(1.0, abs=1e-6) and m.mAAE == pytest.approx(1.0, abs=1e-6)
    assert m.nd_score == pytest.approx(0.9, abs=1e-6)
    assert all(math.isnan(m.class_tp_errors[c]["attr_err"]) for c in ("barrier", "traffic_cone"))


def test_results_must_cover_exactly_the_split(mini_nusc: Any, mini_val_gt: tuple, tmp_path: Path) -> None:
    from perception.evaluation.nuscenes import evaluate_nuscenes, split_sample_tokens

    dets, _ = mini_val_gt
    results = detections_to_nusc_results(mini_nusc, dets, CLASSES)
    first = sorted(results["results"])[0]
    missing = {
        "meta": results["meta"],
        "results": {k: v for k, v in results["results"].items() if k != first},
    }
    with pytest.raises(ValueError, match=f"1 sample\\(s\\) of 'mini_val' have no entry .*{first}"):
        _evaluate(mini_nusc, missing, tmp_path / "missing")
    train_token = split_sample_tokens(mini_nusc, "mini_train")[0]
    extra = {"meta": results["meta"], "results": {**results["results"], train_token: []}}
    with pytest.raises(ValueError, match="1 sample token\\(s\\) are not in 'mini_val'"):
        _evaluate(mini_nusc, extra, tmp_path / "extra")
    path = write_results_json(results, tmp_path / "ok.json")
    with pytest.raises(ValueError, match="belongs to a v1.0-trainval database"):
        evaluate_nuscenes(mini_nusc, path, "val", tmp_path / "eval")
    with pytest.raises(ValueError, match="neither a predefined split"):
        evaluate_nuscenes(mini_nusc, path, "holdout", tmp_path / "eval")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        evaluate_nuscenes(mini_nusc, tmp_path / "nope.json", "mini_val", tmp_path / "eval")
    (tmp_path / "bad.json").write_text(json.dumps({"results": []}))
    with pytest.raises(ValueError, match="'meta' and a 'results' object"):
        evaluate_nuscenes(mini_nusc, tmp_path / "bad.json", "mini_val", tmp_path / "eval")
