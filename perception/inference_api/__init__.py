"""Run a checkpoint on one's own point clouds (see :mod:`.detector`): :func:`load_detector`, :class:`Detector`,
:class:`Sweep`, :class:`Result`; the column mapping in :mod:`.columns`; the per-frame files of ``tools/infer.py``
in :mod:`.outputs`. Names are re-exported lazily (see :mod:`perception._lazy`)."""

from perception._lazy import lazy_exports

_EXPORTS = {
    "Detector": "detector",
    "Result": "detector",
    "Sweep": "detector",
    "load_detector": "detector",
    "map_columns": "columns",
    "model_point_channels": "columns",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
