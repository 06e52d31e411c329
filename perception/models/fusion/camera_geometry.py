"""Boxes between the LiDAR frame and a camera's frame: what the camera branch predicts and how it maps back.

A LiDAR-frame box ``[x, y, z, dx, dy, dz, yaw, vx, vy]`` seen by view ``v`` (``cam_to_lidar = [[R, t], [0, 1]]``,
intrinsics ``K``) is described in that camera as (:class:`CameraBoxes`):

- ``uv``: the pixel of the projected box centre, ``depth``: the centre's camera-frame z (m of the camera frame);
- ``log_dims``: ``log([dx, dy, dz] / scale)`` with ``scale = |det R| ** (1/3)`` (global scaling augmentation folded
  into ``R`` scales the LiDAR frame; the camera's metric is the unscaled one, so sizes and depths keep their
  real-world values whatever the augmentation);
- ``rot``: ``(sin, cos)`` of the heading as seen by the camera: the LiDAR heading direction ``(cos yaw, sin yaw,
  0)`` mapped into the camera frame (``R^-1 d``), its ``(d_x, d_z)`` normalised (``sin = d_x``, ``cos = d_z``: the
  angle from the optical axis towards the image's right);
- ``velocity``: ``(v_x, v_z)`` of ``R^-1 [vx, vy, 0]``, camera frame (camera metric, m/s).

All four are invariant under the global 3D augmentation (rotation, BEV flip, scaling, translation, all folded into
``cam_to_lidar``), and a horizontal image flip (mirrored virtual camera ``cam_to_lidar @ diag(-1, 1, 1, 1)``,
``cx -> W - cx``) gives ``u -> W - u``, ``sin -> -sin``, ``v_x -> -v_x``: what the mirrored image shows.

Inverse (:func:`camera_to_boxes`): the centre by unprojection; the heading and the velocity through the 2x2 map
``M`` (rows x and z of ``R^-1``, columns LiDAR x and y) from horizontal LiDAR vectors to camera ``(x, z)``:
``(cos yaw, sin yaw) ~ M^-1 (sin, cos)`` and ``(vx, vy) = M^-1 (v_x, v_z)``. For a level camera (camera y axis
vertical) this is the exact inverse. For a pitched or rolled camera it is still exact, because boxes are
horizontal (yaw about LiDAR z, no vertical velocity): the dropped camera y component is a linear function of the
kept ones. It only breaks down when ``M`` is singular (optical axis vertical: a camera looking straight down or
up), where ``M`` is regularised and the heading is meaningless; driving rigs are far from that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from perception.structures import CameraBatch

__all__ = ["CameraBoxes", "boxes_to_camera", "camera_to_boxes", "rig_scale"]

# Below this |det M| (normalised by scale^2) a camera's horizontal-plane map is treated as degenerate.
_MIN_DET = 1e-6


@dataclass
class CameraBoxes:
    """Boxes described in camera frames; leading shape ``S`` is ``(B, V, G)`` from :func:`boxes_to_camera` or
    ``(B, Q)`` for per-query predictions.

    Attributes:
        uv: float32 ``(*S, 2)`` projected centre pixel ``[u, v]`` (continuous pixels of the input image).
        depth: float32 ``S`` camera-frame z of the centre (m, camera metric).
        log_dims: float32 ``(*S, 3)`` ``log([dx, dy, dz] / scale)``.
        rot: float32 ``(*S, 2)`` ``(sin, cos)`` of the camera-frame heading (module docstring).
        velocity: float32 ``(*S, 2)`` camera-frame ``(v_x, v_z)`` (m/s, camera metric).
        visible: bool ``S`` (from :func:`boxes_to_camera`: depth > 1e-3 m, centre inside the image, view valid,
            and not padding); None for predictions.
    """

    uv: torch.Tensor
    depth: torch.Tensor
    log_dims: torch.Tensor
    rot: torch.Tensor
    velocity: torch.Tensor
    visible: torch.Tensor | None = None

    def __post_init__(self) -> None:
        shape = tuple(self.depth.shape)
        for name, value, last in (
            ("uv", self.uv, 2),
            ("log_dims", self.log_dims, 3),
            ("rot", self.rot, 2),
            ("velocity", self.velocity, 2),
        ):
            if tuple(value.shape) != (*shape, last):
                raise ValueError(
                    f"CameraBoxes.{name} must be {(*shape, last)} to match depth {shape}, got {tuple(value.shape)}"
                )
        if self.visible is not None and tuple(self.visible.shape) != shape:
            raise ValueError(f"CameraBoxes.visible must be {shape}, got {tuple(self.visible.shape)}")


def rig_scale(rotation: torch.Tensor) -> torch.Tensor:
    """``|det R| ** (1/3)`` of ``(..., 3, 3)`` (scaled / mirrored rotations) -> ``(...)``: the global scaling
    folded into ``cam_to_lidar``."""
    return torch.linalg.det(rotation.double()).abs().pow(1.0 / 3.0).to(rotation.dtype)


def _horizontal_map(lidar_to_cam_rot: torch.Tensor) -> torch.Tensor:
    """``M`` ``(..., 2, 2)``: LiDAR horizontal ``(x, y)`` -> camera ``(x, z)`` (rows 0, 2 and columns 0, 1 of
    ``R^-1``)."""
    return lidar_to_cam_rot[..., [0, 2], :][..., :, :2]


def _pad_boxes(boxes: torch.Tensor | Sequence[torch.Tensor], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, G, 7|9)`` tensor or ``B`` tensors ``(G_b, 7|9)`` -> float32 ``(B, G, 9)`` (zero velocity for 7
    columns, zero padding) and bool ``(B, G)`` real-box mask."""
    if isinstance(boxes, torch.Tensor):
        if boxes.ndim != 3 or boxes.shape[0] != batch or boxes.shape[2] not in (7, 9):
            raise ValueError(f"boxes must be (B={batch}, G, 7|9), got {tuple(boxes.shape)}")
        items = list(boxes)
    else:
        items = list(boxes)
        if len(items) != batch:
            raise ValueError(f"boxes must hold one (G, 7|9) tensor per sample ({batch}), got {len(items)}")
    for i, b in enumerate(items):
        if b.ndim != 2 or b.shape[1] not in (7, 9):
            raise ValueError(f"boxes[{i}] must be (G, 7|9), got {tuple(b.shape)}")
    g = max((len(b) for b in items), default=0)
    device = items[0].device if items else torch.device("cpu")
    out = torch.zeros(batch, g, 9, dtype=torch.float32, device=device)
    mask = torch.zeros(batch, g, dtype=torch.bool, device=device)
    for i, b in enumerate(items):
        out[i, : len(b), : b.shape[1]] = b.float()
        mask[i, : len(b)] = True
    return out, mask


def boxes_to_camera(boxes: torch.Tensor | Sequence[torch.Tensor], cams: CameraBatch) -> CameraBoxes:
    """Describe LiDAR-frame boxes in every view of their sample (rule: module docstring).

    Args:
        boxes: float ``(B, G, 7|9)`` or a list of ``B`` tensors ``(G_b, 7|9)`` (padded to ``G = max G_b``; padding
            is never visible); 7 columns mean zero velocity.
        cams: the batch's cameras (``B`` samples, ``V`` views).

    Returns:
        :class:`CameraBoxes` with leading shape ``(B, V, G)`` and ``visible`` set.
    """
    box, real = _pad_boxes(boxes, cams.batch_size)
    uv, depth, visible = cams.project(box[..., :3])  # (B, V, G, 2), (B, V, G), (B, V, G)
    to_cam = cams.lidar_to_cam[..., :3, :3]  # (B, V, 3, 3)
    scale = rig_scale(cams.cam_to_lidar[..., :3, :3])  # (B, V)
    m = _horizontal_map(to_cam)[:, :, None]  # (B, V, 1, 2, 2)
    yaw = box[..., 6]
    heading = torch.stack([torch.cos(yaw), torch.sin(yaw)], dim=-1)[:, None]  # (B, 1, G, 2)
    d = (m @ heading[..., None])[..., 0]  # (B, V, G, 2) camera (d_x, d_z)
    rot = d / d.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    velocity = (m @ box[:, None, :, 7:9, None])[..., 0]
    log_dims = torch.log(box[:, None, :, 3:6].clamp(min=1e-6) / scale[:, :, None, None])
    return CameraBoxes(
        uv=uv,
        depth=depth,
        log_dims=log_dims.expand(*depth.shape, 3),
        rot=rot,
        velocity=velocity,
        visible=visible & real[:, None],
    )


def camera_to_boxes(camera_boxes: CameraBoxes, view: torch.Tensor, cams: CameraBatch) -> torch.Tensor:
    """LiDAR-frame boxes from per-query camera-frame descriptions: the inverse of :func:`boxes_to_camera`.

    Differentiable in ``camera_boxes`` (the geometry is constant); callers that must not back-propagate through
    it detach.

    Args:
        camera_boxes: :class:`CameraBoxes` with leading shape ``(B, Q)``.
        view: int64 ``(B, Q)`` the view each query belongs to.
        cams: the batch's cameras.

    Returns:
        float32 ``(B, Q, 9)`` ``[x, y, z, dx, dy, dz, yaw, vx, vy]``, yaw in ``[-pi, pi]``.
    """
    b = cams.batch_size
    if view.ndim != 2 or view.shape[0] != b or tuple(camera_boxes.depth.shape) != tuple(view.shape):
        raise ValueError(
            f"view must be (B={b}, Q) matching camera_boxes.depth {tuple(camera_boxes.depth.shape)}, "
            f"got {tuple(view.shape)}"
        )
    if view.numel() and (int(view.min()) < 0 or int(view.max()) >= cams.num_views):
        raise ValueError(f"view indices must lie in [0, {cams.num_views}), got {view.unique().tolist()}")
    rows = torch.arange(b, device=view.device)[:, None]
    cam_to_lidar = cams.cam_to_lidar[rows, view]  # (B, Q, 4, 4)
    to_cam = cams.lidar_to_cam[rows, view][..., :3, :3]
    k_inv = torch.linalg.inv(cams.intrinsics.double()).float()[rows, view]  # (B, Q, 3, 3)
    scale = rig_scale(cam_to_lidar[..., :3, :3])  # (B, Q)

    depth = camera_boxes.depth
    pix = torch.cat([camera_boxes.uv * depth[..., None], depth[..., None]], dim=-1)  # (B, Q, 3)
    cam = (k_inv @ pix[..., None])[..., 0]
    centre = (cam_to_lidar[..., :3, :3] @ cam[..., None])[..., 0] + cam_to_lidar[..., :3, 3]

    m = _horizontal_map(to_cam)
    det = torch.linalg.det(m)
    tiny = _MIN_DET * scale.pow(-2)
    m = torch.where(
        (det.abs() < tiny)[..., None, None], m + tiny[..., None, None] * torch.eye(2, device=m.device), m
    )
    m_inv = torch.linalg.inv(m)  # (B, Q, 2, 2)
    heading = (m_inv @ camera_boxes.rot[..., None])[..., 0]
    yaw = torch.atan2(heading[..., 1], heading[..., 0])
    velocity = (m_inv @ camera_boxes.velocity[..., None])[..., 0]
    dims = torch.exp(camera_boxes.log_dims) * scale[..., None]
    return torch.cat([centre, dims, yaw[..., None], velocity], dim=-1)
