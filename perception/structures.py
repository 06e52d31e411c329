"""Typed data carriers passed between the stages of the stack (see DESIGN.md, "Data flow").

Every tensor field documents its shape, dtype, units and frame. Constructors validate and raise ``ValueError``
/ ``TypeError`` naming the field and what was expected. ``.to(device)`` moves every tensor.

Conventions (DESIGN.md):
* LiDAR frame: the data set's sensor frame, right-handed, z up, metres (KITTI velodyne: x forward, y left;
  nuScenes LIDAR_TOP: x right, y forward; ``perception.viz.frames`` names the axes per format).
* Boxes ``(N, 7)`` ``[x, y, z, dx, dy, dz, yaw]`` or ``(N, 9)`` with ``[vx, vy]`` (m/s); ``(x, y, z)`` is the box
  centre, ``dx`` the length along the heading, ``yaw`` counter-clockwise about +z from +x, radians.
* Voxel coordinates: int32 ``(M, 4)`` ``[batch, z, y, x]``; grid shape ``[nz, ny, nx]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from perception._validate import check_tensor
from perception.grid import VoxelGrid


@dataclass
class Voxels:
    """Hard voxels: up to ``P`` points per voxel, padded with zeros.

    Attributes:
        features: float32 ``(M, P, C)``; the first ``counts[i]`` rows of voxel ``i`` are its points in input
            order, the rest are zeros.
        coords: int32 ``(M, 4)`` ``[batch, z, y, x]`` voxel indices.
        counts: int32 ``(M,)`` number of valid points per voxel, ``1 <= counts <= P``.
        grid_shape: ``(nz, ny, nx)`` of the voxel grid.
    """

    features: torch.Tensor
    coords: torch.Tensor
    counts: torch.Tensor
    grid_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        check_tensor("Voxels.features", self.features, ndim=3, dtype=torch.float32)
        m = self.features.shape[0]
        check_tensor("Voxels.coords", self.coords, shape=(m, 4), dtype=torch.int32)
        check_tensor("Voxels.counts", self.counts, shape=(m,), dtype=torch.int32)
        if len(self.grid_shape) != 3:
            raise ValueError(f"Voxels.grid_shape must be (nz, ny, nx), got {self.grid_shape}")

    @property
    def num_voxels(self) -> int:
        return int(self.features.shape[0])

    def to(self, device: torch.device | str) -> Voxels:
        return Voxels(
            self.features.to(device), self.coords.to(device), self.counts.to(device), self.grid_shape
        )


@dataclass
class DynamicVoxels:
    """Dynamic voxelization: every point keeps its voxel index; no point is capped away.

    Attributes:
        point_to_voxel: int64 ``(N,)`` index into ``coords`` for each input point, ``-1`` for dropped points
            (outside the range on any axis, or non-finite).
        coords: int32 ``(M, 4)`` ``[batch, z, y, x]`` of the occupied voxels.
        counts: int32 ``(M,)`` number of points in each voxel.
        grid_shape: ``(nz, ny, nx)``.
    """

    point_to_voxel: torch.Tensor
    coords: torch.Tensor
    counts: torch.Tensor
    grid_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        check_tensor("DynamicVoxels.point_to_voxel", self.point_to_voxel, ndim=1, dtype=torch.int64)
        check_tensor("DynamicVoxels.coords", self.coords, ndim=2, dtype=torch.int32)
        m = self.coords.shape[0]
        check_tensor("DynamicVoxels.coords", self.coords, shape=(m, 4))
        check_tensor("DynamicVoxels.counts", self.counts, shape=(m,), dtype=torch.int32)

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    def to(self, device: torch.device | str) -> DynamicVoxels:
        return DynamicVoxels(
            self.point_to_voxel.to(device), self.coords.to(device), self.counts.to(device), self.grid_shape
        )


# --------------------------------------------------------------------------------------------------------------
# Points
# --------------------------------------------------------------------------------------------------------------

#: The channel that carries a point's sweep time (seconds before the keyframe) in multi-sweep clouds.
TIME_LAG = "time_lag"
DEFAULT_POINT_CHANNELS: tuple[str, ...] = ("x", "y", "z", "intensity", TIME_LAG)


@dataclass
class Points:
    """A LiDAR point cloud in the LiDAR frame (metres).

    Attributes:
        tensor: float32 ``(N, C)``, ``C >= 3``; columns named by ``channels`` and starting with ``x, y, z``.
            ``time_lag`` (when present) is seconds between the point's sweep and the keyframe, ``>= 0``.
        channels: names of the ``C`` columns; default ``("x", "y", "z", "intensity", "time_lag")``.
    """

    tensor: torch.Tensor
    channels: tuple[str, ...] = DEFAULT_POINT_CHANNELS

    def __post_init__(self) -> None:
        check_tensor("Points.tensor", self.tensor, ndim=2, dtype=torch.float32)
        self.channels = tuple(self.channels)
        if self.channels[:3] != ("x", "y", "z"):
            raise ValueError(f"Points.channels must start with ('x', 'y', 'z'), got {self.channels}")
        if len(self.channels) != self.tensor.shape[1]:
            raise ValueError(
                f"Points.tensor has {self.tensor.shape[1]} columns but {len(self.channels)} channel names "
                f"{self.channels}"
            )
        if len(set(self.channels)) != len(self.channels):
            raise ValueError(f"Points.channels must be unique, got {self.channels}")

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    @property
    def xyz(self) -> torch.Tensor:
        """float32 ``(N, 3)`` view of the coordinates."""
        return self.tensor[:, :3]

    def channel(self, name: str) -> torch.Tensor:
        """float32 ``(N,)`` column ``name``; ``KeyError`` listing the available channels otherwise."""
        if name not in self.channels:
            raise KeyError(f"no channel {name!r}; channels are {self.channels}")
        return self.tensor[:, self.channels.index(name)]

    def to(self, device: torch.device | str) -> Points:
        return Points(self.tensor.to(device), self.channels)

    def select(self, mask_or_index: torch.Tensor) -> Points:
        """Points selected by a bool ``(N,)`` mask or an int64 index tensor."""
        return Points(self.tensor[mask_or_index], self.channels)

    def finite_mask(self) -> torch.Tensor:
        """bool ``(N,)``: every channel of the point is finite."""
        return torch.isfinite(self.tensor).all(dim=1)

    def in_range_mask(self, grid: VoxelGrid) -> torch.Tensor:
        """bool ``(N,)``: the points inside ``grid`` on x, y **and** z (:meth:`VoxelGrid.contains`: exactly the
        points the voxelizer keeps). Non-finite points are outside."""
        return grid.contains(self.xyz)

    # Global transforms (used by augmentation); all return new objects.
    def rotate(self, angle: float) -> Points:
        """Rotate counter-clockwise by ``angle`` radians about +z through the origin."""
        t = self.tensor.clone()
        t[:, :2] = t[:, :2] @ _rot2d(angle, t).T
        return Points(t, self.channels)

    def flip(self, axis: str) -> Points:
        """Mirror: ``axis="x"`` flips along the x axis (``y -> -y``), ``axis="y"`` along the y axis (``x -> -x``)."""
        t = self.tensor.clone()
        t[:, _flip_column(axis)] *= -1
        return Points(t, self.channels)

    def scale(self, factor: float) -> Points:
        """Scale coordinates about the origin by ``factor > 0``."""
        _check_scale(factor)
        t = self.tensor.clone()
        t[:, :3] *= factor
        return Points(t, self.channels)

    def translate(self, offset: Sequence[float] | torch.Tensor) -> Points:
        """Add ``offset`` ``(3,)`` metres to every point."""
        t = self.tensor.clone()
        t[:, :3] += _as_vec3(offset, t)
        return Points(t, self.channels)


# --------------------------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------------------------

# Unit-box corner signs, ordered: bottom face (z-) counter-clockwise seen from above starting at front-left...
# index: 0 (+x,+y,-z) 1 (-x,+y,-z) 2 (-x,-y,-z) 3 (+x,-y,-z), then 4..7 the same on the top face (z+).
_CORNER_SIGNS = torch.tensor(
    [
        [1, 1, -1],
        [-1, 1, -1],
        [-1, -1, -1],
        [1, -1, -1],
        [1, 1, 1],
        [-1, 1, 1],
        [-1, -1, 1],
        [1, -1, 1],
    ],
    dtype=torch.float32,
)


@dataclass
class Boxes3D:
    """Oriented 3D boxes in the LiDAR frame.

    Attributes:
        tensor: float32 ``(N, 7)`` ``[x, y, z, dx, dy, dz, yaw]`` or ``(N, 9)`` with ``[vx, vy]`` appended.
            ``(x, y, z)`` is the box centre (m); ``dx`` the length along the heading, ``dy`` the width, ``dz`` the
            height (m, ``>= 0``); ``yaw`` radians counter-clockwise about +z from +x; ``vx, vy`` m/s in the same frame.
    """

    tensor: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor("Boxes3D.tensor", self.tensor, ndim=2, dtype=torch.float32)
        if self.tensor.shape[1] not in (7, 9):
            raise ValueError(
                "Boxes3D.tensor must be (N, 7) [x, y, z, dx, dy, dz, yaw] or (N, 9) with [vx, vy], "
                f"got {tuple(self.tensor.shape)}"
            )
        dims = self.tensor[:, 3:6]
        if not dims.is_meta and bool((dims < 0).any()):
            raise ValueError("Boxes3D sizes dx, dy, dz must be >= 0")

    @staticmethod
    def empty(with_velocity: bool = False, device: torch.device | str = "cpu") -> Boxes3D:
        return Boxes3D(torch.zeros((0, 9 if with_velocity else 7), dtype=torch.float32, device=device))

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    @property
    def has_velocity(self) -> bool:
        return self.tensor.shape[1] == 9

    @property
    def center(self) -> torch.Tensor:
        """``(N, 3)`` box centres."""
        return self.tensor[:, :3]

    @property
    def dims(self) -> torch.Tensor:
        """``(N, 3)`` ``[dx, dy, dz]``."""
        return self.tensor[:, 3:6]

    @property
    def yaw(self) -> torch.Tensor:
        """``(N,)`` heading, radians."""
        return self.tensor[:, 6]

    @property
    def velocity(self) -> torch.Tensor | None:
        """``(N, 2)`` ``[vx, vy]`` or None for 7-column boxes."""
        return self.tensor[:, 7:9] if self.has_velocity else None

    def to(self, device: torch.device | str) -> Boxes3D:
        return Boxes3D(self.tensor.to(device))

    def select(self, mask_or_index: torch.Tensor) -> Boxes3D:
        return Boxes3D(self.tensor[mask_or_index])

    def corners(self) -> torch.Tensor:
        """``(N, 8, 3)`` corners; 0-3 the bottom face, 4-7 the top face, each counter-clockwise seen from above
        starting at front-left (``+dx/2, +dy/2``)."""
        signs = _CORNER_SIGNS.to(self.tensor)
        local = signs[None] * self.dims[:, None, :] / 2  # (N, 8, 3)
        cos, sin = torch.cos(self.yaw)[:, None], torch.sin(self.yaw)[:, None]
        x = local[..., 0] * cos - local[..., 1] * sin
        y = local[..., 0] * sin + local[..., 1] * cos
        return torch.stack([x, y, local[..., 2]], dim=-1) + self.center[:, None, :]

    def bev_corners(self) -> torch.Tensor:
        """``(N, 4, 2)`` bird's-eye-view rectangle, counter-clockwise (a valid polygon ring)."""
        return self.corners()[:, :4, :2]

    @staticmethod
    def from_corners(corners: torch.Tensor) -> Boxes3D:
        """Inverse of :meth:`corners` for corners in that order: ``(N, 8, 3)`` -> 7-column boxes."""
        check_tensor("corners", corners, shape=(None, 8, 3), dtype=torch.float32)
        center = corners.mean(dim=1)
        front = (corners[:, 0] + corners[:, 3]) / 2  # middle of the front bottom edge
        back = (corners[:, 1] + corners[:, 2]) / 2
        heading = front - back
        dx = torch.linalg.norm(heading[:, :2], dim=1)
        dy = torch.linalg.norm((corners[:, 0] - corners[:, 3])[:, :2], dim=1)
        dz = corners[:, 4, 2] - corners[:, 0, 2]
        yaw = torch.atan2(heading[:, 1], heading[:, 0])
        return Boxes3D(torch.cat([center, torch.stack([dx, dy, dz, yaw], dim=1)], dim=1))

    def rotate(self, angle: float) -> Boxes3D:
        """Rotate counter-clockwise by ``angle`` radians about +z through the origin (centre, yaw, velocity)."""
        t = self.tensor.clone()
        rot = _rot2d(angle, t)
        t[:, :2] = t[:, :2] @ rot.T
        t[:, 6] = limit_period(t[:, 6] + angle)
        if self.has_velocity:
            t[:, 7:9] = t[:, 7:9] @ rot.T
        return Boxes3D(t)

    def flip(self, axis: str) -> Boxes3D:
        """Mirror like :meth:`Points.flip`: ``"x"``: ``y, yaw, vy -> -y, -yaw, -vy``;
        ``"y"``: ``x -> -x, yaw -> pi - yaw, vx -> -vx``."""
        t = self.tensor.clone()
        col = _flip_column(axis)
        t[:, col] *= -1
        t[:, 6] = limit_period(-t[:, 6] if axis == "x" else torch.pi - t[:, 6])
        if self.has_velocity:
            t[:, 7 + col] *= -1
        return Boxes3D(t)

    def scale(self, factor: float) -> Boxes3D:
        """Scale centres, sizes and velocities about the origin by ``factor > 0``."""
        _check_scale(factor)
        t = self.tensor.clone()
        t[:, :6] *= factor
        if self.has_velocity:
            t[:, 7:9] *= factor
        return Boxes3D(t)

    def translate(self, offset: Sequence[float] | torch.Tensor) -> Boxes3D:
        """Move every centre by ``offset`` ``(3,)`` metres."""
        t = self.tensor.clone()
        t[:, :3] += _as_vec3(offset, t)
        return Boxes3D(t)


def limit_period(angle: torch.Tensor, offset: float = 0.5, period: float = 2 * math.pi) -> torch.Tensor:
    """Wrap ``angle`` into ``[-offset * period, (1 - offset) * period)``; default ``[-pi, pi)``."""
    return angle - torch.floor(angle / period + offset) * period


# --------------------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------------------


@dataclass
class CameraRig:
    """Pinhole cameras rigidly attached to the LiDAR.

    Attributes:
        names: ``K`` camera names (e.g. ``CAM_FRONT``).
        intrinsics: float32 ``(K, 3, 3)`` pixel intrinsics ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
        cam_to_lidar: float32 ``(K, 4, 4)`` transforms mapping camera-frame points (x right, y down,
            z forward, metres) to the LiDAR frame. Rigid as loaded; after global scaling or flipping
            augmentation (:meth:`transform_lidar`) the 3x3 part is a scaled or mirrored rotation, so code must not
            assume it is orthonormal (projection and unprojection stay exact).
        image_sizes: int64 ``(K, 2)`` ``[height, width]`` in pixels.
        valid: bool ``(K,)``: the view holds a real image (default all True). An invalid view (camera missing on
            disk, removed by ``data.images.cameras_off``, or dropped by training-time view dropout) keeps its slot
            so that batches stay rectangular, but its image is all zero and fusion models ignore it entirely.
    """

    names: tuple[str, ...]
    intrinsics: torch.Tensor
    cam_to_lidar: torch.Tensor
    image_sizes: torch.Tensor
    valid: torch.Tensor = None  # type: ignore[assignment]  # filled in by __post_init__

    def __post_init__(self) -> None:
        self.names = tuple(self.names)
        k = len(self.names)
        check_tensor("CameraRig.intrinsics", self.intrinsics, shape=(k, 3, 3), dtype=torch.float32)
        check_tensor("CameraRig.cam_to_lidar", self.cam_to_lidar, shape=(k, 4, 4), dtype=torch.float32)
        check_tensor("CameraRig.image_sizes", self.image_sizes, shape=(k, 2), dtype=torch.int64)
        if self.valid is None:
            self.valid = torch.ones(k, dtype=torch.bool, device=self.intrinsics.device)
        check_tensor("CameraRig.valid", self.valid, shape=(k,), dtype=torch.bool)
        if k == 0 or self.image_sizes.is_meta:
            return
        if bool((self.image_sizes <= 0).any()):
            raise ValueError("CameraRig.image_sizes must be positive [height, width]")
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0]).to(self.cam_to_lidar)
        if not torch.allclose(self.cam_to_lidar[:, 3], bottom.expand(k, 4)):
            raise ValueError(
                "CameraRig.cam_to_lidar must be 4x4 affine transforms with last row [0, 0, 0, 1]"
            )

    def __len__(self) -> int:
        return len(self.names)

    def to(self, device: torch.device | str) -> CameraRig:
        return CameraRig(
            self.names,
            self.intrinsics.to(device),
            self.cam_to_lidar.to(device),
            self.image_sizes.to(device),
            self.valid.to(device),
        )

    def with_valid(self, valid: torch.Tensor) -> CameraRig:
        """The same rig with another validity mask (bool ``(K,)``)."""
        return CameraRig(self.names, self.intrinsics, self.cam_to_lidar, self.image_sizes, valid)

    @property
    def lidar_to_cam(self) -> torch.Tensor:
        """float32 ``(K, 4, 4)`` inverse of ``cam_to_lidar`` (computed in float64)."""
        return torch.linalg.inv(self.cam_to_lidar.double()).to(self.cam_to_lidar.dtype)

    def project(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project LiDAR-frame points into every camera.

        Args:
            xyz: float32 ``(N, 3)`` points in the LiDAR frame.

        Returns:
            uv: float32 ``(K, N, 2)`` pixel coordinates ``[u (column), v (row)]``.
            depth: float32 ``(K, N)`` camera-frame z (m).
            visible: bool ``(K, N)``: depth > 0 and the pixel lies inside the image.
        """
        check_tensor("xyz", xyz, shape=(None, 3), dtype=torch.float32)
        homo = torch.cat([xyz, torch.ones_like(xyz[:, :1])], dim=1)  # (N, 4)
        cam = torch.einsum("kij,nj->kni", self.lidar_to_cam, homo)[..., :3]  # (K, N, 3)
        depth = cam[..., 2]
        pix = torch.einsum("kij,knj->kni", self.intrinsics, cam)
        uv = pix[..., :2] / depth.clamp(min=1e-6)[..., None]
        h = self.image_sizes[:, 0, None].to(uv)
        w = self.image_sizes[:, 1, None].to(uv)
        visible = (depth > 1e-6) & (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)
        return uv, depth, visible

    def unproject(self, uv: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`project`: ``uv`` ``(K, N, 2)`` and ``depth`` ``(K, N)`` -> LiDAR points ``(K, N, 3)``."""
        pix = torch.cat([uv * depth[..., None], depth[..., None]], dim=-1)
        cam = torch.einsum("kij,knj->kni", torch.linalg.inv(self.intrinsics), pix)
        homo = torch.cat([cam, torch.ones_like(cam[..., :1])], dim=-1)
        return torch.einsum("kij,knj->kni", self.cam_to_lidar, homo)[..., :3]

    def transform_lidar(self, lidar_transform: torch.Tensor) -> CameraRig:
        """The rig after the LiDAR-frame content was moved by ``lidar_transform`` ``(4, 4)`` (e.g. a global
        rotation in augmentation): ``cam_to_lidar' = T @ cam_to_lidar`` so projections stay consistent."""
        check_tensor("lidar_transform", lidar_transform, shape=(4, 4))
        t = lidar_transform.to(self.cam_to_lidar)
        return CameraRig(
            self.names, self.intrinsics, t[None] @ self.cam_to_lidar, self.image_sizes, self.valid
        )


@dataclass(frozen=True)
class ImageNorm:
    """Per-channel normalisation of RGB images: ``(pixel - mean) / std`` on the 0-255 scale.

    The values belong to the image backbone's weights (ImageNet statistics for torchvision / mmdet ResNets:
    :data:`IMAGENET_NORM`); ``Batch.collate`` applies them when it turns uint8 images into float32.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"ImageNorm needs 3 means and 3 stds (RGB), got {self.mean}, {self.std}")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise ValueError(f"ImageNorm values must be finite with std > 0, got {self.mean}, {self.std}")

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(..., 3, H, W)`` -> float32 normalised, same shape."""
        check_tensor("images", images, dtype=torch.uint8)
        if images.ndim < 3 or images.shape[-3] != 3:
            raise ValueError(f"images must be (..., 3, H, W), got {tuple(images.shape)}")
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(3, 1, 1)
        return (images.float() - mean) / std


IMAGENET_NORM = ImageNorm(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
"""The RGB mean / std (0-255 scale) of torchvision's and mmdet's ImageNet-pretrained ResNets."""


@dataclass
class CameraBatch:
    """The multi-view camera input of a fusion model for one batch (``B`` samples, ``V`` views).

    Built by :meth:`Batch.camera_batch`. Every view of every sample has a slot; ``valid`` says which slots hold a
    real image (invalid views: camera missing, removed, or dropped in training; their images are zero and every
    model stage must ignore them).

    Attributes:
        images: float32 ``(B, V, 3, H, W)`` normalised images (:class:`ImageNorm`), all of one size.
        intrinsics: float32 ``(B, V, 3, 3)`` pixel intrinsics of these images, image augmentation folded in
            (resize / crop change ``f`` and ``c``; ``fx, fy`` stay positive).
        cam_to_lidar: float32 ``(B, V, 4, 4)`` camera frame (x right, y down, z forward) -> LiDAR frame, with the
            global 3D augmentation folded in (may be a scaled / mirrored rotation, see :class:`CameraRig`). A
            horizontal image flip is a mirrored *virtual camera*: ``cam_to_lidar @ diag(-1, 1, 1, 1)`` with
            ``cx -> W - cx``, so camera-frame quantities (heading, velocity) stay consistent with what the
            mirrored image shows.
        valid: bool ``(B, V)``.
        names: the ``V`` camera names (the same for every sample).
    """

    images: torch.Tensor
    intrinsics: torch.Tensor
    cam_to_lidar: torch.Tensor
    valid: torch.Tensor
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        self.names = tuple(self.names)
        check_tensor("CameraBatch.images", self.images, ndim=5, dtype=torch.float32)
        b, v = self.images.shape[:2]
        if v != len(self.names) or self.images.shape[2] != 3:
            raise ValueError(
                f"CameraBatch.images must be (B, {len(self.names)}, 3, H, W) for the views {self.names}, "
                f"got {tuple(self.images.shape)}"
            )
        check_tensor("CameraBatch.intrinsics", self.intrinsics, shape=(b, v, 3, 3), dtype=torch.float32)
        check_tensor("CameraBatch.cam_to_lidar", self.cam_to_lidar, shape=(b, v, 4, 4), dtype=torch.float32)
        check_tensor("CameraBatch.valid", self.valid, shape=(b, v), dtype=torch.bool)

    @property
    def batch_size(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_views(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the images, pixels."""
        return int(self.images.shape[3]), int(self.images.shape[4])

    def to(self, device: torch.device | str) -> CameraBatch:
        return CameraBatch(
            self.images.to(device),
            self.intrinsics.to(device),
            self.cam_to_lidar.to(device),
            self.valid.to(device),
            self.names,
        )

    @property
    def lidar_to_cam(self) -> torch.Tensor:
        """float32 ``(B, V, 4, 4)`` inverse of ``cam_to_lidar`` (computed in float64)."""
        return torch.linalg.inv(self.cam_to_lidar.double()).float()

    def project(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project LiDAR-frame points of each sample into each of its views.

        Args:
            xyz: float ``(B, N, 3)`` points in the LiDAR frame.

        Returns:
            uv: float32 ``(B, V, N, 2)`` pixel coordinates ``[u (column), v (row)]`` (continuous: pixel ``i``
                covers ``[i, i + 1)``).
            depth: float32 ``(B, V, N)`` camera-frame z (m).
            visible: bool ``(B, V, N)``: depth > 1e-3 m, the pixel lies inside the image, and the view is valid.
        """
        check_tensor("xyz", xyz, shape=(self.batch_size, None, 3))
        homo = torch.cat([xyz.float(), torch.ones_like(xyz[..., :1], dtype=torch.float32)], dim=-1)
        cam = torch.einsum("bvij,bnj->bvni", self.lidar_to_cam, homo)[..., :3]
        depth = cam[..., 2]
        pix = torch.einsum("bvij,bvnj->bvni", self.intrinsics, cam)
        uv = pix[..., :2] / depth.clamp(min=1e-3)[..., None]
        h, w = self.image_size
        visible = (
            (depth > 1e-3)
            & (uv[..., 0] >= 0)
            & (uv[..., 0] < w)
            & (uv[..., 1] >= 0)
            & (uv[..., 1] < h)
            & self.valid[:, :, None]
        )
        return uv, depth, visible

    def unproject(self, uv: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`project`: ``uv`` ``(B, V, N, 2)`` pixels and ``depth`` ``(B, V, N)`` metres ->
        float32 LiDAR-frame points ``(B, V, N, 3)``."""
        pix = torch.cat([uv * depth[..., None], depth[..., None]], dim=-1).float()
        cam = torch.einsum("bvij,bvnj->bvni", torch.linalg.inv(self.intrinsics.double()).float(), pix)
        homo = torch.cat([cam, torch.ones_like(cam[..., :1])], dim=-1)
        return torch.einsum("bvij,bvnj->bvni", self.cam_to_lidar, homo)[..., :3]


# --------------------------------------------------------------------------------------------------------------
# Samples, batches, detections
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One keyframe: points (with sweeps merged in), ground truth and optionally camera images.

    Attributes:
        token: dataset-unique id (nuScenes sample token, KITTI frame id).
        points: the LiDAR points in the keyframe's LiDAR frame.
        boxes: ground-truth boxes ``(K, 7|9)`` in the LiDAR frame (empty at test time).
        labels: int64 ``(K,)`` class index into ``class_names`` for each box.
        class_names: the detector's class list.
        images: uint8 ``(num_cams, 3, H, W)`` RGB images, or None.
        cameras: the camera rig for ``images``, or None.
    """

    token: str
    points: Points
    boxes: Boxes3D
    labels: torch.Tensor
    class_names: tuple[str, ...]
    images: torch.Tensor | None = None
    cameras: CameraRig | None = None

    def __post_init__(self) -> None:
        self.class_names = tuple(self.class_names)
        check_tensor("Sample.labels", self.labels, shape=(len(self.boxes),), dtype=torch.int64)
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)
        ):
            raise ValueError(
                f"Sample.labels must lie in [0, {len(self.class_names)}), got {self.labels.tolist()}"
            )
        if (self.images is None) != (self.cameras is None):
            raise ValueError("Sample.images and Sample.cameras must be given together")
        if self.images is not None and self.cameras is not None:
            check_tensor(
                "Sample.images", self.images, shape=(len(self.cameras), 3, None, None), dtype=torch.uint8
            )

    def to(self, device: torch.device | str) -> Sample:
        return Sample(
            self.token,
            self.points.to(device),
            self.boxes.to(device),
            self.labels.to(device),
            self.class_names,
            None if self.images is None else self.images.to(device),
            None if self.cameras is None else self.cameras.to(device),
        )


@dataclass
class Batch:
    """Several samples for one forward pass.

    Attributes:
        points: float32 ``(N, C)`` all samples' points concatenated.
        batch_index: int64 ``(N,)`` sample index of each point, non-decreasing.
        point_channels: names of the ``C`` columns.
        boxes: per-sample ground truth, ``B`` entries of ``(K_b, 7|9)``.
        labels: per-sample int64 ``(K_b,)`` class indices.
        class_names: the detector's class list.
        tokens: ``B`` sample tokens.
        images: ``(B, num_cams, 3, H, W)``: uint8 as loaded, or float32 normalised when :meth:`collate` was given
            an :class:`ImageNorm` (what fusion models read, through :meth:`camera_batch`); or None.
        cameras: ``B`` camera rigs or None.
    """

    points: torch.Tensor
    batch_index: torch.Tensor
    point_channels: tuple[str, ...]
    boxes: list[Boxes3D]
    labels: list[torch.Tensor]
    class_names: tuple[str, ...]
    tokens: list[str]
    images: torch.Tensor | None = None
    cameras: list[CameraRig] | None = None

    def __post_init__(self) -> None:
        check_tensor("Batch.points", self.points, ndim=2, dtype=torch.float32)
        check_tensor("Batch.batch_index", self.batch_index, shape=(self.points.shape[0],), dtype=torch.int64)
        b = len(self.tokens)
        if len(self.boxes) != b or len(self.labels) != b:
            raise ValueError(
                f"Batch needs one boxes/labels entry per token: {b} tokens, {len(self.boxes)} boxes"
            )
        if (
            len(self.batch_index)
            and not self.batch_index.is_meta
            and (int(self.batch_index.min()) < 0 or int(self.batch_index.max()) >= b)
        ):
            raise ValueError(f"Batch.batch_index must lie in [0, {b})")

    @property
    def batch_size(self) -> int:
        return len(self.tokens)

    def camera_batch(self) -> CameraBatch | None:
        """The batch's cameras as one :class:`CameraBatch`, or None without images.

        Raises:
            ValueError: the images are still uint8 (collate without an :class:`ImageNorm`), or the rigs' image
                sizes differ from the images'.
        """
        if self.images is None or self.cameras is None:
            return None
        if self.images.dtype != torch.float32:
            raise ValueError(
                "Batch.images are not normalised (collate the samples with an ImageNorm, e.g. "
                "Batch.collate(samples, IMAGENET_NORM))"
            )
        h, w = self.images.shape[-2:]
        for rig in self.cameras:
            if bool((rig.image_sizes != torch.tensor([h, w], device=rig.image_sizes.device)).any()):
                raise ValueError(
                    f"camera rig image sizes {rig.image_sizes.tolist()} differ from the images' {h}x{w}"
                )
        return CameraBatch(
            images=self.images,
            intrinsics=torch.stack([c.intrinsics for c in self.cameras]),
            cam_to_lidar=torch.stack([c.cam_to_lidar for c in self.cameras]),
            valid=torch.stack([c.valid for c in self.cameras]),
            names=self.cameras[0].names,
        )

    @staticmethod
    def collate(samples: Sequence[Sample], image_norm: ImageNorm | None = None) -> Batch:
        """Concatenate samples; all must share point channels, class names and (if any) image size and camera
        names. With ``image_norm`` the uint8 images become float32 normalised ``(B, V, 3, H, W)`` here (samples
        keep uint8: four times less memory per sample and per worker queue)."""
        if not samples:
            raise ValueError("Batch.collate needs at least one sample")
        channels, names = samples[0].points.channels, samples[0].class_names
        for s in samples:
            if s.points.channels != channels:
                raise ValueError(
                    f"sample {s.token} has point channels {s.points.channels}, expected {channels}"
                )
            if s.class_names != names:
                raise ValueError(f"sample {s.token} has class names {s.class_names}, expected {names}")
        with_images = [s.images is not None for s in samples]
        if any(with_images) and not all(with_images):
            raise ValueError("Batch.collate: either every sample has images or none has")
        points = torch.cat([s.points.tensor for s in samples])
        index = torch.cat(
            [
                torch.full((len(s.points),), i, dtype=torch.int64, device=points.device)
                for i, s in enumerate(samples)
            ]
        )
        images = torch.stack([s.images for s in samples]) if all(with_images) else None  # type: ignore[misc]
        cameras = [s.cameras for s in samples] if all(with_images) else None
        if cameras is not None and any(c.names != cameras[0].names for c in cameras):  # type: ignore[union-attr]
            raise ValueError("Batch.collate: every sample must have the same cameras in the same order")
        if images is not None and image_norm is not None:
            images = image_norm.apply(images)
        return Batch(
            points=points,
            batch_index=index,
            point_channels=channels,
            boxes=[s.boxes for s in samples],
            labels=[s.labels for s in samples],
            class_names=names,
            tokens=[s.token for s in samples],
            images=images,
            cameras=cameras,  # type: ignore[arg-type]
        )

    def unbatch(self) -> list[Sample]:
        """Inverse of :meth:`collate`."""
        out = []
        for i, token in enumerate(self.tokens):
            pts = Points(self.points[self.batch_index == i], self.point_channels)
            images = None if self.images is None else self.images[i]
            cameras = None if self.cameras is None else self.cameras[i]
            out.append(Sample(token, pts, self.boxes[i], self.labels[i], self.class_names, images, cameras))
        return out

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.points.to(device),
            self.batch_index.to(device),
            self.point_channels,
            [b.to(device) for b in self.boxes],
            [lab.to(device) for lab in self.labels],
            self.class_names,
            list(self.tokens),
            None if self.images is None else self.images.to(device),
            None if self.cameras is None else [c.to(device) for c in self.cameras],
        )


@dataclass
class Detections:
    """Detector output for one sample.

    Attributes:
        boxes: ``(N, 7|9)`` in the LiDAR frame.
        scores: float32 ``(N,)`` confidence in ``[0, 1]``.
        labels: int64 ``(N,)`` class index.
    """

    boxes: Boxes3D
    scores: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.boxes)
        check_tensor("Detections.scores", self.scores, shape=(n,), dtype=torch.float32)
        check_tensor("Detections.labels", self.labels, shape=(n,), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.boxes)

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device))

    def select(self, mask_or_index: torch.Tensor) -> Detections:
        return Detections(
            self.boxes.select(mask_or_index), self.scores[mask_or_index], self.labels[mask_or_index]
        )


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def _rot2d(angle: float, like: torch.Tensor) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s], [s, c]], dtype=like.dtype, device=like.device)


def _flip_column(axis: str) -> int:
    if axis == "x":
        return 1
    if axis == "y":
        return 0
    raise ValueError(f"flip axis must be 'x' (y -> -y) or 'y' (x -> -x), got {axis!r}")


def _check_scale(factor: float) -> None:
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"scale factor must be finite and > 0, got {factor}")


def _as_vec3(offset: Sequence[float] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    vec = torch.as_tensor(offset, dtype=like.dtype, device=like.device)
    if vec.shape != (3,):
        raise ValueError(f"offset must have 3 values (dx, dy, dz), got shape {tuple(vec.shape)}")
    return vec


@dataclass
class SparseFeatures:
    """Features on the occupied cells of a sparse voxel grid (output of a VFE, input/output of 3D backbones).

    Attributes:
        features: float ``(M, C)`` (float32, or bf16/fp16 under autocast) one row per occupied voxel.
        coords: int32 ``(M, 4)`` ``[batch, z, y, x]``, unique rows.
        grid_shape: ``(nz, ny, nx)`` of the grid the coordinates index.
        batch_size: number of samples ``B``; ``coords[:, 0]`` lies in ``[0, B)``.
    """

    features: torch.Tensor
    coords: torch.Tensor
    grid_shape: tuple[int, int, int]
    batch_size: int

    def __post_init__(self) -> None:
        check_tensor("SparseFeatures.features", self.features, ndim=2)
        m = self.features.shape[0]
        check_tensor("SparseFeatures.coords", self.coords, shape=(m, 4), dtype=torch.int32)
        self.grid_shape = tuple(int(v) for v in self.grid_shape)  # type: ignore[assignment]
        if len(self.grid_shape) != 3 or min(self.grid_shape) < 1:
            raise ValueError(
                f"SparseFeatures.grid_shape must be 3 positive sizes (nz, ny, nx), got {self.grid_shape}"
            )
        if self.batch_size < 1:
            raise ValueError(f"SparseFeatures.batch_size must be >= 1, got {self.batch_size}")

    @property
    def num_voxels(self) -> int:
        return int(self.features.shape[0])

    def replace_features(self, features: torch.Tensor) -> SparseFeatures:
        """Same voxels, new ``(M, C')`` features."""
        return SparseFeatures(features, self.coords, self.grid_shape, self.batch_size)

    def to(self, device: torch.device | str) -> SparseFeatures:
        return SparseFeatures(
            self.features.to(device), self.coords.to(device), self.grid_shape, self.batch_size
        )
