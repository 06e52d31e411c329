"""TensorRT 10 engines for an export (:mod:`.dsvt_export`, :mod:`.dense_export`): plan, build, run.

Three steps, only the last two of which import :mod:`tensorrt`:

1. :func:`plan_engine` / :meth:`EnginePlan.from_manifest`: pure Python, from the export's ``manifest.json``. Which
   ONNX file TensorRT parses, which builder flags it sets, and the optimisation profiles: the ``(min, opt, max)``
   shape of every input with a dynamic axis, per profile, exactly the manifest's ``profiles``
   (:meth:`ShapeProfile.shapes`). Precisions:

   * ``"fp32"``: the fp32 file, no precision flag, and TF32 switched off (TensorRT allows TF32 for fp32 matmuls and
     convolutions by default; its 10-bit mantissa would cost the parity with onnxruntime; ``tf32=True`` allows it);
   * ``"fp16"``: the ``FP16`` builder flag on the fp32 file (inputs and outputs stay fp32), or on the export's
     ``"fp16"`` file with ``source="fp16"``;
   * ``"int8"``: the export's Q/DQ file (``variants["int8"]``) with the ``INT8`` flag: TensorRT 10 takes the scales
     from the Q/DQ nodes (explicit quantization); the calibrator API is deprecated and never used here. Layers
     without Q/DQ nodes run in fp32.

   ``strongly_typed=True`` creates the network with ``STRONGLY_TYPED``: no precision flag is set (TensorRT refuses
   them there) and every tensor keeps the ONNX file's type, so fp16 then needs the ``"fp16"`` file.

   Profiles (``profiles="all"``, the default, or ``"first"``): the manifest's first profile covers every frame the
   export saw (``min`` the smallest, ``max`` the largest plus a margin); any further ones are its *buckets*
   (:func:`~.profiles.bucket_profiles`): each a contiguous range of voxel counts, the first starting at 1, with its
   own ``opt``. They are ranges, not one static shape per bucket: an engine holds them all and
   :func:`select_profile` picks, per frame, the first whose range holds it.

2. :func:`build_engine`: ``trt.Builder`` -> network (explicit batch, TensorRT 10's only mode) -> ``trt.OnnxParser``
   (its errors reported with their descriptions) -> builder config (workspace pool limit, flags, one
   ``IOptimizationProfile`` per planned profile) -> ``build_serialized_network`` -> ``PLAN`` and ``PLAN.json`` (the
   plan, which :class:`TensorRTEngine` needs: input specs, output order, profiles).

3. :class:`TensorRTEngine`: deserialises the plan with ``trt.Runtime`` and runs named I/O tensors (TensorRT 10 has
   no bindings API): per frame, the profile (``set_optimization_profile_async``), every input's shape
   (``set_input_shape``) and address (``set_tensor_address``, torch CUDA tensors as the device buffers), the
   output shapes from ``get_tensor_shape`` once the inputs are set, then ``execute_async_v3`` on a torch CUDA
   stream. Tensors are cast to the dtype the engine declares (``get_tensor_dtype``: TensorRT 10 keeps int64 and
   bool inputs as ``INT64`` / ``BOOL``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perception.io_atomic import atomic_write_bytes, atomic_write_text

from .manifest import ExportManifest, TensorSpec
from .profiles import ShapeProfile

if TYPE_CHECKING:
    import torch

__all__ = [
    "PRECISIONS",
    "TENSORRT_MISSING",
    "EnginePlan",
    "TensorRTEngine",
    "axis_sizes",
    "build_engine",
    "plan_engine",
    "select_profile",
    "torch_dtype",
]

PRECISIONS = ("fp32", "fp16", "int8")
_SOURCES = {"fp32": ("fp32",), "fp16": ("fp32", "fp16"), "int8": ("int8",)}
TENSORRT_MISSING = "TensorRT is not installed here (its wheels fetch libraries from an unreachable host)"

Shape = tuple[int, ...]

_TORCH_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def torch_dtype(trt_dtype: Any) -> torch.dtype:
    """The torch dtype of a ``trt.DataType`` (or its name, ``"FLOAT"``, ``"INT64"``, ...).

    Raises:
        ValueError: a type torch has no tensor for here (FP8, INT4).
    """
    import torch

    name = str(trt_dtype).rsplit(".", 1)[-1].upper()
    if name not in _TORCH_DTYPES:
        raise ValueError(
            f"TensorRT tensor type {trt_dtype} has no torch dtype here ({sorted(_TORCH_DTYPES)})"
        )
    dtype: torch.dtype = getattr(torch, _TORCH_DTYPES[name])
    return dtype


@dataclass(frozen=True)
class EnginePlan:
    """What :func:`build_engine` builds, from an export's manifest (no TensorRT needed to make or read one).

    Attributes:
        export_dir: the export's folder.
        onnx: the ONNX file TensorRT parses.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        source: the manifest ``variants`` key of :attr:`onnx`.
        flags: ``trt.BuilderFlag`` names to set (``"FP16"``, ``"INT8"``).
        strongly_typed: the network is created with ``STRONGLY_TYPED`` (types from the file, no flags).
        tf32: whether TF32 stays allowed for fp32 layers.
        workspace_bytes: the builder's workspace memory pool limit.
        inputs: the graph's inputs (a string in a shape names a dynamic axis).
        outputs: the graph's output names, in the manifest's order (the order :meth:`TensorRTEngine.run` returns).
        profiles: the optimisation profiles, in engine order (``dims[axis] = (min, opt, max)``).
        manifest_profiles: for each of :attr:`profiles`, its index in the manifest's ``profiles``.
        checkpoint_sha256: of the exported weights (from the manifest).
    """

    export_dir: Path
    onnx: Path
    precision: str
    source: str
    flags: tuple[str, ...]
    strongly_typed: bool
    tf32: bool
    workspace_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    profiles: tuple[ShapeProfile, ...]
    manifest_profiles: tuple[int, ...]
    checkpoint_sha256: str | None = None

    @property
    def dynamic_inputs(self) -> tuple[TensorSpec, ...]:
        """The inputs with at least one dynamic axis (those a profile gives shapes for)."""
        return tuple(s for s in self.inputs if any(isinstance(d, str) for d in s.shape))

    def profile_shapes(self, index: int) -> dict[str, tuple[Shape, Shape, Shape]]:
        """Profile ``index``'s ``(min, opt, max)`` shape of every dynamic input, by input name."""
        profile = self.profiles[index]
        return {s.name: profile.shapes(s) for s in self.dynamic_inputs}

    @classmethod
    def from_manifest(
        cls,
        manifest: Mapping[str, Any],
        export_dir: str | os.PathLike[str],
        *,
        precision: str = "fp32",
        profiles: str = "all",
        source: str | None = None,
        workspace_bytes: int = 4 << 30,
        strongly_typed: bool = False,
        tf32: bool = False,
    ) -> EnginePlan:
        """The plan for ``manifest`` (:meth:`ExportManifest.read` of ``export_dir``); options in the module
        docstring.

        Raises:
            ValueError: an unknown precision or ``profiles`` choice, a source file the export lacks (naming the
                files it has), a source that does not suit the precision, a workspace below 1 MiB, or a manifest
                whose dynamic axes have no (or incomplete) profiles.
        """
        folder = Path(export_dir)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if profiles not in ("all", "first"):
            raise ValueError(f"profiles must be 'all' or 'first', got {profiles!r}")
        if workspace_bytes < 1 << 20:
            raise ValueError(f"workspace_bytes must be at least 1 MiB, got {workspace_bytes}")
        variants: dict[str, str] = dict(manifest.get("variants") or {"fp32": manifest["onnx"]})
        if source is None:
            source = "fp16" if precision == "fp16" and strongly_typed else _SOURCES[precision][0]
        allowed = ("fp16",) if precision == "fp16" and strongly_typed else _SOURCES[precision]
        if source not in allowed:
            raise ValueError(
                f"precision {precision!r}{' (strongly typed)' if strongly_typed else ''} builds from the "
                f"{' or '.join(allowed)} file, not the {source!r} one"
            )
        if source not in variants:
            how = " (a Q/DQ file: export with INT8 quantization)" if source == "int8" else ""
            raise ValueError(
                f"{folder} has no {source!r} file{how}; it has {sorted(variants)} ({folder / 'manifest.json'})"
            )
        flags: tuple[str, ...] = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8",)}[precision]
        if strongly_typed:
            flags = ()
        inputs = tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"])
        all_profiles = tuple(
            ShapeProfile({k: (int(v[0]), int(v[1]), int(v[2])) for k, v in p["dims"].items()})
            for p in manifest.get("profiles", ())
        )
        axes = sorted({d for s in inputs for d in s.shape if isinstance(d, str)})
        _check_profiles(all_profiles, axes, folder)
        keep = (
            tuple(range(len(all_profiles))) if profiles == "all" else tuple(range(min(1, len(all_profiles))))
        )
        return cls(
            export_dir=folder,
            onnx=folder / variants[source],
            precision=precision,
            source=source,
            flags=flags,
            strongly_typed=strongly_typed,
            tf32=tf32,
            workspace_bytes=int(workspace_bytes),
            inputs=inputs,
            outputs=tuple(o["name"] for o in manifest["outputs"]),
            profiles=tuple(all_profiles[i] for i in keep),
            manifest_profiles=keep,
            checkpoint_sha256=manifest.get("checkpoint_sha256"),
        )

    def describe(self) -> str:
        """The plan in words: file, flags, and every profile's axis ranges and input shapes."""
        flags = ", ".join(self.flags) or "none"
        lines = [
            f"onnx: {self.onnx} ({self.source} file), precision {self.precision}, builder flags: {flags}"
            f"{', strongly typed' if self.strongly_typed else ''}, TF32 {'on' if self.tf32 else 'off'}, "
            f"workspace {self.workspace_bytes / 2**20:.0f} MiB",
            f"outputs ({len(self.outputs)}): {', '.join(self.outputs)}",
        ]
        if not self.profiles:
            lines.append("static graph: no optimisation profile")
        for i, profile in enumerate(self.profiles):
            ranges = ", ".join(f"{k} {lo}..{hi} (opt {opt})" for k, (lo, opt, hi) in profile.dims.items())
            lines.append(f"profile {i} (manifest profile {self.manifest_profiles[i]}): {ranges}")
            for name, shapes in self.profile_shapes(i).items():
                lines.append(f"  {name}: " + " / ".join("x".join(str(v) for v in s) for s in shapes))
        return "\n".join(lines)

    def to_json(self) -> str:
        """The plan as JSON (:meth:`from_json` reads it back)."""
        data = {
            "export_dir": str(self.export_dir),
            "onnx": str(self.onnx),
            "precision": self.precision,
            "source": self.source,
            "flags": list(self.flags),
            "strongly_typed": self.strongly_typed,
            "tf32": self.tf32,
            "workspace_bytes": self.workspace_bytes,
            "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": s.dtype} for s in self.inputs],
            "outputs": list(self.outputs),
            "profiles": [{"dims": {k: list(v) for k, v in p.dims.items()}} for p in self.profiles],
            "manifest_profiles": list(self.manifest_profiles),
            "checkpoint_sha256": self.checkpoint_sha256,
        }
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> EnginePlan:
        d = json.loads(text)
        return cls(
            export_dir=Path(d["export_dir"]),
            onnx=Path(d["onnx"]),
            precision=d["precision"],
            source=d["source"],
            flags=tuple(d["flags"]),
            strongly_typed=bool(d["strongly_typed"]),
            tf32=bool(d["tf32"]),
            workspace_bytes=int(d["workspace_bytes"]),
            inputs=tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in d["inputs"]),
            outputs=tuple(d["outputs"]),
            profiles=tuple(ShapeProfile({k: tuple(v) for k, v in p["dims"].items()}) for p in d["profiles"]),
            manifest_profiles=tuple(d["manifest_profiles"]),
            checkpoint_sha256=d.get("checkpoint_sha256"),
        )


def _check_profiles(profiles: tuple[ShapeProfile, ...], axes: list[str], folder: Path) -> None:
    if axes and not profiles:
        raise ValueError(
            f"{folder / 'manifest.json'}: the inputs have dynamic axes {axes} but the manifest has no profiles"
        )
    for i, p in enumerate(profiles):
        missing = [a for a in axes if a not in p.dims]
        if missing:
            raise ValueError(f"{folder / 'manifest.json'}: profile {i} has no range for axes {missing}")
        bad = {k: v for k, v in p.dims.items() if not 1 <= v[0] <= v[1] <= v[2]}
        if bad:
            raise ValueError(
                f"{folder / 'manifest.json'}: profile {i} needs 1 <= min <= opt <= max, got {bad}"
            )


def plan_engine(export_dir: str | os.PathLike[str], **options: Any) -> EnginePlan:
    """:meth:`EnginePlan.from_manifest` of the ``manifest.json`` in ``export_dir`` (same keyword options)."""
    return EnginePlan.from_manifest(ExportManifest.read(export_dir), export_dir, **options)


def select_profile(plan: EnginePlan, sizes: Mapping[str, int]) -> int:
    """The index of the first of ``plan``'s profiles whose ranges hold every axis size of a frame.

    Args:
        plan: the engine's plan.
        sizes: axis name -> size (``voxels0``, ``sets0_0``, ... or ``batch``; :func:`axis_sizes`).

    Returns:
        The profile index (0 for a static graph, which has none).

    Raises:
        ValueError: an axis missing from ``sizes``, or no profile holds the frame: names the axes outside every
            profile's range (or, when each axis fits some profile, what each profile misses).
    """
    if not plan.profiles:
        return 0
    axes = list(plan.profiles[0].dims)
    missing = [a for a in axes if a not in sizes]
    if missing:
        raise ValueError(f"the frame's sizes lack the axes {missing} (it has {sorted(sizes)})")
    for i, profile in enumerate(plan.profiles):
        if profile.covers(sizes):
            return i
    outside = [a for a in axes if not any(p.dims[a][0] <= sizes[a] <= p.dims[a][2] for p in plan.profiles)]
    if outside:
        parts = [
            f"{a} = {sizes[a]} (ranges: {', '.join(f'{p.dims[a][0]}..{p.dims[a][2]}' for p in plan.profiles)})"
            for a in outside
        ]
        raise ValueError(
            f"the frame lies outside every profile of the engine: {'; '.join(parts)}; export again with frames "
            "this size among the profile frames, and rebuild the engine"
        )
    misses = []
    for i, p in enumerate(plan.profiles):
        out = [
            f"{a} = {sizes[a]} not in {lo}..{hi}"
            for a, (lo, _, hi) in p.dims.items()
            if not lo <= sizes[a] <= hi
        ]
        misses.append(f"profile {i}: {', '.join(out)}")
    raise ValueError(f"every axis fits some profile, but no profile holds them all: {'; '.join(misses)}")


def axis_sizes(inputs: tuple[TensorSpec, ...], feeds: Mapping[str, Any]) -> dict[str, int]:
    """The size of every dynamic axis in one frame's feeds (tensors or arrays with ``.shape``), checked against
    the specs.

    Raises:
        ValueError: a missing input, a wrong rank, a static axis of another size, or one axis of two sizes.
    """
    sizes: dict[str, int] = {}
    for spec in inputs:
        if spec.name not in feeds:
            raise ValueError(f"the feeds lack the input {spec.name!r}")
        shape = tuple(int(v) for v in feeds[spec.name].shape)
        if len(shape) != len(spec.shape):
            raise ValueError(f"input {spec.name!r} has shape {shape}, the graph's is {spec.shape}")
        for got, want in zip(shape, spec.shape, strict=True):
            if isinstance(want, str):
                if sizes.setdefault(want, got) != got:
                    raise ValueError(
                        f"axis {want!r} is {sizes[want]} in an earlier input but {got} in {spec.name!r}"
                    )
            elif got != int(want):
                raise ValueError(f"input {spec.name!r} has shape {shape}, the graph's is {spec.shape}")
    return sizes


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ImportError(
            f"{TENSORRT_MISSING}: pip install tensorrt (TensorRT 10) on a CUDA machine"
        ) from exc
    return trt


def _logger(trt: Any, verbose: bool) -> Any:
    """A ``trt.ILogger`` that keeps the error messages (``.errors``) and prints warnings (all with ``verbose``)."""

    class Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= 1:
                self.errors.append(msg)
            if level <= (4 if verbose else 2):
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return Logger()


def _parser_errors(parser: Any) -> str:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = []
        for attr in ("node_name", "node_operator"):
            value = getattr(err, attr, None)
            if callable(value) and value():
                where.append(str(value()))
        lines.append(f"  {err.desc()}" + (f" (node {' '.join(where)})" if where else ""))
    return "\n".join(lines)


def build_engine(plan: EnginePlan, out_path: str | os.PathLike[str], *, verbose: bool = False) -> Path:
    """Build ``plan`` into a serialized TensorRT engine at ``out_path`` (and the plan at ``out_path + ".json"``).

    Raises:
        ImportError: TensorRT is not installed.
        FileNotFoundError: the plan's ONNX file is missing.
        RuntimeError: the parser rejects the file (its errors listed), the network's inputs differ from the
            plan's, a profile is refused, or the build fails (TensorRT's errors listed).
    """
    trt = _import_tensorrt()
    if not plan.onnx.is_file():
        raise FileNotFoundError(f"{plan.onnx} does not exist (export {plan.export_dir} again)")
    logger = _logger(trt, verbose)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx)):
        raise RuntimeError(f"TensorRT's ONNX parser rejected {plan.onnx}:\n{_parser_errors(parser)}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(s.name for s in plan.inputs):
        raise RuntimeError(f"{plan.onnx} has inputs {names}, the manifest {[s.name for s in plan.inputs]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if not plan.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    for i in range(len(plan.profiles)):
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in plan.profile_shapes(i).items():
            profile.set_shape(name, lo, opt, hi)
        if config.add_optimization_profile(profile) < 0:
            raise RuntimeError(f"TensorRT refused profile {i} ({plan.profiles[i].dims}): {logger.errors}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build {plan.onnx}:\n  " + "\n  ".join(logger.errors))
    out = Path(out_path)
    atomic_write_bytes(out, bytes(serialized))
    atomic_write_text(_plan_file(out), plan.to_json() + "\n")
    return out


def _plan_file(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


class TensorRTEngine:
    """A built engine (:func:`build_engine`) on a CUDA device: named torch tensors in, the outputs out.

    Args:
        plan_path: the serialized engine; its plan (``plan_path + ".json"``) must lie beside it.
        device: the CUDA device to run on.
        verbose: print TensorRT's info messages too.

    Raises:
        ImportError: TensorRT is not installed.
        RuntimeError: no CUDA device, a plan file that TensorRT cannot deserialize, or an engine whose tensors or
            profiles differ from its plan's.
        FileNotFoundError: the engine or its plan is missing.
    """

    def __init__(
        self, plan_path: str | os.PathLike[str], device: str | torch.device = "cuda", *, verbose: bool = False
    ) -> None:
        import torch

        trt = _import_tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError("a TensorRT engine runs on a CUDA device; torch sees none here")
        path = Path(plan_path)
        if not _plan_file(path).is_file():
            raise FileNotFoundError(f"{_plan_file(path)} does not exist: build the engine with build_engine")
        self.plan = EnginePlan.from_json(_plan_file(path).read_text(encoding="utf-8"))
        self.device = torch.device(device)
        self._trt = trt
        self._logger = _logger(trt, verbose)
        with torch.cuda.device(self.device):
            torch.cuda.init()
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise RuntimeError(f"TensorRT could not deserialize {path}: {self._logger.errors}")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = {n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        if inputs != {s.name for s in self.plan.inputs} or set(names) - inputs != set(self.plan.outputs):
            raise RuntimeError(
                f"{path} has tensors {names}, its plan {self.plan.inputs} -> {self.plan.outputs}"
            )
        if self.engine.num_optimization_profiles != max(1, len(self.plan.profiles)):
            raise RuntimeError(
                f"{path} has {self.engine.num_optimization_profiles} profiles, its plan {len(self.plan.profiles)}"
            )
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self._profile = -1

    def run(self, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """One frame: ``feeds`` (by input name, any device) -> the outputs on the engine's device, in the
        manifest's order.

        Raises:
            ValueError: feeds that do not fit the graph (:func:`axis_sizes`) or any profile
                (:func:`select_profile`).
            RuntimeError: TensorRT refuses a shape, leaves an output shape unknown, or fails to run.
        """
        import torch

        sizes = axis_sizes(self.plan.inputs, feeds)
        index = select_profile(self.plan, sizes)
        ctx, stream = self.context, self.stream
        with torch.cuda.device(self.device):
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                if index != self._profile:
                    if not ctx.set_optimization_profile_async(index, stream.cuda_stream):
                        raise RuntimeError(f"TensorRT refused to switch to profile {index}")
                    self._profile = index
                held = []
                for spec in self.plan.inputs:
                    t = feeds[spec.name].to(self.device, self.dtypes[spec.name]).contiguous()
                    if not ctx.set_input_shape(spec.name, tuple(t.shape)):
                        raise RuntimeError(f"TensorRT refused shape {tuple(t.shape)} for {spec.name!r}")
                    ctx.set_tensor_address(spec.name, t.data_ptr())
                    held.append(t)
                outputs = []
                for name in self.plan.outputs:
                    shape = tuple(ctx.get_tensor_shape(name))
                    if any(d < 0 for d in shape):
                        raise RuntimeError(f"output {name!r} has no known shape ({shape}) after the inputs")
                    out = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                    ctx.set_tensor_address(name, out.data_ptr())
                    outputs.append(out)
                if not ctx.execute_async_v3(stream.cuda_stream):
                    raise RuntimeError(f"TensorRT failed to run the frame: {self._logger.errors[-3:]}")
            stream.synchronize()
        return outputs
