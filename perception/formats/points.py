"""Reading raw LiDAR scans (``.bin`` / ``.pcd.bin``) with size checks, and dropping non-finite points.

Both formats are headerless little-endian float32 records:

* KITTI ``velodyne/*.bin``: 4 values per point ``[x, y, z, reflectance]``;
* nuScenes ``LIDAR_TOP/*.pcd.bin``: 5 values per point ``[x, y, z, intensity, ring]``.

A file whose size is not a multiple of ``4 * num_channels`` bytes is truncated or of another format; reading it
raises a ``ValueError`` naming the file, its size and the expected multiple instead of silently reshaping the
bytes into garbage. An empty file is a valid scan with 0 points. Points with a NaN / inf value are dropped by
:func:`drop_nonfinite`, which logs how many it dropped (logger ``perception.formats.points``).

Point files of one's own (:func:`read_point_file`, used by ``perception.load_detector(...).detect`` and
``tools/infer.py``), by extension (:func:`point_file_kind`):

* ``.bin``: KITTI layout, columns :data:`KITTI_COLUMNS`; ``.pcd.bin``: nuScenes layout, :data:`NUSCENES_COLUMNS`
  (the ring index in column 5);
* ``.npy``: a 2-D numeric array ``(N, C)``, ``C >= 3`` (no pickles); its columns are whatever the caller says;
* ``.pcd``: the Point Cloud Library format; its ``FIELDS`` name the columns. Read by open3d (``open3d.t.io``)
  where open3d imports, else by :func:`read_pcd`'s own reader (``DATA ascii`` and ``binary``; ``binary_compressed``
  needs open3d). Fields with ``COUNT`` > 1 become ``name_0, name_1, ...``; PCL's ``_`` padding fields are left out;
  open3d also leaves out the fields it turns into attributes of its own (normals, colours).

Every reader returns float32 ``(N, C)``; non-finite points are left in (the caller drops them with
:func:`drop_nonfinite`).

:func:`sweep_to_keyframe` moves one earlier sweep into the keyframe's LiDAR frame and appends its time lag (the
nuScenes multi-sweep rule: ego-body returns removed in the sweep's own frame first).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

import numpy as np

__all__ = [
    "KITTI_CHANNELS",
    "KITTI_COLUMNS",
    "NUSCENES_CHANNELS",
    "NUSCENES_COLUMNS",
    "POINT_FILE_EXTENSIONS",
    "PointFile",
    "drop_nonfinite",
    "load_scan",
    "point_file_kind",
    "read_npy",
    "read_pcd",
    "read_point_file",
    "read_points_bin",
    "sweep_to_keyframe",
]

logger = logging.getLogger(__name__)

#: Channels stored per point in a KITTI velodyne file.
KITTI_CHANNELS = 4
#: Channels stored per point in a nuScenes LiDAR file.
NUSCENES_CHANNELS = 5
#: Column names of a KITTI velodyne ``.bin`` (reflectance is called ``intensity``, as the KITTI dataset names it).
KITTI_COLUMNS: tuple[str, ...] = ("x", "y", "z", "intensity")
#: Column names of a nuScenes ``.pcd.bin`` (column 5 is the laser ring index, not a time lag).
NUSCENES_COLUMNS: tuple[str, ...] = ("x", "y", "z", "intensity", "ring")
#: The point-file extensions :func:`read_point_file` reads, longest first (``.pcd.bin`` before ``.bin``).
POINT_FILE_EXTENSIONS: tuple[str, ...] = (".pcd.bin", ".bin", ".npy", ".pcd")
assert len(KITTI_COLUMNS) == KITTI_CHANNELS and len(NUSCENES_COLUMNS) == NUSCENES_CHANNELS


def read_points_bin(path: str | os.PathLike[str], num_channels: int) -> np.ndarray:
    """Read a headerless float32 point file.

    Args:
        path: the ``.bin`` / ``.pcd.bin`` file.
        num_channels: float32 values per point (4 for KITTI, 5 for nuScenes).

    Returns:
        float32 ``(N, num_channels)`` array (``N`` may be 0), native byte order.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: ``num_channels < 3``, or the file size is not a multiple of ``4 * num_channels`` bytes.
    """
    if not isinstance(num_channels, int) or num_channels < 3:
        raise ValueError(f"num_channels must be an int >= 3 (x, y, z, ...), got {num_channels!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LiDAR file not found: {path}")
    size = path.stat().st_size
    record = 4 * num_channels
    if size % record:
        raise ValueError(
            f"{path}: size {size} bytes is not a multiple of {record} bytes ({num_channels} float32 values per "
            f"point); the file is truncated or not a {num_channels}-channel scan"
        )
    data = np.fromfile(path, dtype="<f4")
    if data.size * 4 != size:  # the file changed between stat and read
        raise ValueError(f"{path}: read {data.size * 4} bytes but the file has {size}")
    return data.reshape(-1, num_channels).astype(np.float32, copy=False)


def drop_nonfinite(points: np.ndarray, source: str) -> tuple[np.ndarray, int]:
    """Remove points with a NaN or inf in any column; logs a warning with the count when any is dropped.

    Args:
        points: float ``(N, C)``.
        source: what the points are (file name), for the log message.

    Returns:
        the finite points ``(M, C)`` (the input itself when all are finite) and the number dropped ``N - M``.
    """
    if points.ndim != 2:
        raise ValueError(f"points must be (N, C), got shape {points.shape}")
    finite = np.isfinite(points).all(axis=1)
    dropped = int(len(points) - finite.sum())
    if dropped:
        logger.warning("%s: dropped %d of %d points with NaN/inf values", source, dropped, len(points))
        return points[finite], dropped
    return points, 0


def load_scan(path: str | os.PathLike[str], num_channels: int, keep: int | None = None) -> np.ndarray:
    """:func:`read_points_bin` then :func:`drop_nonfinite`; optionally keep the first ``keep`` columns.

    Returns:
        float32 ``(N, keep or num_channels)`` finite points.
    """
    pts = read_points_bin(path, num_channels)
    if keep is not None:
        if not 3 <= keep <= num_channels:
            raise ValueError(f"keep must be in [3, {num_channels}], got {keep}")
        pts = pts[:, :keep]
    pts, _ = drop_nonfinite(pts, str(path))
    return np.ascontiguousarray(pts)


def sweep_to_keyframe(
    points: np.ndarray, sensor_to_lidar: np.ndarray, time_lag: float, ego_radius: float
) -> np.ndarray:
    """One earlier sweep in the keyframe's LiDAR frame, with its time lag appended.

    Points with ``|x| < ego_radius`` **and** ``|y| < ego_radius`` in the sweep's own frame (the ego vehicle's
    body) are removed first; the rest are moved by ``sensor_to_lidar`` in float64.

    Args:
        points: float32 ``(M, C)`` ``[x, y, z, ...]`` (nuScenes: ``C = 4``, ``[x, y, z, intensity]``) in the
            sweep's sensor frame, finite.
        sensor_to_lidar: float ``(4, 4)`` sweep sensor frame -> keyframe LiDAR frame.
        time_lag: seconds before the keyframe (>= 0).
        ego_radius: metres (nuScenes: :data:`perception.formats.nuscenes_points.EGO_RADIUS`).

    Returns:
        float32 ``(M', C + 1)`` ``[x, y, z, ..., time_lag]``.
    """
    t = np.asarray(sensor_to_lidar, dtype=np.float64)
    if t.shape != (4, 4):
        raise ValueError(f"sensor_to_lidar must be a (4, 4) transform, got shape {t.shape}")
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"sweep points must be (M, C >= 3) [x, y, z, ...], got shape {points.shape}")
    pts = points.astype(np.float64)
    pts = pts[~((np.abs(pts[:, 0]) < ego_radius) & (np.abs(pts[:, 1]) < ego_radius))]
    pts[:, :3] = pts[:, :3] @ t[:3, :3].T + t[:3, 3]
    lag = np.full((len(pts), 1), time_lag)
    return np.concatenate([pts, lag], axis=1).astype(np.float32)


def point_file_kind(path: str | os.PathLike[str]) -> str:
    """The extension of a point file that :func:`read_point_file` knows (one of :data:`POINT_FILE_EXTENSIONS`).

    Raises:
        ValueError: another extension (the message lists the known ones).
    """
    name = Path(path).name.lower()
    for ext in POINT_FILE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    raise ValueError(f"{path}: unknown point file type; known extensions: {', '.join(POINT_FILE_EXTENSIONS)}")


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """A ``.npy`` point array as float32 ``(N, C)`` (``C >= 3``; object arrays / pickles are refused).

    Raises:
        FileNotFoundError / ValueError: missing file, not a ``.npy`` file, not 2-D numeric with >= 3 columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays, or not an .npy file
        raise ValueError(f"{path}: not a numeric .npy array ({exc})") from None
    if data.ndim != 2 or data.shape[1] < 3 or not np.issubdtype(data.dtype, np.number):
        raise ValueError(
            f"{path}: expected a numeric (N, C) array with C >= 3 (x, y, z, ...), got {data.dtype} {data.shape}"
        )
    return np.ascontiguousarray(data, dtype=np.float32)


_PCD_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4", ("I", 8): "<i8",
              ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4", ("U", 8): "<u8"}  # fmt: skip
PcdBackend = Literal["auto", "open3d", "builtin"]


@dataclass(frozen=True)
class _PcdHeader:
    fields: tuple[str, ...]  # one per column (COUNT > 1 expanded)
    dtype: np.dtype  # one record of a binary file
    points: int
    data: str
    offset: int  # bytes before the data


def _pcd_header(path: Path, raw: bytes) -> _PcdHeader:
    keys: dict[str, list[str]] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise ValueError(f"{path}: PCD header has no DATA line")
        line = raw[pos:end].decode("ascii", errors="replace").strip()
        pos = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        keys[key.upper()] = values
        if key.upper() == "DATA":
            break
    missing = [k for k in ("FIELDS", "SIZE", "TYPE", "POINTS") if k not in keys]
    if missing:
        raise ValueError(f"{path}: PCD header lacks {missing}")
    names, sizes, types = keys["FIELDS"], keys["SIZE"], keys["TYPE"]
    counts = keys.get("COUNT", ["1"] * len(names))
    if not len(names) == len(sizes) == len(types) == len(counts):
        raise ValueError(f"{path}: PCD header FIELDS / SIZE / TYPE / COUNT differ in length")
    fields: list[str] = []
    record: list[tuple[str, str]] = []
    for name, size, typ, count in zip(names, sizes, types, counts, strict=True):
        code = _PCD_TYPES.get((typ.upper(), int(size)))
        if code is None:
            raise ValueError(f"{path}: PCD field {name!r} has an unknown TYPE {typ} SIZE {size}")
        n = int(count)
        sub = [name] if n == 1 else [f"{name}_{i}" for i in range(n)]
        fields += sub
        record += [(f, code) for f in sub]
    data = keys["DATA"][0].lower() if keys["DATA"] else ""
    return _PcdHeader(tuple(fields), np.dtype(record), int(keys["POINTS"][0]), data, pos)


def _open3d() -> ModuleType | None:
    try:
        import open3d
    except (ImportError, OSError) as exc:  # OSError: a shared library (libusb) is missing
        logger.debug("open3d cannot import (%s): reading .pcd files with the built-in reader", exc)
        return None
    return open3d


def read_pcd(
    path: str | os.PathLike[str], *, backend: PcdBackend = "auto"
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Read a ``.pcd`` file: float32 ``(N, C)`` points and the ``C`` column names (``x, y, z`` first).

    Args:
        backend: ``"open3d"`` (``open3d.t.io.read_point_cloud``), ``"builtin"`` (``DATA ascii`` / ``binary``) or
            ``"auto"``: open3d where it imports, else the built-in reader.

    Raises:
        FileNotFoundError / ValueError: missing file; a header without ``x, y, z`` fields or with unknown types;
            a data block of the wrong size; ``binary_compressed`` without open3d.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point file not found: {path}")
    raw = path.read_bytes()
    header = _pcd_header(path, raw)
    columns = tuple(f for f in header.fields if f != "_")
    if not {"x", "y", "z"} <= set(columns):
        raise ValueError(f"{path}: PCD FIELDS {list(header.fields)} lack x, y, z")
    order = ("x", "y", "z", *(c for c in columns if c not in ("x", "y", "z")))
    o3d = _open3d() if backend != "builtin" else None
    if backend == "open3d" and o3d is None:
        raise ValueError(f"{path}: backend='open3d' but open3d cannot be imported here")
    if o3d is not None:
        cloud = o3d.t.io.read_point_cloud(str(path))
        xyz = cloud.point["positions"].numpy().astype(np.float32).reshape(-1, 3)
        extra = [c for c in order[3:] if c in cloud.point]
        cols = [xyz, *(cloud.point[c].numpy().astype(np.float32).reshape(len(xyz), -1)[:, :1] for c in extra)]
        return np.ascontiguousarray(np.concatenate(cols, axis=1)), ("x", "y", "z", *extra)
    body = raw[header.offset :]
    if header.data == "ascii":
        text = body.decode("ascii", errors="replace")
        values = np.loadtxt(text.splitlines(), dtype=np.float64, ndmin=2) if text.strip() else None
        table = np.zeros((0, len(header.fields))) if values is None else values
        if table.shape != (header.points, len(header.fields)):
            raise ValueError(
                f"{path}: PCD ascii data is {table.shape[0]} x {table.shape[1]} values, the header says "
                f"{header.points} points of {len(header.fields)} fields"
            )
        cols_by_name = {f: table[:, i] for i, f in enumerate(header.fields)}
    elif header.data == "binary":
        need = header.points * header.dtype.itemsize
        if len(body) < need:
            raise ValueError(
                f"{path}: PCD binary data has {len(body)} bytes, {header.points} points need {need}"
            )
        records = np.frombuffer(body[:need], dtype=header.dtype, count=header.points)
        cols_by_name = {f: records[f] for f in header.fields}
    else:
        raise ValueError(
            f"{path}: PCD 'DATA {header.data}' needs open3d, which cannot be imported here (the built-in reader "
            "reads ascii and binary)"
        )
    table = np.stack([np.asarray(cols_by_name[c], dtype=np.float32) for c in order], axis=1)
    return np.ascontiguousarray(table.reshape(-1, len(order))), order


@dataclass(frozen=True)
class PointFile:
    """A point file as read by :func:`read_point_file`.

    Attributes:
        points: float32 ``(N, C)``, non-finite values left in.
        columns: the ``C`` column names the file itself states (``.bin``, ``.pcd.bin``, ``.pcd``), or None
            (``.npy``: the caller must say).
        kind: the extension (:func:`point_file_kind`).
    """

    points: np.ndarray
    columns: tuple[str, ...] | None
    kind: str


def read_point_file(path: str | os.PathLike[str]) -> PointFile:
    """Read a ``.bin`` / ``.pcd.bin`` / ``.npy`` / ``.pcd`` point file (see the module docstring).

    Raises:
        FileNotFoundError / ValueError: as the reader of that kind does (naming the file).
    """
    kind = point_file_kind(path)
    if kind == ".bin":
        return PointFile(read_points_bin(path, KITTI_CHANNELS), KITTI_COLUMNS, kind)
    if kind == ".pcd.bin":
        return PointFile(read_points_bin(path, NUSCENES_CHANNELS), NUSCENES_COLUMNS, kind)
    if kind == ".npy":
        return PointFile(read_npy(path), None, kind)
    points, columns = read_pcd(path)
    return PointFile(points, columns, kind)
