"""Pre-flight check of the ground truth an evaluation will read, run before the inference.

A NaN or zero-size ground-truth box makes the nuScenes devkit fail with a bare ``AssertionError`` (``DetectionBox``
asserts finite values, ``scale_iou`` sizes ``> 0``) only after the whole inference has run, and would make the
KITTI AP silently wrong. These functions apply the shared rule of :mod:`perception.formats.box_checks` to exactly
the boxes the evaluator reads and raise a ``ValueError`` naming them:

* nuScenes (:func:`check_nuscenes_ground_truth`, :func:`check_nuscenes_split`): the ``sample_annotation`` records
  of the eval set's samples whose category maps to a detection class, as the devkit's ``load_gt`` keeps them
  (before its range / point-count filter); translation, size and rotation must be finite and the size
  (``width, length, height``) ``> 0``. Velocity is not checked: the devkit's ``box_velocity`` is NaN by design
  for an annotation without neighbours.
* KITTI (:func:`check_kitti_labels`): every object except ``DontCare`` (whose sizes are ``-1`` by convention) of
  the split's label files; ``h, w, l`` must be ``> 0`` (non-finite values are already refused with ``file:line``
  by :func:`perception.formats.kitti_labels.read_label_file`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes.eval.detection.utils import category_to_detection_name

from perception.evaluation.nuscenes import split_sample_tokens
from perception.formats.box_checks import box_problems, name_some
from perception.formats.kitti_labels import read_label_file

__all__ = ["check_kitti_labels", "check_nuscenes_ground_truth", "check_nuscenes_split", "kitti_label_dir"]

# (dataroot, version, eval set, (name, mtime_ns, size) of every table) of the splits that passed: the training-time
# evaluation checks the same split every epoch and need not load the devkit again.
_PASSED: set[tuple[Any, ...]] = set()


def check_nuscenes_ground_truth(nusc: Any, eval_set: str) -> None:
    """Refuse ground-truth boxes of ``eval_set`` the devkit cannot score (see the module docstring).

    Args:
        nusc: a ``nuscenes.NuScenes`` database.
        eval_set: devkit split name (``val``, ``mini_val``, a custom split, ...).

    Raises:
        ValueError: the split does not fit ``nusc`` (:func:`~perception.evaluation.nuscenes.split_sample_tokens`),
            or some annotations are non-finite or of zero size (the message counts them and names their tokens).
    """
    tokens, values, sizes = [], [], []
    for sample_token in split_sample_tokens(nusc, eval_set):
        for ann_token in nusc.get("sample", sample_token)["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            if category_to_detection_name(ann["category_name"]) is None:
                continue
            tokens.append(ann_token)
            values.append([*ann["translation"], *ann["size"], *ann["rotation"]])
            sizes.append(ann["size"])
    if not tokens:
        return
    p = box_problems(np.asarray(values, dtype=np.float64), np.asarray(sizes, dtype=np.float64))
    if not p.any:
        return
    names = np.asarray(tokens)
    parts = []
    if p.nonfinite.any():
        bad = names[p.nonfinite]
        parts.append(f"{len(bad)} with NaN / inf in translation, size or rotation ({name_some(bad)})")
    if p.zero_size.any():
        bad = names[p.zero_size]
        parts.append(f"{len(bad)} of zero size, a width, length or height <= 0 ({name_some(bad)})")
    table = Path(nusc.dataroot) / nusc.version / "sample_annotation.json"
    raise ValueError(
        f"{table}: {int(p.nonfinite.sum() + p.zero_size.sum())} annotation(s) of the nuScenes eval set "
        f"{eval_set!r} cannot be scored: " + "; ".join(parts) + "; fix or remove these annotations"
    )


def check_nuscenes_split(root: str | os.PathLike[str], version: str, eval_set: str) -> None:
    """:func:`check_nuscenes_ground_truth` on the database ``root/version``, loaded only when its tables changed
    since the last check of this split that passed in this process.

    Raises:
        FileNotFoundError: ``root/version`` is not a folder.
        ValueError: as :func:`check_nuscenes_ground_truth`.
    """
    from nuscenes import NuScenes

    tables = Path(root) / version
    if not tables.is_dir():
        raise FileNotFoundError(f"nuScenes tables not found: {tables} is not a folder")
    stats = tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in tables.glob("*.json")))
    key = (str(Path(root).absolute()), version, eval_set, stats)
    if key in _PASSED:
        return
    check_nuscenes_ground_truth(NuScenes(version=version, dataroot=str(root), verbose=False), eval_set)
    _PASSED.add(key)


def kitti_label_dir(root: str | os.PathLike[str]) -> Path:
    """The label files the KITTI evaluation scores against: ``<root>/training/label_2``."""
    return Path(root) / "training" / "label_2"


def check_kitti_labels(label_dir: str | os.PathLike[str], frame_ids: Sequence[str]) -> None:
    """Refuse zero-size boxes in the label files ``label_dir/<id>.txt`` of ``frame_ids`` (``DontCare`` aside).

    Raises:
        FileNotFoundError: a label file is missing.
        ValueError: a malformed or non-finite line (from ``read_label_file``), or boxes of zero size (the message
            counts them and names them as ``file:line``).
    """
    bad: list[str] = []
    for fid in frame_ids:
        path = Path(label_dir) / f"{fid}.txt"
        objs = read_label_file(path)
        if len(objs) == 0:
            continue
        care = np.char.lower(objs.names.astype(str)) != "dontcare"
        values = np.concatenate([objs.dimensions, objs.location, objs.rotation_y[:, None]], axis=1)
        p = box_problems(values[care], objs.dimensions[care])
        if not p.any:
            continue
        with path.open(encoding="utf-8") as f:  # object k is the k-th non-blank line (read_label_file's rule)
            lines = [n for n, line in enumerate(f, start=1) if line.split()]
        rows = np.flatnonzero(care)[p.nonfinite | p.zero_size]
        bad.extend(f"{path}:{lines[k]}" for k in rows)
    if bad:
        raise ValueError(
            f"{len(bad)} KITTI label box(es) the evaluation cannot score, of zero size (h, w or l <= 0): "
            f"{name_some(bad)}; fix or remove these lines"
        )
