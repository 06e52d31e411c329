"""Export a detector for deployment: the graph (:mod:`.dsvt_export` for DSVT detectors, :mod:`.dense_export`
otherwise), optionally its fp16 and INT8 variants (:mod:`.quantize`), and the manifest that lists them.

What ``tools/export.py`` calls. The frames (:func:`dataset_batches`) give the DSVT graph its example input and
its TensorRT profiles, and both kinds their INT8 calibration.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from perception.models.backbones.dsvt import DSVTBackbone
from perception.structures import Batch

from .dense_export import export_dense
from .dsvt_export import export_dsvt
from .dsvt_graph import DSVTGraph
from .manifest import ExportManifest, check_operators
from .quantize import QuantSpec, convert_fp16, quantize_int8

__all__ = ["dataset_batches", "export_detector", "graph_frames"]


def dataset_batches(config: Any, split: str, count: int) -> list[Batch]:
    """``count`` samples of the config's ``split``, evenly spaced over it, each collated as a batch of one
    (generated first when the config's synthetic data set is missing).

    Raises:
        ValueError: ``count < 1`` or an empty split.
    """
    from perception.engine.data import build_dataset, collate_for, prepare_data

    if count < 1:
        raise ValueError(f"need at least one frame, got {count}")
    prepare_data(config)
    dataset = build_dataset(config, split, "test")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError(f"split {split!r} of {config.data.root} has no samples")
    collate = collate_for(dataset)
    indices = sorted({int(i) for i in np.linspace(0, n - 1, min(count, n)).round()})
    return [collate([dataset[i]]) for i in indices]


@torch.no_grad()
def graph_frames(model: nn.Module, batches: Sequence[Batch]) -> list[dict[str, torch.Tensor]]:
    """The graph inputs of ``batches``: per sample for a DSVT detector (samples without voxels left out), the
    BEV map per batch otherwise."""
    model.eval()
    if isinstance(getattr(model, "backbone_3d", None), DSVTBackbone):
        graph = DSVTGraph(model)
        return [f for b in batches for f in graph.sample_inputs(model, b) if f is not None]
    out = []
    for b in batches:
        bev = model.to_bev(model.backbone_3d(model.voxel_features(b)))  # type: ignore[operator]
        out.append({"bev": bev.float()})
    return out


def export_detector(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    config: Any,
    batches: Sequence[Batch],
    checkpoint: str | os.PathLike[str] | None = None,
    max_batch: int = 4,
    buckets: int = 1,
    margin: float = 0.25,
    fp16: bool = False,
    int8: bool = False,
    calib_frames: int = 16,
    quant: QuantSpec | None = None,
) -> ExportManifest:
    """Export ``model`` to ``out_dir`` (module docstring).

    Args:
        model: the detector with its weights.
        out_dir: created if missing.
        config: its experiment config (hashed into the manifest).
        batches: real frames (:func:`dataset_batches`).
        checkpoint: the weights' file (hashed), if any.
        max_batch: the dense graph's batch maximum (a DSVT graph runs one sample at a time).
        buckets / margin: TensorRT profiles of a DSVT graph (:func:`~.dsvt_export.export_dsvt`).
        fp16 / int8: also write ``*.fp16.onnx`` / ``*.int8.onnx``.
        calib_frames: INT8 calibration frames (the first of ``batches``' frames).
        quant: what INT8 quantizes (:class:`~.quantize.QuantSpec`; its defaults when ``None``).
    """
    out = Path(out_dir)
    dsvt = isinstance(getattr(model, "backbone_3d", None), DSVTBackbone)
    frames = graph_frames(model, batches) if dsvt or int8 else []
    if dsvt:
        manifest = export_dsvt(
            model, out, config=config, frames=frames, checkpoint=checkpoint, buckets=buckets, margin=margin
        )
    else:
        manifest = export_dense(model, out, config=config, checkpoint=checkpoint, max_batch=max_batch)
    variants = dict(manifest.variants)
    quantization: dict[str, Any] = {}
    stem = manifest.onnx.with_suffix("")
    if fp16:
        path = stem.with_suffix(".fp16.onnx")
        quantization["fp16"] = convert_fp16(manifest.onnx, path)
        check_operators(path)
        variants["fp16"] = path.name
    if int8:
        path = stem.with_suffix(".int8.onnx")
        arrays: list[Mapping[str, np.ndarray]] = [
            {k: v.numpy() for k, v in f.items()} for f in frames[:calib_frames]
        ]
        quantization["int8"] = quantize_int8(manifest.onnx, path, arrays, quant or QuantSpec())
        check_operators(path)
        variants["int8"] = path.name
    manifest = dataclasses.replace(manifest, variants=variants, quantization=quantization)
    manifest.write(out)
    return manifest
