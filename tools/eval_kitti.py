"""Score KITTI-format detection results against KITTI labels and print the AP table.

    python tools/eval_kitti.py GT_DIR DET_DIR [--ids FILE] [--classes Car,Pedestrian,Cyclist] [--loose]
                               [--json OUT] [--format table|devkit]

``GT_DIR`` holds label files ``<id>.txt`` (e.g. ``training/label_2``); ``DET_DIR`` holds result files with the
16th score column, as written by ``tools/test.py`` or any other KITTI toolkit. A missing result file means no
detections for that frame. ``--ids`` is a split file (e.g. ``ImageSets/val.txt``); without it every label file in
``GT_DIR`` is evaluated. Semantics: the official devkit's (see ``perception/evaluation/kitti.py``). A label box of
zero size (``h``, ``w`` or ``l`` <= 0, ``DontCare`` aside) is an error naming its ``file:line``
(:mod:`perception.evaluation.gt_checks`), as is a malformed line; errors print one line and exit with status 2.
``--format devkit`` prints the AP blocks of the devkit's Python port instead of the markdown table (``Car
AP@0.70, 0.70, 0.70:`` / ``bbox AP:...``, R11 and ``AP_R40``; with ``--loose`` the loose blocks too), the text
``tools/test.py`` writes to ``kitti_ap.txt``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from perception.cli import ToolParser  # OpenPCDet's --a_b spellings, --cfg_file

    parser = ToolParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gt_dir", type=Path, help="folder of KITTI label files")
    parser.add_argument("det_dir", type=Path, help="folder of KITTI result files (16 columns)")
    parser.add_argument("--ids", type=Path, default=None, help="split file with one frame id per line")
    parser.add_argument("--classes", default="Car,Pedestrian,Cyclist", help="comma-separated class names")
    parser.add_argument("--loose", action="store_true", help="also report the devkit's loose IoU thresholds")
    parser.add_argument("--json", type=Path, default=None, help="also write {metric: AP} to this JSON file")
    parser.add_argument(
        "--format",
        choices=["table", "devkit"],
        default="table",
        help="markdown table, or the devkit Python port's AP blocks (as tools/test.py's kitti_ap.txt)",
    )
    args = parser.parse_args(argv)

    from perception.evaluation.gt_checks import check_kitti_labels
    from perception.evaluation.kitti import evaluate, format_table, load_label_dirs, read_ids
    from perception.evaluation.kitti_report import official_report

    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    try:
        ids = read_ids(args.ids) if args.ids is not None else None
        names, gts, dts = load_label_dirs(args.gt_dir, args.det_dir, ids)
        check_kitti_labels(args.gt_dir, names)
        result = evaluate(gts, dts, classes, loose=args.loose, frame_ids=names)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = sum(not (args.det_dir / f"{i}.txt").is_file() for i in names)
    print(f"{len(names)} frames ({missing} without a result file: no detections)\n")
    print(format_table(result) if args.format == "table" else official_report(result).rstrip("\n"))
    if args.json is not None:
        ap = {k: (None if math.isnan(v) else v) for k, v in result.ap.items()}  # JSON has no NaN: n/a -> null
        args.json.write_text(json.dumps(ap, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
