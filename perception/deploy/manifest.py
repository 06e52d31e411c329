"""What an export writes beside its ONNX files: tensor specs, the TensorRT operator check and ``manifest.json``."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .profiles import ShapeProfile

__all__ = [
    "OPSET",
    "TENSORRT_OPS",
    "ExportManifest",
    "TensorSpec",
    "check_operators",
    "config_sha256",
    "decode_settings",
    "file_sha256",
]

OPSET = 18

TENSORRT_OPS = frozenset(
    {
        "Abs", "Add", "And", "ArgMax", "AveragePool", "BatchNormalization", "Cast", "Ceil", "Clip", "Concat",
        "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "DequantizeLinear", "Div", "Einsum", "Equal",
        "Erf", "Exp", "Expand", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gemm", "Greater",
        "Identity", "IsNaN", "LayerNormalization", "LeakyRelu", "Less", "Log", "MatMul", "Max", "MaxPool", "Min",
        "Mod", "Mul", "Neg", "Not", "Or", "Pad", "Pow", "QuantizeLinear", "ReduceMax", "ReduceMean", "ReduceSum",
        "Relu", "Reshape", "Resize", "ScatterND", "Shape", "Sigmoid", "Sin", "Slice", "Softmax", "Split", "Sqrt",
        "Squeeze", "Sub", "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
    }
)  # fmt: skip
"""ONNX operators the TensorRT 10 parser supports that this project's graphs may use (onnx-tensorrt's
``docs/operators.md``; ``Unique``, ``NonZero`` and sequence ops are deliberately absent: TensorRT rejects them or
cannot build them with dynamic shapes)."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input / output: ``name``, ``shape`` (a string names a dynamic axis), ``dtype`` (numpy name)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class ExportManifest:
    """What an export wrote (saved as ``manifest.json`` beside the ONNX files).

    Attributes:
        onnx: the fp32 ONNX file.
        kind: ``"dense"`` (BEV backbone + head: input ``bev``) or ``"dsvt"`` (the whole network after the VFE,
            :mod:`.dsvt_graph`).
        part: what the graph holds, in words.
        outside: the steps that run outside the graph, in order.
        inputs / outputs: the graph's tensors.
        dynamic_axes: per tensor name, its dynamic axes by name (none in a static graph).
        max_batch: the largest batch the export was declared for (1 for a DSVT graph).
        opset: ONNX opset.
        operators: the fp32 graph's operator types (all in :data:`TENSORRT_OPS`).
        checkpoint_sha256 / config_sha256: of the checkpoint file and of the model's resolved config (JSON).
        decode: the head's decode settings (score threshold, NMS, ...), as the runtime applies them.
        profiles: TensorRT optimisation profiles (min / opt / max of every dynamic axis) from the frames'
            statistics (:mod:`.profiles`); the first covers every frame seen, any others are buckets.
        trtexec: the command that builds a TensorRT engine from the fp32 file with the first profile.
        variants: precision (``"fp32"``, ``"fp16"``, ``"int8"``) -> ONNX file name.
        quantization: how the INT8 file was made (calibration frames, excluded nodes), when it exists.
    """

    onnx: Path
    kind: str
    part: str
    outside: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    dynamic_axes: dict[str, dict[int, str]]
    max_batch: int
    opset: int
    operators: tuple[str, ...]
    checkpoint_sha256: str | None
    config_sha256: str
    decode: dict[str, Any]
    profiles: tuple[ShapeProfile, ...] = ()
    trtexec: str = ""
    variants: dict[str, str] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["onnx"] = self.onnx.name
        return json.dumps(data, indent=1, default=str)

    def write(self, folder: Path) -> None:
        (folder / "manifest.json").write_text(self.to_json() + "\n", encoding="utf-8")

    @staticmethod
    def read(folder: str | os.PathLike[str]) -> dict[str, Any]:
        """The ``manifest.json`` of ``folder`` as JSON (a clear error when it is missing)."""
        path = Path(folder) / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: not a folder tools/export.py wrote")
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def config_sha256(config: Any) -> str:
    """sha256 of the resolved experiment config's JSON."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()


def decode_settings(head: Any) -> dict[str, Any]:
    """The head's decode settings as JSON (empty when it has none)."""
    decode = getattr(getattr(head, "config", None), "decode", None)
    return decode.model_dump(mode="json") if decode is not None else {}


def check_operators(path: Path) -> tuple[str, ...]:
    """The operator types of the ONNX file ``path``, sorted.

    Raises:
        ValueError: an operator outside :data:`TENSORRT_OPS` (named).
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    operators = tuple(sorted({n.op_type for n in graph.graph.node}))
    unsupported = sorted(set(operators) - TENSORRT_OPS)
    if unsupported:
        raise ValueError(f"the exported graph uses operators TensorRT cannot parse: {unsupported} ({path})")
    return operators
