"""KITTI 3D object dataset: info records (:mod:`.kitti_infos`) -> :class:`~perception.structures.Sample`.

Points: the velodyne scan, channels ``x, y, z, intensity`` (reflectance 0-1), non-finite points dropped and
counted in the log; with ``fov_filter`` (default) only points in front of camera 2 that project inside
``image_2`` are kept (KITTI labels only what camera 2 sees); then the point-cloud range on x, y **and** z
(half-open, as the voxelizer).

Boxes: ``(K, 7)`` in the Velodyne frame, converted from the labels by
:func:`perception.datasets.kitti_calib.boxes_camera_to_lidar`, of the classes in ``class_names`` (DontCare
never), with the centre inside the range. Boxes without points are **kept** unless ``min_points_in_gt`` > 0
(train mode only); objects of ``"unknown"`` difficulty are kept too (``drop_unknown_difficulty`` drops them).
``test`` mode loads no boxes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from perception.formats.points import KITTI_CHANNELS, load_scan
from perception.grid import VoxelGrid
from perception.structures import Boxes3D, CameraRig, Points, Sample

from .base import DetectionDataset, Mode, Transform, check_mode
from .image_transforms import ImageLoader
from .kitti_infos import KITTI_POINT_CHANNELS, KittiInfo, infos_path, load_kitti_infos

__all__ = ["CAMERA_NAMES", "KittiDataset"]

#: The one camera view a KITTI sample carries (left colour camera, ``image_2``).
CAMERA_NAMES = ("image_2",)


class KittiDataset(DetectionDataset):
    """KITTI frames as typed samples; use ``collate_fn=Batch.collate`` in a ``DataLoader``.

    Args:
        infos_path: an info file of ``tools/create_data.py kitti``; or None to use ``root`` + ``split``.
        root: the KITTI root (default: the info file's folder).
        split: ``train`` / ``val`` / ``test`` (when ``infos_path`` is None).
        class_names: detector classes (KITTI names, e.g. ``Car``); label ``i`` is ``class_names[i]``.
        grid: the model's voxel grid (``cfg.data.grid``, a :class:`~perception.grid.VoxelGrid`); points and box
            centres outside it (Velodyne frame) are dropped, by the voxelizer's rule.
        max_sweeps: must be 1 (KITTI has single scans); accepted so configs can pass ``DataConfig`` fields.
        use_cameras: load ``image_2`` and its :class:`CameraRig` (one view named ``image_2``).
        images: how (network size, resize / crop into the intrinsics, cameras off, a missing file); None:
            ``ImageLoader()``, the file's resolution.
        mode: ``train`` (transforms, ``min_points_in_gt``), ``val`` (ground truth) or ``test`` (no ground truth).
        transforms: applied in order as ``t(sample, rng)``; ``rng`` is seeded by (``seed``, epoch, index).
        fov_filter: keep only points inside camera 2's image.
        min_points_in_gt: in train mode, drop boxes with fewer points (``num_points_in_gt`` of the infos).
        drop_unknown_difficulty: drop boxes whose KITTI difficulty is unknown (-1).
        seed: base seed of the per-sample generators.
    """

    def __init__(
        self,
        *,
        class_names: Sequence[str],
        grid: VoxelGrid,
        infos_path: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
        split: str | None = None,
        max_sweeps: int = 1,
        use_cameras: bool = False,
        images: ImageLoader | None = None,
        mode: Mode = "train",
        transforms: Sequence[Transform] = (),
        fov_filter: bool = True,
        min_points_in_gt: int = 0,
        drop_unknown_difficulty: bool = False,
        seed: int = 0,
    ) -> None:
        check_mode(mode)
        if max_sweeps != 1:
            raise ValueError(f"max_sweeps must be 1 for KITTI (single scans), got {max_sweeps!r}")
        if infos_path is None:
            if root is None or split is None:
                raise ValueError("give infos_path, or root and split")
            infos_path = infos_path_for(root, split)
        self.infos: list[KittiInfo] = load_kitti_infos(infos_path)
        if mode != "test" and any(i.annos is None for i in self.infos):
            raise ValueError(
                f"{infos_path} has no labels (a KITTI test split): it loads in mode='test' only, without ground "
                "truth (tools/test.py --split test writes its result files and scores nothing)"
            )
        self.root = Path(root) if root is not None else Path(infos_path).parent
        self._setup_common(
            class_names=class_names,
            grid=grid,
            mode=mode,
            transforms=transforms,
            seed=seed,
        )
        self.use_cameras, self.fov_filter = bool(use_cameras), bool(fov_filter)
        self.images = images if images is not None else ImageLoader()
        if self.use_cameras:
            self.images.check_names(CAMERA_NAMES, "KITTI")
        self.min_points_in_gt, self.drop_unknown_difficulty = (
            int(min_points_in_gt),
            bool(drop_unknown_difficulty),
        )

    def _box_mask(self, info: KittiInfo) -> np.ndarray:
        a = info.annos
        if self.mode == "test" or a is None:
            return np.zeros(0 if a is None else len(a), dtype=bool)
        mask = np.isin(a.names, self.class_names)
        if self.mode == "train" and self.min_points_in_gt > 0:
            mask &= a.num_points_in_gt >= self.min_points_in_gt
        if self.drop_unknown_difficulty:
            mask &= a.difficulty >= 0
        return mask & self._centres_in_range(a.boxes_lidar)

    def info_class_names(self, index: int) -> set[str]:
        """Class names (of ``class_names``) of the ground-truth boxes sample ``index`` yields (for CBGS)."""
        info = self.infos[index]
        if info.annos is None:
            return set()
        return {str(n) for n in info.annos.names[self._box_mask(info)]}

    def _camera(self, info: KittiInfo) -> tuple[torch.Tensor, CameraRig]:
        k, cam_to_velo = info.calib.camera(2)
        return self.images.load(
            token=info.frame_id,
            names=CAMERA_NAMES,
            paths=[self.root / info.image_path],
            intrinsics=k[None],
            cam_to_lidar=cam_to_velo[None],
            file_sizes=[info.image_size],
        )

    def __getitem__(self, index: int) -> Sample:
        self._check_index(index)
        info = self.infos[index]
        pts = load_scan(self.root / info.lidar_path, KITTI_CHANNELS)
        if self.fov_filter:
            pts = pts[info.calib.in_image(pts[:, :3], info.image_size)]
        points = Points(torch.from_numpy(np.ascontiguousarray(pts)), KITTI_POINT_CHANNELS)
        points = self._points_in_range(points)
        mask = self._box_mask(info)
        if info.annos is not None and mask.any():
            boxes = np.ascontiguousarray(info.annos.boxes_lidar[mask], dtype=np.float32)
            names = info.annos.names[mask]
        else:
            boxes, names = np.zeros((0, 7), np.float32), np.zeros(0, str)
        images, rig = self._camera(info) if self.use_cameras else (None, None)
        sample = Sample(
            token=info.frame_id,
            points=points,
            boxes=Boxes3D(torch.from_numpy(boxes)),
            labels=torch.tensor([self.class_names.index(str(n)) for n in names], dtype=torch.int64),
            class_names=self.class_names,
            images=images,
            cameras=rig,
        )
        return self._apply_transforms(sample, index)


def infos_path_for(root: str | os.PathLike[str], split: str) -> Path:
    """The info file :func:`perception.datasets.kitti_infos.create_kitti_infos` wrote for ``split``."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    return infos_path(root, split)
