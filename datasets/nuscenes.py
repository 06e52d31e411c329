"""nuScenes detection dataset: info records (:mod:`.nuscenes_infos`) -> :class:`~perception.structures.Sample`.

Points: the keyframe ``LIDAR_TOP`` scan plus up to ``max_sweeps - 1`` earlier sweeps (every ``sweep_stride``-th
of the 20 Hz chain, :func:`~perception.formats.nuscenes_points.pick_sweeps`), each moved into the
keyframe's LiDAR frame with its recorded transform; channels ``x, y, z, intensity, time_lag`` (seconds before
the keyframe, 0 for the keyframe). As OpenPCDet does, sweep points within 1 m of the sensor in x **and** y
(returns from the ego vehicle's own body, which move with the car and would smear) are removed before the
transform; the keyframe is kept whole. Non-finite points are dropped and counted in the log. Then the
point-cloud range is applied on x, y **and** z (half-open, as the voxelizer).

Boxes: ``(K, 9)`` with velocity, of the annotations whose detection class is in ``class_names`` and whose centre
lies in the range. Boxes with no LiDAR point are **kept** (as the official evaluation keeps them) unless
``min_points_in_gt`` > 0 (OpenPCDet's ``FILTER_MIN_POINTS_IN_GT``), which applies in ``train`` mode only. In
``test`` mode no boxes are loaded.

Missing sweep files: ``missing_sweeps="error"`` (default) raises ``FileNotFoundError`` naming the file, the
sample and the config keys that change it (``data.max_sweeps``, ``data.missing_sweeps``: the tools build this
dataset from the config); ``"skip"`` leaves the sweep out and logs a warning (logger
``perception.datasets.nuscenes``). A missing keyframe file is always an error.

Cameras (``use_cameras``): the views are the data set's cameras in the infos' order (:data:`CAMERA_ORDER`, those
any sample has), loaded by an :class:`~perception.datasets.image_transforms.ImageLoader` (network size, resize /
crop folded into the intrinsics, ``cameras_off``, missing files). A sample whose info lacks one of the cameras
gets that view as missing (an error, or invalid with ``missing="invalid"``; its calibration is then the
camera's in the first sample that has it).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from perception.formats.nuscenes_infos import CameraInfo, NuScenesInfo, infos_path, load_nuscenes_infos
from perception.formats.nuscenes_names import CAMERA_ORDER, NUSCENES_POINT_CHANNELS
from perception.formats.nuscenes_points import load_lidar_points, pick_sweeps, sweep_chain
from perception.grid import VoxelGrid
from perception.structures import Boxes3D, CameraRig, Points, Sample

from .base import DetectionDataset, Mode, Transform, check_mode
from .image_transforms import ImageLoader

__all__ = ["NuScenesDataset", "infos_path_for"]

logger = logging.getLogger(__name__)


class NuScenesDataset(DetectionDataset):
    """nuScenes keyframes as typed samples; use ``collate_fn=Batch.collate`` in a ``DataLoader``.

    Args:
        infos_path: an info file of ``tools/create_data.py nuscenes``; or None to use ``root`` + ``version``
            + ``split`` (+ ``info_sweeps``) to find it.
        root: the dataroot (default: the info file's folder).
        version, split, info_sweeps: which info file when ``infos_path`` is None (``split`` ``train`` / ``val``;
            ``info_sweeps`` the chain it lists, default ``sweep_chain(max_sweeps, sweep_stride)``).
        class_names: detector classes (nuScenes detection names); label ``i`` is ``class_names[i]``.
        grid: the model's voxel grid (``cfg.data.grid``, a :class:`~perception.grid.VoxelGrid`); points and box
            centres outside it (LiDAR frame) are dropped, by the voxelizer's rule.
        max_sweeps: sweeps per sample including the keyframe.
        sweep_stride: merge every ``sweep_stride``-th sweep of the info's 20 Hz chain
            (:func:`~perception.formats.nuscenes_points.pick_sweeps`); the infos must list
            ``1 + (max_sweeps - 1) * sweep_stride`` scans.
        use_cameras: load the camera images and their :class:`CameraRig`.
        images: how (network size, resize, cameras off, missing files); None: ``ImageLoader()``, the files'
            resolution (all cameras must then share one size).
        mode: ``train`` (transforms, ``min_points_in_gt``), ``val`` (ground truth, transforms as given) or
            ``test`` (no ground truth).
        transforms: applied in order as ``t(sample, rng)``; ``rng`` is seeded by (``seed``, epoch, index).
        min_points_in_gt: in train mode, drop boxes with fewer annotated LiDAR points.
        missing_sweeps: ``"error"`` or ``"skip"`` (logged), see the module docstring.
        seed: base seed of the per-sample generators.
    """

    def __init__(
        self,
        *,
        class_names: Sequence[str],
        grid: VoxelGrid,
        infos_path: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
        version: str | None = None,
        split: str | None = None,
        info_sweeps: int | None = None,
        max_sweeps: int = 1,
        sweep_stride: int = 1,
        use_cameras: bool = False,
        images: ImageLoader | None = None,
        mode: Mode = "train",
        transforms: Sequence[Transform] = (),
        min_points_in_gt: int = 0,
        missing_sweeps: Literal["error", "skip"] = "error",
        seed: int = 0,
    ) -> None:
        check_mode(mode)
        if missing_sweeps not in ("error", "skip"):
            raise ValueError(f"missing_sweeps must be 'error' or 'skip', got {missing_sweeps!r}")
        chain = sweep_chain(max_sweeps, sweep_stride)  # validates both
        if infos_path is None:
            if root is None or version is None or split is None:
                raise ValueError("give infos_path, or root, version and split")
            infos_path = infos_path_for(root, version, info_sweeps or chain, split)
        self.infos, built_sweeps = load_nuscenes_infos(infos_path)
        if chain > built_sweeps:
            at = f" at sweep_stride {sweep_stride} (a chain of {chain} scans)" if sweep_stride != 1 else ""
            raise ValueError(
                f"max_sweeps={max_sweeps}{at} but {infos_path} was built with --max-sweeps {built_sweeps}"
            )
        self.root = Path(root) if root is not None else Path(infos_path).parent
        self._setup_common(
            class_names=class_names,
            grid=grid,
            mode=mode,
            transforms=transforms,
            seed=seed,
        )
        self.max_sweeps, self.sweep_stride, self.use_cameras = max_sweeps, sweep_stride, bool(use_cameras)
        self.images = images if images is not None else ImageLoader()
        self._camera_names, self._camera_fallback = _camera_table(self.infos)
        if self.use_cameras:
            if not self._camera_names:
                raise ValueError(f"{infos_path} holds no camera (use_cameras=True)")
            self.images.check_names(self._camera_names, str(infos_path))
        self.min_points_in_gt, self.missing_sweeps = int(min_points_in_gt), missing_sweeps

    def _box_mask(self, info: NuScenesInfo) -> np.ndarray:
        if self.mode == "test":
            return np.zeros(len(info.gt_names), dtype=bool)
        mask = np.isin(info.gt_names, self.class_names)
        if self.mode == "train" and self.min_points_in_gt > 0:
            mask &= info.num_lidar_pts >= self.min_points_in_gt
        return mask & self._centres_in_range(info.gt_boxes)

    def box_mask(self, index: int) -> np.ndarray:
        """bool ``(K,)`` over the annotations of ``infos[index]`` (``gt_boxes``, ``num_lidar_pts``,
        ``annotation_tokens``, ...): which ones sample ``index`` yields as its boxes, in that order."""
        self._check_index(index)
        return self._box_mask(self.infos[index])

    def info_class_names(self, index: int) -> set[str]:
        """Class names (of ``class_names``) of the ground-truth boxes sample ``index`` yields (for CBGS)."""
        info = self.infos[index]
        return {str(n) for n in info.gt_names[self._box_mask(info)]}

    def _cameras(self, info: NuScenesInfo) -> tuple[torch.Tensor, CameraRig]:
        if not self._camera_names:
            raise ValueError(f"sample {info.token} has no camera (use_cameras=True)")
        present = {c.name: c for c in info.cameras}
        cams = [present.get(n, self._camera_fallback[n]) for n in self._camera_names]
        return self.images.load(
            token=info.token,
            names=self._camera_names,
            paths=[self.root / c.path if c.name in present else None for c in cams],
            intrinsics=np.stack([c.intrinsics for c in cams]),
            cam_to_lidar=np.stack([c.cam_to_lidar for c in cams]),
            file_sizes=[c.image_size for c in cams],
        )

    def _load_points(self, info: NuScenesInfo) -> np.ndarray:
        try:
            return load_lidar_points(self.root, info, self.max_sweeps, self.missing_sweeps, self.sweep_stride)
        except FileNotFoundError:
            picked = pick_sweeps(info.sweeps, self.max_sweeps, self.sweep_stride)
            missing = [s.path for s in picked if not (self.root / s.path).is_file()]
            if not (self.root / info.lidar_path).is_file() or not missing:
                raise  # the keyframe: no setting helps
            raise FileNotFoundError(
                f"sample {info.token}: sweep file not found: {self.root / missing[0]} (download the sweeps, or "
                "set data.max_sweeps: 1, or data.missing_sweeps: skip to leave missing sweeps out, e.g. "
                "--set data.missing_sweeps=skip)"
            ) from None

    def __getitem__(self, index: int) -> Sample:
        self._check_index(index)
        info = self.infos[index]
        pts = self._load_points(info)
        points = Points(torch.from_numpy(pts), NUSCENES_POINT_CHANNELS)
        points = self._points_in_range(points)
        mask = self._box_mask(info)
        names = info.gt_names[mask]
        labels = torch.tensor([self.class_names.index(str(n)) for n in names], dtype=torch.int64)
        images, rig = self._cameras(info) if self.use_cameras else (None, None)
        sample = Sample(
            token=info.token,
            points=points,
            boxes=Boxes3D(
                torch.from_numpy(np.ascontiguousarray(info.gt_boxes[mask], np.float32)).reshape(-1, 9)
            ),
            labels=labels,
            class_names=self.class_names,
            images=images,
            cameras=rig,
        )
        return self._apply_transforms(sample, index)


def _camera_table(infos: Sequence[NuScenesInfo]) -> tuple[tuple[str, ...], dict[str, CameraInfo]]:
    """The cameras any info has, in the infos' order, and each one's record in the first info that has it."""
    first: dict[str, CameraInfo] = {}
    for info in infos:
        for cam in info.cameras:
            first.setdefault(cam.name, cam)
    order = [n for n in CAMERA_ORDER if n in first] + sorted(set(first) - set(CAMERA_ORDER))
    return tuple(order), first


def infos_path_for(root: str | os.PathLike[str], version: str, max_sweeps: int, split: str) -> Path:
    """The info file :func:`perception.datasets.nuscenes_infos.create_nuscenes_infos` wrote for these settings."""
    return infos_path(root, version, max_sweeps, split)
