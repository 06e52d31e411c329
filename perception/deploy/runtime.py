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

from .dense_export import DenseStage

__all__ = ["OnnxDenseRuntime", "TimedResult"]


@dataclass
class TimedResult:
    """A :class:`~perception.Result` and the wall time of each stage of the frame (seconds, in run order)."""

    result: Result
    times: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.times.values())


class OnnxDenseRuntime:
    """Run a detector with its dense part in onnxruntime.

    Args:
        detector: the loaded checkpoint (:func:`perception.load_detector`, on the CPU); its LiDAR stages up to the
            BEV map and its head's decode run in torch.
        export_dir: a folder :func:`~.dense_export.export_dense` wrote (``dense.onnx`` + ``manifest.json``).
        providers: onnxruntime execution providers (default: the CPU one).

    Raises:
        ValueError: the manifest's outputs or input shape differ from the detector's dense part (an export of
            another model).
    """

    def __init__(
        self,
        detector: Detector,
        export_dir: str | os.PathLike[str],
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        import onnxruntime as ort

        self.detector = detector
        folder = Path(export_dir)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        self.stage = DenseStage(detector.model)
        names = tuple(o["name"] for o in manifest["outputs"])
        shape = tuple(manifest["inputs"][0]["shape"][1:])
        if names != self.stage.output_names or shape != self.stage.input_shape:
            raise ValueError(
                f"{folder / 'manifest.json'} describes outputs {names} on a {shape} input, but this detector's "
                f"dense part has {self.stage.output_names} on {self.stage.input_shape}: an export of another model"
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
        model = self.detector.model
        t = time.perf_counter()
        bev = model.to_bev(model.backbone_3d(model.voxel_features(prepared.batch)))
        times["lidar_to_bev"] = time.perf_counter() - t
        t = time.perf_counter()
        outputs = self.run_dense(bev)
        times["engine"] = time.perf_counter() - t
        t = time.perf_counter()
        (det,) = model.head.decode(self.stage.head_output(outputs))
        result = self.detector.result(prepared, det)
        times["postprocess"] = time.perf_counter() - t
        return TimedResult(result, times)
