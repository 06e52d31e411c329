"""A typed, renderer-independent description of what a picture shows: coloured points and box wireframes.

Built from :class:`~perception.structures.Points`, ground-truth :class:`~perception.structures.Boxes3D` and
:class:`~perception.structures.Detections`; drawn by :mod:`perception.viz.o3d_render` (open3d) and
:mod:`perception.viz.viewer`. Everything here is numpy, in the LiDAR frame (metres), with colours as float RGB in
``[0, 1]``.

Colours:
    * points by ``height`` (z, viridis), ``intensity`` (plasma), ``time_lag`` (seconds, cool: cyan = keyframe,
      magenta = oldest sweep) or ``uniform`` grey. The colour range is ``value_range`` when given, else the
      channel's finite min / max (a constant channel maps to the middle of the colour map).
    * ground truth per class, or in one colour (:data:`GT_COLOUR`, white) -- the default when predictions are
      shown too; predictions per class (:data:`~perception.viz.colours.CLASS_COLOURS`) or in one colour
      (:data:`PRED_COLOUR`).

Box wireframes have 10 vertices per box -- the 8 corners of :meth:`Boxes3D.corners` (0-3 bottom face, 4-7 top face,
0/3/4/7 the front face at ``+dx/2`` along the heading), the centre (8) and the front-face centre (9) -- and
:data:`BOX_LINES` joins them: 12 edges, a cross on the front face and a heading line from the centre to the front.

A scene may carry its data set's LiDAR frame (:class:`~perception.viz.frames.LidarAxes`: which axis is forward),
for axis labels; :func:`legend_entries` lists what a legend of the scene shows (the classes drawn in class colours
and the ground-truth / prediction line styles).

What is left out is counted, never silently dropped: non-finite points (``Scene.num_nonfinite_points``, logged) and
predictions below the score threshold (``Scene.num_below_threshold``). Non-finite boxes or scores, labels outside
``class_names`` and thresholds outside ``[0, 1]`` raise ``ValueError``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from perception.structures import Boxes3D, Detections, Points, Sample

from .colours import (
    GT_COLOUR,
    GT_COLOUR_NAME,
    PRED_COLOUR,
    PRED_COLOUR_NAME,
    BoxColourBy,
    ColourBy,
    class_colour,
    hex_to_rgb,
    point_colours,
)
from .frames import LidarAxes

logger = logging.getLogger(__name__)

#: int64 ``(15, 2)`` vertex pairs of one box wireframe (vertex layout in the module doc).
BOX_LINES = np.array(
    [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]]
    + [[0, 7], [3, 4]]  # cross on the front face
    + [[8, 9]],  # heading: centre -> front-face centre
    dtype=np.int64,
)
VERTICES_PER_BOX = 10


def box_vertices(boxes: Boxes3D) -> np.ndarray:
    """float64 ``(K, 10, 3)`` wireframe vertices: 8 corners, centre, front-face centre (LiDAR frame, m)."""
    if len(boxes) == 0:
        return np.zeros((0, VERTICES_PER_BOX, 3))
    corners = boxes.corners().detach().cpu().double().numpy()  # (K, 8, 3)
    centre = boxes.center.detach().cpu().double().numpy()[:, None]
    front = corners[:, [0, 3, 4, 7]].mean(axis=1, keepdims=True)
    return np.concatenate([corners, centre, front], axis=1)


@dataclass
class BoxSet:
    """Wireframes of one kind of box (ground truth or predictions).

    Attributes:
        kind: ``"gt"`` or ``"pred"``.
        vertices: float64 ``(K, 10, 3)`` from :func:`box_vertices`.
        colours: float64 ``(K, 3)`` RGB in ``[0, 1]``, one per box.
        labels: int64 ``(K,)`` indices into the scene's class names.
        scores: float32 ``(K,)`` for predictions, None for ground truth.
        colour_by: how ``colours`` were chosen: ``"class"`` or ``"single"`` (:data:`GT_COLOUR` /
            :data:`PRED_COLOUR`).
    """

    kind: Literal["gt", "pred"]
    vertices: np.ndarray
    colours: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None
    colour_by: BoxColourBy = "class"

    def __len__(self) -> int:
        return int(self.vertices.shape[0])

    @staticmethod
    def empty(kind: Literal["gt", "pred"]) -> BoxSet:
        return BoxSet(
            kind,
            np.zeros((0, VERTICES_PER_BOX, 3)),
            np.zeros((0, 3)),
            np.zeros(0, np.int64),
            None if kind == "gt" else np.zeros(0, np.float32),
        )

    def line_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Flattened for a line renderer: vertices float64 ``(10K, 3)``, lines int64 ``(15K, 2)`` into them,
        line colours float64 ``(15K, 3)``."""
        k = len(self)
        verts = self.vertices.reshape(-1, 3)
        lines = (BOX_LINES[None] + VERTICES_PER_BOX * np.arange(k)[:, None, None]).reshape(-1, 2)
        colours = np.repeat(self.colours, len(BOX_LINES), axis=0)
        return verts, lines, colours


@dataclass
class Scene:
    """What one picture shows.

    Attributes:
        points: float64 ``(N, 3)`` finite point coordinates, LiDAR frame (m).
        point_colours: float64 ``(N, 3)`` RGB in ``[0, 1]``.
        gt: ground-truth wireframes (empty when hidden or absent).
        pred: prediction wireframes at or above the score threshold (empty when hidden or absent).
        class_names: names the box labels index.
        num_nonfinite_points: points left out because a coordinate was NaN / inf.
        num_below_threshold: predictions left out by the score threshold.
        title: free text for captions (e.g. the sample token).
        frame: the data set's LiDAR frame (which axis is forward), or None when not known.
    """

    points: np.ndarray
    point_colours: np.ndarray
    gt: BoxSet
    pred: BoxSet
    class_names: tuple[str, ...]
    num_nonfinite_points: int = 0
    num_below_threshold: int = 0
    title: str = ""
    frame: LidarAxes | None = None

    def summary(self) -> str:
        """One line: counts of points, boxes and what was left out."""
        return (
            f"{self.title + ': ' if self.title else ''}{len(self.points)} points, {len(self.gt)} GT boxes, "
            f"{len(self.pred)} predictions ({self.num_below_threshold} below the score threshold)"
            + (
                f", {self.num_nonfinite_points} non-finite points left out"
                if self.num_nonfinite_points
                else ""
            )
        )


def _box_colours(
    labels: np.ndarray, class_names: Sequence[str], by: BoxColourBy, single: tuple
) -> np.ndarray:
    if by == "single":
        return np.tile(np.asarray(single, np.float64), (len(labels), 1)).reshape(-1, 3)
    if by == "class":
        return np.asarray([hex_to_rgb(class_colour(class_names[int(i)])) for i in labels]).reshape(-1, 3)
    raise ValueError(f"box colouring must be 'class' or 'single', got {by!r}")


def _check_boxes(what: str, boxes: Boxes3D, labels: torch.Tensor, class_names: Sequence[str]) -> None:
    if not bool(torch.isfinite(boxes.tensor).all()):
        bad = torch.nonzero(~torch.isfinite(boxes.tensor).all(dim=1)).flatten().tolist()
        raise ValueError(f"{what} boxes must be finite; rows {bad[:5]} hold NaN or inf")
    if len(labels) != len(boxes):
        raise ValueError(
            f"{what} labels must have one entry per box: {len(labels)} labels, {len(boxes)} boxes"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(class_names)):
        raise ValueError(
            f"{what} labels must lie in [0, {len(class_names)}) for class_names {tuple(class_names)}, "
            f"got {sorted(set(labels.tolist()))}"
        )


def build_scene(
    points: Points,
    class_names: Sequence[str],
    *,
    gt_boxes: Boxes3D | None = None,
    gt_labels: torch.Tensor | None = None,
    detections: Detections | None = None,
    score_threshold: float = 0.0,
    colour_by: ColourBy = "height",
    value_range: tuple[float, float] | None = None,
    gt_colour_by: BoxColourBy | None = None,
    pred_colour_by: BoxColourBy = "class",
    show_gt: bool = True,
    show_pred: bool = True,
    title: str = "",
    frame: LidarAxes | None = None,
) -> Scene:
    """Assemble a :class:`Scene`.

    Args:
        points: ``(N, C)`` LiDAR points.
        class_names: the names box labels index.
        gt_boxes, gt_labels: ground truth ``(K, 7|9)`` and int64 ``(K,)``, both or neither.
        detections: predictions in the same frame; those with ``score < score_threshold`` are left out.
        score_threshold: in ``[0, 1]``.
        colour_by, value_range: point colours, see :func:`point_colours`.
        gt_colour_by, pred_colour_by: ``"class"`` (per-class colours) or ``"single"`` (:data:`GT_COLOUR` /
            :data:`PRED_COLOUR`). ``gt_colour_by=None`` (default): ``"class"`` when ``detections`` is None (the
            ground truth alone), ``"single"`` otherwise (so ground truth and predictions stay apart).
        show_gt, show_pred: include the ground truth / predictions at all.
        frame: the data set's LiDAR frame (:func:`perception.viz.frames.lidar_axes`), for axis labels.

    Raises:
        ValueError: see the module doc; also ``gt_boxes`` without ``gt_labels`` or the reverse.
    """
    names = tuple(class_names)
    if not (0.0 <= float(score_threshold) <= 1.0):
        raise ValueError(f"score_threshold must lie in [0, 1], got {score_threshold}")
    if (gt_boxes is None) != (gt_labels is None):
        raise ValueError("gt_boxes and gt_labels must be given together")
    finite = torch.isfinite(points.xyz).all(dim=1)
    n_bad = int((~finite).sum())
    if n_bad:
        logger.warning(
            "%s: %d of %d points have NaN/inf coordinates and are not drawn",
            title or "scene",
            n_bad,
            len(points),
        )
        points = points.select(finite)
    xyz = points.xyz.detach().cpu().double().numpy().reshape(-1, 3)
    colours = point_colours(points, colour_by, value_range)

    if gt_colour_by is None:
        gt_colour_by = "class" if detections is None else "single"
    gt = BoxSet.empty("gt")
    if gt_boxes is not None and gt_labels is not None:
        _check_boxes("ground-truth", gt_boxes, gt_labels, names)
        if show_gt and len(gt_boxes):
            lab = gt_labels.detach().cpu().numpy().astype(np.int64)
            gt_colours = _box_colours(lab, names, gt_colour_by, GT_COLOUR)
            gt = BoxSet("gt", box_vertices(gt_boxes), gt_colours, lab, colour_by=gt_colour_by)

    pred = BoxSet.empty("pred")
    below = 0
    if detections is not None:
        _check_boxes("detection", detections.boxes, detections.labels, names)
        scores = detections.scores.detach().cpu()
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("detection scores must be finite")
        keep = scores >= float(score_threshold)
        below = int((~keep).sum())
        if show_pred and bool(keep.any()):
            kept = detections.to("cpu").select(keep)
            lab = kept.labels.numpy().astype(np.int64)
            pred = BoxSet(
                "pred",
                box_vertices(kept.boxes),
                _box_colours(lab, names, pred_colour_by, PRED_COLOUR),
                lab,
                kept.scores.numpy().astype(np.float32),
                pred_colour_by,
            )
    return Scene(xyz, colours, gt, pred, names, n_bad, below, title, frame)


def scene_from_sample(sample: Sample, detections: Detections | None = None, **kwargs: object) -> Scene:
    """:func:`build_scene` for a :class:`Sample` (its points, ground truth, class names and token as title)."""
    kwargs.setdefault("title", sample.token)
    return build_scene(
        sample.points,
        sample.class_names,
        gt_boxes=sample.boxes,
        gt_labels=sample.labels,
        detections=detections,
        **kwargs,  # type: ignore[arg-type]
    )


#: Legend colour of a line style whose boxes are drawn in class colours (the style entry shows the dash only).
STYLE_IN_CLASS_COLOURS: tuple[float, float, float] = (0.85, 0.85, 0.85)
#: Line style of each kind of box in every picture (matplotlib ``linestyle``).
LINE_STYLES: dict[str, str] = {"gt": "-", "pred": "--"}
_KIND_NAMES = {"gt": "ground truth", "pred": "prediction"}
_SINGLE_NAMES = {"gt": GT_COLOUR_NAME, "pred": PRED_COLOUR_NAME}


@dataclass(frozen=True)
class LegendEntry:
    """One entry of a picture's legend.

    Attributes:
        label: the text (a class name, or e.g. ``"ground truth (solid, class colours)"``).
        colour: float RGB in ``[0, 1]``.
        kind: ``"class"`` (a colour swatch) or ``"style"`` (a line in the style of one kind of box).
        linestyle: matplotlib line style of a ``"style"`` entry (``"-"`` ground truth, ``"--"`` predictions).
    """

    label: str
    colour: tuple[float, float, float]
    kind: Literal["class", "style"]
    linestyle: str = "-"


def legend_entries(scene: Scene) -> list[LegendEntry]:
    """What a legend of ``scene`` shows: a style entry per kind of box drawn (ground truth solid, predictions
    dashed; white / red when drawn in one colour), then each class drawn in class colours, in ``class_names``
    order. Kinds without boxes and classes seen only in one-colour boxes are left out."""
    entries: list[LegendEntry] = []
    classes: set[int] = set()
    for boxes in (scene.gt, scene.pred):
        if not len(boxes):
            continue
        name = _KIND_NAMES[boxes.kind]
        style = "solid" if LINE_STYLES[boxes.kind] == "-" else "dashed"
        if boxes.colour_by == "class":
            label, colour = f"{name} ({style}, class colours)", STYLE_IN_CLASS_COLOURS
            classes.update(int(i) for i in boxes.labels)
        else:
            label = f"{name} ({style}, {_SINGLE_NAMES[boxes.kind]})"
            colour = GT_COLOUR if boxes.kind == "gt" else PRED_COLOUR
        entries.append(LegendEntry(label, colour, "style", LINE_STYLES[boxes.kind]))
    for name in (scene.class_names[i] for i in sorted(classes)):
        entries.append(LegendEntry(name, hex_to_rgb(class_colour(name)), "class"))
    return entries
