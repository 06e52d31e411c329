#!/usr/bin/env python
"""Create data sets and their info files.

Subcommands (one per data source):

* ``synthetic`` -- simulate driving scenes and write them in the real nuScenes v1.0 or KITTI layout.
* ``nuscenes --root DIR --version v1.0-mini|v1.0-trainval [--max-sweeps 10 --workers N]`` -- info files of the
  train / val splits and the GT database, inside the dataroot (see ``perception.datasets.nuscenes_infos``).
* ``kitti --root DIR [--workers N]`` -- info files of train / val (/ test) and the GT database, inside the KITTI
  root (see ``perception.datasets.kitti_infos``).

Info runs are resumable: re-running after an interruption recomputes only the samples not finished before, and
a sample whose inputs changed (an edited annotation or label, a replaced point file) is computed again. Zero-size
boxes are dropped with a warning and counted in the summary; a NaN / inf annotation, a missing dataroot and
other bad input files end in one ``error:`` line naming the file (exit code 1).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError


def _add_synthetic(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synthetic",
        help="simulate scenes in the nuScenes or KITTI format",
        description="Simulate LiDAR + camera driving scenes and write them in a real data set layout.",
    )
    p.add_argument("--format", choices=["nuscenes", "kitti"], required=True, help="on-disk layout to write")
    p.add_argument("--out", required=True, help="output folder (the nuScenes dataroot / KITTI root)")
    p.add_argument(
        "--version",
        default="v1.0-mini",
        choices=["v1.0-mini", "v1.0-trainval"],
        help="nuScenes version folder (default v1.0-mini)",
    )
    p.add_argument(
        "--scenes", type=int, default=4, help="number of scenes (default 4; train and val included)"
    )
    p.add_argument("--samples", type=int, default=4, help="keyframes (nuScenes) / frames (KITTI) per scene")
    p.add_argument(
        "--sweeps",
        type=int,
        default=None,
        help="nuScenes: LiDAR sweeps before each keyframe, 0-9 (default 2); KITTI: must be 0",
    )
    p.add_argument("--cameras", default="all", choices=["all", "front", "none"], help="cameras to render")
    p.add_argument("--objects", type=int, default=40, help="random objects per scene (default 40)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed -> identical files)")
    p.set_defaults(func=_run_synthetic)


def _run_synthetic(args: argparse.Namespace) -> int:
    from perception.datasets.synthetic import SyntheticParams, generate

    try:
        params = SyntheticParams(
            format=args.format,
            version=args.version,
            scenes=args.scenes,
            samples=args.samples,
            sweeps=args.sweeps,
            cameras=args.cameras,
            seed=args.seed,
            objects_per_scene=args.objects,
        )
    except ValidationError as err:
        print(f"create_data.py synthetic: invalid arguments:\n{err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    summary = generate(params, args.out)
    took = time.perf_counter() - start
    if params.format == "nuscenes":
        splits = sorted({s for _, s in summary["scenes"]})
        print(
            f"wrote nuScenes {summary['version']} to {summary['dataroot']}: {len(summary['scenes'])} scenes "
            f"({', '.join(splits)}), {summary['samples']} samples, {summary['sample_annotations']} annotations "
            f"in {took:.1f} s"
        )
    else:
        print(
            f"wrote KITTI to {summary['root']}: {len(summary['train'])} train, {len(summary['val'])} val, "
            f"{len(summary['test'])} test frames in {took:.1f} s"
        )
    return 0


def _add_info_run_args(p: argparse.ArgumentParser) -> None:
    """The options every info-file subcommand takes."""
    p.add_argument("--workers", type=int, default=0, help="worker processes (default 0: in this process)")
    p.add_argument("--no-gt-database", action="store_true", help="skip the GT database")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _report(
    stats: Mapping[str, Any], unit: str, path_of: Callable[[str], Any], db: object, start: float
) -> None:
    """Print what an info run did: per split how many of ``unit`` (singular: "sample") were computed (and why, when a part was there), reused ones,
    the zero-size boxes dropped and the info file; the GT database (``db``, or None when skipped) and the wall
    time since ``start`` (``time.perf_counter``)."""
    for split, st in stats.items():
        why = [f"{len(st.changed)} with changed input"] if st.changed else []
        why += [f"{len(st.corrupt)} with a corrupt cache part"] if st.corrupt else []
        c = len(st.computed)
        computed = f"{c} {unit}{'' if c == 1 else 's'} computed" + (f" ({', '.join(why)})" if why else "")
        n = len(st.dropped)
        dropped = f", {n} zero-size box{'' if n == 1 else 'es'} dropped" if n else ""
        print(f"{split}: {computed}, {len(st.reused)} reused{dropped} -> {path_of(split)}")
    if db is not None:
        print(f"GT database: {db}")
    print(f"done in {time.perf_counter() - start:.1f} s")


def _add_nuscenes(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nuscenes",
        help="nuScenes info files + GT database (through the devkit)",
        description="Write nuScenes info files (train/val) and the train GT database inside the dataroot.",
    )
    p.add_argument("--root", required=True, help="nuScenes dataroot (holds samples/, sweeps/, <version>/)")
    p.add_argument("--version", required=True, choices=["v1.0-mini", "v1.0-trainval"], help="devkit version")
    p.add_argument(
        "--max-sweeps", type=int, default=10, help="LiDAR sweeps per sample incl. the keyframe (default 10)"
    )
    p.add_argument(
        "--sweep-stride",
        type=int,
        default=1,
        help="merge every N-th sweep of the 20 Hz chain (data.sweep_stride; default 1: the newest ones)",
    )
    _add_info_run_args(p)
    p.set_defaults(func=_run_nuscenes)


def _run_nuscenes(args: argparse.Namespace) -> int:
    from perception.datasets.nuscenes_infos import create_nuscenes_infos
    from perception.formats.nuscenes_infos import gt_database_dir, infos_path
    from perception.formats.nuscenes_points import sweep_chain

    start = time.perf_counter()
    stats = create_nuscenes_infos(
        args.root,
        args.version,
        max_sweeps=args.max_sweeps,
        sweep_stride=args.sweep_stride,
        workers=args.workers,
        progress=not args.quiet,
        with_gt_database=not args.no_gt_database,
    )
    _report(
        stats,
        "sample",
        lambda split: infos_path(
            args.root, args.version, sweep_chain(args.max_sweeps, args.sweep_stride), split
        ),
        None
        if args.no_gt_database
        else gt_database_dir(args.root, args.version, args.max_sweeps, args.sweep_stride),
        start,
    )
    return 0


def _add_kitti(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "kitti",
        help="KITTI info files + GT database",
        description="Write KITTI info files (train/val/test) and the train GT database inside the KITTI root.",
    )
    p.add_argument("--root", required=True, help="KITTI root (holds training/, testing/, ImageSets/)")
    _add_info_run_args(p)
    p.set_defaults(func=_run_kitti)


def _run_kitti(args: argparse.Namespace) -> int:
    from perception.datasets.kitti_infos import GT_DATABASE_DIR, create_kitti_infos, infos_path

    start = time.perf_counter()
    stats = create_kitti_infos(
        args.root, workers=args.workers, progress=not args.quiet, with_gt_database=not args.no_gt_database
    )
    db = None if args.no_gt_database else f"{args.root}/{GT_DATABASE_DIR}"
    _report(stats, "frame", lambda split: infos_path(args.root, split), db, start)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``create_data.py`` argument parser with one subparser per data source."""
    from perception.cli import ToolParser  # OpenPCDet's --a_b spellings, --cfg_file

    parser = ToolParser(prog="create_data.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synthetic(sub)
    _add_nuscenes(sub)
    _add_kitti(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the subcommand; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError) as err:  # bad dataset files: one clear line, no traceback
        notes = "".join(f" ({n})" for n in getattr(err, "__notes__", []))
        print(f"create_data.py {args.command}: error: {err}{notes}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
