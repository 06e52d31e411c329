#!/usr/bin/env python
"""Export a trained detector's dense part (2D BEV backbone + head) to ONNX, with a manifest.

    python tools/export.py --ckpt PATH --out DIR [--max-batch N] [--config CONFIG] [--set KEY=VALUE ...]

Writes ``DIR/dense.onnx`` (input ``bev`` ``(batch, C, H, W)``, outputs the head's raw tensors, dynamic batch up to
``--max-batch``) and ``DIR/manifest.json`` (inputs / outputs with shapes and dtypes, dynamic axes, operators,
checkpoint and config hashes, the decode settings, the ``trtexec`` command that builds a TensorRT engine). What
stays outside the graph (voxelization, VFE, 3D backbone, BEV scatter, decoding, NMS) is listed in the manifest;
``perception.deploy.runtime.OnnxRuntime`` runs a frame through all of it with onnxruntime and times each
stage. The checkpoint's own config describes the model unless ``--config`` is given.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True, help="a tools/train.py checkpoint")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--max-batch", type=int, default=4, help="largest batch of the dynamic axis (default 4)")
    p.add_argument("--config", type=Path, default=None, help="experiment YAML instead of the checkpoint's")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of --config")
    args = p.parse_args(argv)

    import perception
    from perception.deploy.dense_export import export_dense

    detector = perception.load_detector(args.ckpt, device="cpu", config=args.config, overrides=args.set)
    try:
        manifest = export_dense(
            detector.model, args.out, config=detector.config, checkpoint=args.ckpt, max_batch=args.max_batch
        )
    except ValueError as exc:
        print(f"export.py: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {manifest.onnx} ({manifest.part}; outside the graph: {', '.join(manifest.outside)})")
    print(f"operators: {' '.join(manifest.operators)}")
    print(f"TensorRT (not run here): {manifest.trtexec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
