"""Where a run writes: ``<output_root>/<config-stem>/<extra-tag>/`` (DESIGN.md, "Tools and outputs"), and the
names of its evaluation result folders.

A result folder is named after the **content** of what was scored, not only its file name: every run names its
checkpoints ``checkpoint_epoch_N.pth`` and every ``--save-dets`` writes ``detections.pth``, so two runs' files of
the same name would otherwise share (and overwrite) one folder. :func:`result_name` gives
``<stem>-<first 8 hex digits of the SHA-256 of the file>`` (``epoch_5-1a2b3c4d``), and :func:`claim_result_dir`
records the file's identity (path, size, SHA-256) in a JSON file in that folder and refuses a folder that already
holds another file's results.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["HASH_CHARS", "FileIdentity", "claim_result_dir", "result_name", "run_dir_for"]

#: Hex digits of the SHA-256 in a result folder's name.
HASH_CHARS = 8
_CHUNK = 1 << 22


def run_dir_for(
    config_path: str | os.PathLike[str], output_root: str | os.PathLike[str], extra_tag: str
) -> Path:
    """``<output_root>/<stem of config_path>/<extra_tag>``.

    Raises:
        ValueError: ``extra_tag`` is empty or not a plain folder name (contains a path separator, ``.``, ``..``).
    """
    if not extra_tag or "/" in extra_tag or os.sep in extra_tag or extra_tag in (".", ".."):
        raise ValueError(f"--extra-tag must be a plain folder name, got {extra_tag!r}")
    return Path(output_root) / Path(config_path).stem / extra_tag


@dataclass(frozen=True)
class FileIdentity:
    """A file as scored: absolute ``path``, ``size`` in bytes, ``sha256`` (64 hex digits) of its bytes."""

    path: Path
    size: int
    sha256: str

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileIdentity:
        """Hash the file ``path`` (read in 4 MiB chunks).

        Raises:
            FileNotFoundError: no such file.
        """
        path = Path(path).absolute()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
        return cls(path, size, digest.hexdigest())

    def to_json(self) -> dict[str, str | int]:
        return {"path": str(self.path), "size": self.size, "sha256": self.sha256}


def result_name(ident: FileIdentity) -> str:
    """``<file stem without "checkpoint_">-<HASH_CHARS hex digits of its SHA-256>``, e.g. ``epoch_5-1a2b3c4d``."""
    return f"{ident.path.stem.removeprefix('checkpoint_')}-{ident.sha256[:HASH_CHARS]}"


def claim_result_dir(out_dir: str | os.PathLike[str], ident: FileIdentity, record: str) -> Path:
    """Create ``out_dir`` for the results of ``ident`` and write ``out_dir/record`` (``path``, ``size``,
    ``sha256``; the path is updated when the same content is scored from elsewhere).

    Raises:
        ValueError: ``out_dir/record`` names a file of other content (its SHA-256 shares the folder name's
            prefix): the results of two files never share a folder.
    """
    out = Path(out_dir)
    path = out / record
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8")).get("sha256")
        except (ValueError, AttributeError):
            old = None
        if old != ident.sha256:
            raise ValueError(
                f"{out} holds the results of another file ({path}: sha256 {old}), not of {ident.path} "
                f"(sha256 {ident.sha256}); move that folder away to score this file"
            )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ident.to_json(), indent=1) + "\n", encoding="utf-8")
    return out
