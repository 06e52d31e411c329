"""ONNX export of a detector's dense part: the 2D BEV backbone and the head, up to the head's raw outputs.

What is in the graph: ``bev_backbone -> head`` of a :class:`~perception.models.detector.VoxelDetector`, from the
modules that train (no export flag in their ``forward``): input ``bev`` float32 ``(batch, C, H, W)`` (the BEV map
``to_bev`` makes), outputs the head's tensors flattened in a fixed order and named by their place in the head's
output structure (``tasks0.heatmap``, ``tasks0.offset``, ... for CenterPoint; ``query_scores``, ``box_codes``, ...
for TransFusion). The batch axis is dynamic. This is the export of spconv detectors (sparse convolution has no
ONNX form the TensorRT parser builds without plugins): voxelization, the VFE, the sparse 3D backbone and the BEV
scatter stay in PyTorch, and so do box decoding and NMS (:mod:`.runtime` runs them). DSVT detectors export
whole (:mod:`.dsvt_export`), with this part inside their graph.

The exporter is torch's default ``torch.onnx.export(..., dynamo=True)`` with ``dynamic_shapes``; the graph's
operators are checked against :data:`~.manifest.TENSORRT_OPS`, a subset of those the TensorRT 10 ONNX parser supports
(onnx-tensorrt's ``docs/operators.md``), and an operator outside it is an error naming it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .manifest import (
    OPSET,
    ExportManifest,
    TensorSpec,
    check_operators,
    config_sha256,
    decode_settings,
    file_sha256,
)
from .profiles import ShapeProfile

__all__ = ["DenseStage", "export_dense"]


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Tensors of a head output (dataclasses, lists of them), depth first in field order, with their paths."""
    if isinstance(obj, torch.Tensor):
        return [(prefix, obj)]
    if obj is None:
        return []
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: list[tuple[str, torch.Tensor]] = []
        for f in dataclasses.fields(obj):
            out += _flatten(getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name)
        return out
    if isinstance(obj, (list, tuple)):
        out = []
        for i, v in enumerate(obj):
            out += _flatten(v, f"{prefix}{i}")
        return out
    raise TypeError(f"cannot export a head output of type {type(obj).__name__} (at {prefix or 'the top'})")


def _rebuild(template: Any, values: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """``template`` with every tensor replaced by ``values[path]`` (the inverse of :func:`_flatten`)."""
    if isinstance(template, torch.Tensor):
        return values[prefix]
    if template is None:
        return None
    if dataclasses.is_dataclass(template) and not isinstance(template, type):
        kw = {
            f.name: _rebuild(getattr(template, f.name), values, f"{prefix}.{f.name}" if prefix else f.name)
            for f in dataclasses.fields(template)
        }
        return type(template)(**kw)
    if isinstance(template, (list, tuple)):
        return type(template)(_rebuild(v, values, f"{prefix}{i}") for i, v in enumerate(template))
    raise TypeError(f"cannot rebuild a head output of type {type(template).__name__}")


class DenseStage(nn.Module):
    """``bev_backbone -> head`` of a detector, returning the head's tensors as a flat tuple.

    Args:
        model: a :class:`~perception.models.detector.VoxelDetector` (its modules are shared, not copied).

    Attributes:
        input_shape: ``(C, H, W)`` of the BEV map the head's backbone reads.
        output_names: the flat outputs' names (paths in the head's output structure).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name in ("bev_backbone", "head", "to_bev"):
            if not hasattr(model, name):
                raise TypeError(f"{type(model).__name__} has no {name}: not a VoxelDetector")
        self.bev_backbone = model.bev_backbone
        self.head = model.head
        shape = model.bev_backbone.input_shape()
        self.input_shape = (int(shape.channels), int(shape.size[0]), int(shape.size[1]))
        with torch.no_grad():
            self._template = self.head(self.bev_backbone(torch.zeros(1, *self.input_shape)))
        self.output_names = tuple(name for name, _ in _flatten(self._template))

    def forward(self, bev: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``bev`` float32 ``(B, C, H, W)`` -> the head's tensors in :attr:`output_names` order."""
        return tuple(t for _, t in _flatten(self.head(self.bev_backbone(bev))))

    def head_output(self, tensors: Sequence[torch.Tensor]) -> Any:
        """The head's output object (for its ``decode``) from the flat tensors, e.g. an engine's outputs."""
        if len(tensors) != len(self.output_names):
            raise ValueError(
                f"expected {len(self.output_names)} tensors {self.output_names}, got {len(tensors)}"
            )
        return _rebuild(self._template, dict(zip(self.output_names, tensors, strict=True)))


def _batch_profile(max_batch: int) -> tuple[ShapeProfile, ...]:
    return (ShapeProfile({"batch": (1, 1, max_batch)}),) if max_batch > 1 else ()


def export_dense(
    model: nn.Module,
    out_dir: str | os.PathLike[str],
    *,
    config: Any,
    checkpoint: str | os.PathLike[str] | None = None,
    max_batch: int = 4,
) -> ExportManifest:
    """Export ``model``'s dense part (module docstring) to ``out_dir/dense.onnx`` + ``manifest.json``.

    Args:
        model: the detector (eval mode is set for the export and restored after).
        out_dir: created if missing.
        config: the model's :class:`~perception.config_schema.ExperimentConfig` (hashed into the manifest).
        checkpoint: the weights' file (hashed), if any.
        max_batch: the dynamic batch axis' declared maximum (``>= 1``).

    Raises:
        ValueError: ``max_batch < 1``, or an operator outside :data:`TENSORRT_OPS` in the graph.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    try:
        stage = DenseStage(model).eval()
        example = torch.zeros(min(2, max_batch), *stage.input_shape)
        # max_batch 1: a static graph (torch.export has no dynamic axis of one size)
        dynamic = ({0: torch.export.Dim("batch", min=1, max=max_batch)},) if max_batch > 1 else None
        program = torch.onnx.export(
            stage,
            (example,),
            dynamo=True,
            dynamic_shapes=dynamic,
            input_names=["bev"],
            output_names=list(stage.output_names),
            opset_version=OPSET,
            verbose=False,
        )
        assert program is not None
        path = out / "dense.onnx"
        program.save(str(path))
        with torch.no_grad():
            outputs = stage(example)
    finally:
        model.train(was_training)
    operators = check_operators(path)
    axis: int | str = "batch" if max_batch > 1 else 1
    inputs = (TensorSpec("bev", (axis, *stage.input_shape), "float32"),)
    outs = tuple(
        TensorSpec(name, (axis, *t.shape[1:]), str(t.dtype).removeprefix("torch."))
        for name, t in zip(stage.output_names, outputs, strict=True)
    )
    profiles = _batch_profile(max_batch)
    flags = f" {profiles[0].trtexec_flags(inputs)}" if profiles else ""
    manifest = ExportManifest(
        onnx=path,
        kind="dense",
        part="bev_backbone + head",
        outside=("voxelize", "vfe", "backbone_3d", "to_bev (BEV scatter)", "decode", "nms"),
        inputs=inputs,
        outputs=outs,
        dynamic_axes={s.name: {0: "batch"} for s in (*inputs, *outs)} if max_batch > 1 else {},
        max_batch=max_batch,
        opset=OPSET,
        operators=operators,
        checkpoint_sha256=file_sha256(checkpoint) if checkpoint is not None else None,
        config_sha256=config_sha256(config),
        decode=decode_settings(model.head),
        profiles=profiles,
        trtexec=f"trtexec --onnx={path.name} --saveEngine={path.with_suffix('.plan').name}{flags}",
        variants={"fp32": path.name},
    )
    manifest.write(out)
    return manifest
