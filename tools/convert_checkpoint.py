#!/usr/bin/env python
"""Convert an OpenPCDet or DSVT-authors checkpoint into a checkpoint of this project.

    python tools/convert_checkpoint.py --from openpcdet SRC --config CONFIG --out DST [--set KEY=VALUE ...]
    python tools/convert_checkpoint.py --from dsvt-authors SRC --config CONFIG --out DST [--head-bn-eps 1e-3]

``SRC``: the file OpenPCDet's (or the DSVT authors') ``tools/train.py`` wrote (``{"model_state": ..., "epoch": ...,
"optimizer_state": ...}``; only ``model_state`` is read) or a bare ``model_state`` dict. ``CONFIG``: our config of
the same model (CenterPoint with the spconv ResNet, or DSVT with the CenterPoint head; widths, tasks and class
order as the source's). The key mapping and what it adapts (``rot`` order, conv biases before BatchNorm, head
BatchNorm eps, spconv 1.x / 2.1 weight layouts) is :mod:`perception.models.convert_openpcdet`.

``DST`` is a checkpoint of ours (:class:`perception.engine.checkpoint.CheckpointState`, epoch 0, no optimizer
state) with the resolved config inside: ``tools/test.py CONFIG --ckpt DST``, ``tools/infer.py --ckpt DST``, the
Python API and ``tools/train.py CONFIG --pretrained DST`` read it (it is not a run to resume with ``--ckpt``). It
is written only after it loaded with ``strict=True`` into the detector built from ``CONFIG``.

``--from dsvt-authors`` needs a DSVT config, and a DSVT config needs ``authors_pos_embed: true`` and
``pool_mask_empty: false`` under ``model.backbone_3d.dsvt`` (what reproduces their outputs; with other values the
weights would load but compute something else). ``--head-bn-eps``: the source ``DENSE_HEAD.BN_EPS`` (default
1e-5 for ``openpcdet``, OpenPCDet's default, and 1e-3 for ``dsvt-authors``, their configs' value).

Errors (exit status 2) are one line: source keys that map nowhere and model tensors with no source, a few names
each.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SOURCES = ("openpcdet", "dsvt-authors")
DEFAULT_HEAD_BN_EPS = {"openpcdet": 1e-5, "dsvt-authors": 1e-3}
DSVT_FLAGS = {"authors_pos_embed": True, "pool_mask_empty": False}
"""The ``model.backbone_3d.dsvt`` values a converted DSVT needs to compute what the source computed."""


def build_parser() -> argparse.ArgumentParser:
    from perception.cli import ToolParser
    from perception.config import add_config_args

    p = ToolParser(
        prog="convert_checkpoint.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--from", dest="source_format", choices=SOURCES, required=True, help="layout of SRC")
    p.add_argument("src", type=Path, metavar="SRC", help="the checkpoint to convert")
    p.add_argument("--config", type=Path, required=True, help="our config of the same model")
    p.add_argument("--out", type=Path, required=True, help="the checkpoint to write")
    p.add_argument(
        "--head-bn-eps",
        type=float,
        default=None,
        help="BatchNorm eps of the source CenterHead (DENSE_HEAD.BN_EPS; default per --from)",
    )
    add_config_args(p, config_positional=False)
    return p


def _read_source(path: Path) -> tuple[dict[str, Any], Any]:
    """``(model_state, epoch or None)`` of an OpenPCDet-style file."""
    import torch

    from perception.engine.checkpoint import load_torch_dict

    data = load_torch_dict(path)
    if "format_version" in data:
        raise ValueError(f"{path} is already a checkpoint of this project (it has 'format_version')")
    if "model_state" in data:
        state = data["model_state"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: 'model_state' must be a dict, got {type(state).__name__}")
        return state, data.get("epoch")
    if data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return data, None
    raise ValueError(
        f"{path}: no 'model_state' entry and not a bare state dict (top-level keys {sorted(map(str, data))[:8]})"
    )


def _check_config(cfg: Any, source_format: str, config: Path) -> None:
    backbone = cfg.model.backbone_3d
    if backbone.name != "dsvt":
        if source_format == "dsvt-authors":
            raise ValueError(
                f"{config}: --from dsvt-authors needs a DSVT model (model.backbone_3d.dsvt), the config has "
                f"model.backbone_3d.{backbone.name}"
            )
        return
    wrong = [
        f"model.backbone_3d.dsvt.{k}={str(v).lower()}"
        for k, v in DSVT_FLAGS.items()
        if getattr(backbone.settings, k) != v
    ]
    if wrong:
        raise ValueError(
            f"{config}: a DSVT in the source's layout computes the source's outputs only with "
            f"authors_pos_embed: true and pool_mask_empty: false under model.backbone_3d.dsvt; add: "
            f"--set {' '.join(wrong)}"
        )


def convert(args: argparse.Namespace) -> str:
    """Convert and write ``args.out``; returns the report line."""
    from perception.config import ConfigError, config_to_dict, load_config
    from perception.engine.checkpoint import CheckpointState, atomic_torch_save, load_model_weights
    from perception.models.build import build_detector
    from perception.models.convert_openpcdet import convert_openpcdet_state_dict

    cfg = load_config(args.config, args.set)
    if cfg.model is None:
        raise ConfigError(f"{args.config}: the config has no 'model:' section (a data-only config)")
    _check_config(cfg, args.source_format, args.config)
    state, epoch = _read_source(args.src)
    model = build_detector(cfg.model, cfg.data)
    eps = args.head_bn_eps if args.head_bn_eps is not None else DEFAULT_HEAD_BN_EPS[args.source_format]
    try:
        weights, report = convert_openpcdet_state_dict(state, model, source_head_bn_eps=eps)
    except ValueError as err:
        raise ValueError(f"{args.src} does not fit {args.config}: {err}") from err
    checkpoint = CheckpointState(
        model=weights,
        optimizer={},
        scheduler={},
        grad_scaler={},
        epoch=0,
        iter_in_epoch=0,
        iteration=0,
        rng=[],
        config=config_to_dict(cfg),
        class_names=tuple(cfg.data.class_names),
    )
    out = atomic_torch_save(checkpoint.to_dict(), args.out)
    try:
        load_model_weights(build_detector(cfg.model, cfg.data), out, strict=True)
    except Exception:
        out.unlink(missing_ok=True)
        raise
    trained = f", trained {epoch} epochs" if isinstance(epoch, int) else ""
    return f"wrote {out}: {len(weights)} tensors from {args.src} ({args.source_format}{trained}); {report.summary()}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from perception.config import ConfigError

    try:
        print(convert(args))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"convert_checkpoint.py: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
