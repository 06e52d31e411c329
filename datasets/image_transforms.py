"""Camera images for fusion models: loading at the network size, image augmentation and view dropout.

Pixel convention (``perception.structures.CameraBatch``): continuous coordinates, pixel ``i`` covers
``[i, i + 1)``. Every image operation here is an affine pixel map ``A`` (3x3, ``[u', v', 1] = A [u, v, 1]``)
folded into the intrinsics as ``K' = A K``, so a LiDAR point projects through the updated rig onto the same
image content as before (tested per camera in ``tests/test_images_data.py``).

* :class:`ImageLoader` (dataset side): each view's file is decoded, resized by ``scale`` (JPEG files are first
  reduced in the DCT domain with PIL's ``draft()`` by 1/2, 1/4 or 1/8 when the target is at most half the file's
  size; the exact factor ``1/k`` is folded into the intrinsics), then cropped to the network ``size``:
  **centred horizontally, from the top** (the bottom rows, the road, are kept; mmdet3d's / BEVFusion's
  ``bot_pct_lim = (0, 0)``). A crop larger than the resized image pads with zeros. Views named in
  ``cameras_off`` are not read: their slot holds a zero image and ``CameraRig.valid`` is False. A file missing
  or unreadable: ``missing="error"`` raises ``FileNotFoundError`` naming the file, the camera and the sample;
  ``"invalid"`` marks the view invalid (zero image) and logs a warning (logger
  ``perception.datasets.image_transforms``).
* :class:`ImageAugment` (training transform): per view a random resize factor, a random horizontal crop (rows
  still cut from the top), and a random horizontal flip, resampled once (bilinear, ``grid_sample``) back to the
  same size. A flip is a mirrored *virtual camera*: ``cam_to_lidar @ diag(-1, 1, 1, 1)`` and ``cx -> W - cx``
  (``K' = F K D`` with ``F`` the pixel mirror and ``D = diag(-1, 1, 1)``), so ``fx, fy`` stay positive.
  The global 3D transforms act on ``cam_to_lidar`` from the left (``T @ cam_to_lidar``), the image transforms
  on ``K`` from the left and (flip) on ``cam_to_lidar`` from the right, so they compose in any order.
* :class:`ViewDropout` (training transform): each view dropped with ``probability``, or all of them at once with
  ``all_probability``; a dropped view is marked invalid and its image zeroed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from perception.structures import IMAGENET_NORM, CameraRig, ImageNorm, Sample

__all__ = ["ImageAugment", "ImageLoader", "ViewDropout", "flip_camera", "pixel_affine"]

logger = logging.getLogger(__name__)

#: Draft (DCT-domain) reductions libjpeg offers.
_DRAFT_FACTORS = (8, 4, 2, 1)


def pixel_affine(sx: float, sy: float, tx: float, ty: float) -> np.ndarray:
    """float64 ``(3, 3)`` pixel map ``u' = sx u + tx``, ``v' = sy v + ty``."""
    return np.array([[sx, 0.0, tx], [0.0, sy, ty], [0.0, 0.0, 1.0]])


def flip_camera(
    intrinsics: np.ndarray, cam_to_lidar: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The mirrored virtual camera of a horizontally flipped image of ``width`` pixels.

    Args:
        intrinsics: ``(3, 3)``; cam_to_lidar: ``(4, 4)``.

    Returns:
        ``(K', cam_to_lidar')`` with ``K' = F K D`` (``cx -> W - cx``, skew negated) and
        ``cam_to_lidar' = cam_to_lidar @ diag(-1, 1, 1, 1)``.
    """
    mirror = np.array([[-1.0, 0.0, float(width)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    d = np.diag([-1.0, 1.0, 1.0])
    return mirror @ intrinsics @ d, cam_to_lidar @ np.diag([-1.0, 1.0, 1.0, 1.0])


def _crop_origin(resized: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """``(x0, y0)`` of the network crop in a resized ``(H, W)`` image: centred in x, from the top in y."""
    (hr, wr), (h, w) = resized, size
    return (wr - w) // 2, hr - h


class ImageLoader:
    """Loads a sample's camera views as uint8 ``(V, 3, H, W)`` at the network size, with their rig.

    Args:
        size: network ``(H, W)``; None keeps each file's resolution (every view must then share one size and
            ``scale`` must be None).
        scale: resize factor from the file's resolution before the crop (0.16: 1600x900 -> 256x144, cropped to
            e.g. 256x128); None: ``W / file width`` (the width fits exactly).
        cameras_off: camera names whose views are kept but invalid (zero image, not read from disk).
        missing: ``"error"`` or ``"invalid"``, see the module docstring.
        norm: the normalisation the collate applies to these images (the image backbone's; default ImageNet).
    """

    def __init__(
        self,
        *,
        size: Sequence[int] | None = None,
        scale: float | None = None,
        cameras_off: Sequence[str] = (),
        missing: Literal["error", "invalid"] = "error",
        norm: ImageNorm = IMAGENET_NORM,
    ) -> None:
        if size is not None:
            h, w = (int(v) for v in size)
            if h < 1 or w < 1:
                raise ValueError(f"ImageLoader.size must be positive (H, W), got {size!r}")
            self.size: tuple[int, int] | None = (h, w)
        else:
            self.size = None
            if scale is not None:
                raise ValueError("ImageLoader.scale needs a size (the network image size)")
        if scale is not None and not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"ImageLoader.scale must be > 0, got {scale!r}")
        if missing not in ("error", "invalid"):
            raise ValueError(f"ImageLoader.missing must be 'error' or 'invalid', got {missing!r}")
        self.scale, self.cameras_off, self.missing = scale, tuple(cameras_off), missing
        if not isinstance(norm, ImageNorm):
            raise TypeError(f"ImageLoader.norm must be a perception.structures.ImageNorm, got {norm!r}")
        self.norm = norm

    def check_names(self, names: Sequence[str], where: str) -> None:
        """``ValueError`` if ``cameras_off`` names a camera not in ``names`` (the data set's, from ``where``)."""
        unknown = sorted(set(self.cameras_off) - set(names))
        if unknown:
            raise ValueError(
                f"data.images.cameras_off names cameras {unknown} that {where} does not have; its cameras are "
                f"{list(names)}"
            )

    def geometry(
        self, file_size: tuple[int, int]
    ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
        """For a file of ``(H0, W0)``: the resized ``(Hr, Wr)``, the crop origin ``(x0, y0)`` and the output
        ``(H, W)``."""
        h0, w0 = file_size
        if self.size is None:
            return (h0, w0), (0, 0), (h0, w0)
        s = self.scale if self.scale is not None else self.size[1] / w0
        resized = (max(1, round(h0 * s)), max(1, round(w0 * s)))
        return resized, _crop_origin(resized, self.size), self.size

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """One view: uint8 ``(H, W, 3)`` and the float64 ``(3, 3)`` pixel map from the file to it."""
        with Image.open(path) as im:
            w0, h0 = im.size
            (hr, wr), (x0, y0), (h, w) = self.geometry((h0, w0))
            k = 1
            if (wr, hr) != (w0, h0) and im.format == "JPEG" and 2 * wr <= w0 and 2 * hr <= h0:
                im.draft("RGB", (wr, hr))
                wd, hd = im.size
                k = next(
                    (f for f in _DRAFT_FACTORS if math.ceil(w0 / f) == wd and math.ceil(h0 / f) == hd), 0
                )
                if k == 0:
                    raise ValueError(f"{path}: JPEG draft gave {wd}x{hd} from {w0}x{h0}, not a 1/k reduction")
            rgb = im.convert("RGB")
        wd, hd = rgb.size
        if (wd, hd) != (wr, hr):
            rgb = rgb.resize((wr, hr), Image.Resampling.BILINEAR)
        if (x0, y0, wr, hr) != (0, 0, w, h):
            rgb = rgb.crop((x0, y0, x0 + w, y0 + h))
        # file pixel -> draft (1/k) -> resized (wr/wd, hr/hd) -> crop (-x0, -y0)
        a = pixel_affine(wr / (wd * k), hr / (hd * k), -x0, -y0)
        return np.asarray(rgb), a

    def load(
        self,
        *,
        token: str,
        names: Sequence[str],
        paths: Sequence[Path | None],
        intrinsics: np.ndarray,
        cam_to_lidar: np.ndarray,
        file_sizes: Sequence[tuple[int, int]],
    ) -> tuple[torch.Tensor, CameraRig]:
        """The views of sample ``token``.

        Args:
            names: ``V`` camera names (the data set's fixed order).
            paths: ``V`` image files; None: the sample has no such camera (the view is invalid).
            intrinsics: float ``(V, 3, 3)`` of the files; cam_to_lidar: float ``(V, 4, 4)``.
            file_sizes: ``V`` recorded ``(H0, W0)`` of the files (the intrinsics of a view not read).

        Returns:
            uint8 ``(V, 3, H, W)`` images and their :class:`CameraRig` (``valid`` False for views off, missing
            or unreadable).
        """
        v = len(names)
        images, ks, valid = [], [], []
        for i in range(v):
            path, read = paths[i], None
            if names[i] not in self.cameras_off:
                if path is None:
                    self._missing(token, names[i], "the sample has no such camera", None)
                else:
                    try:
                        read = self._read(path)
                    except (OSError, UnidentifiedImageError, ValueError) as err:
                        self._missing(token, names[i], f"{type(err).__name__}: {err}", path)
            if read is None:  # off, missing or unreadable: zero image, intrinsics from the recorded size
                h0, w0 = (int(x) for x in file_sizes[i])
                (hr, wr), (x0, y0), (h, w) = self.geometry((h0, w0))
                read = np.zeros((h, w, 3), np.uint8), pixel_affine(wr / w0, hr / h0, -x0, -y0)
                valid.append(False)
            else:
                valid.append(True)
            images.append(read[0])
            ks.append(read[1] @ np.asarray(intrinsics[i], np.float64))
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise ValueError(
                f"sample {token}: camera images differ in size {sorted(shapes)}; set data.images.size to "
                "resize them to one network size"
            )
        stacked = np.stack(images).transpose(0, 3, 1, 2)
        rig = CameraRig(
            tuple(names),
            torch.tensor(np.stack(ks), dtype=torch.float32),
            torch.tensor(np.asarray(cam_to_lidar), dtype=torch.float32),
            torch.tensor([stacked.shape[2:]] * v, dtype=torch.int64),
            torch.tensor(valid, dtype=torch.bool),
        )
        return torch.from_numpy(np.ascontiguousarray(stacked)), rig

    def _missing(self, token: str, name: str, why: str, path: Path | None) -> None:
        where = f"sample {token}, camera {name}" + (f": {path}" if path is not None else "")
        if self.missing == "error":
            raise FileNotFoundError(
                f"{where}: image missing or unreadable ({why}); set data.images.missing: invalid to mark such "
                "views invalid instead (e.g. --set data.images.missing=invalid)"
            )
        logger.warning("%s: image missing or unreadable (%s); the view is marked invalid", where, why)


# --------------------------------------------------------------------------------------------------------------
# training-time transforms
# --------------------------------------------------------------------------------------------------------------


def _warp(images: torch.Tensor, maps: Sequence[np.ndarray]) -> torch.Tensor:
    """Resample uint8 ``(V, 3, H, W)`` by the per-view pixel maps ``A`` (input -> output), same size, bilinear,
    zeros outside."""
    v, _, h, w = images.shape
    us = torch.arange(w, dtype=torch.float64) + 0.5
    vs = torch.arange(h, dtype=torch.float64) + 0.5
    gv, gu = torch.meshgrid(vs, us, indexing="ij")
    out_pix = torch.stack([gu, gv, torch.ones_like(gu)], dim=-1)  # (H, W, 3)
    inv = torch.tensor(np.stack([np.linalg.inv(a) for a in maps]))  # (V, 3, 3)
    src = torch.einsum("vij,hwj->vhwi", inv, out_pix)[..., :2]
    grid = torch.stack([2 * src[..., 0] / w - 1, 2 * src[..., 1] / h - 1], dim=-1).float()
    warped = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return warped.round().clamp(0, 255).to(torch.uint8)


class ImageAugment:
    """Random per-view resize, horizontal crop and horizontal flip of the sample's images, folded into the rig.

    Per view: a factor ``r ~ U(resize_range)``; the image is scaled by ``r`` about the origin and cropped back
    to its size ``(H, W)`` at ``x0 ~ U{0 .. W r - W}`` (or a pad when ``r < 1``), rows cut from the top
    (``y0 = H r - H``); then flipped with ``flip_probability``. One bilinear resampling; zeros outside.

    Args:
        resize_range: ``(low, high)`` factors, ``0 < low <= high`` (``(1, 1)``: no resize).
        random_crop: draw ``x0`` uniformly (else centred).
        flip_probability: in ``[0, 1]``.
    """

    def __init__(
        self,
        resize_range: Sequence[float] = (1.0, 1.0),
        random_crop: bool = True,
        flip_probability: float = 0.5,
    ) -> None:
        lo, hi = (float(v) for v in resize_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise ValueError(f"ImageAugment.resize_range must be 0 < low <= high, got {resize_range!r}")
        if not 0.0 <= float(flip_probability) <= 1.0:
            raise ValueError(f"ImageAugment.flip_probability must lie in [0, 1], got {flip_probability}")
        self.resize_range, self.random_crop = (lo, hi), bool(random_crop)
        self.flip_probability = float(flip_probability)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if sample.images is None or sample.cameras is None:
            return sample
        rig = sample.cameras
        _, _, h, w = sample.images.shape
        maps, ks, c2ls = [], [], []
        for i in range(len(rig)):
            r = float(rng.uniform(*self.resize_range))
            wr, hr = w * r, h * r
            lo, hi = sorted((0.0, wr - w))  # r < 1: the crop is a pad, placed at random too
            x0 = float(rng.uniform(lo, hi)) if self.random_crop else (wr - w) / 2
            a = pixel_affine(r, r, -x0, -(hr - h))
            k = a @ rig.intrinsics[i].double().numpy()
            c2l = rig.cam_to_lidar[i].double().numpy()
            if rng.random() < self.flip_probability:
                k, c2l = flip_camera(k, c2l, w)
                a = np.array([[-1.0, 0.0, float(w)], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ a
            maps.append(a)
            ks.append(k)
            c2ls.append(c2l)
        images = _warp(sample.images, maps)
        images[~rig.valid] = 0
        new_rig = CameraRig(
            rig.names,
            torch.tensor(np.stack(ks), dtype=torch.float32),
            torch.tensor(np.stack(c2ls), dtype=torch.float32),
            rig.image_sizes,
            rig.valid,
        )
        return dataclasses.replace(sample, images=images, cameras=new_rig)


class ViewDropout:
    """Drop camera views at random: all at once with ``all_probability``, else each with ``probability``.

    A dropped view is marked invalid (``CameraRig.valid``) and its image zeroed; the slot stays.
    """

    def __init__(self, probability: float = 0.0, all_probability: float = 0.0) -> None:
        for name, p in (("probability", probability), ("all_probability", all_probability)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"ViewDropout.{name} must lie in [0, 1], got {p}")
        self.probability, self.all_probability = float(probability), float(all_probability)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if sample.images is None or sample.cameras is None:
            return sample
        v = len(sample.cameras)
        drop_all = rng.random() < self.all_probability
        per_view = rng.random(v) < self.probability
        drop = torch.from_numpy(np.ones(v, bool) if drop_all else per_view).to(sample.cameras.valid.device)
        if not bool(drop.any()):
            return sample
        images = sample.images.clone()
        images[drop] = 0
        return dataclasses.replace(
            sample, images=images, cameras=sample.cameras.with_valid(sample.cameras.valid & ~drop)
        )
