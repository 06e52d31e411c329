#!/usr/bin/env python
"""Create data sets: ``create_data.py synthetic --format nuscenes|kitti --out DIR [...]``.

Subcommands (one per data source; later issues add ``nuscenes`` and ``kitti`` info builders):

* ``synthetic`` -- simulate driving scenes and write them in the real nuScenes v1.0 or KITTI layout.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

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


def build_parser() -> argparse.ArgumentParser:
    """The ``create_data.py`` argument parser with one subparser per data source."""
    parser = argparse.ArgumentParser(prog="create_data.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synthetic(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the subcommand; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
