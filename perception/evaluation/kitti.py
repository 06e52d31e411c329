"""KITTI object detection evaluation: AP for 2D image boxes, BEV and 3D boxes, R11 and R40, easy/moderate/hard.

Semantics are those of the official KITTI object devkit (``evaluate_object.cpp``; the 2019 version for R40):

* **Difficulty** (per level, cumulative: "hard" includes the easy and moderate objects): a ground-truth object
  counts when its 2D box height ``y2 - y1 >= 40 / 25 / 25`` px, ``occluded <= 0 / 1 / 2`` and
  ``truncated <= 0.15 / 0.30 / 0.50`` (easy / moderate / hard). Objects of the class outside the level are
  *ignored*: they may absorb a detection but are neither TP nor FN. (The C++ devkit drops heights ``< 40`` px;
  the Python port most projects copy drops ``<= 40``; we follow the C++ devkit.)
* **Neighbouring classes** are ignored in the same way: ``Van`` for ``Car``, ``Person_sitting`` for
  ``Pedestrian``. Class names match case-insensitively.
* **Detections** whose 2D box is lower than the level's minimum height are ignored (whatever their class):
  matched to a ground truth they make it neither TP nor FN, unmatched they are not FP.
* **DontCare** regions (image metric): an unmatched detection whose 2D box lies inside a DontCare box by more than
  the IoU threshold (intersection over the detection's area) is not a false positive. DontCare boxes have no 3D
  extent (sizes ``-1``, location ``-1000``), so they play no role for BEV / 3D (as in the devkit).
* **Matching** at IoU strictly greater than the threshold (Car 0.7, Pedestrian 0.5, Cyclist 0.5, and 0.7 / 0.5 /
  0.7 for Van / Person_sitting / Truck; with ``loose=True`` also the devkit's second set: 0.7 / 0.5 / 0.5 image /
  BEV / 3D for Car, 0.5 / 0.25 / 0.25 for Pedestrian and Cyclist).
* **Score thresholds** come from the scores of the true positives (each ground truth matched to its
  highest-scoring detection), chosen to sample recall at 0, 1/40, ..., 1 (``getThresholds``); for each threshold,
  matching is redone (greatest overlap wins) to count TP / FP; precision is then replaced by the maximum
  precision to its right. **R40** = mean of the 40 entries at recall 1/40 .. 1, **R11** = mean of the 11 entries at
  recall 0, 0.1, .., 1; in percent. *Devkit behaviour to know*: the curve is indexed by threshold, so with fewer
  than 41 ground-truth objects of a class and level there are fewer than 41 thresholds and the high-recall entries
  stay 0 -- a perfect detector on a handful of objects scores far below 100 (one object: R40 = 0, R11 = 9.09).
* **Orientation (AOS)** for the image metric, as the devkit, when no detection has ``alpha == -10``.

IoU: 2D IoU of the image boxes; BEV IoU of the rotated ground-plane rectangles (camera ``x, z``, length ``l``
along the heading, yaw ``rotation_y``); 3D IoU = BEV intersection x vertical overlap (boxes extend from the bottom
``y`` up to ``y - h`` in the camera's y-down frame) over the union volume. BEV and 3D use the exact convex-polygon
clipping of :mod:`perception.ops.iou3d` (the scalar core behind ``boxes_iou_bev`` / ``boxes_iou_3d``), kept in
float64 like the C++ devkit's boost polygons; see :mod:`perception.evaluation.kitti_boxes`. Two identical boxes
have IoU 1 at any rotation.

Results are ``NaN`` where a class has no ground truth at a level, and for a box kind (image / 3D) that none of the
class's detections carries (e.g. 2D sizes written as ``-1`` or 3D sizes as ``-1``); a class without any
detection scores 0 where it has ground truth. A detection without 3D sizes has BEV / 3D IoU 0.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from perception.formats.kitti_labels import (
    DIFFICULTIES,
    MIN_HEIGHT,
    KittiObjects,
    load_label_dirs,
    meets_difficulty,
    read_ids,
    read_label_file,
    write_result_file,
)

from . import kitti_match as km
from .kitti_boxes import (
    BOX_KINDS,
    box_overlaps,
    camera_box_params,
    camera_boxes_to_lidar_convention,
    image_overlap,
    rotated_overlaps,
)

__all__ = [
    "KittiObjects",
    "KittiEvalResult",
    "read_label_file",
    "write_result_file",
    "evaluate",
    "evaluate_label_dirs",
    "format_table",
    "gt_count_lines",
    "box_overlaps",
    "read_ids",
    "load_label_dirs",
    "camera_boxes_to_lidar_convention",
    "DIFFICULTIES",
    "METRICS",
]

#: Box kinds evaluated, in the order of the overlap tuples below.
METRICS = BOX_KINDS
#: Official IoU thresholds ``(image, bev, 3d)`` per lower-case class name.
MIN_OVERLAP = {
    "car": (0.7, 0.7, 0.7),
    "pedestrian": (0.5, 0.5, 0.5),
    "cyclist": (0.5, 0.5, 0.5),
    "van": (0.7, 0.7, 0.7),
    "person_sitting": (0.5, 0.5, 0.5),
    "truck": (0.7, 0.7, 0.7),
}
#: The devkit's second ("loose") set of thresholds.
MIN_OVERLAP_LOOSE = {
    "car": (0.7, 0.5, 0.5),
    "pedestrian": (0.5, 0.25, 0.25),
    "cyclist": (0.5, 0.25, 0.25),
    "van": (0.7, 0.5, 0.5),
    "person_sitting": (0.5, 0.25, 0.25),
    "truck": (0.5, 0.5, 0.5),
}
#: Ground-truth classes ignored (not counted, not FP-causing) when evaluating a class.
NEIGHBOURS = {"car": "van", "pedestrian": "person_sitting"}
#: Unknown observation angle in result files; any such detection switches AOS off.
ALPHA_UNKNOWN = -10.0


@dataclass(frozen=True)
class KittiEvalResult:
    """KITTI AP for every class x box kind x sampling x difficulty.

    Attributes:
        ap: ``"{Class}_{image|bev|3d|aos}_{R11|R40}_{easy|moderate|hard}"`` (suffix ``_loose`` for the loose
            thresholds) -> AP in percent (0..100), ``NaN`` when not defined (see the module docstring).
        curves: ``"{Class}_{kind}_{difficulty}"`` (+ ``_loose``) -> float64 ``(41,)`` interpolated precision (or
            orientation similarity) per threshold index.
        num_gt: ``"{Class}_{difficulty}"`` -> number of ground-truth objects counted (the recall denominator).
        classes: the evaluated class names, as given.
    """

    ap: dict[str, float]
    curves: dict[str, np.ndarray] = field(repr=False)
    num_gt: dict[str, int]
    classes: tuple[str, ...]

    def to_markdown(self) -> str:
        """The results as a markdown table (see :func:`format_table`)."""
        return format_table(self)


@dataclass
class _Frames:
    """All frames' data concatenated for the numba kernels (see :mod:`perception.evaluation.kitti_match`)."""

    ov: tuple[np.ndarray, np.ndarray, np.ndarray]  # image, bev, 3d overlaps, each flat
    ov_off: np.ndarray
    gt_off: np.ndarray
    dt_off: np.ndarray
    dc_ov: np.ndarray
    dc_off: np.ndarray
    dc_cnt: np.ndarray
    gt_names: np.ndarray
    gt_height: np.ndarray
    gt_occ: np.ndarray
    gt_trunc: np.ndarray
    gt_alpha: np.ndarray
    dt_names: np.ndarray
    dt_height: np.ndarray
    dt_score: np.ndarray
    dt_alpha: np.ndarray
    dt_has_2d: np.ndarray
    dt_has_bev: np.ndarray
    dt_has_3d: np.ndarray


def _prepare(
    gt_annos: Sequence[KittiObjects], dt_annos: Sequence[KittiObjects], relevant: set[str], ids: Sequence[str]
) -> _Frames:
    ovs: list[np.ndarray] = []
    dcs: list[np.ndarray] = []
    gts: list[KittiObjects] = []
    dts: list[KittiObjects] = []
    for f, (g, d) in enumerate(zip(gt_annos, dt_annos, strict=True)):
        if not isinstance(g, KittiObjects) or not isinstance(d, KittiObjects):
            raise TypeError(
                f"gt_annos[{f}] and dt_annos[{f}] must be KittiObjects, got {type(g).__name__}, {type(d).__name__}"
            )
        if d.score is None:
            raise ValueError(
                f"dt_annos[{f}] (frame {ids[f]}) has no scores: detections need the 16th score column"
            )
        g_lower = np.char.lower(g.names.astype(str))
        cand = g.select(np.isin(g_lower, sorted(relevant)))
        bad = np.nonzero((cand.dimensions < 0).any(axis=1))[0]
        if len(bad):
            raise ValueError(
                f"gt_annos[{f}] (frame {ids[f]}): object {cand.names[bad[0]]!r} has negative dimensions {cand.dimensions[bad[0]].tolist()}"
            )
        dc_boxes = g.bbox[g_lower == "dontcare"]
        ovs.append(image_overlap(d.bbox, cand.bbox, -1).ravel())
        dcs.append(image_overlap(d.bbox, dc_boxes, 0).ravel())
        gts.append(cand)
        dts.append(d)

    def offsets(counts: list[int]) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)

    def cat(arrs: list[np.ndarray], dtype: type = np.float64) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate(arrs).astype(dtype)) if arrs else np.zeros(0, dtype)

    gt_off = offsets([len(o) for o in gts])
    dt_off = offsets([len(o) for o in dts])
    ov_off = offsets([len(a) for a in ovs])
    gt_params = camera_box_params(
        [o.location for o in gts], [o.dimensions for o in gts], [o.rotation_y for o in gts]
    )
    # Detections without 3D sizes (written as -1) get size 0, hence BEV / 3D IoU 0.
    dt_params = camera_box_params(
        [o.location for o in dts], [np.maximum(o.dimensions, 0.0) for o in dts], [o.rotation_y for o in dts]
    )
    bev = rotated_overlaps(dt_params, gt_params, dt_off, gt_off, ov_off, False)
    box3d = rotated_overlaps(dt_params, gt_params, dt_off, gt_off, ov_off, True)
    gt_all = [
        np.concatenate([getattr(o, k) for o in gts]) if gts else np.zeros(0)
        for k in ("truncated", "occluded", "alpha")
    ]
    gt_bbox = np.concatenate([o.bbox for o in gts]) if gts else np.zeros((0, 4))
    dt_bbox = np.concatenate([o.bbox for o in dts]) if dts else np.zeros((0, 4))
    dt_dims = np.concatenate([o.dimensions for o in dts]) if dts else np.zeros((0, 3))
    return _Frames(
        ov=(cat(ovs), bev, box3d),
        ov_off=ov_off,
        gt_off=gt_off,
        dt_off=dt_off,
        dc_ov=cat(dcs),
        dc_off=offsets([len(a) for a in dcs]),
        dc_cnt=np.array(
            [int((np.char.lower(g.names.astype(str)) == "dontcare").sum()) for g in gt_annos], np.int64
        ),
        gt_names=np.char.lower(cat([o.names.astype(str) for o in gts], str)) if gts else np.zeros(0, str),
        gt_height=gt_bbox[:, 3] - gt_bbox[:, 1],
        gt_occ=gt_all[1].astype(np.int64),
        gt_trunc=gt_all[0].astype(np.float64),
        gt_alpha=cat([o.alpha for o in gts]),
        dt_names=np.char.lower(cat([o.names.astype(str) for o in dts], str)) if dts else np.zeros(0, str),
        dt_height=np.abs(dt_bbox[:, 3] - dt_bbox[:, 1]),
        dt_score=cat([o.score for o in dts if o.score is not None]),
        dt_alpha=cat([o.alpha for o in dts]),
        dt_has_2d=(dt_bbox[:, 2] > dt_bbox[:, 0]) & (dt_bbox[:, 3] > dt_bbox[:, 1]),
        dt_has_bev=(dt_dims[:, 1] > 0) & (dt_dims[:, 2] > 0),
        dt_has_3d=(dt_dims > 0).all(axis=1),
    )


def _ignore_flags(fr: _Frames, cls: str, level: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Devkit ``cleanData``: int8 ground-truth and detection ignore codes, and the number of counted GT."""
    valid = np.where(fr.gt_names == cls, 1, np.where(fr.gt_names == NEIGHBOURS.get(cls, "\0"), 0, -1))
    outside = ~meets_difficulty(fr.gt_height, fr.gt_occ, fr.gt_trunc, level)
    ig_gt = np.where((valid == 1) & ~outside, 0, np.where((valid == 0) | (valid == 1), 1, -1)).astype(np.int8)
    ig_dt = np.where(fr.dt_height < MIN_HEIGHT[level], 1, np.where(fr.dt_names == cls, 0, -1)).astype(np.int8)
    return ig_gt, ig_dt, int((ig_gt == 0).sum())


def _curves(
    fr: _Frames, m: int, ig_gt: np.ndarray, ig_dt: np.ndarray, n_gt: int, min_ov: float
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolated precision and orientation-similarity curves ``(41,)`` for one metric / class / level."""
    scores = km.tp_scores_all(fr.ov[m], fr.ov_off, fr.gt_off, fr.dt_off, ig_gt, ig_dt, fr.dt_score, min_ov)
    thresholds = km.score_thresholds(scores, n_gt)
    if m == 0:
        dc_ov, dc_off, dc_cnt = fr.dc_ov, fr.dc_off, fr.dc_cnt
    else:
        dc_ov, dc_off, dc_cnt = np.zeros(0), np.zeros_like(fr.dc_off), np.zeros_like(fr.dc_cnt)
    tp, fp, _, sim = km.pr_counts(
        fr.ov[m], fr.ov_off, fr.gt_off, fr.dt_off, ig_gt, ig_dt, fr.dt_score, fr.gt_alpha, fr.dt_alpha,
        min_ov, thresholds, dc_ov, dc_off, dc_cnt,
    )  # fmt: skip
    return km.interpolated_curve(tp.astype(np.float64), tp + fp), km.interpolated_curve(sim, tp + fp)


def evaluate(
    gt_annos: Sequence[KittiObjects],
    dt_annos: Sequence[KittiObjects],
    classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
    *,
    loose: bool = False,
    frame_ids: Sequence[str] | None = None,
) -> KittiEvalResult:
    """KITTI AP of detections against ground truth (official devkit semantics; see the module docstring).

    Args:
        gt_annos: one :class:`KittiObjects` per frame (labels; ``score`` ignored).
        dt_annos: one :class:`KittiObjects` per frame, same order, with ``score`` (a frame may be empty).
        classes: class names to evaluate (case-insensitive), among Car, Pedestrian, Cyclist, Van,
            Person_sitting, Truck.
        loose: also evaluate at the devkit's loose thresholds (keys with the suffix ``_loose``).
        frame_ids: names of the frames for error messages (default: their indices).

    Raises:
        ValueError: different numbers of frames, an unknown class, detections without scores, ground truth of
            an evaluated class with negative sizes.
        TypeError: a frame that is not a :class:`KittiObjects`.
    """
    if len(gt_annos) != len(dt_annos):
        raise ValueError(
            f"gt_annos and dt_annos must have one entry per frame, got {len(gt_annos)} and {len(dt_annos)}"
        )
    classes = tuple(classes)
    if not classes:
        raise ValueError("classes must name at least one class")
    for c in classes:
        if c.lower() not in MIN_OVERLAP:
            raise ValueError(
                f"classes: unknown class {c!r}; expected one of {sorted(MIN_OVERLAP)} (any case)"
            )
    ids = [str(i) for i in frame_ids] if frame_ids is not None else [str(i) for i in range(len(gt_annos))]
    relevant = {c.lower() for c in classes} | {
        NEIGHBOURS[c.lower()] for c in classes if c.lower() in NEIGHBOURS
    }
    fr = _prepare(gt_annos, dt_annos, relevant, ids)
    compute_aos = not bool(np.any(fr.dt_alpha == ALPHA_UNKNOWN))
    ap: dict[str, float] = {}
    curves: dict[str, np.ndarray] = {}
    num_gt: dict[str, int] = {}
    settings = [("", MIN_OVERLAP)] + ([("_loose", MIN_OVERLAP_LOOSE)] if loose else [])
    for c in classes:
        cl = c.lower()
        mine = fr.dt_names == cl
        has_kind = [fr.dt_has_2d[mine], fr.dt_has_bev[mine], fr.dt_has_3d[mine]]
        for level, diff in enumerate(DIFFICULTIES):
            ig_gt, ig_dt, n_gt = _ignore_flags(fr, cl, level)
            num_gt[f"{c}_{diff}"] = n_gt
            for suffix, table in settings:
                for m, kind in enumerate(METRICS):
                    defined = n_gt > 0 and (len(has_kind[m]) == 0 or bool(has_kind[m].any()))
                    kinds = [kind] + (["aos"] if m == 0 and compute_aos else [])
                    if defined:
                        prec, aos = _curves(fr, m, ig_gt, ig_dt, n_gt, table[cl][m])
                    else:
                        prec = aos = np.full(km.N_SAMPLE_PTS, np.nan)
                    for k, curve in zip(kinds, (prec, aos), strict=False):
                        curves[f"{c}_{k}_{diff}{suffix}"] = curve
                        ap[f"{c}_{k}_R11_{diff}{suffix}"] = km.ap_r11(curve) if defined else math.nan
                        ap[f"{c}_{k}_R40_{diff}{suffix}"] = km.ap_r40(curve) if defined else math.nan
    return KittiEvalResult(ap=ap, curves=curves, num_gt=num_gt, classes=classes)


def format_table(result: KittiEvalResult, samplings: Sequence[str] = ("R40", "R11")) -> str:
    """Markdown table: one row per class x box kind (x threshold set), columns sampling x difficulty (AP %).

    ``n/a`` marks undefined entries (no ground truth, or no box of that kind); rows of the loose thresholds say
    ``loose``. Below the table: the number of ground-truth objects per class and difficulty, and a note when some
    count is below 41 (the devkit's threshold sampling then cannot reach AP 100).
    """
    kinds = [k for k in (*METRICS, "aos") if any(f"_{k}_" in key for key in result.ap)]
    suffixes = [""] + (["_loose"] if any(key.endswith("_loose") for key in result.ap) else [])
    head = ["Class", "Box", "IoU"] + [f"{s} {d}" for s in samplings for d in DIFFICULTIES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in result.classes:
        for suffix in suffixes:
            table = MIN_OVERLAP_LOOSE if suffix else MIN_OVERLAP
            for k in kinds:
                keys = [f"{c}_{k}_{s}_{d}{suffix}" for s in samplings for d in DIFFICULTIES]
                if keys[0] not in result.ap:
                    continue
                iou = table[c.lower()][METRICS.index(k) if k != "aos" else 0]
                vals = ["n/a" if math.isnan(result.ap[key]) else f"{result.ap[key]:.2f}" for key in keys]
                box = f"{k} loose" if suffix else k
                lines.append("| " + " | ".join([c, box, f"{iou:g}", *vals]) + " |")
    lines.append("")
    lines.extend(gt_count_lines(result))
    return "\n".join(lines)


def gt_count_lines(result: KittiEvalResult) -> list[str]:
    """The number of ground-truth objects per class and difficulty, and a note when some count is below 41."""
    counts = ", ".join(
        f"{c} " + "/".join(str(result.num_gt[f"{c}_{d}"]) for d in DIFFICULTIES) for c in result.classes
    )
    lines = [f"Ground-truth objects counted (easy/moderate/hard): {counts}"]
    if any(0 < n < km.N_SAMPLE_PTS for n in result.num_gt.values()):
        lines.append(
            f"Note: with fewer than {km.N_SAMPLE_PTS} ground-truth objects the official threshold sampling leaves "
            "high-recall points empty, so even perfect detections score below 100."
        )
    return lines


def evaluate_label_dirs(
    gt_dir: str | os.PathLike[str],
    det_dir: str | os.PathLike[str],
    ids: Sequence[str | int] | None = None,
    classes: Sequence[str] = ("Car", "Pedestrian", "Cyclist"),
    *,
    loose: bool = False,
) -> dict[str, float]:
    """Score KITTI result files (``det_dir/<id>.txt``, 16 columns) against labels (``gt_dir/<id>.txt``).

    Args:
        gt_dir: folder of label files (e.g. ``training/label_2``).
        det_dir: folder of result files; a missing file means no detections in that frame.
        ids: frame ids (ints are zero-padded to 6 digits, strings used as given); ``None``: every ``*.txt`` in
            ``gt_dir``, sorted.
        classes, loose: as for :func:`evaluate`.

    Returns:
        ``{metric name: AP in percent}`` as :attr:`KittiEvalResult.ap`, e.g. ``"Car_3d_R40_moderate"``.

    Raises:
        FileNotFoundError: a missing folder or label file (named).
        ValueError: a malformed line (file and line number), a result file without scores, no frames.
    """
    names, gts, dts = load_label_dirs(gt_dir, det_dir, ids)
    return evaluate(gts, dts, classes, loose=loose, frame_ids=names).ap
