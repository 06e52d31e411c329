"""Validated parameters of the synthetic data generator (pydantic models; bad values raise ``ValueError``).

``pydantic.ValidationError`` subclasses ``ValueError``; its message names the field and what was expected.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: File inside a generated data set's marker folder (``training/``, ``v1.0-mini/``) recording its parameters.
PARAMS_RECORD = "synthetic_params.json"

#: Scenes available per nuScenes version: (train, val) split sizes in the devkit's split lists.
NUSCENES_SPLIT_SIZES: dict[str, tuple[int, int]] = {"v1.0-mini": (8, 2), "v1.0-trainval": (700, 150)}


class LidarSpec(BaseModel):
    """A spinning multi-beam LiDAR.

    Attributes:
        name: free-form model name (e.g. ``"HDL-32E"``).
        elevations_deg: beam elevation angles in degrees (positive = up); the ring index of a point is the
            position of its beam in this tuple sorted from lowest to highest elevation.
        azimuth_steps: firings per revolution (azimuth columns).
        frequency_hz: revolutions per second; sweeps are ``1 / frequency_hz`` seconds apart.
        min_range, max_range: returns closer / farther than this (metres) are dropped.
        range_noise_std: Gaussian range noise, metres.
        dropout: probability that a return is lost (independent per ray).
        intensity_noise_std: Gaussian intensity noise on the 0-255 scale.
        surface_inset: hits on objects are moved this far (metres) along the ray into the object, so every
            object return lies strictly inside its box (box faces are numerically fragile).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    elevations_deg: tuple[float, ...] = Field(min_length=1, max_length=256)
    azimuth_steps: int = Field(ge=8, le=10000)
    frequency_hz: float = Field(gt=0.0, le=100.0)
    min_range: float = Field(default=1.0, ge=0.0)
    max_range: float = Field(default=100.0, gt=0.0, le=1000.0)
    range_noise_std: float = Field(default=0.015, ge=0.0, le=0.5)
    dropout: float = Field(default=0.02, ge=0.0, lt=1.0)
    intensity_noise_std: float = Field(default=3.0, ge=0.0, le=100.0)
    surface_inset: float = Field(default=0.02, ge=0.001, le=0.2)

    @field_validator("elevations_deg")
    @classmethod
    def _check_elevations(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        arr = np.asarray(value, dtype=np.float64)
        if not np.all(np.isfinite(arr)) or np.any(np.abs(arr) >= 89.0):
            raise ValueError(f"elevations_deg must be finite angles in (-89, 89) degrees, got {list(value)}")
        if len(np.unique(arr)) != len(arr):
            raise ValueError("elevations_deg must not contain duplicate beam angles")
        return value

    @model_validator(mode="after")
    def _check_ranges(self) -> LidarSpec:
        if self.min_range >= self.max_range:
            raise ValueError(
                f"min_range ({self.min_range}) must be smaller than max_range ({self.max_range})"
            )
        return self

    @property
    def beams(self) -> int:
        """Number of beams."""
        return len(self.elevations_deg)


def hdl32e(**overrides: object) -> LidarSpec:
    """nuScenes-like Velodyne HDL-32E: 32 beams from -30.67 to +10.67 degrees, 20 Hz, 1150 columns."""
    spec = {
        "name": "HDL-32E",
        "elevations_deg": tuple(float(v) for v in np.round(np.linspace(-30.67, 10.67, 32), 4)),
        "azimuth_steps": 1150,
        "frequency_hz": 20.0,
        "max_range": 100.0,
    }
    spec.update(overrides)
    return LidarSpec(**spec)  # type: ignore[arg-type]


def hdl64e(**overrides: object) -> LidarSpec:
    """KITTI-like Velodyne HDL-64E: 64 beams from +2.0 to -24.8 degrees (two blocks), 10 Hz, 2000 columns."""
    upper = np.linspace(2.0, -8.33, 32)
    lower = np.linspace(-8.83, -24.8, 32)
    spec = {
        "name": "HDL-64E",
        "elevations_deg": tuple(float(v) for v in np.round(np.concatenate([upper, lower]), 4)),
        "azimuth_steps": 2000,
        "frequency_hz": 10.0,
        "max_range": 120.0,
    }
    spec.update(overrides)
    return LidarSpec(**spec)  # type: ignore[arg-type]


class SyntheticParams(BaseModel):
    """Parameters of ``create_data.py synthetic`` (see :func:`perception.datasets.synthetic.generate`).

    Attributes:
        format: ``"nuscenes"`` (v1.0 tables + samples/sweeps) or ``"kitti"`` (training/testing + ImageSets).
        version: nuScenes version folder, ``"v1.0-mini"`` or ``"v1.0-trainval"`` (nuScenes only).
        scenes: number of scenes; both train and val scenes are always included (nuScenes: >= 2; KITTI: >= 3,
            at least one each for train, val and test).
        samples: keyframes per scene (nuScenes, 2 Hz, >= 2 so the devkit can estimate velocities) or frames per
            scene (KITTI, >= 1).
        sweeps: nuScenes only, LiDAR sweeps written before each keyframe (20 Hz, 0-9); KITTI: must be 0.
        cameras: ``"all"`` (six nuScenes cameras; KITTI image_2), ``"front"`` (CAM_FRONT / image_2) or ``"none"``.
        seed: seed of the numpy Generator; the same parameters give byte-identical output.
        objects_per_scene: annotated objects per scene (besides one guaranteed object of each class).
        lidar: LiDAR model; default HDL-32E (nuScenes) or HDL-64E (KITTI).
        lidar_beams: a sparser (or denser) LiDAR: the model's beams replaced by this many spread evenly over the
            same elevation span (HDL-32E: -30.67 to +10.67 degrees; 16 beams are 2.76 degrees apart instead of
            1.33), same columns and range; None: the model as it is. Far and small objects then get a handful
            of points while the cameras still see them (the fusion benchmark's sparse setting).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["nuscenes", "kitti"] = "nuscenes"
    version: Literal["v1.0-mini", "v1.0-trainval"] = "v1.0-mini"
    scenes: int = Field(default=4, ge=2, le=850)
    samples: int = Field(default=4, ge=1, le=400)
    sweeps: int | None = Field(default=None, ge=0, le=9)
    cameras: Literal["all", "front", "none"] = "all"
    seed: int = Field(default=0, ge=0, lt=2**63)
    objects_per_scene: int = Field(default=40, ge=0, le=400)
    lidar: LidarSpec | None = None
    lidar_beams: int | None = Field(default=None, ge=2, le=256)

    @model_validator(mode="after")
    def _check_format(self) -> SyntheticParams:
        if self.format == "nuscenes":
            n_train, n_val = NUSCENES_SPLIT_SIZES[self.version]
            if self.scenes > n_train + n_val:
                raise ValueError(
                    f"scenes must be at most {n_train + n_val} for version {self.version} "
                    f"(the devkit's split lists have {n_train} train + {n_val} val scenes), got {self.scenes}"
                )
            if self.samples < 2:
                raise ValueError(
                    f"samples must be >= 2 for the nuscenes format (the devkit needs two keyframes per "
                    f"instance to estimate velocities), got {self.samples}"
                )
            if self.sweeps is None:
                object.__setattr__(self, "sweeps", 2)
        else:
            if self.scenes < 3:
                raise ValueError(
                    f"scenes must be >= 3 for the kitti format (one each for train, val, test), got {self.scenes}"
                )
            if self.sweeps not in (None, 0):
                raise ValueError(
                    f"sweeps is a nuscenes-only option; the kitti format needs 0, got {self.sweeps}"
                )
            object.__setattr__(self, "sweeps", 0)
        if self.lidar is None:
            object.__setattr__(self, "lidar", hdl32e() if self.format == "nuscenes" else hdl64e())
        if self.lidar_beams is not None and self.lidar_spec.beams != self.lidar_beams:
            object.__setattr__(self, "lidar", with_beams(self.lidar_spec, self.lidar_beams))
        return self

    @property
    def lidar_spec(self) -> LidarSpec:
        """The resolved LiDAR model (never None after validation)."""
        assert self.lidar is not None
        return self.lidar

    @property
    def num_sweeps(self) -> int:
        """The resolved sweep count (never None after validation)."""
        assert self.sweeps is not None
        return self.sweeps


def with_beams(spec: LidarSpec, beams: int) -> LidarSpec:
    """``spec`` with ``beams`` beams spread evenly over its elevation span (name suffixed ``/<beams>``)."""
    lo, hi = min(spec.elevations_deg), max(spec.elevations_deg)
    elevations = tuple(float(v) for v in np.round(np.linspace(lo, hi, beams), 4))
    return spec.model_copy(update={"elevations_deg": elevations, "name": f"{spec.name}/{beams}"})


def write_params_record(params: SyntheticParams, marker_dir: str | Path) -> Path:
    """Write ``params`` (resolved: LiDAR model included) as JSON into the data set's marker folder."""
    path = Path(marker_dir) / PARAMS_RECORD
    path.write_text(params.model_dump_json(indent=1) + "\n")
    return path


def read_params_record(marker_dir: str | Path) -> SyntheticParams | None:
    """The parameters a data set was generated with, or None when it has no record (generated before records
    were written, or not synthetic). ``ValueError`` naming the file when the record is unreadable."""
    path = Path(marker_dir) / PARAMS_RECORD
    if not path.is_file():
        return None
    try:
        return SyntheticParams.model_validate(json.loads(path.read_text()))
    except ValueError as err:
        raise ValueError(f"{path}: unreadable synthetic parameters record ({err})") from None
