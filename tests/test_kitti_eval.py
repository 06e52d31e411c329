"""KITTI evaluator: exact IoU vs shapely, hand-computed AP values, ignore rules, difficulties, file I/O, CLI."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from perception.evaluation.kitti import (
    DIFFICULTIES,
    KittiObjects,
    box_overlaps,
    camera_boxes_to_lidar_convention,
    evaluate,
    evaluate_label_dirs,
    format_table,
    read_label_file,
    write_result_file,
)
from perception.evaluation.kitti_report import official_report
from perception.ops.iou3d import boxes_iou_3d, boxes_iou_bev

REPO = Path(__file__).resolve().parents[1]
KINDS = ("image", "bev", "3d")


def objs(rows: list[dict], scored: bool = False) -> KittiObjects:
    """KittiObjects from dicts with keys name, bbox, hwl, loc, ry and optional trunc, occ, alpha, score."""
    if not rows:
        return KittiObjects.empty(with_score=scored)
    return KittiObjects(
        names=[r["name"] for r in rows],
        truncated=[r.get("trunc", 0.0) for r in rows],
        occluded=[r.get("occ", 0) for r in rows],
        alpha=[r.get("alpha", 0.0) for r in rows],
        bbox=[r["bbox"] for r in rows],
        dimensions=[r.get("hwl", (1.5, 1.6, 4.0)) for r in rows],
        location=[r.get("loc", (0.0, 1.6, 20.0)) for r in rows],
        rotation_y=[r.get("ry", 0.0) for r in rows],
        score=[r.get("score", 1.0) for r in rows] if scored else None,
    )


def obj(name: str, x: float, z: float = 20.0, **kw: object) -> dict:
    """An object at camera (x, 1.6, z) with a 60 px high 2D box placed by x (distinct x -> disjoint boxes)."""
    u = 600.0 + 40.0 * x
    return {"name": name, "bbox": (u, 150.0, u + 30.0, 210.0), "loc": (x, 1.6, z), **kw}


def as_dets(gt: KittiObjects, score: float | np.ndarray = 1.0) -> KittiObjects:
    keep = np.char.lower(gt.names) != "dontcare"
    d = gt.select(keep)
    d.score = np.broadcast_to(np.asarray(score, np.float64), (len(d),)).copy()
    return d


def kitti_polygon(loc: np.ndarray, hwl: np.ndarray, ry: float) -> Polygon:
    """Ground-plane footprint in the camera (x, z) plane, from the KITTI devkit's corner definition."""
    h, w, l = hwl
    heading = np.array([math.cos(ry), -math.sin(ry)])  # object x axis rotated about camera y
    side = np.array([math.sin(ry), math.cos(ry)])  # object z axis
    c = np.array([loc[0], loc[2]])
    pts = [c + a * heading * l / 2 + b * side * w / 2 for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1))]
    return Polygon(pts)


def shapely_ious(d: KittiObjects, g: KittiObjects) -> tuple[np.ndarray, np.ndarray]:
    bev = np.zeros((len(d), len(g)))
    iou3d = np.zeros_like(bev)
    for j in range(len(d)):
        pd = kitti_polygon(d.location[j], d.dimensions[j], d.rotation_y[j])
        for i in range(len(g)):
            pg = kitti_polygon(g.location[i], g.dimensions[i], g.rotation_y[i])
            inter = pd.intersection(pg).area
            bev[j, i] = inter / (pd.area + pg.area - inter)
            # y points down: a box spans [y - h, y].
            top = max(d.location[j, 1] - d.dimensions[j, 0], g.location[i, 1] - g.dimensions[i, 0])
            bottom = min(d.location[j, 1], g.location[i, 1])
            vol = inter * max(0.0, bottom - top)
            iou3d[j, i] = vol / (pd.area * d.dimensions[j, 0] + pg.area * g.dimensions[i, 0] - vol)
    return bev, iou3d


def random_boxes(rng: np.random.Generator, n: int, spread: float) -> KittiObjects:
    return objs(
        [
            {
                "name": "Car",
                "bbox": (0, 0, 10, 50),
                "hwl": tuple(rng.uniform([1.0, 0.5, 0.5], [2.5, 2.5, 5.0])),
                "loc": (
                    rng.uniform(-spread, spread),
                    rng.uniform(1.0, 2.0),
                    20 + rng.uniform(-spread, spread),
                ),
                "ry": rng.uniform(-math.pi, math.pi),
            }
            for _ in range(n)
        ]
    )


# ---------------------------------------------------------------------------------------------------- IoU


def test_bev_and_3d_iou_match_shapely() -> None:
    rng = np.random.default_rng(0)
    d, g = random_boxes(rng, 40, 2.0), random_boxes(rng, 30, 2.0)
    bev_ref, iou3d_ref = shapely_ious(d, g)
    assert (bev_ref > 0.05).sum() > 200  # mostly overlapping pairs: a real test of the clipping
    np.testing.assert_allclose(box_overlaps(d, g, "bev"), bev_ref, atol=1e-9)
    np.testing.assert_allclose(box_overlaps(d, g, "3d"), iou3d_ref, atol=1e-9)


def test_iou_agrees_with_public_ops_api() -> None:
    rng = np.random.default_rng(1)
    d, g = random_boxes(rng, 20, 2.0), random_boxes(rng, 15, 2.0)
    bd = torch.from_numpy(camera_boxes_to_lidar_convention(d.location, d.dimensions, d.rotation_y))
    bg = torch.from_numpy(camera_boxes_to_lidar_convention(g.location, g.dimensions, g.rotation_y))
    np.testing.assert_allclose(box_overlaps(d, g, "bev"), boxes_iou_bev(bd, bg).numpy(), atol=1e-6)
    np.testing.assert_allclose(box_overlaps(d, g, "3d"), boxes_iou_3d(bd, bg).numpy(), atol=1e-6)


@pytest.mark.parametrize("ry", np.linspace(-math.pi, math.pi, 25))
def test_identical_rotated_boxes_have_iou_one(ry: float) -> None:
    b = objs(
        [{"name": "Car", "bbox": (0, 0, 10, 50), "hwl": (1.52, 1.63, 3.9), "loc": (3.1, 1.7, 27.4), "ry": ry}]
    )
    for kind in KINDS:
        assert box_overlaps(b, b, kind)[0, 0] == pytest.approx(1.0, abs=1e-12)


def test_image_iou_hand_computed() -> None:
    a = objs([{"name": "Car", "bbox": (0, 0, 10, 10)}])
    b = objs([{"name": "Car", "bbox": (5, 0, 15, 10)}, {"name": "Car", "bbox": (10, 0, 20, 10)}])
    np.testing.assert_allclose(box_overlaps(a, b, "image"), [[50 / 150, 0.0]])  # touching boxes: 0


# ------------------------------------------------------------------------------------------------ AP values


def test_ground_truth_as_predictions_gives_100() -> None:
    rng = np.random.default_rng(2)
    gts = []
    for _ in range(50):  # >= 41 objects per class and level: every recall sample has a threshold
        rows = [
            obj("Car", -12, ry=rng.uniform(-math.pi, math.pi), alpha=rng.uniform(-3, 3)),
            obj("Pedestrian", -4, hwl=(1.8, 0.6, 0.8), ry=rng.uniform(-math.pi, math.pi)),
            obj("Cyclist", 4, hwl=(1.7, 0.6, 1.8), ry=rng.uniform(-math.pi, math.pi)),
            obj("Car", 12, occ=2, ry=rng.uniform(-math.pi, math.pi)),  # hard only
            obj("Van", 20, hwl=(2.2, 1.9, 5.0)),
            {
                "name": "DontCare",
                "bbox": (0, 0, 50, 50),
                "hwl": (-1, -1, -1),
                "loc": (-1000, -1000, -1000),
                "ry": -10,
            },
        ]
        gts.append(objs(rows))
    dts = [as_dets(g, rng.uniform(0.1, 1.0, len(g) - 1)) for g in gts]
    res = evaluate(gts, dts)
    assert res.num_gt["Car_easy"] == 50 and res.num_gt["Car_hard"] == 100
    for c in ("Car", "Pedestrian", "Cyclist"):
        for k in (*KINDS, "aos"):
            for s in ("R11", "R40"):
                for d in DIFFICULTIES:
                    assert res.ap[f"{c}_{k}_{s}_{d}"] == pytest.approx(100.0), f"{c}_{k}_{s}_{d}"


def shifted_car_frames(iou: float, n: int = 41) -> tuple[list[KittiObjects], list[KittiObjects]]:
    """n frames, one Car each, and a detection shifted along its heading so that BEV and 3D IoU = ``iou``."""
    rng = np.random.default_rng(3)
    l = 4.0
    shift = l * (1 - iou) / (1 + iou)  # same w, h, y: IoU = (l - s) / (l + s)
    gts, dts = [], []
    for _ in range(n):
        ry = rng.uniform(-math.pi, math.pi)
        g = obj("Car", 1.0, hwl=(1.5, 1.6, l), ry=ry)
        d = dict(g, loc=(1.0 + shift * math.cos(ry), 1.6, 20.0 - shift * math.sin(ry)), score=0.8)
        gts.append(objs([g]))
        dts.append(objs([d], scored=True))
    np.testing.assert_allclose(box_overlaps(dts[0], gts[0], "bev"), [[iou]], atol=1e-12)
    np.testing.assert_allclose(box_overlaps(dts[0], gts[0], "3d"), [[iou]], atol=1e-12)
    return gts, dts


@pytest.mark.parametrize("iou, expected", [(0.698, 0.0), (0.702, 100.0)])
def test_iou_just_below_and_above_threshold(iou: float, expected: float) -> None:
    res = evaluate(*shifted_car_frames(iou), classes=("Car",), loose=True)
    for s in ("R11", "R40"):
        for d in DIFFICULTIES:
            assert res.ap[f"Car_bev_{s}_{d}"] == pytest.approx(expected)
            assert res.ap[f"Car_3d_{s}_{d}"] == pytest.approx(expected)
            assert res.ap[f"Car_image_{s}_{d}"] == pytest.approx(100.0)  # 2D boxes identical
            assert res.ap[f"Car_3d_{s}_{d}_loose"] == pytest.approx(100.0)  # loose threshold 0.5


def test_hand_computed_ap_with_one_false_positive() -> None:
    """40 frames with one Car each, detected with scores 1.00, 0.99, ..., 0.61; one false positive (score 0.895,
    elsewhere in frame 0).

    n_gt = 40, so the devkit's thresholds are the 40 TP scores (recall k+1/40 at index k; index 40 has none).
    At threshold k the FP counts once its score 0.895 >= s_k, i.e. for k >= 11: precision (k+1)/(k+2), else 1.
    Max-to-the-right: indices 0..10 -> 1, 11..39 -> 40/41 (the value at k = 39), 40 -> 0.
    R40 = (10 * 1 + 29 * 40/41 + 0) / 40;  R11 (indices 0, 4, .., 40) = (3 * 1 + 7 * 40/41 + 0) / 11.
    """
    gts = [objs([obj("Car", 0.0)]) for _ in range(40)]
    dts = [objs([dict(obj("Car", 0.0), score=1.0 - k / 100)], scored=True) for k in range(40)]
    dts[0] = objs([dict(obj("Car", 0.0), score=1.0), dict(obj("Car", 8.0, z=40.0), score=0.895)], scored=True)
    res = evaluate(gts, dts, classes=("Car",))
    r40 = (10 + 29 * 40 / 41) / 40 * 100
    r11 = (3 + 7 * 40 / 41) / 11 * 100
    for k in KINDS:
        for d in DIFFICULTIES:
            assert res.ap[f"Car_{k}_R40_{d}"] == pytest.approx(r40, abs=1e-9)
            assert res.ap[f"Car_{k}_R11_{d}"] == pytest.approx(r11, abs=1e-9)


def test_few_ground_truth_objects_devkit_behaviour() -> None:
    """One Car, a false positive (score 0.9) and the true positive (score 0.5): a single threshold (0.5) with
    precision 1/2 at index 0 and nothing at higher indices: R11 = 0.5 / 11, R40 = 0 (the devkit's numbers)."""
    gts = [objs([obj("Car", 0.0)])]
    dts = [objs([dict(obj("Car", 8.0), score=0.9), dict(obj("Car", 0.0), score=0.5)], scored=True)]
    res = evaluate(gts, dts, classes=("Car",))
    assert res.ap["Car_3d_R11_moderate"] == pytest.approx(0.5 / 11 * 100)
    assert res.ap["Car_3d_R40_moderate"] == 0.0
    perfect = evaluate(gts, [as_dets(gts[0])], classes=("Car",))
    assert perfect.ap["Car_bev_R11_easy"] == pytest.approx(100 / 11) and perfect.ap["Car_bev_R40_easy"] == 0.0


# ------------------------------------------------------------------------------------------ ignore rules


def test_dontcare_discounts_image_false_positives_only() -> None:
    """41 frames: a Car (TP, score 0.5) and a Car detection (score 0.9) inside a DontCare region, whose 3D box
    matches nothing. Image: the FP is discounted -> 100. BEV / 3D: precision 41/82 at every threshold -> 50."""
    dc = {
        "name": "DontCare",
        "bbox": (300, 100, 400, 200),
        "hwl": (-1, -1, -1),
        "loc": (-1000, -1000, -1000),
        "ry": -10,
    }
    gts = [objs([obj("Car", 0.0), dc]) for _ in range(41)]
    fp = dict(obj("Car", 9.0, z=45.0), bbox=(310, 110, 390, 190), score=0.9)
    dts = [objs([dict(obj("Car", 0.0), score=0.5), fp], scored=True) for _ in range(41)]
    res = evaluate(gts, dts, classes=("Car",))
    for s in ("R11", "R40"):
        assert res.ap[f"Car_image_{s}_moderate"] == pytest.approx(100.0)
        assert res.ap[f"Car_bev_{s}_moderate"] == pytest.approx(50.0)
        assert res.ap[f"Car_3d_{s}_moderate"] == pytest.approx(50.0)


@pytest.mark.parametrize(
    "cls, neighbour, other", [("Car", "Van", "Truck"), ("Pedestrian", "Person_sitting", "Misc")]
)
def test_neighbouring_class_is_ignored(cls: str, neighbour: str, other: str) -> None:
    """A detection of ``cls`` on a neighbouring-class object is neither TP nor FP; on another class it is a FP.
    An undetected neighbouring-class object is no FN."""

    def run(label: str) -> dict[str, float]:
        gts = [objs([obj(cls, 0.0), obj(label, 6.0), obj(neighbour, -6.0)]) for _ in range(41)]
        dts = [
            objs([dict(obj(cls, 0.0), score=0.5), dict(obj(cls, 6.0), score=0.9)], scored=True)
            for _ in range(41)
        ]
        return evaluate(gts, dts, classes=(cls,)).ap

    for k in KINDS:
        assert run(neighbour)[f"{cls}_{k}_R40_moderate"] == pytest.approx(100.0)
        assert run(other)[f"{cls}_{k}_R40_moderate"] == pytest.approx(50.0)


def test_difficulty_assignment() -> None:
    rows = [
        obj("Car", 0, bbox=(0, 0, 10, 45)),  # E M H
        obj("Car", 1, bbox=(0, 0, 10, 40)),  # E M H (the C++ devkit drops heights < 40)
        obj("Car", 2, bbox=(0, 0, 10, 39.9)),  # M H
        obj("Car", 3, bbox=(0, 0, 10, 25)),  # M H
        obj("Car", 4, bbox=(0, 0, 10, 24.9)),  # none
        obj("Car", 5, occ=1),  # M H
        obj("Car", 6, occ=2),  # H
        obj("Car", 7, occ=3),  # none
        obj("Car", 8, trunc=0.15),  # E M H
        obj("Car", 9, trunc=0.16),  # M H
        obj("Car", 10, trunc=0.5),  # H
        obj("Car", 11, trunc=0.51),  # none
    ]
    res = evaluate([objs(rows)], [KittiObjects.empty(with_score=True)], classes=("Car",))
    assert (res.num_gt["Car_easy"], res.num_gt["Car_moderate"], res.num_gt["Car_hard"]) == (3, 7, 9)
    assert res.ap["Car_3d_R11_hard"] == 0.0  # ground truth but no detections: AP 0, not NaN


def test_low_detections_are_ignored_per_difficulty() -> None:
    """A false positive 30 px high is ignored for easy (min height 40) but counts for moderate (25)."""
    gts = [objs([obj("Car", 0.0)]) for _ in range(41)]
    low_fp = dict(obj("Car", 8.0, z=40.0), bbox=(900, 150, 920, 180), score=0.9)
    dts = [objs([dict(obj("Car", 0.0), score=0.5), low_fp], scored=True) for _ in range(41)]
    res = evaluate(gts, dts, classes=("Car",))
    for k in KINDS:
        assert res.ap[f"Car_{k}_R40_easy"] == pytest.approx(100.0)
        assert res.ap[f"Car_{k}_R40_moderate"] == pytest.approx(50.0)


def test_undefined_entries_are_nan() -> None:
    gts = [objs([obj("Car", 0.0)])]
    no3d = dict(obj("Car", 0.0), hwl=(-1, -1, -1), loc=(-1000, -1000, -1000), score=0.7)
    res = evaluate(gts, [objs([no3d], scored=True)])
    assert math.isnan(res.ap["Pedestrian_3d_R40_easy"])  # no pedestrian ground truth
    assert math.isnan(res.ap["Car_3d_R40_easy"]) and math.isnan(res.ap["Car_bev_R11_hard"])  # no 3D sizes
    assert res.ap["Car_image_R11_easy"] == pytest.approx(100 / 11)  # 2D box still evaluated
    empty = evaluate([], [])
    assert all(math.isnan(v) for v in empty.ap.values())
    table = format_table(res)
    assert "| Car | image | 0.7 | 0.00 | 0.00 | 0.00 | 9.09 | 9.09 | 9.09 |" in table
    assert "| Car | 3d | 0.7 | n/a |" in table
    assert "Ground-truth objects counted (easy/moderate/hard): Car 1/1/1, Pedestrian 0/0/0" in table
    assert "Note: with fewer than 41 ground-truth objects" in table


def test_evaluate_input_errors() -> None:
    g = objs([obj("Car", 0.0)])
    with pytest.raises(ValueError, match="one entry per frame"):
        evaluate([g], [])
    with pytest.raises(ValueError, match="unknown class 'Tram'"):
        evaluate([g], [as_dets(g)], classes=("Car", "Tram"))
    with pytest.raises(ValueError, match=r"dt_annos\[0\].*no scores"):
        evaluate([g], [g])
    with pytest.raises(TypeError, match="KittiObjects"):
        evaluate([g], [{"name": []}])  # type: ignore[list-item]
    bad = objs([dict(obj("Car", 0.0), hwl=(1.5, -1.0, 4.0))])
    with pytest.raises(ValueError, match="negative dimensions"):
        evaluate([bad], [as_dets(g)], frame_ids=["000007"])
    with pytest.raises(ValueError, match="bbox must have shape"):
        KittiObjects(names=["Car"], truncated=[0], occluded=[0], alpha=[0], bbox=[[0, 0, 1]],
                     dimensions=[[1, 1, 1]], location=[[0, 0, 0]], rotation_y=[0])  # fmt: skip
    with pytest.raises(ValueError, match="location contains NaN"):
        KittiObjects(names=["Car"], truncated=[0], occluded=[0], alpha=[0], bbox=[[0, 0, 1, 1]],
                     dimensions=[[1, 1, 1]], location=[[0, np.nan, 0]], rotation_y=[0])  # fmt: skip


# ------------------------------------------------------------------------------------------------ file I/O

LABEL = (
    "Car 0.00 0 -1.58 587.01 173.33 614.12 200.12 1.65 1.67 3.64 -0.65 1.71 46.70 -1.59\n"
    "DontCare -1 -1 -10 503.89 169.71 590.61 190.13 -1 -1 -1 -1000 -1000 -1000 -10\n"
)


def test_read_label_file_and_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "000000.txt"
    p.write_text(LABEL + "\n")
    o = read_label_file(p)
    assert list(o.names) == ["Car", "DontCare"] and o.score is None
    np.testing.assert_array_equal(o.dimensions[0], [1.65, 1.67, 3.64])  # h, w, l as in the file
    np.testing.assert_array_equal(o.location[0], [-0.65, 1.71, 46.70])
    assert o.occluded.dtype == np.int64 and o.occluded[1] == -1
    o.score = np.array([0.123456789012345, 1e-7])
    q = tmp_path / "res.txt"
    write_result_file(q, o)
    back = read_label_file(q)
    for name in ("truncated", "occluded", "alpha", "bbox", "dimensions", "location", "rotation_y", "score"):
        np.testing.assert_array_equal(getattr(back, name), getattr(o, name))
    (tmp_path / "empty.txt").write_text("")
    e = read_label_file(tmp_path / "empty.txt")
    assert len(e) == 0 and e.score is not None and e.bbox.shape == (0, 4)


@pytest.mark.parametrize(
    "text, match",
    [
        ("Car 0 0 0 1 2 3 4 1 1 1 0 0 0\n", r"bad\.txt:1: expected 15 columns .* got 14"),
        ("\nCar 0 0 0 1 2 3 x 1 1 1 0 0 0 0\n", r"bad\.txt:2: non-numeric"),
        ("Car 0 0 0 1 2 3 4 1 1 nan 0 0 0 0\n", r"bad\.txt:1: non-finite"),
        ("Car 0 1.5 0 1 2 3 4 1 1 1 0 0 0 0\n", r"bad\.txt:1: occluded must be an integer"),
        ("Car 0 0 0 1 2 3 4 1 1 1 0 0 0 0 0.5\nCar 0 0 0 1 2 3 4 1 1 1 0 0 0 0\n", r"bad\.txt:2: 15 columns"),
    ],
)
def test_malformed_label_lines(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_label_file(p)


def write_dataset(root: Path, n: int = 45) -> tuple[Path, Path, list[KittiObjects], list[KittiObjects]]:
    """Random labels and noisy detections (some missed, some false positives); frames 3 and 7 lack result files."""
    rng = np.random.default_rng(4)
    gt_dir, det_dir = root / "label_2", root / "data"
    gt_dir.mkdir()
    det_dir.mkdir()
    gts, dts = [], []
    for f in range(n):
        rows = [
            obj(str(rng.choice(["Car", "Pedestrian", "Cyclist", "Van"])), x, z=rng.uniform(10, 40),
                ry=rng.uniform(-3, 3), occ=int(rng.integers(0, 3)), trunc=rng.uniform(0, 0.4))
            for x in (-10.0, -3.0, 4.0, 11.0)
        ]  # fmt: skip
        g = objs(rows)
        d = as_dets(g, rng.uniform(0, 1, len(g)))
        d.location = d.location + rng.normal(0, 0.15, d.location.shape)
        d.bbox = d.bbox + rng.normal(0, 2.0, d.bbox.shape)
        d = d.select(rng.uniform(size=len(d)) > 0.2)
        gts.append(g)
        write_result_file(gt_dir / f"{f:06d}.txt", KittiObjects(**{**g.__dict__, "score": None}))
        if f in (3, 7):
            dts.append(KittiObjects.empty(with_score=True))
            continue
        dts.append(d)
        write_result_file(det_dir / f"{f:06d}.txt", d)
    return gt_dir, det_dir, gts, dts


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(a[k], b[k]) or (math.isnan(a[k]) and math.isnan(b[k])) for k in a
    )


def test_evaluate_label_dirs_round_trip(tmp_path: Path) -> None:
    gt_dir, det_dir, gts, dts = write_dataset(tmp_path)
    ap = evaluate_label_dirs(gt_dir, det_dir, list(range(len(gts))))
    assert same(ap, evaluate(gts, dts).ap)
    assert 0.0 < ap["Car_3d_R40_moderate"] < 100.0
    assert same(evaluate_label_dirs(gt_dir, det_dir), ap)  # ids=None: every label file
    with pytest.raises(FileNotFoundError, match="000099.txt"):
        evaluate_label_dirs(gt_dir, det_dir, ["000000", 99])
    write_result_file(det_dir / "000000.txt", KittiObjects(**{**dts[0].__dict__, "score": None}))
    with pytest.raises(ValueError, match="000000.txt: result files need 16 columns"):
        evaluate_label_dirs(gt_dir, det_dir, [0])


def test_cli_prints_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt_dir, det_dir, gts, dts = write_dataset(tmp_path)
    (tmp_path / "val.txt").write_text("".join(f"{f:06d}\n" for f in range(10)))
    spec = importlib.util.spec_from_file_location("eval_kitti", REPO / "tools" / "eval_kitti.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out_json = tmp_path / "ap.json"
    assert (
        cli.main([str(gt_dir), str(det_dir), "--ids", str(tmp_path / "val.txt"), "--json", str(out_json)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "10 frames (2 without a result file" in printed
    assert format_table(evaluate(gts[:10], dts[:10])) in printed
    assert cli.main([str(gt_dir), str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    ids = ["--ids", str(tmp_path / "val.txt")]
    assert cli.main([str(gt_dir), str(det_dir), *ids, "--loose", "--format", "devkit"]) == 0
    printed = capsys.readouterr().out
    assert official_report(evaluate(gts[:10], dts[:10], loose=True)) in printed
    assert "Car AP@0.70, 0.50, 0.50:" in printed and "|" not in printed
