"""The KITTI AP report in the text layout of the official devkit's Python port (as OpenPCDet and SECOND print it).

For each class and threshold set (strict, then the loose one when evaluated), two blocks of easy, moderate, hard::

    Car AP@0.70, 0.70, 0.70:
    bbox AP:90.1234, 85.4321, 80.0000
    bev  AP:...
    3d   AP:...
    aos  AP:89.95, 85.10, 79.80
    Car AP_R40@0.70, 0.70, 0.70:
    bbox AP:...

The three numbers after ``AP@`` are the IoU thresholds of the image (bbox), BEV and 3D boxes; ``AP@`` blocks are
the 11-point AP (R11), ``AP_R40@`` blocks the 40-point AP; bbox / bev / 3d with 4 decimals, aos with 2, in
percent. ``aos`` lines appear when orientation was scored (no detection with ``alpha == -10``). An entry that is
not defined (no ground truth of the class at that difficulty, see :mod:`perception.evaluation.kitti`) prints as
``nan`` where the Python port would print ``0.0000``. Below the blocks: the ground-truth counts per difficulty.
"""

from __future__ import annotations

from .kitti import DIFFICULTIES, MIN_OVERLAP, MIN_OVERLAP_LOOSE, KittiEvalResult, gt_count_lines

__all__ = ["REPORT_FILE", "official_report"]

#: Name of the report file beside ``metrics.json`` in a result folder of ``tools/test.py``.
REPORT_FILE = "kitti_ap.txt"
#: ``(label as printed, kind key of KittiEvalResult.ap, decimals)`` per line of a block.
_LINES = (("bbox AP", "image", 4), ("bev  AP", "bev", 4), ("3d   AP", "3d", 4), ("aos  AP", "aos", 2))


def official_report(result: KittiEvalResult) -> str:
    """The AP blocks of ``result`` (see the module docstring), one line per row, ending with a newline.

    Args:
        result: of :func:`perception.evaluation.kitti.evaluate`; with ``loose=True`` the loose blocks follow
            the strict ones of each class.
    """
    loose = any(key.endswith("_loose") for key in result.ap)
    lines: list[str] = []
    for c in result.classes:
        for suffix, table in [("", MIN_OVERLAP)] + ([("_loose", MIN_OVERLAP_LOOSE)] if loose else []):
            thresholds = ", ".join(f"{t:.2f}" for t in table[c.lower()])
            for sampling, title in (("R11", "AP"), ("R40", "AP_R40")):
                lines.append(f"{c} {title}@{thresholds}:")
                for label, kind, decimals in _LINES:
                    keys = [f"{c}_{kind}_{sampling}_{d}{suffix}" for d in DIFFICULTIES]
                    if keys[0] in result.ap:
                        lines.append(f"{label}:" + ", ".join(f"{result.ap[k]:.{decimals}f}" for k in keys))
    lines.extend(gt_count_lines(result))
    return "\n".join(lines) + "\n"
