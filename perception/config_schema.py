"""Typed schema of an experiment config (the YAML files under ``configs/``).

Every section is a frozen pydantic model with ``extra="forbid"``, so an unknown or misspelt key is an error, and
scalars are strict (``max_sweeps: "10"`` or ``use_cameras: 1`` are rejected rather than coerced). Later issues add
sections (model, optimizer, training) as more nested models on :class:`ExperimentConfig`.

Paths: fields typed :data:`ConfigPath` are resolved against the directory of the config file that wrote them
(passed as ``context={"base_dir": ...}`` to ``model_validate``; :mod:`perception.config` does this), never
against the working directory. After validation they are absolute, normalised :class:`pathlib.Path` objects.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, model_validator

from perception.config_types import (
    PATH_MARKER,
    Bool,
    ConfigPath,
    Float,
    Int,
    PosInt,
    PositiveFloat,
    Str,
    StrictSection,
)
from perception.grid import VoxelGrid
from perception.models.model_config import ModelConfig
from perception.train_config import TrainConfig

if TYPE_CHECKING:
    from perception.structures import ImageNorm

NUSCENES_VERSIONS = ("v1.0-mini", "v1.0-trainval", "v1.0-test")


class ImagesConfig(StrictSection):
    """Camera images for fusion models (``data.images``; read only with ``data.use_cameras: true``).

    Attributes:
        size: network image ``[H, W]`` pixels, each a multiple of 32 (the image backbone's largest stride).
        scale: resize factor from the file's resolution before the crop (0.16: nuScenes 1600x900 -> 256x144,
            then cropped to e.g. ``[128, 256]``); None: the factor that makes the width fit, ``W / file width``.
            The crop keeps the horizontal centre and cuts rows from the **top** (the road stays).
        mean, std: RGB normalisation on the 0-255 scale, applied in the collate (samples keep uint8); None:
            ImageNet's (:data:`perception.structures.IMAGENET_NORM`, what torchvision / mmdet ResNets expect).
        cameras_off: camera names whose views stay in the batch but are invalid (zero image, not read), e.g.
            ``--set data.images.cameras_off=[CAM_FRONT,CAM_BACK]``.
        missing: a camera file missing or unreadable on disk: ``error`` (the message names the file, camera and
            sample) or ``invalid`` (the view is marked invalid, with a logged warning).
    """

    size: tuple[PosInt, PosInt]
    scale: PositiveFloat | None = None
    mean: tuple[Float, Float, Float] | None = None
    std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = None
    cameras_off: tuple[Str, ...] = ()
    missing: Literal["error", "invalid"] = "error"

    @model_validator(mode="after")
    def _check(self) -> ImagesConfig:
        if any(v % 32 for v in self.size):
            raise ValueError(f"size must be multiples of 32 (the backbone's stride), got {list(self.size)}")
        repeated = sorted({c for c in self.cameras_off if self.cameras_off.count(c) > 1})
        if repeated:
            raise ValueError(f"cameras_off repeats {repeated}")
        return self

    @property
    def norm(self) -> ImageNorm:
        """The :class:`~perception.structures.ImageNorm` the collate applies."""
        from perception.structures import IMAGENET_NORM, ImageNorm  # torch: not at config-load time

        return ImageNorm(self.mean or IMAGENET_NORM.mean, self.std or IMAGENET_NORM.std)


class DataConfig(StrictSection):
    """Dataset and voxel grid.

    Attributes:
        dataset: ``"nuscenes"`` or ``"kitti"``.
        root: dataset root folder (the nuScenes dataroot, or the KITTI folder holding ``training/``).
        version: nuScenes version (``v1.0-mini``, ``v1.0-trainval``, ``v1.0-test``); ignored for KITTI.
        class_names: detection classes, non-empty and unique; label ``i`` is ``class_names[i]``.
        point_cloud_range: metres, LiDAR frame, ``(x_min, y_min, z_min, x_max, y_max, z_max)``, min < max.
        voxel_size: metres, ``(vx, vy, vz)``, each > 0; every range extent is an integer multiple of it
            (within :data:`perception.grid.GRID_TOLERANCE`); the grid itself is :attr:`grid`.
        max_sweeps: LiDAR sweeps per sample including the keyframe (nuScenes: usually 10; KITTI: 1).
        sweep_stride: nuScenes, merge every ``sweep_stride``-th sweep of the 20 Hz chain (default 1: the newest
            ``max_sweeps - 1``); e.g. ``max_sweeps: 2`` with ``sweep_stride: 9`` merges the scan 0.45 s before the
            keyframe, a longer baseline for velocity at the points of one extra sweep. The infos then list
            ``1 + (max_sweeps - 1) * sweep_stride`` scans (:func:`perception.formats.nuscenes_points.pick_sweeps`).
            Must be 1 for KITTI.
        use_cameras: load camera images and calibration alongside the points.
        missing_sweeps: nuScenes, a sweep file that is missing on disk: ``error`` (default; the message names
            the file and the sample) or ``skip`` (leave that sweep out, with a warning); e.g.
            ``--set data.missing_sweeps=skip`` when only part of the sweeps is downloaded. A missing keyframe is
            always an error. Ignored for KITTI.
        images: the camera images' network size, resize, normalisation, cameras off and missing-file rule
            (:class:`ImagesConfig`); None: images at the files' resolution, ImageNet normalisation. Read only
            with ``use_cameras: true``.
    """

    dataset: Literal["nuscenes", "kitti"]
    root: ConfigPath
    version: Str | None = None
    class_names: tuple[Str, ...] = Field(min_length=1)
    point_cloud_range: tuple[Float, Float, Float, Float, Float, Float]
    voxel_size: tuple[PositiveFloat, PositiveFloat, PositiveFloat]
    max_sweeps: Int = Field(default=1, ge=1)
    sweep_stride: Int = Field(default=1, ge=1)
    use_cameras: Bool = False
    missing_sweeps: Literal["error", "skip"] = "error"
    images: ImagesConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        duplicates = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
        if duplicates:
            raise ValueError(f"class_names must be unique, repeated: {duplicates}")
        if self.dataset == "nuscenes" and self.version not in NUSCENES_VERSIONS:
            raise ValueError(
                f"version must be one of {list(NUSCENES_VERSIONS)} for nuscenes, got {self.version!r}"
            )
        if self.dataset == "kitti" and self.sweep_stride != 1:
            raise ValueError(f"sweep_stride must be 1 for kitti (single scans), got {self.sweep_stride}")
        self.grid.check_whole_voxels()  # VoxelGrid validates the range; ValueError names the axis
        return self

    @property
    def image_norm(self) -> ImageNorm | None:
        """The normalisation the collate applies to the images (None without ``use_cameras``)."""
        if not self.use_cameras:
            return None
        if self.images is not None:
            return self.images.norm
        from perception.structures import IMAGENET_NORM  # torch: not at config-load time

        return IMAGENET_NORM

    @cached_property
    def grid(self) -> VoxelGrid:
        """The voxel grid (range, voxel size, shape ``(nz, ny, nx)``): the one object every stage is handed."""
        return VoxelGrid(self.point_cloud_range, self.voxel_size)


class SyntheticDataConfig(StrictSection):
    """How to generate a synthetic dataset into ``data.root`` when that folder does not exist.

    Passed to :mod:`perception.datasets.synthetic`, which validates the values in depth; here only types and
    obvious bounds are checked. A data set already in ``data.root`` that was generated with another LiDAR
    (``lidar_beams``) is refused with an error rather than reused.
    """

    format: Literal["nuscenes", "kitti"]
    version: Literal["v1.0-mini", "v1.0-trainval"] = "v1.0-mini"
    scenes: Int = Field(default=10, ge=1)
    samples: Int = Field(default=10, ge=1, description="keyframes per scene")
    sweeps: Int = Field(default=9, ge=0, description="non-keyframe sweeps between keyframes")
    cameras: Literal["all", "front", "none"] = "all"
    seed: Int = 0
    lidar_beams: Int | None = Field(
        default=None,
        ge=2,
        le=256,
        description="a sparser LiDAR: this many beams spread over the default LiDAR's elevation span "
        "(HDL-32E for nuScenes, HDL-64E for KITTI); None: the default LiDAR",
    )


class ExperimentConfig(StrictSection):
    """A whole experiment.

    Attributes:
        data: dataset and voxel grid.
        synthetic: if set, a synthetic dataset of ``data.dataset``'s format is generated into ``data.root``
            when it is missing.
        model: the detector (:class:`~perception.models.model_config.ModelConfig`), or None for data-only
            experiments. Its shapes are cross-checked against ``data`` (grid, strides, BEV shape, class names).
        output_root: folder under which runs write ``<config-stem>/<extra-tag>/``. Like every path it resolves
            against the config file's directory, not the working directory (the shipped configs use
            ``../output``, i.e. ``<repo>/output``); default ``output`` beside the config file.
    """

    data: DataConfig
    synthetic: SyntheticDataConfig | None = None
    model: ModelConfig | None = None
    output_root: ConfigPath = Field(default=Path("output"), validate_default=True)
    train: TrainConfig | None = None

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        s = self.synthetic
        if s is not None:
            if s.format != self.data.dataset:
                raise ValueError(
                    f"synthetic.format ({s.format!r}) must equal data.dataset ({self.data.dataset!r})"
                )
            if s.format == "nuscenes" and s.version != self.data.version:
                raise ValueError(
                    f"synthetic.version ({s.version!r}) must equal data.version ({self.data.version!r})"
                )
        if self.data.use_cameras and self.train is not None and self.train.augment.gt_sampling is not None:
            raise ValueError(
                "train.augment.gt_sampling with data.use_cameras: true is not supported: pasted objects would be "
                "in the LiDAR points but missing from the camera images; remove train.augment.gt_sampling "
                "(e.g. --set train.augment.gt_sampling=null)"
            )
        if (
            self.model is not None
            and self.model.fusion is not None
            and (not self.data.use_cameras or self.data.images is None)
        ):
            raise ValueError(
                "model.fusion (SparseFusion) needs data.use_cameras: true and data.images (the network image size)"
            )
        if self.model is not None:
            self.model.plan(self.data)  # ValueError naming the keys that disagree
        return self


def _has_path_marker(annotation: Any) -> bool:
    """True if ``annotation`` (possibly nested in Optional / list / tuple) contains :data:`ConfigPath`."""
    if any(m is PATH_MARKER for m in getattr(annotation, "__metadata__", ())):
        return True
    return any(_has_path_marker(a) for a in getattr(annotation, "__args__", ()) or ())


def _section_types(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside ``annotation`` (``Model`` or ``Model | None``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [t for a in getattr(annotation, "__args__", ()) or () for t in _section_types(a)]


def path_field_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted keys of every :data:`ConfigPath` field of ``model`` and its nested sections.

    A field holding a list of paths is listed once (its value is then a list of path strings). Paths inside
    ``dict`` values are not supported.
    """
    keys: list[str] = []
    for name, field in model.model_fields.items():
        if any(m is PATH_MARKER for m in field.metadata) or _has_path_marker(field.annotation):
            keys.append(prefix + name)
        for sub in _section_types(field.annotation):
            keys.extend(path_field_keys(sub, prefix + name + "."))
    return keys


def map_path_values(model: type[BaseModel], tree: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """Apply ``fn`` in place to the raw value(s) of every path field of ``model`` present in the dict ``tree``.

    Used on raw (unvalidated) config dicts: a string or ``os.PathLike`` value is replaced by ``fn(str)``; in a
    list, each string item is; anything else (wrong types) is left for validation to report.
    """
    for dotted in path_field_keys(model):
        *parents, leaf = dotted.split(".")
        node: Any = tree
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node[leaf]
        if isinstance(value, str | os.PathLike):
            node[leaf] = fn(os.fspath(value))
        elif isinstance(value, list):
            node[leaf] = [fn(os.fspath(v)) if isinstance(v, str | os.PathLike) else v for v in value]
    return tree


def section_at(model: type[BaseModel], keys: list[str]) -> type[BaseModel] | None:
    """The section model reached by following ``keys`` from ``model`` (None if that is not a section)."""
    for key in keys:
        field = model.model_fields.get(key)
        subs = _section_types(field.annotation) if field is not None else []
        if not subs:
            return None
        model = subs[0]
    return model
