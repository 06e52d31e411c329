"""Reading the project's info / part pickles safely: builtins and numpy arrays only.

Info files (:mod:`perception.formats.nuscenes_infos`, :mod:`perception.datasets.kitti_infos`) and the
resumable part files of :mod:`perception.datasets.prep_runner` are pickles (protocol 4, written atomically by
:func:`perception.io_atomic.atomic_pickle_dump`) of plain dicts of builtins and numpy arrays. :func:`safe_pickle_load`
resolves only the numpy globals an array needs, so a tampered file cannot execute code when it is loaded.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

__all__ = ["safe_pickle_load"]


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals an array needs; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only numpy arrays and builtins allowed"
        )


def safe_pickle_load(path: str | os.PathLike[str]) -> Any:
    """Load a pickle written by :func:`atomic_pickle_dump` that holds only builtins and numpy arrays.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not such a pickle (names the file).
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return _SafeUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid info/part pickle ({e})") from None
