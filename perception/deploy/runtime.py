"""A deployment runtime around an exported dense part (:mod:`.dense_export`), timing every stage.

``prepare (points -> batch: merge, channel map, range filter) -> lidar_to_bev (torch: voxelize, VFE, 3D backbone,
BEV scatter) -> engine (onnxruntime: BEV backbone + head) -> postprocess (the head's decode: top-K, boxes, NMS) ->
Result``. The detections are those of :meth:`perception.Detector.detect` on the same points up to the engine's
float error (the parity tests check identical boxes after NMS).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from perception.inference_api.detector import Detector, PointsLike, Result, Sweep
from perception.structures import Batch, Detections

from .dense_export import DenseStage

__all__ = ["OnnxDenseModel", "OnnxDenseRuntime", "TimedResult"]


@dataclass
class TimedResult:
    """A :class:`~perception.Result` and the wall time of each stage of the frame (seconds, in run order)."""

    result: Result
    times: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.times.values())


class OnnxDenseModel(torch.nn.Module):
    """A detector whose dense part runs in onnxruntime, with the detector's ``predict(batch)`` interface (what
    :func:`perception.engine.inference.run_inference` and ``tools/test.py --onnx DIR`` call).

    Args:
        model: the :class:`~perception.models.detector.VoxelDetector` with the checkpoint's weights (its LiDAR
            stages up to the BEV map and its head's decode run in torch, on the CPU).
        export_dir: a folder :func:`~.dense_export.export_dense` wrote.
        providers: onnxruntime execution providers (default: the CPU one).
        checkpoint_sha256: when given, the manifest's must equal it (an export of these weights).

    Raises:
        ValueError: the manifest describes another model or other weights.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        export_dir: str | os.PathLike[str],
        providers: Sequence[str] = ("CPUExecutionProvider",),
        checkpoint_sha256: str | None = None,
    ) -> None:
        import onnxruntime as ort

        super().__init__()
        self.model = model.eval()
        folder = Path(export_dir)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        self.stage = DenseStage(model)
        names = tuple(o["name"] for o in manifest["outputs"])
        shape = tuple(manifest["inputs"][0]["shape"][1:])
        if names != self.stage.output_names or shape != self.stage.input_shape:
            raise ValueError(
                f"{folder / 'manifest.json'} describes outputs {names} on a {shape} input, but this detector's "
                f"dense part has {self.stage.output_names} on {self.stage.input_shape}: an export of another model"
            )
        if checkpoint_sha256 is not None and manifest.get("checkpoint_sha256") != checkpoint_sha256:
            raise ValueError(
                f"{folder / 'manifest.json'} was exported from a checkpoint with sha256 "
                f"{manifest.get('checkpoint_sha256')}, not from this one ({checkpoint_sha256}): export it again"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # no busy-waiting after a run: the torch stages before and after the engine share these cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(folder / manifest["onnx"]), sess_options=options, providers=list(providers)
        )
        self.max_batch = int(manifest["max_batch"])

    def run_dense(self, bev: torch.Tensor) -> list[torch.Tensor]:
        """The engine: ``bev`` float32 ``(B, C, H, W)`` -> the head's tensors (CPU torch)."""
        if bev.shape[0] > self.max_batch:
            raise ValueError(f"batch {bev.shape[0]} exceeds the export's max_batch {self.max_batch}")
        arrays = self.session.run(None, {"bev": np.ascontiguousarray(bev.detach().float().cpu().numpy())})
        return [torch.from_numpy(a) for a in arrays]

    def bev(self, batch: Batch) -> torch.Tensor:
        """The torch part before the engine: voxelize, VFE, 3D backbone, BEV scatter -> ``(B, C, H, W)``."""
        m = self.model
        return m.to_bev(m.backbone_3d(m.voxel_features(batch)))

    def decode(self, outputs: Sequence[torch.Tensor]) -> list[Detections]:
        """The torch part after the engine: the head's decode (top-K, boxes, NMS)."""
        return self.model.head.decode(self.stage.head_output(outputs))

    @torch.no_grad()
    def predict(self, batch: Batch) -> list[Detections]:
        """Detections per sample, as ``VoxelDetector.predict``."""
        return self.decode(self.run_dense(self.bev(batch)))


class OnnxDenseRuntime:
    """Run a detector on point clouds with its dense part in onnxruntime (:class:`OnnxDenseModel`).

    Args:
        detector: the loaded checkpoint (:func:`perception.load_detector`, on the CPU).
        export_dir: a folder :func:`~.dense_export.export_dense` wrote (``dense.onnx`` + ``manifest.json``).
        providers: onnxruntime execution providers (default: the CPU one).

    Raises:
        ValueError: the manifest describes another model.
    """

    def __init__(
        self,
        detector: Detector,
        export_dir: str | os.PathLike[str],
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        self.detector = detector
        self.model = OnnxDenseModel(detector.model, export_dir, providers)
        self.stage = self.model.stage

    def run_dense(self, bev: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`OnnxDenseModel.run_dense`."""
        return self.model.run_dense(bev)

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
        t = time.perf_counter()
        bev = self.model.bev(prepared.batch)
        times["lidar_to_bev"] = time.perf_counter() - t
        t = time.perf_counter()
        outputs = self.run_dense(bev)
        times["engine"] = time.perf_counter() - t
        t = time.perf_counter()
        (det,) = self.model.decode(outputs)
        result = self.detector.result(prepared, det)
        times["postprocess"] = time.perf_counter() - t
        return TimedResult(result, times)
