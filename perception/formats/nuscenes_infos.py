"""nuScenes info records: the per-keyframe record, its info file (naming, format, reader) and how a record is
built from the official devkit. ``tools/create_data.py nuscenes`` (:func:`perception.datasets.nuscenes_infos.
create_nuscenes_infos`) writes the files; the dataset (:class:`perception.datasets.nuscenes.NuScenesDataset`) and
the demo read them.

Files inside the dataroot, for ``version`` (``v1.0-mini``: splits ``mini_train`` / ``mini_val``;
``v1.0-trainval``: ``train`` / ``val``, the devkit's ``create_splits_scenes`` lists) and ``N = max_sweeps``:
``nuscenes_infos_<version>_<N>sweeps_<train|val>.pkl`` (:func:`infos_path`) and the train split's GT database
``nuscenes_gt_database_<version>_<N>sweeps/`` (:func:`gt_database_dir`).

Info file format (format version :data:`FORMAT_VERSION`): a pickle (protocol 4) of a plain dict
``{"format": INFO_FORMAT, "format_version": 1, "version", "split", "max_sweeps", "infos": [NuScenesInfo.to_dict()]}``
holding only builtins and numpy arrays; read it with :func:`load_nuscenes_infos`, which refuses a record with a
missing or unknown field (``ValueError`` naming the file, the record and the field). File paths are relative to
the dataroot. Transforms are float64 ``(4, 4)``.

Bad annotation boxes (the rule of :mod:`perception.formats.box_checks`), checked by :func:`make_nuscenes_info`
before the devkit builds its boxes: a NaN / inf translation, size or rotation is refused (``ValueError`` naming
the annotation token, its sample and the table file); a size ``<= 0`` is left out of the record and its token
returned, for the caller's warning.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes import NuScenes
from nuscenes.eval.detection.utils import category_to_detection_name
from pyquaternion import Quaternion

from .box_checks import box_problems, name_some
from .info_pickle import safe_pickle_load
from .info_records import check_fields
from .nuscenes_boxes import boxes_from_devkit
from .nuscenes_names import CAMERA_ORDER

__all__ = [
    "FORMAT_VERSION",
    "IGNORE",
    "INFO_FORMAT",
    "CameraInfo",
    "NuScenesInfo",
    "SweepInfo",
    "gt_database_dir",
    "infos_path",
    "load_nuscenes_infos",
    "make_nuscenes_info",
    "split_names",
]

FORMAT_VERSION = 1
#: The ``"format"`` tag of an info file.
INFO_FORMAT = "perception.nuscenes_infos"
#: ``gt_names`` entry of an annotation whose category is not one of the ten detection classes.
IGNORE = "ignore"


@dataclass
class SweepInfo:
    """An earlier LiDAR sweep: ``path`` (relative), ``sensor_to_lidar`` float64 ``(4, 4)`` mapping the sweep's
    sensor frame into the keyframe's LiDAR frame, ``time_lag`` seconds before the keyframe (>= 0)."""

    token: str
    path: str
    sensor_to_lidar: np.ndarray
    time_lag: float


@dataclass
class CameraInfo:
    """One camera image of the keyframe: ``intrinsics`` float64 ``(3, 3)``, ``cam_to_lidar`` float64 ``(4, 4)``
    (camera frame at the image's timestamp -> keyframe LiDAR frame), ``image_size`` ``(height, width)``."""

    name: str
    token: str
    path: str
    intrinsics: np.ndarray
    cam_to_lidar: np.ndarray
    image_size: tuple[int, int]


@dataclass
class NuScenesInfo:
    """One keyframe.

    Attributes:
        token, scene_name, timestamp: sample token, its scene's name, microseconds.
        lidar_token, lidar_path: the keyframe ``LIDAR_TOP`` sample_data and its file (relative).
        lidar_to_ego, ego_to_global: float64 ``(4, 4)`` poses at the keyframe (for evaluation in the global frame).
        sweeps: up to ``max_sweeps - 1`` earlier sweeps, newest first.
        cameras: the cameras present, in :data:`CAMERA_ORDER`.
        gt_boxes: float32 ``(K, 9)`` ``[x, y, z, dx, dy, dz, yaw, vx, vy]`` in the keyframe LiDAR frame (m, rad,
            m/s); velocities the devkit cannot estimate are 0 (see ``velocity_valid``).
        gt_names: str ``(K,)`` detection class (devkit mapping) or ``"ignore"`` for other categories.
        velocity_valid: bool ``(K,)``; num_lidar_pts, num_radar_pts: int64 ``(K,)`` from the annotations;
        valid_flag: bool ``(K,)`` ``num_lidar_pts + num_radar_pts > 0``; annotation_tokens: str ``(K,)``.
    """

    token: str
    scene_name: str
    timestamp: int
    lidar_token: str
    lidar_path: str
    lidar_to_ego: np.ndarray
    ego_to_global: np.ndarray
    sweeps: list[SweepInfo]
    cameras: list[CameraInfo]
    gt_boxes: np.ndarray
    gt_names: np.ndarray
    velocity_valid: np.ndarray
    num_lidar_pts: np.ndarray
    num_radar_pts: np.ndarray
    valid_flag: np.ndarray
    annotation_tokens: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of builtins and numpy arrays (what the info file stores)."""
        d = asdict(self)
        for cam in d["cameras"]:
            cam["image_size"] = list(cam["image_size"])
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> NuScenesInfo:
        d = dict(d)
        d["sweeps"] = [SweepInfo(**s) for s in d["sweeps"]]
        d["cameras"] = [CameraInfo(**{**c, "image_size": tuple(c["image_size"])}) for c in d["cameras"]]
        return NuScenesInfo(**d)


def _pose(rec: dict[str, Any]) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = Quaternion(rec["rotation"]).rotation_matrix
    t[:3, 3] = rec["translation"]
    return t


def _sensor_to_global(nusc: NuScenes, sd: dict[str, Any]) -> np.ndarray:
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    return _pose(nusc.get("ego_pose", sd["ego_pose_token"])) @ _pose(cs)


def _checked_annotations(nusc: NuScenes, sample: dict[str, Any]) -> list[str]:
    """The tokens of the sample's zero-size annotations; ``ValueError`` naming the non-finite ones."""
    anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
    if not anns:
        return []
    values = np.asarray([[*a["translation"], *a["size"], *a["rotation"]] for a in anns], dtype=np.float64)
    problems = box_problems(values, np.asarray([a["size"] for a in anns], dtype=np.float64))
    if problems.nonfinite.any():
        bad = [anns[i] for i in np.flatnonzero(problems.nonfinite)]
        a = bad[0]
        more = f"; also {name_some([b['token'] for b in bad[1:]])}" if len(bad) > 1 else ""
        raise ValueError(
            f"{Path(nusc.table_root) / 'sample_annotation.json'}: annotation {a['token']} (sample "
            f"{sample['token']}) has a non-finite translation {a['translation']}, size {a['size']} or rotation "
            f"{a['rotation']}{more}; fix or remove it"
        )
    return [anns[i]["token"] for i in np.flatnonzero(problems.zero_size)]


def make_nuscenes_info(nusc: NuScenes, sample_token: str, max_sweeps: int) -> tuple[NuScenesInfo, list[str]]:
    """Build the info of one keyframe through the devkit (``max_sweeps`` counts the keyframe).

    Returns:
        The info, and the tokens of the sample's zero-size annotations, which the info leaves out.

    Raises:
        ValueError: an annotation of the sample has a NaN / inf translation, size or rotation (token named).
    """
    sample = nusc.get("sample", sample_token)
    zero_size = _checked_annotations(nusc, sample)
    lidar_sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    cs = nusc.get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", lidar_sd["ego_pose_token"])
    lidar_to_ego, ego_to_global = _pose(cs), _pose(pose)
    global_to_lidar = np.linalg.inv(ego_to_global @ lidar_to_ego)

    sweeps = []
    sd = lidar_sd
    while len(sweeps) < max_sweeps - 1 and sd["prev"]:
        sd = nusc.get("sample_data", sd["prev"])
        sweeps.append(
            SweepInfo(
                token=sd["token"],
                path=sd["filename"],
                sensor_to_lidar=global_to_lidar @ _sensor_to_global(nusc, sd),
                time_lag=(lidar_sd["timestamp"] - sd["timestamp"]) * 1e-6,
            )
        )
    cameras = []
    for name in CAMERA_ORDER:
        if name not in sample["data"]:
            continue
        csd = nusc.get("sample_data", sample["data"][name])
        ccs = nusc.get("calibrated_sensor", csd["calibrated_sensor_token"])
        cameras.append(
            CameraInfo(
                name=name,
                token=csd["token"],
                path=csd["filename"],
                intrinsics=np.asarray(ccs["camera_intrinsic"], dtype=np.float64).reshape(3, 3),
                cam_to_lidar=global_to_lidar @ _sensor_to_global(nusc, csd),
                image_size=(int(csd["height"]), int(csd["width"])),
            )
        )

    _, all_boxes, _ = nusc.get_sample_data(lidar_sd["token"])
    skip = set(zero_size)
    boxes = [b for b in all_boxes if b.token not in skip]
    to_lidar_rot = Quaternion(cs["rotation"]).inverse * Quaternion(pose["rotation"]).inverse
    valid_v, names, n_lidar, n_radar = [], [], [], []
    for box in boxes:
        v = nusc.box_velocity(box.token)
        valid_v.append(bool(np.isfinite(v[:2]).all()))
        box.velocity = to_lidar_rot.rotate(np.where(np.isfinite(v), v, 0.0))
        names.append(category_to_detection_name(box.name) or IGNORE)
        ann = nusc.get("sample_annotation", box.token)
        n_lidar.append(int(ann["num_lidar_pts"]))
        n_radar.append(int(ann["num_radar_pts"]))
    n_l, n_r = np.asarray(n_lidar, np.int64), np.asarray(n_radar, np.int64)
    scene = nusc.get("scene", sample["scene_token"])
    info = NuScenesInfo(
        token=sample_token,
        scene_name=scene["name"],
        timestamp=int(sample["timestamp"]),
        lidar_token=lidar_sd["token"],
        lidar_path=lidar_sd["filename"],
        lidar_to_ego=lidar_to_ego,
        ego_to_global=ego_to_global,
        sweeps=sweeps,
        cameras=cameras,
        gt_boxes=boxes_from_devkit(boxes).tensor.numpy().reshape(-1, 9),
        gt_names=np.asarray(names, dtype=str).reshape(-1),
        velocity_valid=np.asarray(valid_v, dtype=bool).reshape(-1),
        num_lidar_pts=n_l,
        num_radar_pts=n_r,
        valid_flag=(n_l + n_r) > 0,
        annotation_tokens=np.asarray([b.token for b in boxes], dtype=str).reshape(-1),
    )
    return info, zero_size


def split_names(version: str) -> tuple[str, str]:
    """The devkit's (train, val) split names of ``version``."""
    if version == "v1.0-mini":
        return "mini_train", "mini_val"
    if version == "v1.0-trainval":
        return "train", "val"
    raise ValueError(f"version must be 'v1.0-mini' or 'v1.0-trainval', got {version!r}")


def infos_path(root: str | os.PathLike[str], version: str, max_sweeps: int, split: str) -> Path:
    """Info file of ``split`` (``"train"`` or ``"val"``) written by :func:`create_nuscenes_infos`."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    return Path(root) / f"nuscenes_infos_{version}_{max_sweeps}sweeps_{split}.pkl"


def gt_database_dir(
    root: str | os.PathLike[str], version: str, max_sweeps: int, sweep_stride: int = 1
) -> Path:
    """GT database folder of :func:`create_nuscenes_infos`: objects cut from clouds of ``max_sweeps`` scans
    (keyframe included) picked at ``sweep_stride`` (``..._<N>sweeps``, with ``_stride<S>`` when S > 1)."""
    stride = f"_stride{sweep_stride}" if sweep_stride != 1 else ""
    return Path(root) / f"nuscenes_gt_database_{version}_{max_sweeps}sweeps{stride}"


_INFO_FIELDS = tuple(f.name for f in fields(NuScenesInfo))
_SWEEP_FIELDS = tuple(f.name for f in fields(SweepInfo))
_CAMERA_FIELDS = tuple(f.name for f in fields(CameraInfo))


def _info_from_record(record: Any, where: str) -> NuScenesInfo:
    """One info record -> :class:`NuScenesInfo`; ``ValueError`` naming ``where`` and the field if malformed."""
    d = check_fields(record, _INFO_FIELDS, where)
    for name, names in (("sweeps", _SWEEP_FIELDS), ("cameras", _CAMERA_FIELDS)):
        if not isinstance(d[name], list):
            raise ValueError(f"{where}: {name} must be a list, got {type(d[name]).__name__}")
        for j, sub in enumerate(d[name]):
            check_fields(sub, names, f"{where}: {name}[{j}]")
    try:
        return NuScenesInfo.from_dict(dict(d))
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"{where}: malformed record ({type(e).__name__}: {e})") from None


def load_nuscenes_infos(path: str | os.PathLike[str]) -> tuple[list[NuScenesInfo], int]:
    """Read an info file of :func:`perception.datasets.nuscenes_infos.create_nuscenes_infos`: the infos and the
    ``max_sweeps`` they were built with.

    Raises:
        ValueError: not such a file, another format version, a header without ``infos`` / ``max_sweeps``, or a
            record with a missing / unknown / malformed field (names the file, the record index and sample token,
            and the field).
    """
    data = safe_pickle_load(path)
    if not isinstance(data, dict) or data.get("format") != INFO_FORMAT:
        raise ValueError(
            f"{path}: not a nuScenes info file of this project (expected format {INFO_FORMAT!r})"
        )
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: info format version {data.get('format_version')!r}, this code reads {FORMAT_VERSION}; "
            "re-run tools/create_data.py nuscenes"
        )
    if not isinstance(data.get("infos"), list) or not isinstance(data.get("max_sweeps"), int | np.integer):
        raise ValueError(
            f"{path}: the header needs an 'infos' list and an int 'max_sweeps'; re-run tools/create_data.py nuscenes"
        )
    infos = []
    for i, record in enumerate(data["infos"]):
        token = record.get("token") if isinstance(record, dict) else None
        infos.append(
            _info_from_record(record, f"{path}: infos[{i}]" + (f" (sample {token})" if token else ""))
        )
    return infos, int(data["max_sweeps"])
