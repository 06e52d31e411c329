"""fp16 and INT8 variants of an exported fp32 graph.

* **INT8** (:func:`quantize_int8`): static post-training quantization in Q/DQ form with onnxruntime's tools
  (``quantize_static``, ``QuantFormat.QDQ``): weights per output channel, activations per tensor, symmetric
  int8 (the form TensorRT 10 builds INT8 engines from; its calibrator API is deprecated), scales from the min / max
  of each activation over the calibration frames (the histogram methods need one shape across frames, which a
  graph with dynamic voxel and set counts does not have). Which operators are quantized and which layers stay in
  float is a :class:`QuantSpec`; by default the detection head stays float (its last layers give heatmap logits
  and box codes, where a step of the int8 grid is a visible score or position error): the DSVT blocks and the
  BEV backbone are quantized.
* **fp16** (:func:`convert_fp16`): weights and activations in float16 with float32 graph inputs and outputs
  (``onnxconverter_common.float16``), for GPUs (TensorRT also builds fp16 engines from the fp32 file with its FP16
  flag); onnxruntime runs it on the CPU too (slower there than fp32: few of its CPU kernels are fp16).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["QuantSpec", "convert_fp16", "output_layers", "quantize_int8", "scoped_nodes"]

_PASS_THROUGH = frozenset({"Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Cast", "Flatten"})


@dataclass(frozen=True)
class QuantSpec:
    """What :func:`quantize_int8` quantizes.

    Attributes:
        op_types: ONNX operator types to quantize (the matrix products and convolutions).
        keep_outputs_float: keep the layers that produce graph outputs in float (:func:`output_layers`).
        keep_float_scopes: module paths (prefixes) whose nodes stay float, matched against the exporter's
            ``pkg.torch.onnx.name_scopes`` metadata (:func:`scoped_nodes`). Default: the detection head (``head``
            in a dense graph, ``dense.head`` in a DSVT one). Measured on the demo detector (fresh val split,
            ``benchmarks/bench_deploy.py --accuracy``): everything quantized but the output layers lost 1.2 mAP
            points; with the head in float the INT8 graph scores as fp32 does.
    """

    op_types: tuple[str, ...] = ("MatMul", "Gemm", "Conv", "ConvTranspose")
    keep_outputs_float: bool = True
    keep_float_scopes: tuple[str, ...] = ("dense.head", "head")

    def to_json(self) -> dict[str, Any]:
        return {
            "op_types": list(self.op_types),
            "keep_outputs_float": self.keep_outputs_float,
            "keep_float_scopes": list(self.keep_float_scopes),
        }


def output_layers(model: Any) -> list[str]:
    """Names of the nodes whose output reaches a graph output through shape-only operators (the head's last
    layers), in graph-output order."""
    producer = {o: n for n in model.graph.node for o in n.output}
    names: list[str] = []
    for out in model.graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type in _PASS_THROUGH:
            node = producer.get(node.input[0])
        if node is not None and node.name not in names:
            names.append(node.name)
    return names


def scoped_nodes(model: Any, prefixes: Iterable[str]) -> list[str]:
    """Names of the nodes inside any module path of ``prefixes`` (the exporter's ``name_scopes`` metadata)."""
    prefixes = tuple(prefixes)
    if not prefixes:
        return []
    names = []
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), "")
        if any(f"'{p}" in scopes for p in prefixes):
            names.append(node.name)
    return names


class _Frames:
    """onnxruntime's ``CalibrationDataReader`` over a list of named input arrays."""

    def __init__(self, frames: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._it = iter(frames)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._it, None)
        return None if item is None else dict(item)

    def rewind(self) -> None:  # pragma: no cover - onnxruntime does not rewind a single-pass calibration
        raise RuntimeError("calibration frames are read once")


def quantize_int8(
    fp32: Path, out: Path, frames: Sequence[Mapping[str, np.ndarray]], spec: QuantSpec = QuantSpec()
) -> dict[str, Any]:
    """Write the INT8 Q/DQ variant of ``fp32`` to ``out``, calibrated on ``frames`` (the graph's named inputs).

    Returns:
        What was done, for the manifest: calibration frame count, the spec, the nodes kept in float.

    Raises:
        ValueError: no calibration frames.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not frames:
        raise ValueError("INT8 calibration needs at least one frame")
    model = onnx.load(str(fp32))
    keep = (output_layers(model) if spec.keep_outputs_float else []) + scoped_nodes(
        model, spec.keep_float_scopes
    )
    reader = _Frames(frames)
    CalibrationDataReader.register(_Frames)
    quantize_static(
        str(fp32),
        str(out),
        reader,  # type: ignore[arg-type]
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(spec.op_types),
        nodes_to_exclude=sorted(set(keep)),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )
    q = onnx.load(str(out))
    quantized = sum(1 for n in q.graph.node if n.op_type == "QuantizeLinear")
    return {
        "calibration_frames": len(frames),
        "method": "static Q/DQ, per-channel symmetric int8 weights, per-tensor symmetric int8 activations (min/max)",
        "spec": spec.to_json(),
        "kept_float": len(set(keep)),
        "quantize_nodes": quantized,
    }


def convert_fp16(fp32: Path, out: Path) -> dict[str, Any]:
    """Write the float16 variant of ``fp32`` to ``out`` (float32 inputs and outputs kept)."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(fp32))
    # ConstantOfShape's value attribute is not converted by the tool: keep those nodes (and their consumers'
    # inputs) in float32 through its block list
    half = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, "ConstantOfShape"]
    )
    onnx.save(half, str(out))
    return {"converter": "onnxconverter_common.float16", "keep_io_types": True}
