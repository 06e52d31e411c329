"""Ground-truth object database for GT sampling ("copy-paste" augmentation): file format, writer and reader.

Layout inside ``db_dir`` (all paths in the index are relative to ``db_dir``, POSIX separators)::

    index.json                            format version, point channels, one record per object
    objects/<sample_token>/0000_car.bin    float32 (n, C) points of one object, xyz relative to its box centre
    objects/<sample_token>/manifest.json   the sample's records, written last (its presence = sample complete)

A ``.bin`` file is the object's points as raw little-endian float32, row-major ``(n, C)``; its size must be
exactly ``n * C * 4`` bytes where ``C = len(point_channels)`` of the index. Boxes are stored in the source
sample's LiDAR frame (``[x, y, z, dx, dy, dz, yaw]`` or with ``[vx, vy]``); the point ``xyz`` are relative to
the box centre (not rotated), so pasting an object at its original position adds the box centre back.

Writing is crash safe and parallel safe: every file is written with :mod:`perception.io_atomic` (a temporary
file in the same directory, fsynced and renamed over the target), so a reader never sees a partial file.
:func:`write_sample_objects` writes only inside ``objects/<sample_token>/``, so worker processes handling
different samples never touch the same file; rewriting a sample gives the same files (and removes files a
previous run left that the new run does not write). :func:`read_sample_entries` lets an interrupted run skip
samples that are already complete.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from perception.io_atomic import atomic_json_dump, atomic_write_bytes, fsync_dir

__all__ = [
    "FORMAT_VERSION",
    "INDEX_NAME",
    "GTObject",
    "GTDatabaseEntry",
    "GTDatabase",
    "write_sample_objects",
    "read_sample_entries",
    "write_index",
    "index_format_version",
]

#: Version of the on-disk format; readers refuse other versions (and the info builders rebuild the samples of
#: another version). 2: multi-sweep objects are cut by the box moved along its velocity to each point's time
#: (:mod:`perception.datasets.box_motion`); 1 cut every sweep by the keyframe box.
FORMAT_VERSION = 2
#: File name of the index inside ``db_dir``.
INDEX_NAME = "index.json"
_OBJECTS = "objects"
_MANIFEST = "manifest.json"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-][A-Za-z0-9_.\-]*$")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.\-]")


def _check_box(name: str, box: Any) -> tuple[float, ...]:
    if not isinstance(box, np.ndarray) or box.dtype != np.float32:
        raise TypeError(f"{name} must be a float32 numpy array (7,) or (9,), got {_describe(box)}")
    if box.shape not in ((7,), (9,)):
        raise ValueError(
            f"{name} must have shape (7,) [x,y,z,dx,dy,dz,yaw] or (9,) with [vx,vy], got {box.shape}"
        )
    if not np.isfinite(box).all():
        raise ValueError(f"{name} contains NaN or inf: {box.tolist()}")
    if (box[3:6] < 0).any():
        raise ValueError(f"{name} has a negative size (dx, dy, dz must be >= 0): {box.tolist()}")
    return tuple(float(v) for v in box)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray {value.dtype} {value.shape}"
    return type(value).__name__


def _check_token(sample_token: Any) -> str:
    if not isinstance(sample_token, str) or not _TOKEN_RE.match(sample_token):
        raise ValueError(
            "sample_token must be a non-empty string of letters, digits, '_', '-', '.' not starting with '.' "
            f"(it names a directory), got {sample_token!r}"
        )
    return sample_token


@dataclass(frozen=True, eq=False)
class GTObject:
    """One ground-truth object: its box and the points inside it.

    Attributes:
        class_name: the dataset's class name (e.g. ``"car"``).
        box: float32 ``(7,)`` ``[x, y, z, dx, dy, dz, yaw]`` or ``(9,)`` with ``[vx, vy]`` in the source sample's
            LiDAR frame (m, rad, m/s).
        points: float32 ``(n, C)``, ``C >= 3``; columns as the database's ``point_channels`` with ``xyz``
            relative to the box centre (``points[:, :3] + box[:3]`` are LiDAR-frame coordinates). Finite.
        difficulty: dataset difficulty level (KITTI 0/1/2, -1 unknown; nuScenes 0).
        sample_token: token (KITTI frame id) of the sample the object was cut from.
    """

    class_name: str
    box: np.ndarray
    points: np.ndarray
    difficulty: int
    sample_token: str

    def __post_init__(self) -> None:
        if not isinstance(self.class_name, str) or not self.class_name:
            raise ValueError(f"GTObject.class_name must be a non-empty string, got {self.class_name!r}")
        _check_box("GTObject.box", self.box)
        p = self.points
        if not isinstance(p, np.ndarray) or p.dtype != np.float32:
            raise TypeError(f"GTObject.points must be a float32 numpy array (n, C), got {_describe(p)}")
        if p.ndim != 2 or p.shape[1] < 3:
            raise ValueError(f"GTObject.points must have shape (n, C>=3), got {p.shape}")
        if not np.isfinite(p).all():
            raise ValueError("GTObject.points contains NaN or inf")
        if isinstance(self.difficulty, bool) or not isinstance(self.difficulty, int | np.integer):
            raise TypeError(f"GTObject.difficulty must be an int, got {type(self.difficulty).__name__}")
        object.__setattr__(self, "difficulty", int(self.difficulty))
        if not isinstance(self.sample_token, str) or not self.sample_token:
            raise ValueError(f"GTObject.sample_token must be a non-empty string, got {self.sample_token!r}")

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])


@dataclass(frozen=True)
class GTDatabaseEntry:
    """Index record of one stored object (no points).

    Attributes:
        class_name: class name.
        box: ``(7,)`` or ``(9,)`` box values as Python floats (exact float32 values), see :class:`GTObject`.
        num_points: number of points stored in ``path``.
        difficulty: difficulty level.
        sample_token: source sample.
        path: file of the points, relative to the database directory, POSIX separators.
    """

    class_name: str
    box: tuple[float, ...]
    num_points: int
    difficulty: int
    sample_token: str
    path: str

    def box_array(self) -> np.ndarray:
        """float32 ``(7,)`` or ``(9,)``."""
        return np.asarray(self.box, dtype=np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "class_name": self.class_name,
            "box": list(self.box),
            "num_points": self.num_points,
            "difficulty": self.difficulty,
            "sample_token": self.sample_token,
            "path": self.path,
        }

    @staticmethod
    def from_json(record: Any, where: str) -> GTDatabaseEntry:
        """Parse one record; ``ValueError`` naming ``where`` (file and record number) if malformed."""
        try:
            box = tuple(float(v) for v in record["box"])
            entry = GTDatabaseEntry(
                class_name=str(record["class_name"]),
                box=box,
                num_points=int(record["num_points"]),
                difficulty=int(record["difficulty"]),
                sample_token=str(record["sample_token"]),
                path=str(record["path"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: malformed object record {record!r}: {exc}") from exc
        if len(box) not in (7, 9) or not all(math.isfinite(v) for v in box) or entry.num_points < 0:
            raise ValueError(
                f"{where}: malformed object record {record!r} (box must have 7 or 9 finite values)"
            )
        if Path(entry.path).is_absolute() or ".." in Path(entry.path).parts:
            raise ValueError(f"{where}: object path must be relative inside the database, got {entry.path!r}")
        return entry


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def write_sample_objects(
    db_dir: Path | str, sample_token: str, objects: Sequence[GTObject]
) -> list[GTDatabaseEntry]:
    """Write the objects of one sample to ``db_dir/objects/<sample_token>/`` and return their index records.

    Every ``.bin`` and the sample's ``manifest.json`` (written last) are replaced atomically. Calling it again for
    the same sample rewrites the same file names and removes ``.bin`` files of a previous run that are no longer
    produced. Safe to call from several processes at once for *different* samples.

    Args:
        db_dir: database directory (created if needed).
        sample_token: the sample's token; letters, digits, ``_ - .`` (it names a directory).
        objects: the sample's objects; each ``sample_token`` must equal ``sample_token`` and all must have the same
            number of point columns and the same box length.

    Returns:
        One :class:`GTDatabaseEntry` per object, in order.
    """
    token = _check_token(sample_token)
    objects = list(objects)
    for i, obj in enumerate(objects):
        if not isinstance(obj, GTObject):
            raise TypeError(f"objects[{i}] must be a GTObject, got {type(obj).__name__}")
        if obj.sample_token != token:
            raise ValueError(f"objects[{i}].sample_token is {obj.sample_token!r}, expected {token!r}")
    if len({o.points.shape[1] for o in objects}) > 1 or len({o.box.shape[0] for o in objects}) > 1:
        raise ValueError(f"objects of sample {token!r} must share the number of point columns and box length")
    sample_dir = Path(db_dir) / _OBJECTS / token
    sample_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, obj in enumerate(objects):
        name = f"{i:04d}_{_UNSAFE_RE.sub('_', obj.class_name)}.bin"
        atomic_write_bytes(
            sample_dir / name, np.ascontiguousarray(obj.points, dtype="<f4").tobytes(), sync_dir=False
        )
        entries.append(
            GTDatabaseEntry(
                class_name=obj.class_name,
                box=_check_box(f"objects[{i}].box", obj.box),
                num_points=obj.num_points,
                difficulty=obj.difficulty,
                sample_token=token,
                path=f"{_OBJECTS}/{token}/{name}",
            )
        )
    manifest = {
        "format_version": FORMAT_VERSION,
        "sample_token": token,
        "entries": [e.to_json() for e in entries],
    }
    atomic_json_dump(sample_dir / _MANIFEST, manifest, sync_dir=False)
    keep = {Path(e.path).name for e in entries} | {_MANIFEST}
    for (
        stale
    ) in sample_dir.iterdir():  # leftovers of an earlier run of this sample (this process owns the dir)
        if stale.name not in keep and (stale.suffix == ".bin" or stale.name.endswith(".tmp")):
            stale.unlink(missing_ok=True)
    fsync_dir(sample_dir)
    return entries


def read_sample_entries(db_dir: Path | str, sample_token: str) -> list[GTDatabaseEntry] | None:
    """The records of a sample written completely by :func:`write_sample_objects`, or None if it was not (for
    resuming an interrupted run). A manifest that exists but cannot be parsed also gives None (rewrite it)."""
    path = Path(db_dir) / _OBJECTS / _check_token(sample_token) / _MANIFEST
    try:
        data = json.loads(path.read_text())
        if data.get("format_version") != FORMAT_VERSION or data.get("sample_token") != sample_token:
            return None
        entries = [GTDatabaseEntry.from_json(r, str(path)) for r in data["entries"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not all((Path(db_dir) / e.path).is_file() for e in entries):
        return None
    return entries


def index_format_version(db_dir: Path | str) -> Any:
    """The ``format_version`` in ``db_dir``'s index (None: no readable index there), to tell a database this code
    reads (:data:`FORMAT_VERSION`) from one to build again."""
    try:
        data = json.loads((Path(db_dir) / INDEX_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("format_version") if isinstance(data, dict) else None


def write_index(
    db_dir: Path | str, entries: Sequence[GTDatabaseEntry], point_channels: Sequence[str]
) -> Path:
    """Write ``db_dir/index.json`` atomically after checking every object file exists with the right size.

    Args:
        db_dir: database directory.
        entries: records returned by :func:`write_sample_objects` (all with the same box length).
        point_channels: names of the ``C`` point columns, starting with ``x, y, z`` (e.g. the default
            ``("x", "y", "z", "intensity", "time_lag")``).

    Returns:
        Path of the index file.
    """
    db = Path(db_dir)
    channels = _check_channels(point_channels, "point_channels")
    entries = list(entries)
    dims = {len(e.box) for e in entries}
    if len(dims) > 1:
        raise ValueError(
            f"all boxes in a database must have the same length (7 or 9), got lengths {sorted(dims)}"
        )
    for e in entries:
        _check_file(db, e, len(channels))
    index = {
        "format_version": FORMAT_VERSION,
        "point_channels": list(channels),
        "box_dim": dims.pop() if dims else 7,
        "entries": [e.to_json() for e in entries],
    }
    db.mkdir(parents=True, exist_ok=True)
    path = db / INDEX_NAME
    atomic_json_dump(path, index)
    return path


def _check_channels(point_channels: Any, where: str) -> tuple[str, ...]:
    if isinstance(point_channels, str) or not all(isinstance(c, str) for c in point_channels):
        raise TypeError(f"{where} must be a sequence of channel names, got {point_channels!r}")
    channels = tuple(point_channels)
    if channels[:3] != ("x", "y", "z") or len(set(channels)) != len(channels):
        raise ValueError(f"{where} must be unique names starting with ('x', 'y', 'z'), got {channels}")
    return channels


def _check_file(db: Path, entry: GTDatabaseEntry, num_channels: int) -> Path:
    path = db / entry.path
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(
            f"GT database object file {path} is missing (listed in {db / INDEX_NAME})"
        ) from None
    expected = entry.num_points * num_channels * 4
    if size != expected:
        raise ValueError(
            f"GT database object file {path} has {size} bytes, expected {expected} "
            f"({entry.num_points} points x {num_channels} float32 channels; size must be a multiple of "
            f"{num_channels * 4})"
        )
    return path


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


class GTDatabase:
    """Read access to a database written by :func:`write_sample_objects` + :func:`write_index`.

    Attributes:
        point_channels: names of the stored point columns.
        box_dim: 7, or 9 when the boxes carry velocities.

    Args:
        db_dir: database directory containing ``index.json``.
        verify: check at construction that every object file exists with the expected size (one ``stat`` per
            object); :meth:`load` always checks the file it reads.

    Raises:
        FileNotFoundError: no index, or (``verify``) a missing object file; the message names the file.
        ValueError: unreadable / malformed index, wrong format version, or a wrong-size object file.
    """

    def __init__(self, db_dir: Path | str, *, verify: bool = True) -> None:
        self.db_dir = Path(db_dir)
        path = self.db_dir / INDEX_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"GT database index {path} not found; create the database with tools/create_data.py"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"GT database index {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
            got = data.get("format_version") if isinstance(data, dict) else None
            raise ValueError(
                f"GT database index {path} has format_version {got!r}, expected {FORMAT_VERSION}"
            )
        try:
            channels = _check_channels(data["point_channels"], f"{path}: point_channels")
            records = list(data["entries"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"GT database index {path} is malformed: missing or bad {exc}") from exc
        entries = [GTDatabaseEntry.from_json(r, f"{path} entry {i}") for i, r in enumerate(records)]
        box_dim = data.get("box_dim", 7)
        if box_dim not in (7, 9) or any(len(e.box) != box_dim for e in entries):
            raise ValueError(
                f"GT database index {path}: every box must have box_dim = {box_dim!r} (7 or 9) values"
            )
        self._init(channels, entries, box_dim)
        if verify:
            for e in entries:
                _check_file(self.db_dir, e, len(channels))

    def _init(self, channels: tuple[str, ...], entries: list[GTDatabaseEntry], box_dim: int) -> None:
        self.point_channels: tuple[str, ...] = channels
        self.box_dim = box_dim
        self._by_class: dict[str, list[GTDatabaseEntry]] = {}
        for e in entries:
            self._by_class.setdefault(e.class_name, []).append(e)
        self._boxes = {
            c: np.asarray([e.box for e in es], dtype=np.float32) for c, es in self._by_class.items()
        }

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names that have at least one object, sorted."""
        return tuple(sorted(self._by_class))

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_class.values())

    def entries(self, class_name: str) -> list[GTDatabaseEntry]:
        """Records of ``class_name`` (empty list for a class without objects)."""
        return list(self._by_class.get(class_name, ()))

    def boxes(self, class_name: str) -> np.ndarray:
        """float32 ``(n, 7|9)`` boxes of ``class_name`` in the order of :meth:`entries`."""
        return self._boxes.get(class_name, np.zeros((0, self.box_dim), dtype=np.float32))

    def load(self, entry: GTDatabaseEntry) -> GTObject:
        """Read one object's points; errors name the file if it is missing or has the wrong size."""
        path = _check_file(self.db_dir, entry, len(self.point_channels))
        raw = np.fromfile(path, dtype="<f4")
        if raw.size != entry.num_points * len(self.point_channels):  # changed since the stat
            raise ValueError(f"GT database object file {path} changed size while being read")
        points = raw.astype(np.float32, copy=False).reshape(entry.num_points, len(self.point_channels))
        return GTObject(entry.class_name, entry.box_array(), points, entry.difficulty, entry.sample_token)

    def filter(
        self,
        min_points: Mapping[str, int] | None = None,
        max_difficulty: int | None = None,
        drop_difficulties: Collection[int] = (),
    ) -> GTDatabase:
        """A database view keeping the objects that pass every criterion.

        Args:
            min_points: per class, the minimum number of points (classes not listed: no minimum).
            max_difficulty: keep ``difficulty <= max_difficulty`` (None: any).
            drop_difficulties: difficulty values to drop (e.g. ``{-1}``, KITTI objects outside easy/moderate/hard,
                as OpenPCDet's ``filter_by_difficulty`` does).
        """
        min_points = dict(min_points or {})
        for c, n in min_points.items():
            if not isinstance(n, int | np.integer) or n < 0:
                raise ValueError(f"min_points[{c!r}] must be an int >= 0, got {n!r}")
        drop = set(drop_difficulties)
        kept = [
            e
            for es in self._by_class.values()
            for e in es
            if e.num_points >= min_points.get(e.class_name, 0)
            and (max_difficulty is None or e.difficulty <= max_difficulty)
            and e.difficulty not in drop
        ]
        view = object.__new__(GTDatabase)
        view.db_dir = self.db_dir
        view._init(self.point_channels, kept, self.box_dim)
        return view
