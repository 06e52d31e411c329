#!/usr/bin/env python
"""Export a trained detector to ONNX for deployment, with a manifest (and optionally fp16 / INT8 variants).

    python tools/export.py [CONFIG] --ckpt PATH --out DIR [--fp16] [--int8 [--calib-samples N]]
        [--split train] [--frames N] [--buckets N] [--margin F] [--max-batch N] [--set KEY=VALUE ...]

A DSVT detector exports as one graph, ``DIR/model.onnx``: the positional-embedding MLPs, every DSVT stage and
pooling, the BEV scatter, the 2D backbone and the head up to its raw tensors; its inputs are the VFE's voxel
features and the frame's geometry (set indices, key masks, first slots, in-window coordinates, pooling indices),
every voxel and set count a dynamic axis (:mod:`perception.deploy.dsvt_graph`). Other detectors (spconv) export
their dense part, ``DIR/dense.onnx`` (BEV backbone + head, dynamic batch up to ``--max-batch``): sparse
convolution has no ONNX form the TensorRT parser takes without plugins, so voxelization, the VFE and the sparse
backbone stay in PyTorch. ``DIR/manifest.json`` lists the inputs / outputs (shapes, dtypes, dynamic axes), the
operators (checked against the TensorRT parser's), the checkpoint and config hashes, the decode settings, the
TensorRT optimisation profiles computed from ``--frames`` frames of ``--split`` (``--buckets`` adds per-size
profiles) and the ``trtexec`` line. ``--int8`` adds ``model.int8.onnx`` (static Q/DQ calibrated on the first
``--calib-samples`` frames), ``--fp16`` ``model.fp16.onnx``. The checkpoint's own config describes the model
and the data unless CONFIG / ``--config`` is given. Run an export with ``perception.deploy.runtime.OnnxRuntime``
or score it with ``tools/test.py CONFIG --ckpt PATH --onnx DIR [--precision int8]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config_pos", nargs="?", type=Path, default=None, metavar="CONFIG", help="experiment YAML")
    p.add_argument("--ckpt", type=Path, required=True, help="a tools/train.py checkpoint")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--config", type=Path, default=None, help="experiment YAML instead of the checkpoint's")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--split", default="train", help="the split the frames come from (default train)")
    p.add_argument(
        "--frames", type=int, default=16, help="frames for the profiles and calibration (default 16)"
    )
    p.add_argument(
        "--buckets", type=int, default=1, help="DSVT: extra per-size TensorRT profiles (default none)"
    )
    p.add_argument("--margin", type=float, default=0.25, help="DSVT: profile headroom (default 0.25)")
    p.add_argument("--max-batch", type=int, default=4, help="dense export: largest batch (default 4)")
    p.add_argument("--fp16", action="store_true", help="also write the fp16 file")
    p.add_argument("--int8", action="store_true", help="also write the INT8 Q/DQ file")
    p.add_argument("--calib-samples", type=int, default=16, help="INT8 calibration frames (default 16)")
    args = p.parse_args(argv)
    if args.config_pos is not None and args.config is not None:
        p.error("give CONFIG or --config, not both")
    config = args.config_pos or args.config

    import perception
    from perception.deploy.export import dataset_batches, export_detector

    detector = perception.load_detector(args.ckpt, device="cpu", config=config, overrides=args.set)
    try:
        from perception.models.backbones.dsvt import DSVTBackbone

        # frames: a DSVT graph's example input and profiles; INT8 calibration
        needed = isinstance(detector.model.backbone_3d, DSVTBackbone) or args.int8
        count = max(args.frames, args.calib_samples if args.int8 else 1)
        batches = dataset_batches(detector.config, args.split, count) if needed else []
        manifest = export_detector(
            detector.model, args.out, config=detector.config, batches=batches, checkpoint=args.ckpt,
            max_batch=args.max_batch, buckets=args.buckets, margin=args.margin, fp16=args.fp16, int8=args.int8,
            calib_frames=args.calib_samples,
        )  # fmt: skip
    except (ValueError, TypeError) as exc:
        print(f"export.py: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {manifest.onnx} ({manifest.part}; outside the graph: {', '.join(manifest.outside)})")
    for precision, name in manifest.variants.items():
        print(f"  {precision}: {args.out / name}")
    print(f"operators: {' '.join(manifest.operators)}")
    print(f"TensorRT (not run here): {manifest.trtexec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
