"""KITTI info records: what ``tools/create_data.py kitti`` writes, and how the dataset reads them back.

Output inside the KITTI root (the folder holding ``training/``, ``testing/`` and ``ImageSets/``):

* ``kitti_infos_<split>.pkl`` for ``split`` in ``train``, ``val`` (``ImageSets/<split>.txt``, frames under
  ``training/``) and ``test`` (frames under ``testing/``, no labels) when its ImageSets file exists;
* ``kitti_gt_database/`` -- the ground-truth database (:mod:`perception.datasets.gt_database`) of the train split:
  every labelled non-DontCare object's points (all points of the scan, not only the camera's view) with xyz
  relative to the box centre, its LiDAR-frame box and its KITTI difficulty;
* ``.perception_cache/`` -- per-frame part files that make an interrupted run resumable (safe to delete). A
  frame's part is reused only while its label and calib files have the same contents and its image and velodyne
  files the same size and mtime (:mod:`perception.datasets.info_split`); an edited frame is computed again.

Bad boxes (the rule of :mod:`perception.formats.box_checks`): a labelled object (not ``DontCare``) with a size
``h, w, l <= 0`` is dropped from the info and the GT database, with one warning per split that counts them and
names them ``label_file:line``; a non-finite value is refused by the label reader (``ValueError`` naming
``file:line``).

Info file format (format version :data:`FORMAT_VERSION`): a pickle (protocol 4) of a plain dict
``{"format": "perception.kitti_infos", "format_version": 1, "split": str, "infos": [KittiInfo.to_dict()]}``
holding only builtins and numpy arrays; read it with :func:`load_kitti_infos`. Paths are relative to the root.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from perception.formats.box_checks import box_problems
from perception.formats.info_pickle import safe_pickle_load
from perception.formats.info_records import check_fields
from perception.formats.kitti_labels import KittiObjects, difficulty, label_line_numbers, read_label_file
from perception.formats.points import KITTI_CHANNELS, load_scan

from .gt_database import GTDatabaseEntry, GTObject, write_sample_objects
from .info_split import SampleInputs, SplitStats, build_split, inputs_digest, task_result
from .kitti_calib import KittiCalib, boxes_camera_to_lidar, read_calib_file
from .prep_runner import crop_box_points, fingerprint

__all__ = [
    "FORMAT_VERSION",
    "GT_DATABASE_DIR",
    "KITTI_POINT_CHANNELS",
    "KittiAnnotations",
    "KittiInfo",
    "create_kitti_infos",
    "infos_path",
    "load_kitti_infos",
    "make_kitti_info",
    "read_image_set",
]

FORMAT_VERSION = 1
#: Version of the cache parts' layout (part of the cache folder's name; bump when a part's content changes).
_CACHE_VERSION = 2
_FORMAT = "perception.kitti_infos"
GT_DATABASE_DIR = "kitti_gt_database"
KITTI_POINT_CHANNELS = ("x", "y", "z", "intensity")
_SPLIT_DIR = {"train": "training", "val": "training", "test": "testing"}


@dataclass
class KittiAnnotations:
    """Labelled objects of one frame (DontCare regions apart), ``K`` of them.

    Attributes:
        objects: the label file's objects as read (:class:`~perception.formats.kitti_labels.KittiObjects`: names,
            truncated, occluded, alpha, bbox, dimensions ``[h, w, l]``, bottom-centre location, rotation_y).
        boxes_lidar: float32 ``(K, 7)`` ``[x, y, z, dx, dy, dz, yaw]`` in the Velodyne frame (box centre).
        difficulty: int64 ``(K,)`` 0 easy, 1 moderate, 2 hard, -1 unknown.
        num_points_in_gt: int64 ``(K,)`` scan points in the camera's view inside each box (as OpenPCDet counts).
        dontcare_bbox: float64 ``(M, 4)`` DontCare regions in image 2.
    """

    objects: KittiObjects
    boxes_lidar: np.ndarray
    difficulty: np.ndarray
    num_points_in_gt: np.ndarray
    dontcare_bbox: np.ndarray

    @property
    def names(self) -> np.ndarray:
        """str ``(K,)`` KITTI class names (``objects.names``)."""
        return self.objects.names

    def __len__(self) -> int:
        return len(self.objects)

    def to_dict(self) -> dict[str, Any]:
        """Flat dict of arrays, as info files store it: the label fields of :data:`_LABEL_FIELDS` and the rest."""
        d: dict[str, Any] = {k: getattr(self.objects, k) for k in _LABEL_FIELDS}
        d.update(
            boxes_lidar=self.boxes_lidar,
            difficulty=self.difficulty,
            num_points_in_gt=self.num_points_in_gt,
            dontcare_bbox=self.dontcare_bbox,
        )
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> KittiAnnotations:
        d = dict(d)
        objects = KittiObjects(**{k: d.pop(k) for k in _LABEL_FIELDS})
        return KittiAnnotations(objects=objects, **d)


#: The :class:`KittiObjects` fields a label (no score) has, stored flat in the info file (derived from the one
#: definition, :class:`perception.formats.kitti_labels.KittiObjects`).
_LABEL_FIELDS = tuple(f.name for f in fields(KittiObjects) if f.name != "score")


@dataclass
class KittiInfo:
    """One KITTI frame.

    Attributes:
        frame_id: six-digit id (file stem).
        split_dir: ``"training"`` or ``"testing"``.
        lidar_path / image_path: relative to the root (``training/velodyne/000000.bin``, ``.../image_2/...png``).
        image_size: ``(height, width)`` of image 2, pixels.
        calib: the frame's calibration.
        annos: labelled objects, None for the test split.
    """

    frame_id: str
    split_dir: str
    lidar_path: str
    image_path: str
    image_size: tuple[int, int]
    calib: KittiCalib
    annos: KittiAnnotations | None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins and numpy arrays (what the info file stores)."""
        c = self.calib
        return {
            "frame_id": self.frame_id,
            "split_dir": self.split_dir,
            "lidar_path": self.lidar_path,
            "image_path": self.image_path,
            "image_size": list(self.image_size),
            "calib": {
                "P": dict(c.P),
                "R0_rect": c.R0_rect,
                "Tr_velo_to_cam": c.Tr_velo_to_cam,
                "Tr_imu_to_velo": c.Tr_imu_to_velo,
            },
            "annos": None if self.annos is None else self.annos.to_dict(),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> KittiInfo:
        c = d["calib"]
        return KittiInfo(
            frame_id=d["frame_id"],
            split_dir=d["split_dir"],
            lidar_path=d["lidar_path"],
            image_path=d["image_path"],
            image_size=(int(d["image_size"][0]), int(d["image_size"][1])),
            calib=KittiCalib(c["P"], c["R0_rect"], c["Tr_velo_to_cam"], c["Tr_imu_to_velo"]),
            annos=None if d["annos"] is None else KittiAnnotations.from_dict(d["annos"]),
        )


def read_image_set(root: str | os.PathLike[str], split: str) -> list[str]:
    """Frame ids listed in ``root/ImageSets/<split>.txt`` (blank lines skipped)."""
    path = Path(root) / "ImageSets" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"KITTI split file not found: {path}")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    for lineno, fid in enumerate(ids, start=1):
        if not fid.isalnum():
            raise ValueError(f"{path}:{lineno}: frame id must be letters/digits, got {fid!r}")
    return ids


def _label_path(split_dir: str, fid: str) -> str:
    return f"{split_dir}/label_2/{fid}.txt"


def _annotations(
    root: Path, split_dir: str, fid: str, calib: KittiCalib, fov_points: np.ndarray
) -> tuple[KittiAnnotations, list[str]]:
    """The frame's labelled objects, and the ``label_file:line`` (relative to the root) of the zero-size ones
    left out."""
    rel = _label_path(split_dir, fid)
    objs = read_label_file(root / rel)
    lines = label_line_numbers(root / rel)
    care = objs.names != "DontCare"
    dontcare = objs.bbox[~care]
    problems = box_problems(
        np.concatenate([objs.location, objs.dimensions, objs.rotation_y[:, None]], axis=1), objs.dimensions
    )
    if problems.nonfinite[care].any():  # the reader refuses these already; kept so the rule holds here too
        bad = [f"{root / rel}:{n}" for n in lines[care & problems.nonfinite]]
        raise ValueError(f"{', '.join(bad)}: non-finite location, size or rotation")
    dropped = [f"{rel}:{n}" for n in lines[care & problems.zero_size]]
    care &= ~problems.zero_size
    objs = dataclasses.replace(objs.select(care), score=None)  # a label file: no scores (also when empty)
    boxes = boxes_camera_to_lidar(objs.location, objs.dimensions, objs.rotation_y, calib).astype(np.float32)
    if len(boxes):
        from perception.ops.points_in_boxes import points_in_boxes

        _, counts = points_in_boxes(torch.from_numpy(fov_points[:, :3].copy()), torch.from_numpy(boxes))
        npts = counts.numpy()
    else:
        npts = np.zeros(0, np.int64)
    annos = KittiAnnotations(
        objects=objs,
        boxes_lidar=boxes.reshape(-1, 7),
        difficulty=difficulty(objs.bbox, objs.occluded, objs.truncated),
        num_points_in_gt=npts.astype(np.int64),
        dontcare_bbox=dontcare.reshape(-1, 4),
    )
    return annos, dropped


def make_kitti_info(
    root: str | os.PathLike[str], split_dir: str, frame_id: str, with_labels: bool
) -> tuple[KittiInfo, np.ndarray, list[str]]:
    """Build the info of one frame.

    Returns:
        The info; the frame's finite scan, float32 ``(N, 4)`` (for the GT database); the ``label_file:line``
        (relative to ``root``) of the zero-size objects left out of the info.

    Raises:
        FileNotFoundError / ValueError: a missing or malformed velodyne, calib, image or label file (named).
    """
    root = Path(root)
    lidar = f"{split_dir}/velodyne/{frame_id}.bin"
    image = f"{split_dir}/image_2/{frame_id}.png"
    points = load_scan(root / lidar, KITTI_CHANNELS)
    calib = read_calib_file(root / split_dir / "calib" / f"{frame_id}.txt")
    if not (root / image).is_file():
        raise FileNotFoundError(f"KITTI image not found: {root / image} (needed for the image size and FOV)")
    with Image.open(root / image) as im:
        width, height = im.size
    annos, dropped = None, []
    if with_labels:
        fov = points[calib.in_image(points[:, :3], (height, width))]
        annos, dropped = _annotations(root, split_dir, frame_id, calib, fov)
    info = KittiInfo(frame_id, split_dir, lidar, image, (height, width), calib, annos)
    return info, points, dropped


def _frame_inputs(split_dir: str, frame_id: str, with_labels: bool) -> SampleInputs:
    """The files :func:`make_kitti_info` reads for a frame: label and calib by content, image and scan by size
    and mtime."""
    calib = f"{split_dir}/calib/{frame_id}.txt"
    return SampleInputs(
        content=(_label_path(split_dir, frame_id), calib) if with_labels else (calib,),
        stat=(f"{split_dir}/image_2/{frame_id}.png", f"{split_dir}/velodyne/{frame_id}.bin"),
    )


def _frame_task(
    root: str, split_dir: str, with_labels: bool, db_dir: str | None, frame_id: str
) -> dict[str, Any]:
    inputs = _frame_inputs(split_dir, frame_id, with_labels)
    digest = inputs_digest(Path(root), inputs)  # before reading: an edit made meanwhile is seen next run
    info, points, dropped = make_kitti_info(root, split_dir, frame_id, with_labels)
    entries: list[GTDatabaseEntry] = []
    if db_dir is not None and info.annos is not None:
        a = info.annos
        crops = crop_box_points(points, a.boxes_lidar)
        objects = [
            GTObject(str(a.names[k]), a.boxes_lidar[k].copy(), crops[k], int(a.difficulty[k]), frame_id)
            for k in range(len(a))
        ]
        entries = write_sample_objects(db_dir, frame_id, objects)
    return task_result(info.to_dict(), entries, inputs=inputs, digest=digest, dropped=dropped)


def infos_path(root: str | os.PathLike[str], split: str) -> Path:
    """Where :func:`create_kitti_infos` writes the infos of ``split``."""
    return Path(root) / f"kitti_infos_{split}.pkl"


def create_kitti_infos(
    root: str | os.PathLike[str], *, workers: int = 0, progress: bool = True, with_gt_database: bool = True
) -> dict[str, SplitStats]:
    """Write ``kitti_infos_<split>.pkl`` (train, val, and test when ``ImageSets/test.txt`` exists) and the GT
    database of the train split inside ``root``; resumable (see :mod:`perception.datasets.prep_runner`), and a
    frame whose files changed is computed again.

    Returns:
        ``{split: SplitStats}`` (which frames were computed now, which reused from an earlier run, which of the
        computed ones had changed inputs, and the zero-size boxes dropped).
    """
    root = Path(root).resolve()
    splits = [
        s for s in ("train", "val", "test") if s != "test" or (root / "ImageSets" / "test.txt").is_file()
    ]
    db_dir = root / GT_DATABASE_DIR
    stats: dict[str, SplitStats] = {}
    for split in splits:
        ids = read_image_set(root, split)
        split_dir = _SPLIT_DIR[split]
        with_db = with_gt_database and split == "train"
        key = fingerprint(
            {"kind": "kitti", "v": FORMAT_VERSION, "cache": _CACHE_VERSION, "split": split, "db": with_db}
        )
        task = partial(_frame_task, str(root), split_dir, split != "test", str(db_dir) if with_db else None)
        stats[split] = build_split(
            ids,
            task,
            root / ".perception_cache" / f"kitti_{split}_{key}",
            root=root,
            info_path=infos_path(root, split),
            header={"format": _FORMAT, "format_version": FORMAT_VERSION, "split": split},
            db_dir=db_dir if with_db else None,
            point_channels=KITTI_POINT_CHANNELS,
            key_kind="frame",
            dropped_what=f"label lines (under {root})",
            workers=workers,
            progress=progress,
            desc=f"KITTI {split}",
        )
    return stats


#: The keys of an info record's ``"calib"`` (:meth:`KittiInfo.to_dict`).
_CALIB_FIELDS = ("P", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo")
#: The keys of an info record's ``"annos"`` (:meth:`KittiAnnotations.to_dict`).
_ANNOS_FIELDS = _LABEL_FIELDS + tuple(f.name for f in fields(KittiAnnotations) if f.name != "objects")


def _info_from_record(record: Any, where: str) -> KittiInfo:
    """One info record -> :class:`KittiInfo`; ``ValueError`` naming ``where`` and the field if it is malformed."""
    d = check_fields(record, [f.name for f in fields(KittiInfo)], where)
    check_fields(d["calib"], _CALIB_FIELDS, f"{where}: calib")
    if d["annos"] is not None:
        check_fields(d["annos"], _ANNOS_FIELDS, f"{where}: annos")
    try:
        return KittiInfo.from_dict(dict(d))
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"{where}: malformed record ({type(e).__name__}: {e})") from None


def load_kitti_infos(path: str | os.PathLike[str]) -> list[KittiInfo]:
    """Read an info file written by :func:`create_kitti_infos`.

    Raises:
        ValueError: not such a file, another format version, or a record with a missing / unknown / malformed
            field (names the file, the record index and frame, and the field).
    """
    data = safe_pickle_load(path)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a KITTI info file of this project (expected format {_FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: info format version {data.get('format_version')!r}, this code reads {FORMAT_VERSION}; "
            "re-run tools/create_data.py kitti"
        )
    if not isinstance(data.get("infos"), list):
        raise ValueError(f"{path}: the header has no 'infos' list; re-run tools/create_data.py kitti")
    out = []
    for i, record in enumerate(data["infos"]):
        fid = record.get("frame_id") if isinstance(record, dict) else None
        out.append(_info_from_record(record, f"{path}: infos[{i}]" + (f" (frame {fid!r})" if fid else "")))
    return out
