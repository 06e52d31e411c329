"""Checking the records of an info file before they are turned into typed objects.

The info loaders (:func:`perception.formats.nuscenes_infos.load_nuscenes_infos`,
:func:`perception.datasets.kitti_infos.load_kitti_infos`) read plain dicts; a record that lacks a field or has an
unknown one (a damaged file, or one written by other code under the same header) must be refused with a message
naming the file, the record and the field, not end in the dataclass constructor's ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["check_fields"]


def check_fields(record: Any, fields: Collection[str], where: str) -> Mapping[str, Any]:
    """``record`` if it is a dict with exactly the keys ``fields``.

    Args:
        record: one record as loaded.
        fields: the field names the record must have (no more, no fewer).
        where: names the record in the error (file and record index / token).

    Raises:
        ValueError: not a dict, or missing / unknown fields (all of them named).
    """
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a record (dict), got {type(record).__name__}")
    missing = [f for f in fields if f not in record]
    unknown = sorted(str(k) for k in record if k not in fields)
    problems = []
    if missing:
        problems.append(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    if unknown:
        problems.append(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}")
    if problems:
        raise ValueError(f"{where}: {'; '.join(problems)}")
    return record
