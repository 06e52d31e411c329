"""ONNX export of a DSVT detector's whole network after the VFE (:class:`~.dsvt_graph.DSVTGraph`).

:func:`export_dsvt` traces the graph on a real frame with torch's default ``torch.onnx.export(..., dynamo=True)``,
every voxel and set count a dynamic axis (``dynamic_shapes``), checks the operators against
:data:`~.manifest.TENSORRT_OPS`, and writes ``model.onnx`` and ``manifest.json`` with the TensorRT optimisation
profiles computed from the given frames' axis sizes (:mod:`.profiles`) and the matching ``trtexec`` line.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .dsvt_graph import DSVTGraph
from .manifest import (
    OPSET,
    ExportManifest,
    TensorSpec,
    check_operators,
    config_sha256,
    decode_settings,
    file_sha256,
)
from .profiles import bucket_profiles, profile_from_sizes

__all__ = ["export_dsvt", "pick_example"]


def pick_example(sizes: Sequence[Mapping[str, int]]) -> int:
    """The frame to trace the export on: every axis at least 2 (torch.export specialises sizes 0 and 1) and no two
    axes of equal size (they could be taken for one), the one nearest the median voxel count among those.

    Raises:
        ValueError: no frame qualifies (say which rule every frame broke).
    """
    ok = [i for i, s in enumerate(sizes) if min(s.values()) >= 2 and len(set(s.values())) == len(s)]
    if not ok:
        raise ValueError(
            "no frame to trace the export on: each has an axis below 2 or two axes of equal size "
            f"(axis sizes of the first: {dict(sizes[0]) if sizes else {}}); give more or larger frames"
        )
    median = statistics.median_low(s["voxels0"] for s in sizes)
    return min(ok, key=lambda i: abs(sizes[i]["voxels0"] - median))


def export_dsvt(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    config: Any,
    frames: Sequence[Mapping[str, torch.Tensor]],
    checkpoint: str | os.PathLike[str] | None = None,
    buckets: int = 1,
    margin: float = 0.25,
) -> ExportManifest:
    """Export ``model``'s DSVT graph to ``out_dir/model.onnx`` + ``manifest.json``.

    Args:
        model: a DSVT :class:`~perception.models.detector.VoxelDetector` (eval mode for the export, restored).
        out_dir: created if missing.
        config: the model's :class:`~perception.config_schema.ExperimentConfig` (hashed into the manifest).
        frames: graph inputs of real frames (:meth:`DSVTGraph.sample_inputs`): one is traced
            (:func:`pick_example`), all give the profiles.
        checkpoint: the weights' file (hashed), if any.
        buckets: profiles beyond the first, all-frames one: ``buckets > 1`` adds that many voxel-count buckets.
        margin: profile headroom above the largest frame (:func:`~.profiles.profile_from_sizes`).

    Raises:
        TypeError: not a DSVT detector.
        ValueError: no frame to trace on, or an operator outside :data:`~.manifest.TENSORRT_OPS`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        graph = DSVTGraph(model).eval()
        layout = graph.layout
        sizes = [graph.axis_sizes(layout, f) for f in frames]
        example = frames[pick_example(sizes)]
        args = tuple(example[name] for name in layout.names)
        dims = {n: torch.export.Dim(n, min=1) for n in sizes[0]}
        dynamic = tuple(
            {i: dims[d] for i, d in enumerate(spec.shape) if isinstance(d, str)} for spec in layout.inputs
        )
        program = torch.onnx.export(
            graph,
            args,
            dynamo=True,
            dynamic_shapes=(dynamic,),
            input_names=list(layout.names),
            output_names=list(graph.output_names),
            opset_version=OPSET,
            verbose=False,
        )
        assert program is not None
        path = out / "model.onnx"
        program.save(str(path))
        with torch.no_grad():
            outputs = graph(*args)
    finally:
        model.train(was_training)
    operators = check_operators(path)
    outs = tuple(
        TensorSpec(name, tuple(int(d) for d in t.shape), str(t.dtype).removeprefix("torch."))
        for name, t in zip(graph.output_names, outputs, strict=True)
    )
    profiles = (profile_from_sizes(sizes, margin=margin),)
    if buckets > 1:
        profiles += bucket_profiles(sizes, buckets, by="voxels0", margin=margin)
    manifest = ExportManifest(
        onnx=path,
        kind="dsvt",
        part="DSVT (positional MLPs, blocks, pooling) + BEV scatter + bev_backbone + head",
        outside=("voxelize", "vfe", "set partition + pooling windows (numba)", "decode", "nms"),
        inputs=layout.inputs,
        outputs=outs,
        dynamic_axes=layout.dynamic_axes,
        max_batch=1,
        opset=OPSET,
        operators=operators,
        checkpoint_sha256=file_sha256(checkpoint) if checkpoint is not None else None,
        config_sha256=config_sha256(config),
        decode=decode_settings(model.head),
        profiles=profiles,
        trtexec=(
            f"trtexec --onnx={path.name} --saveEngine={path.with_suffix('.plan').name} "
            f"{profiles[0].trtexec_flags(layout.inputs)}"
        ),
        variants={"fp32": path.name},
    )
    manifest.write(out)
    return manifest
