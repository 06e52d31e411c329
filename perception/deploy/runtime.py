"""A deployment runtime around an exported graph (:mod:`.dsvt_export` or :mod:`.dense_export`), timing every stage.

For a DSVT export: ``prepare (points -> batch: merge, channel map, range filter) -> vfe (torch: dynamic
voxelization + pillar / voxel VFE) -> geometry (numba: set partitions, pooling windows) -> engine (onnxruntime:
positional MLPs, DSVT, BEV scatter, BEV backbone, head) -> postprocess (the head's decode: top-K, boxes, NMS) ->
Result``. For a dense export the torch part before the engine is ``lidar_to_bev`` (voxelize, VFE, 3D backbone,
BEV scatter). The detections are those of :meth:`perception.Detector.detect` on the same points up to the engine's
float error (the parity tests check identical boxes after NMS).

A frame without a voxel in range has no graph input (every axis holds at least one row): its head outputs are
those of an all-zero BEV map, computed once by the torch dense part, as the torch model computes them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perception.inference_api.detector import Detector, PointsLike, Result, Sweep
from perception.structures import Batch, Detections

from .dense_export import DenseStage
from .dsvt_graph import DSVTGraph
from .manifest import ExportManifest, TensorSpec
from .profiles import ShapeProfile

__all__ = ["OnnxModel", "OnnxRuntime", "TimedResult"]


@dataclass
class TimedResult:
    """A :class:`~perception.Result` and the wall time of each stage of the frame (seconds, in run order)."""

    result: Result
    times: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.times.values())


_NUMPY = {
    "float32": np.float32,
    "float16": np.float16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
}


class OnnxModel(torch.nn.Module):
    """A detector whose graph runs in onnxruntime, with the detector's ``predict(batch)`` interface (what
    :func:`perception.engine.inference.run_inference` and ``tools/test.py --onnx DIR`` call).

    Args:
        model: the :class:`~perception.models.detector.VoxelDetector` with the checkpoint's weights (its stages
            outside the graph and its head's decode run in torch, on the CPU).
        export_dir: a folder ``tools/export.py`` wrote.
        providers: onnxruntime execution providers (default: the CPU one).
        checkpoint_sha256: when given, the manifest's must equal it (an export of these weights).
        precision: which of the export's files runs (``"fp32"``, ``"fp16"``, ``"int8"``: the manifest's
            ``variants``).

    Raises:
        ValueError: the manifest describes another model or other weights, or has no such precision.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        export_dir: str | os.PathLike[str],
        providers: Sequence[str] = ("CPUExecutionProvider",),
        checkpoint_sha256: str | None = None,
        precision: str = "fp32",
    ) -> None:
        import onnxruntime as ort

        super().__init__()
        self.model = model.eval()
        folder = Path(export_dir)
        manifest = ExportManifest.read(folder)
        self.kind = str(manifest.get("kind", "dense"))
        self.graph: DSVTGraph | None = DSVTGraph(model) if self.kind == "dsvt" else None
        self.stage = self.graph.dense if self.graph is not None else DenseStage(model)
        names = tuple(o["name"] for o in manifest["outputs"])
        inputs = tuple(TensorSpec(i["name"], tuple(i["shape"]), i["dtype"]) for i in manifest["inputs"])
        if self.graph is not None:
            want_in = self.graph.layout.inputs
            same = tuple(i.name for i in inputs) == tuple(i.name for i in want_in)
        else:
            want_in = (TensorSpec("bev", ("batch", *self.stage.input_shape), "float32"),)
            same = tuple(inputs[0].shape[1:]) == self.stage.input_shape
        if names != self.stage.output_names or not same:
            raise ValueError(
                f"{folder / 'manifest.json'} describes outputs {names} of inputs {[i.name for i in inputs]}, but "
                f"this detector's {self.kind} graph has {self.stage.output_names} of {[i.name for i in want_in]}: "
                "an export of another model"
            )
        if checkpoint_sha256 is not None and manifest.get("checkpoint_sha256") != checkpoint_sha256:
            raise ValueError(
                f"{folder / 'manifest.json'} was exported from a checkpoint with sha256 "
                f"{manifest.get('checkpoint_sha256')}, not from this one ({checkpoint_sha256}): export it again"
            )
        variants = manifest.get("variants") or {"fp32": manifest["onnx"]}
        if precision not in variants:
            raise ValueError(
                f"{folder} has no {precision!r} file (it has {sorted(variants)}): export it with it"
            )
        self.inputs = inputs
        self.profiles = tuple(
            ShapeProfile({k: tuple(v) for k, v in p["dims"].items()}) for p in manifest.get("profiles", ())
        )
        self.precision = precision
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # no busy-waiting after a run: the torch stages before and after the engine share these cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(folder / variants[precision]), sess_options=options, providers=list(providers)
        )
        self.max_batch = int(manifest["max_batch"])
        self._empty: list[torch.Tensor] | None = None

    def run_graph(self, feeds: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The engine: named inputs (:attr:`inputs`) -> the head's tensors (CPU torch)."""
        arrays = {
            spec.name: np.ascontiguousarray(feeds[spec.name].detach().cpu().numpy(), dtype=_NUMPY[spec.dtype])
            for spec in self.inputs
        }
        return [torch.from_numpy(a) for a in self.session.run(None, arrays)]

    def run_dense(self, bev: torch.Tensor) -> list[torch.Tensor]:
        """A dense export's engine: ``bev`` float32 ``(B, C, H, W)`` -> the head's tensors."""
        if self.kind != "dense":
            raise ValueError("run_dense needs a dense export; this one is a DSVT graph (run_graph)")
        if bev.shape[0] > self.max_batch:
            raise ValueError(f"batch {bev.shape[0]} exceeds the export's max_batch {self.max_batch}")
        return self.run_graph({"bev": bev.float()})

    def bev(self, batch: Batch) -> torch.Tensor:
        """A dense export's torch part before the engine: voxelize, VFE, 3D backbone, BEV scatter."""
        m = self.model
        return m.to_bev(m.backbone_3d(m.voxel_features(batch)))

    def empty_outputs(self) -> list[torch.Tensor]:
        """The head's tensors for a frame without voxels (an all-zero BEV map, torch; computed once)."""
        if self._empty is None:
            with torch.no_grad():
                self._empty = list(self.stage(torch.zeros(1, *self.stage.input_shape)))
        return self._empty

    def decode(self, outputs: Sequence[torch.Tensor]) -> list[Detections]:
        """The torch part after the engine: the head's decode (top-K, boxes, NMS)."""
        return self.model.head.decode(self.stage.head_output(outputs))

    def run_frames(self, batch: Batch, times: dict[str, float] | None = None) -> list[list[torch.Tensor]]:
        """The head's tensors of ``batch``: one list per engine run (one per sample for a DSVT graph, one for the
        batch for a dense one); the stage times are added to ``times`` when given."""
        t = time.perf_counter()
        clock: dict[str, float] = {}

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            clock[name] = clock.get(name, 0.0) + now - t
            t = now

        runs: list[list[torch.Tensor]] = []
        if self.graph is None:
            bev = self.bev(batch)
            lap("lidar_to_bev")
            runs.append(self.run_dense(bev))
            lap("engine")
        else:
            frames = self.graph.sample_inputs(self.model, batch, clock=clock)
            t = time.perf_counter()
            for feeds in frames:
                runs.append(self.empty_outputs() if feeds is None else self.run_graph(feeds))
            lap("engine")
        if times is not None:
            for k, v in clock.items():
                times[k] = times.get(k, 0.0) + v
        return runs

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Detections]:
        """Detections per sample, as ``VoxelDetector.predict``."""
        return [det for outputs in self.run_frames(batch) for det in self.decode(outputs)]


class OnnxRuntime:
    """Run a detector on point clouds with its graph in onnxruntime (:class:`OnnxModel`).

    Args:
        detector: the loaded checkpoint (:func:`perception.load_detector`, on the CPU).
        export_dir: a folder ``tools/export.py`` wrote.
        providers: onnxruntime execution providers (default: the CPU one).
        precision: the export's file to run (``"fp32"``, ``"fp16"``, ``"int8"``).

    Raises:
        ValueError: the manifest describes another model, or lacks the precision.
    """

    def __init__(
        self,
        detector: Detector,
        export_dir: str | os.PathLike[str],
        providers: Sequence[str] = ("CPUExecutionProvider",),
        precision: str = "fp32",
    ) -> None:
        self.detector = detector
        self.model = OnnxModel(detector.model, export_dir, providers, precision=precision)
        self.stage = self.model.stage

    @torch.no_grad()
    def detect(
        self,
        points: PointsLike,
        *,
        columns: Sequence[str] | None = None,
        sweeps: Sequence[Sweep] = (),
        token: str | None = None,
    ) -> TimedResult:
        """As :meth:`perception.Detector.detect`, with per-stage times."""
        times: dict[str, float] = {}
        t = time.perf_counter()
        prepared = self.detector.prepare(points, columns=columns, sweeps=sweeps, token=token)
        times["prepare"] = time.perf_counter() - t
        (outputs,) = self.model.run_frames(prepared.batch, times)
        t = time.perf_counter()
        (det,) = self.model.decode(outputs)
        result = self.detector.result(prepared, det)
        times["postprocess"] = time.perf_counter() - t
        return TimedResult(result, times)
