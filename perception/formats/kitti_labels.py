"""KITTI object labels and detection results: the per-frame record and its text-file reader / writer.

File format (one object per line, whitespace separated; the KITTI object devkit's ``readme.txt``)::

    type truncated occluded alpha x1 y1 x2 y2 h w l x y z rotation_y [score]

* ``type``: class name (``Car``, ``Van``, ``Pedestrian``, ``Person_sitting``, ``Cyclist``, ``DontCare``, ...);
* ``truncated``: float in ``[0, 1]`` (results usually write ``-1``); ``occluded``: integer 0..3 (results ``-1``);
* ``alpha``: observation angle in radians (``-10`` = unknown);
* ``x1 y1 x2 y2``: 2D box in image pixels (left, top, right, bottom);
* ``h w l``: height, width, length in metres -- :class:`KittiObjects` keeps this **file order** (``hwl``);
* ``x y z``: bottom centre of the 3D box in the rectified camera frame (x right, y down, z forward), metres;
* ``rotation_y``: yaw about the camera's y axis in radians; ``score``: detection confidence (results only).

Label files have 15 columns, result files 16. ``DontCare`` regions carry ``-1`` sizes and ``-1000`` locations.

The official difficulty levels (:data:`DIFFICULTIES` with :data:`MIN_HEIGHT`, :data:`MAX_OCCLUSION`,
:data:`MAX_TRUNCATION`, the KITTI devkit's thresholds) live here too: the evaluation (:mod:`perception.evaluation`)
and the info creation (:mod:`perception.datasets.kitti_calib`) both read them from this one place.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "DIFFICULTIES",
    "DIFFICULTY_NAMES",
    "MAX_OCCLUSION",
    "MAX_TRUNCATION",
    "MIN_HEIGHT",
    "KittiObjects",
    "difficulty",
    "label_line_numbers",
    "load_label_dirs",
    "meets_difficulty",
    "read_ids",
    "read_label_file",
    "write_result_file",
]

DIFFICULTIES = ("easy", "moderate", "hard")
"""Level names; level ``i`` is ``DIFFICULTIES[i]``."""
DIFFICULTY_NAMES = {0: "easy", 1: "moderate", 2: "hard", -1: "unknown"}
"""What :func:`difficulty` returns, by name (``-1``: the object meets no level)."""
MIN_HEIGHT = (40.0, 25.0, 25.0)
"""Minimum 2D box height in pixels per difficulty."""
MAX_OCCLUSION = (0, 1, 2)
"""Maximum occlusion level per difficulty."""
MAX_TRUNCATION = (0.15, 0.3, 0.5)
"""Maximum truncation per difficulty."""
_NUM_LABEL_COLS = 15
_NUM_RESULT_COLS = 16


@dataclass
class KittiObjects:
    """All objects (labels or detections) of one KITTI frame; every array has the same length ``N``.

    Attributes:
        names: str ``(N,)`` class names as written in the file (matching is case-insensitive).
        truncated: float64 ``(N,)`` truncation in ``[0, 1]`` (``-1`` in result files).
        occluded: int64 ``(N,)`` occlusion state 0 (visible) .. 3 (unknown); ``-1`` in result files.
        alpha: float64 ``(N,)`` observation angle, radians; ``-10`` means unknown.
        bbox: float64 ``(N, 4)`` 2D box ``[x1, y1, x2, y2]`` in image pixels.
        dimensions: float64 ``(N, 3)`` ``[h, w, l]`` (height, width, length) in metres -- the file's column order.
        location: float64 ``(N, 3)`` bottom centre ``[x, y, z]`` in the rectified camera frame, metres.
        rotation_y: float64 ``(N,)`` yaw about the camera y axis, radians.
        score: float64 ``(N,)`` detection confidences, or ``None`` for ground-truth labels.

    The constructor converts sequences to arrays of these dtypes and raises ``ValueError`` naming the field for a
    wrong shape, a length mismatch or a NaN / inf value.
    """

    names: np.ndarray
    truncated: np.ndarray
    occluded: np.ndarray
    alpha: np.ndarray
    bbox: np.ndarray
    dimensions: np.ndarray
    location: np.ndarray
    rotation_y: np.ndarray
    score: np.ndarray | None = None

    def __post_init__(self) -> None:
        names = np.asarray(self.names, dtype=object).reshape(-1) if len(self.names) else np.zeros(0, object)
        for k, v in enumerate(names):
            if not isinstance(v, str) or not v:
                raise ValueError(f"names[{k}] must be a non-empty str, got {v!r}")
        self.names = names.astype(str) if len(names) else np.zeros(0, dtype="<U1")
        n = len(self.names)
        self.truncated = _float_field("truncated", self.truncated, (n,))
        occ = _float_field("occluded", self.occluded, (n,))
        if np.any(occ != np.round(occ)):
            raise ValueError(f"occluded must hold integers, got {occ[occ != np.round(occ)][:3].tolist()}")
        self.occluded = occ.astype(np.int64)
        self.alpha = _float_field("alpha", self.alpha, (n,))
        self.bbox = _float_field("bbox", self.bbox, (n, 4))
        self.dimensions = _float_field("dimensions", self.dimensions, (n, 3))
        self.location = _float_field("location", self.location, (n, 3))
        self.rotation_y = _float_field("rotation_y", self.rotation_y, (n,))
        if self.score is not None:
            self.score = _float_field("score", self.score, (n,))

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def empty(cls, with_score: bool = False) -> KittiObjects:
        """A frame without objects (with an empty ``score`` array when ``with_score``)."""
        z1 = np.zeros(0)
        return cls(
            names=np.zeros(0, dtype="<U1"),
            truncated=z1,
            occluded=np.zeros(0, np.int64),
            alpha=z1,
            bbox=np.zeros((0, 4)),
            dimensions=np.zeros((0, 3)),
            location=np.zeros((0, 3)),
            rotation_y=z1,
            score=z1 if with_score else None,
        )

    def select(self, mask: np.ndarray) -> KittiObjects:
        """The objects where the bool ``(N,)`` ``mask`` (or an index array) selects, as a new record."""
        return KittiObjects(
            names=self.names[mask],
            truncated=self.truncated[mask],
            occluded=self.occluded[mask],
            alpha=self.alpha[mask],
            bbox=self.bbox[mask],
            dimensions=self.dimensions[mask],
            location=self.location[mask],
            rotation_y=self.rotation_y[mask],
            score=None if self.score is None else self.score[mask],
        )


def meets_difficulty(
    height: np.ndarray, occluded: np.ndarray, truncated: np.ndarray, level: int
) -> np.ndarray:
    """bool ``(N,)``: the objects that count at difficulty ``level`` (0 easy, 1 moderate, 2 hard).

    The devkit's rule: 2D box height ``>= MIN_HEIGHT[level]`` pixels, ``occluded <= MAX_OCCLUSION[level]`` and
    ``truncated <= MAX_TRUNCATION[level]``. The levels are cumulative (an easy object also counts as moderate and
    hard).

    Args:
        height: ``(N,)`` 2D box heights ``y2 - y1`` in pixels; occluded: ``(N,)`` 0..3; truncated: ``(N,)`` 0..1.
    """
    return (
        (np.asarray(height, np.float64) >= MIN_HEIGHT[level])
        & (np.asarray(occluded) <= MAX_OCCLUSION[level])
        & (np.asarray(truncated, np.float64) <= MAX_TRUNCATION[level])
    )


def difficulty(bbox: np.ndarray, occluded: np.ndarray, truncated: np.ndarray) -> np.ndarray:
    """KITTI difficulty per object: int64 ``(N,)``, 0 easy, 1 moderate, 2 hard, -1 unknown (the strictest level of
    :func:`meets_difficulty` the object meets).

    Args:
        bbox: ``(N, 4)`` 2D boxes ``[x1, y1, x2, y2]`` (pixels).
        occluded: ``(N,)`` occlusion state 0..3.
        truncated: ``(N,)`` truncation in [0, 1].
    """
    box = np.asarray(bbox, np.float64).reshape(-1, 4)
    occ = np.asarray(occluded).reshape(-1)
    trunc = np.asarray(truncated, np.float64).reshape(-1)
    out = np.full(len(box), -1, dtype=np.int64)
    for level in (2, 1, 0):  # the strictest level that an object satisfies wins
        out[meets_difficulty(box[:, 3] - box[:, 1], occ, trunc, level)] = level
    return out


def _float_field(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0 and len(shape) > 0 and shape[0] == 0:
        return np.zeros(shape, dtype=np.float64)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (N = len(names)), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return np.ascontiguousarray(arr)


def _object_lines(lines: Iterable[str]) -> Iterator[tuple[int, str, list[str]]]:
    """``(1-based line number, line, columns)`` of every non-blank line: one object each."""
    for lineno, line in enumerate(lines, start=1):
        parts = line.split()
        if parts:
            yield lineno, line, parts


def label_line_numbers(path: str | os.PathLike[str]) -> np.ndarray:
    """int64 ``(N,)``: the 1-based line in ``path`` of each object :func:`read_label_file` returns (for messages
    that name an object as ``file:line``)."""
    with Path(path).open("r", encoding="utf-8") as f:
        return np.asarray([lineno for lineno, _, _ in _object_lines(f)], dtype=np.int64)


def read_label_file(path: str | os.PathLike[str]) -> KittiObjects:
    """Read a KITTI label (15 columns) or result (16 columns, last = score) file.

    Blank lines are skipped; an empty file is a frame without objects (``score`` is then an empty array, so an
    empty result file is a valid frame without detections). All lines of one file must have the same number of
    columns: ``score`` is ``None`` for a 15-column file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a malformed line (wrong column count, a non-numeric or non-finite value, a non-integer
            ``occluded``), with the file name and the 1-based line number.
    """
    path = Path(path)
    rows: list[list[float]] = []
    names: list[str] = []
    ncols: int | None = None
    with path.open("r", encoding="utf-8") as f:
        for lineno, line, parts in _object_lines(f):
            where = f"{path}:{lineno}"
            if len(parts) not in (_NUM_LABEL_COLS, _NUM_RESULT_COLS):
                raise ValueError(
                    f"{where}: expected {_NUM_LABEL_COLS} columns (label) or {_NUM_RESULT_COLS} (result with "
                    f"score), got {len(parts)}: {line.strip()!r}"
                )
            if ncols is None:
                ncols = len(parts)
            elif len(parts) != ncols:
                raise ValueError(
                    f"{where}: {len(parts)} columns, but earlier lines of this file have {ncols}"
                )
            try:
                values = [float(v) for v in parts[1:]]
            except ValueError as e:
                raise ValueError(f"{where}: non-numeric value ({e}): {line.strip()!r}") from None
            bad = [parts[1 + k] for k, v in enumerate(values) if not math.isfinite(v)]
            if bad:
                raise ValueError(f"{where}: non-finite value(s) {bad}: {line.strip()!r}")
            if values[1] != round(values[1]):
                raise ValueError(f"{where}: occluded must be an integer, got {parts[2]!r}")
            names.append(parts[0])
            rows.append(values)
    if not rows:
        return KittiObjects.empty(with_score=True)
    a = np.asarray(rows, dtype=np.float64)
    return KittiObjects(
        names=np.asarray(names),
        truncated=a[:, 0],
        occluded=a[:, 1],
        alpha=a[:, 2],
        bbox=a[:, 3:7],
        dimensions=a[:, 7:10],
        location=a[:, 10:13],
        rotation_y=a[:, 13],
        score=a[:, 14] if ncols == _NUM_RESULT_COLS else None,
    )


def _fmt(v: float) -> str:
    """Shortest text that reads back as the same float64 (``repr``), without a trailing ``.0``."""
    s = repr(float(v))
    return s[:-2] if s.endswith(".0") else s


def write_result_file(path: str | os.PathLike[str], objs: KittiObjects) -> None:
    """Write ``objs`` as a KITTI result file (16 columns) or, when ``objs.score`` is None, a label file (15).

    Numbers are written with ``repr`` precision, so :func:`read_label_file` gives back exactly the same values.
    A frame without objects gives an empty file. The parent folder must exist.
    """
    lines: list[str] = []
    for k in range(len(objs)):
        name = str(objs.names[k])
        if any(c.isspace() for c in name):
            raise ValueError(f"names[{k}] must not contain whitespace, got {name!r}")
        vals: Sequence[float] = [
            objs.truncated[k],
            *objs.bbox[k],
            *objs.dimensions[k],
            *objs.location[k],
            objs.rotation_y[k],
        ]
        cols = [name, _fmt(vals[0]), str(int(objs.occluded[k])), _fmt(objs.alpha[k])]
        cols += [_fmt(v) for v in vals[1:]]
        if objs.score is not None:
            cols.append(_fmt(objs.score[k]))
        lines.append(" ".join(cols))
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def read_ids(path: str | os.PathLike[str]) -> list[str]:
    """Frame ids from a split file (one id per line, e.g. ``ImageSets/val.txt``); blank lines skipped."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def load_label_dirs(
    gt_dir: str | os.PathLike[str], det_dir: str | os.PathLike[str], ids: Sequence[str | int] | None = None
) -> tuple[list[str], list[KittiObjects], list[KittiObjects]]:
    """Read labels ``gt_dir/<id>.txt`` and results ``det_dir/<id>.txt`` -> ``(ids, gt_annos, dt_annos)``.

    ``ids``: ints are zero-padded to 6 digits, strings used as given; ``None`` means every ``*.txt`` in
    ``gt_dir``, sorted. A missing result file means no detections in that frame (an empty frame).

    Raises:
        FileNotFoundError: a missing folder or label file (named).
        ValueError: a malformed line (file and line number), a result file without scores, no frames.
    """
    gt_root, det_root = Path(gt_dir), Path(det_dir)
    for what, root in (("gt_dir", gt_root), ("det_dir", det_root)):
        if not root.is_dir():
            raise FileNotFoundError(f"{what} {root} is not a folder")
    if ids is None:
        names = sorted(p.stem for p in gt_root.glob("*.txt"))
    else:
        names = [f"{i:06d}" if isinstance(i, int | np.integer) else str(i).strip() for i in ids]
    if not names:
        raise ValueError(f"no frames to evaluate (ids is empty or {gt_root} has no .txt files)")
    gts, dts = [], []
    for name in names:
        gt_path = gt_root / f"{name}.txt"
        if not gt_path.is_file():
            raise FileNotFoundError(f"label file {gt_path} for frame {name!r} does not exist")
        gts.append(read_label_file(gt_path))
        det_path = det_root / f"{name}.txt"
        det = read_label_file(det_path) if det_path.is_file() else KittiObjects.empty(with_score=True)
        if det.score is None:
            raise ValueError(f"{det_path}: result files need 16 columns (the last one the score), found 15")
        dts.append(det)
    return names, gts, dts
