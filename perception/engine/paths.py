"""Where a run writes: ``<output_root>/<config-stem>/<extra-tag>/`` (DESIGN.md, "Tools and outputs")."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["run_dir_for"]


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
