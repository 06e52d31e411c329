"""The KITTI AP report in the devkit's Python-port text layout (OpenPCDet's ``get_official_eval_result``)."""

from __future__ import annotations

import math

import numpy as np

from perception.evaluation.kitti import KittiObjects, box_overlaps, evaluate
from perception.evaluation.kitti_report import official_report


def car(x: float, z: float, ry: float, *, score: float | None = None, alpha: float = 0.0) -> KittiObjects:
    """One Car, camera bottom centre ``(x, 1.6, z)``, 1.5 x 1.6 x 4 m, a 60 px high 2D box (easy)."""
    return KittiObjects(
        names=["Car"],
        truncated=[0.0],
        occluded=[0],
        alpha=[alpha],
        bbox=[(600.0, 150.0, 630.0, 210.0)],
        dimensions=[(1.5, 1.6, 4.0)],
        location=[(x, 1.6, z)],
        rotation_y=[ry],
        score=None if score is None else [score],
    )


def frames(iou: float, n: int = 41, det_alpha: float = 0.0) -> tuple[list[KittiObjects], list[KittiObjects]]:
    """``n`` frames with one Car each and a detection shifted along the heading: BEV and 3D IoU = ``iou``,
    identical 2D box (image IoU 1)."""
    rng = np.random.default_rng(0)
    shift = 4.0 * (1 - iou) / (1 + iou)
    gts, dts = [], []
    for _ in range(n):
        ry = float(rng.uniform(-math.pi, math.pi))
        gts.append(car(1.0, 20.0, ry))
        dts.append(
            car(1.0 + shift * math.cos(ry), 20.0 - shift * math.sin(ry), ry, score=0.8, alpha=det_alpha)
        )
    np.testing.assert_allclose(box_overlaps(dts[0], gts[0], "3d"), [[iou]], atol=1e-12)
    return gts, dts


def test_report_layout_strict_and_loose_blocks() -> None:
    """IoU 0.6: a miss at Car's 0.7 (bev / 3d 0), a hit at the loose 0.5; 41 objects so AP reaches 100."""
    res = evaluate(*frames(0.6), classes=("Car",), loose=True)
    hit, miss = "100.0000, 100.0000, 100.0000", "0.0000, 0.0000, 0.0000"
    aos = "100.00, 100.00, 100.00"
    expected = []
    for thresholds, bev3d in (("0.70, 0.70, 0.70", miss), ("0.70, 0.50, 0.50", hit)):
        for title in ("AP", "AP_R40"):
            expected += [
                f"Car {title}@{thresholds}:",
                f"bbox AP:{hit}",
                f"bev  AP:{bev3d}",
                f"3d   AP:{bev3d}",
                f"aos  AP:{aos}",
            ]
    expected.append("Ground-truth objects counted (easy/moderate/hard): Car 41/41/41")
    assert official_report(res) == "\n".join(expected) + "\n"


def test_report_r11_and_r40_differ_nan_and_class_order() -> None:
    """5 objects: the devkit's sampling fills 5 of the 41 curve entries: R40 = 4/40 (entries 1..4) = 10, R11 = 2/11 (entries 0, 4) = 18.18; Pedestrian without
    ground truth prints nan; without loose=True only the strict blocks, classes in the order given."""
    res = evaluate(*frames(0.9, n=5), classes=("Pedestrian", "Car"))
    lines = official_report(res).splitlines()
    assert lines[0] == "Pedestrian AP@0.50, 0.50, 0.50:"
    assert lines[1] == "bbox AP:nan, nan, nan" and lines[4] == "aos  AP:nan, nan, nan"
    assert lines[5] == "Pedestrian AP_R40@0.50, 0.50, 0.50:"
    car_at = lines.index("Car AP@0.70, 0.70, 0.70:")
    assert car_at == 10
    assert lines[car_at + 3] == "3d   AP:18.1818, 18.1818, 18.1818"
    assert lines[car_at + 5] == "Car AP_R40@0.70, 0.70, 0.70:"
    assert lines[car_at + 8] == "3d   AP:10.0000, 10.0000, 10.0000"
    assert not any("0.25" in line or "0.50, 0.50:" in line for line in lines if line.startswith("Car"))
    assert lines[-2] == "Ground-truth objects counted (easy/moderate/hard): Pedestrian 0/0/0, Car 5/5/5"
    assert lines[-1].startswith("Note: with fewer than 41 ground-truth objects")


def test_report_without_orientation_has_no_aos_lines() -> None:
    """A detection with alpha == -10 (unknown) switches AOS off, as in the devkit: no ``aos`` line."""
    res = evaluate(*frames(0.9, det_alpha=-10.0), classes=("Car",), loose=True)
    text = official_report(res)
    assert "aos" not in text
    assert text.count("bbox AP:100.0000, 100.0000, 100.0000") == 4  # strict and loose, R11 and R40
