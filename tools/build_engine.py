#!/usr/bin/env python
"""Build a TensorRT 10 engine from an export folder (``tools/export.py``), after printing its plan.

    python tools/build_engine.py --export DIR [--precision fp32|fp16|int8] [--profiles all|first]
                                 [--workspace-mib N] [--tf32] [--out PLAN]

The plan (:mod:`perception.deploy.tensorrt_engine`) comes from ``DIR/manifest.json``: the ONNX file to parse (fp32;
the Q/DQ file for int8), the builder flags, and one optimisation profile per manifest profile (``--profiles
first``: the first alone, which covers every frame the export saw) with each dynamic input's min / opt / max
shape. It is printed first; then, where ``tensorrt`` imports, the engine is built to ``PLAN`` (default
``DIR/model.<precision>.plan``) with the plan beside it (``PLAN.json``), which
``perception.deploy.tensorrt_engine.TensorRTEngine`` loads. Exit codes: 0 built, 2 bad arguments or manifest,
3 TensorRT is not installed (plan printed, nothing built), 1 the build failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--export", type=Path, required=True, help="a folder tools/export.py wrote")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32")
    p.add_argument("--profiles", choices=("all", "first"), default="all")
    p.add_argument("--workspace-mib", type=int, default=4096, help="builder workspace limit (default 4096)")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in fp32 layers (off by default)")
    p.add_argument("--out", type=Path, default=None, help="engine file (default DIR/model.<precision>.plan)")
    p.add_argument("--verbose", action="store_true", help="print TensorRT's info messages")
    args = p.parse_args(argv)

    from perception.deploy.tensorrt_engine import build_engine, plan_engine

    try:
        plan = plan_engine(
            args.export,
            precision=args.precision,
            profiles=args.profiles,
            workspace_bytes=args.workspace_mib << 20,
            tf32=args.tf32,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"build_engine.py: {exc}", file=sys.stderr)
        return 2
    print(plan.describe())
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        print("tensorrt is not installed; plan printed, nothing built", file=sys.stderr)
        return 3
    out = args.out or args.export / f"model.{args.precision}.plan"
    t0 = time.perf_counter()
    try:
        build_engine(plan, out, verbose=args.verbose)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"build_engine.py: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} and {out.name}.json in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
