"""Run a trained checkpoint on one's own point clouds: :func:`load_detector` and :meth:`Detector.detect`.

::

    import perception
    detector = perception.load_detector("checkpoints/demo_detector.pth")     # config from the checkpoint
    result = detector.detect("scan.pcd.bin")                                 # or an (N, C) array / tensor
    result.boxes, result.scores, result.names                                # (K, 7|9) LiDAR frame, (K,), K names

The points go the way the data set's samples go (nothing is re-implemented): the model's point channels come
from its data set format (:func:`~perception.inference_api.columns.model_point_channels`), the input's declared
columns are mapped onto them (:func:`~perception.inference_api.columns.map_columns`), non-finite points are
dropped (:func:`perception.formats.points.drop_nonfinite`), earlier sweeps are moved into the keyframe frame with
their time lag by the nuScenes rule (:func:`perception.formats.points.sweep_to_keyframe`: ego-body returns within
:data:`~perception.formats.nuscenes_points.EGO_RADIUS` removed first; up to ``data.max_sweeps - 1`` as given, a
longer list picked as the dataset picks from the 20 Hz chain,
:func:`~perception.formats.nuscenes_points.pick_sweeps`, the others named in a warning), the points outside the model's grid are removed by the dataset transform
:class:`perception.datasets.transforms.PointRangeFilter`, and the one-sample :class:`~perception.structures.Batch`
goes to ``model.predict`` (which voxelizes by its own config).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from perception.config_schema import ExperimentConfig
from perception.engine.precision import InferencePrecision, resolve_precision
from perception.formats.points import drop_nonfinite, read_point_file, sweep_to_keyframe
from perception.structures import Batch, Boxes3D, Detections, Points, Sample

from .columns import DEFAULT_COLUMNS, TIME_LAG, check_columns, map_columns, model_point_channels

__all__ = ["Detector", "PointsLike", "Prepared", "Result", "Sweep", "load_detector"]

logger = logging.getLogger(__name__)

#: What :meth:`Detector.detect` accepts as points: a float ``(N, C)`` numpy array or torch tensor, or a point file.
PointsLike = np.ndarray | torch.Tensor | str | os.PathLike[str]


@dataclass(frozen=True)
class Sweep:
    """An earlier LiDAR scan merged into the keyframe (models trained with ``data.max_sweeps`` > 1).

    Attributes:
        points: as :meth:`Detector.detect`'s ``points`` (array, tensor or file).
        time_lag: seconds before the keyframe (>= 0).
        sensor_to_lidar: float ``(4, 4)`` from the sweep's sensor frame to the keyframe's LiDAR frame (nuScenes
            infos hold it per sweep); None: the points are in the keyframe's frame already. Either way, returns
            within 1 m of the sensor in x and y (the ego vehicle's body) are removed in the frame the points are
            given in, as the training data's sweeps are.
        columns: the points' column names; None: those of the keyframe (for a file, its format's).
    """

    points: PointsLike
    time_lag: float
    sensor_to_lidar: np.ndarray | None = None
    columns: Sequence[str] | None = None


@dataclass(frozen=True)
class Result:
    """Detections on one point cloud, in its LiDAR frame (CPU tensors).

    Attributes:
        detections: boxes ``(K, 7|9)`` ``[x, y, z, dx, dy, dz, yaw(, vx, vy)]`` (m, rad, m/s), scores float32
            ``(K,)``, labels int64 ``(K,)`` into ``class_names``.
        class_names: the model's classes.
        source: the file, or ``"<array>"``.
        columns: the input's columns as declared (or as its file format states).
        point_channels: the channels the model read.
        num_points: points the model saw (finite, inside its grid, sweeps included).
        num_nonfinite: points dropped for a NaN / inf value.
        num_sweeps: scans merged, the keyframe included.
        points: the points the model saw (``point_channels``, inside its grid), or None.
    """

    detections: Detections
    class_names: tuple[str, ...]
    source: str
    columns: tuple[str, ...]
    point_channels: tuple[str, ...]
    num_points: int
    num_nonfinite: int = 0
    num_sweeps: int = 1
    points: Points | None = None

    def __len__(self) -> int:
        return len(self.detections)

    @property
    def boxes(self) -> np.ndarray:
        """float32 ``(K, 7|9)`` boxes in the LiDAR frame."""
        return self.detections.boxes.tensor.numpy()

    @property
    def scores(self) -> np.ndarray:
        """float32 ``(K,)`` in ``[0, 1]``."""
        return self.detections.scores.numpy()

    @property
    def labels(self) -> np.ndarray:
        """int64 ``(K,)`` indices into :attr:`class_names`."""
        return self.detections.labels.numpy()

    @property
    def names(self) -> list[str]:
        """The ``K`` class names."""
        return [self.class_names[i] for i in self.detections.labels.tolist()]

    def above(self, score_threshold: float) -> Result:
        """The detections scoring at least ``score_threshold``."""
        keep = self.detections.scores >= float(score_threshold)
        return Result(**{**self.__dict__, "detections": self.detections.select(keep)})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: ``boxes`` (K lists), ``box_fields``, ``scores``, ``labels``, ``names``, the class
        names, the source, the columns, point counts and sweeps."""
        width = self.boxes.shape[1] if len(self) else self.detections.boxes.tensor.shape[1]
        fields = ["x", "y", "z", "dx", "dy", "dz", "yaw", "vx", "vy"][:width]
        return {
            "source": self.source,
            "frame": "lidar",
            "box_fields": fields,
            "boxes": self.boxes.astype(float).tolist(),
            "scores": self.scores.astype(float).tolist(),
            "labels": self.labels.astype(int).tolist(),
            "names": self.names,
            "class_names": list(self.class_names),
            "columns": list(self.columns),
            "point_channels": list(self.point_channels),
            "num_points": self.num_points,
            "num_nonfinite": self.num_nonfinite,
            "num_sweeps": self.num_sweeps,
        }


def _as_array(points: PointsLike, columns: Sequence[str] | None) -> tuple[np.ndarray, tuple[str, ...], str]:
    """``(array (N, C), its column names, source)``; a file's columns come from its format unless declared."""
    if isinstance(points, (str, os.PathLike)):
        source = str(points)
        f = read_point_file(points)
        if columns is None and f.columns is None:
            raise ValueError(
                f"{source}: a {f.kind} file does not name its {f.points.shape[1]} columns; declare them, e.g. "
                f"columns=('x', 'y', 'z', 'intensity') (tools/infer.py --columns x,y,z,intensity)"
            )
        cols = columns if columns is not None else f.columns
        assert cols is not None
        return f.points, check_columns(cols, f.points.shape[1], source), source
    source = "<array>"
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    if not isinstance(points, np.ndarray):
        raise TypeError(
            f"points must be a numpy array, a torch tensor or a file path, got {type(points).__name__}"
        )
    if points.ndim != 2 or not np.issubdtype(points.dtype, np.number):
        raise ValueError(f"points must be a numeric (N, C) array, got {points.dtype} of shape {points.shape}")
    cols = DEFAULT_COLUMNS if columns is None else columns
    return points.astype(np.float32, copy=False), check_columns(cols, points.shape[1], source), source


@dataclass
class Prepared:
    """One point cloud made ready for the model (:meth:`Detector.prepare`).

    Attributes:
        batch: a batch of one sample on the detector's device.
        sample: that sample (range-filtered points, CPU).
        source: the file name, or ``"<array>"``.
        columns: the input's column names.
        dropped: NaN / inf points dropped.
        num_sweeps: scans merged (keyframe included).
    """

    batch: Batch
    sample: Sample
    source: str
    columns: tuple[str, ...]
    dropped: int
    num_sweeps: int


class Detector:
    """A trained detector on a device, with the config it was trained with (made by :func:`load_detector`).

    Attributes:
        model: the :class:`~perception.models.detector.VoxelDetector` in eval mode.
        config: the experiment config (``config.data``: grid, classes, ``max_sweeps``; ``config.model``).
        device: where it runs.
        precision: the precision :meth:`detect` runs in (:class:`~perception.engine.precision.InferencePrecision`;
            float32 unless given).
        point_channels: the channels the model reads, in order.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: ExperimentConfig,
        device: torch.device,
        precision: InferencePrecision | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.device = device
        self.precision = precision or resolve_precision("fp32", device)
        self.point_channels = model_point_channels(config.data)
        assert config.model is not None
        if len(self.point_channels) != config.model.num_point_features:
            raise ValueError(
                f"model.num_point_features is {config.model.num_point_features} but {config.data.dataset} points "
                f"have the channels {list(self.point_channels)}"
            )

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.data.class_names)

    def _merged(
        self, points: PointsLike, columns: Sequence[str] | None, sweeps: Sequence[Sweep]
    ) -> tuple[np.ndarray, tuple[str, ...], str, int, int]:
        """float32 ``(N, C_model)`` finite points (keyframe first, then sweeps in the given order)."""
        key, cols, source = _as_array(points, columns)
        channels = self.point_channels
        base = tuple(c for c in channels if c != TIME_LAG)
        if sweeps and TIME_LAG not in channels:
            raise ValueError(
                f"the model reads the point channels {list(channels)} (no {TIME_LAG}): it takes no earlier sweeps"
            )
        if sweeps and TIME_LAG in cols:
            raise ValueError(
                f"{source}: the points have a {TIME_LAG} column (already merged sweeps) and sweeps were given too"
            )
        if TIME_LAG in cols or TIME_LAG not in channels:
            merged, dropped = drop_nonfinite(map_columns(key, cols, channels, source), source)
            return merged, cols, source, dropped, 1
        from perception.formats.nuscenes_points import EGO_RADIUS, pick_sweeps, sweep_chain

        data = self.config.data
        picked = list(range(len(sweeps)))  # as many as the model merges, or fewer: taken as given
        if len(sweeps) > data.max_sweeps - 1:  # more: the 20 Hz chain, picked as the dataset picks
            picked = pick_sweeps(picked, data.max_sweeps, data.sweep_stride)
            every = (
                f", one in every {data.sweep_stride} of the chain (data.sweep_stride)"
                if data.sweep_stride > 1
                else ""
            )
            logger.warning(
                "%d sweeps given; the model was trained with data.max_sweeps %d%s: using sweeps %s",
                len(sweeps), data.max_sweeps, every, picked,
            )  # fmt: skip
            if len(picked) < data.max_sweeps - 1:  # a chain too short to reach the strided scans
                logger.warning(
                    "%d sweeps given: a 20 Hz chain needs %d to reach the %d earlier scan(s) the model merges at "
                    "data.sweep_stride %d, so it sees %d of them (fewer scans than it was trained with); to "
                    "use scans of another spacing, pass at most %d, which are merged as given",
                    len(sweeps), sweep_chain(data.max_sweeps, data.sweep_stride) - 1, data.max_sweeps - 1,
                    data.sweep_stride, len(picked), data.max_sweeps - 1,
                )  # fmt: skip
        keyframe, dropped = drop_nonfinite(
            map_columns(key, cols, base, source, model_channels=channels), source
        )
        parts = [np.concatenate([keyframe, np.zeros((len(keyframe), 1), np.float32)], axis=1)]
        for k in picked:
            sweep = sweeps[k]
            if not isinstance(sweep, Sweep):
                raise TypeError(f"sweeps[{k}] must be a perception.Sweep, got {type(sweep).__name__}")
            lag = float(sweep.time_lag)
            if not np.isfinite(lag) or lag < 0:
                raise ValueError(f"sweeps[{k}].time_lag must be finite and >= 0 (seconds before), got {lag}")
            raw, s_cols, s_source = _as_array(
                sweep.points, sweep.columns if sweep.columns is not None else cols
            )
            s_source = f"{source} sweep {k}" if s_source == "<array>" else s_source
            pts, n = drop_nonfinite(
                map_columns(raw, s_cols, base, s_source, model_channels=channels), s_source
            )
            dropped += n
            t = np.eye(4) if sweep.sensor_to_lidar is None else sweep.sensor_to_lidar
            parts.append(sweep_to_keyframe(pts, t, lag, EGO_RADIUS))
        merged = np.ascontiguousarray(np.concatenate(parts))
        order = [(*base, TIME_LAG).index(c) for c in channels]
        return merged[:, order], cols, source, dropped, len(parts)

    @torch.no_grad()
    def detect(
        self,
        points: PointsLike,
        *,
        columns: Sequence[str] | None = None,
        sweeps: Sequence[Sweep] = (),
        token: str | None = None,
    ) -> Result:
        """Detect objects in one point cloud.

        Args:
            points: float ``(N, C)`` numpy array or torch tensor (LiDAR frame, metres), or a point file (``.bin``
                KITTI, ``.pcd.bin`` nuScenes, ``.npy``, ``.pcd``; :func:`perception.formats.points.read_point_file`).
            columns: names of the ``C`` columns, e.g. ``("x", "y", "z", "intensity", "ring")``. None: a file's
                own layout (``.bin``: ``x, y, z, intensity``; ``.pcd.bin``: ``x, y, z, intensity, ring``; ``.pcd``:
                its FIELDS; ``.npy`` must be declared), an array's ``x, y, z, intensity``. Columns the model does
                not read are ignored; ``time_lag`` is 0 for the keyframe unless given as a column.
            sweeps: earlier scans (:class:`Sweep`), newest first, for models trained on several sweeps: at most
                ``data.max_sweeps - 1`` are merged as given (for a model with ``data.sweep_stride`` S, the scans
                S x 0.05 s apart it was trained with); a longer list is taken as the 20 Hz chain and every S-th
                is merged (:func:`~perception.formats.nuscenes_points.pick_sweeps`), the others named in a
                warning; a chain too short to reach the S-th scan merges fewer (none for ``max_sweeps`` 2) and
                says so in a second warning.
            token: the name of the sample the model sees (default: the file name or ``"points"``).

        Returns:
            :class:`Result` with the detections in the input's LiDAR frame (CPU).

        Raises:
            ValueError: a wrong shape, a column count that differs from ``columns``, a channel the model reads
                missing from the input, sweeps for a single-sweep model; FileNotFoundError: a missing file.
        """
        prepared = self.prepare(points, columns=columns, sweeps=sweeps, token=token)
        with self.precision.autocast(self.device):
            (det,) = self.model.predict(prepared.batch)
        return self.result(prepared, det)

    def prepare(
        self,
        points: PointsLike,
        *,
        columns: Sequence[str] | None = None,
        sweeps: Sequence[Sweep] = (),
        token: str | None = None,
    ) -> Prepared:
        """The model's input for one point cloud (what :meth:`detect` runs; arguments and errors as there): the
        points merged and mapped to the model's channels, range-filtered, collated into a batch of one on the
        detector's device. A deployment runtime (:mod:`perception.deploy`) starts from it too."""
        merged, cols, source, dropped, num_sweeps = self._merged(points, columns, sweeps)
        from perception.datasets.transforms import PointRangeFilter

        name = token or (Path(source).name if source != "<array>" else "points")
        with_velocity = self.config.data.dataset == "nuscenes"  # the dataset's empty boxes: (0, 9) / (0, 7)
        sample = Sample(
            token=name,
            points=Points(torch.from_numpy(merged), self.point_channels),
            boxes=Boxes3D.empty(with_velocity=with_velocity),
            labels=torch.zeros(0, dtype=torch.int64),
            class_names=self.class_names,
        )
        sample = PointRangeFilter(self.config.data.grid)(sample, np.random.default_rng(0))
        batch = Batch.collate([sample]).to(self.device)
        return Prepared(batch, sample, source, cols, dropped, num_sweeps)

    def result(self, prepared: Prepared, det: Detections) -> Result:
        """:class:`Result` of one prepared point cloud's detections (moved to the CPU)."""
        dets = Detections(
            Boxes3D(det.boxes.tensor.detach().float().cpu()),
            det.scores.detach().float().cpu(),
            det.labels.cpu(),
        )
        sample = prepared.sample
        return Result(dets, self.class_names, prepared.source, prepared.columns, self.point_channels,
                      len(sample.points), prepared.dropped, prepared.num_sweeps, sample.points)  # fmt: skip


def _device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked for, but torch sees no CUDA device here (use device='cpu')"
        )
    return dev


def load_detector(
    checkpoint: str | os.PathLike[str],
    device: str | torch.device | None = None,
    *,
    config: str | os.PathLike[str] | ExperimentConfig | None = None,
    overrides: Sequence[str] = (),
    precision: str = "auto",
) -> Detector:
    """Build the model a checkpoint was trained as, load its weights and put it on ``device``.

    Args:
        checkpoint: a ``tools/train.py`` checkpoint (its ``config`` entry describes the model), or a bare
            ``state_dict`` file together with ``config``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; None: CUDA where torch sees it, else the CPU.
        config: an experiment YAML (or a loaded config) used instead of the checkpoint's.
        overrides: ``key=value`` items applied to a YAML ``config`` (as ``--set``).
        precision: ``"auto"`` (bf16 autocast on a CPU with AMX bf16, float32 elsewhere), ``"fp32"`` or
            ``"bf16"`` (:mod:`perception.engine.precision`; the choice is logged and kept in
            ``Detector.precision``).

    Raises:
        FileNotFoundError: no such checkpoint / config.
        perception.engine.checkpoint.CheckpointError: not a checkpoint, or weights that do not fit the model.
        ValueError: no config (neither in the file nor given), a config without a ``model:`` section, or the
            checkpoint's classes differ from the config's.
    """
    from perception.config import config_from_dict, load_config
    from perception.engine.checkpoint import load_checkpoint, load_model_weights
    from perception.models.build import build_detector

    path = Path(checkpoint)
    if overrides and (config is None or isinstance(config, ExperimentConfig)):
        raise ValueError("overrides apply to a config YAML: give config=PATH with them")
    if isinstance(config, ExperimentConfig):
        cfg = config
    elif config is not None:
        cfg = load_config(config, overrides)
    else:
        state = load_checkpoint(path)
        if state.config is None:
            raise ValueError(
                f"{path} holds no config: give the experiment YAML it was trained with (config=...)"
            )
        cfg = config_from_dict(state.config, source=f"{path} (its config)")
    if cfg.model is None:
        raise ValueError(f"the config of {path} has no 'model:' section")
    model = build_detector(cfg.model, cfg.data)
    load_model_weights(model, path, strict=True).check_class_names(cfg.data.class_names)
    dev = _device(device)
    return Detector(model, cfg, dev, resolve_precision(precision, dev))
