"""camera_geometry: LiDAR boxes <-> camera-frame boxes, round trips under the global 3D augmentation and the image
flip; the camera-frame description is invariant under the global augmentation (it is folded into cam_to_lidar)."""

from __future__ import annotations

import math

import pytest
import torch

from perception.models.fusion.camera_geometry import CameraBoxes, boxes_to_camera, camera_to_boxes
from perception.structures import Boxes3D, CameraBatch, CameraRig, limit_period

H, W = 64, 128


def camera_pose(facing: float, *, pitch: float = 0.0, roll: float = 0.0, height: float = 1.6) -> torch.Tensor:
    """float32 ``(4, 4)`` cam_to_lidar of a camera at ``(0.3, 0.1, height)`` looking along LiDAR direction
    ``facing`` (radians CCW from +x), tilted down by ``pitch`` and rolled by ``roll`` about its optical axis."""
    z = torch.tensor([math.cos(facing), math.sin(facing), 0.0], dtype=torch.float64)
    x = torch.tensor([math.sin(facing), -math.cos(facing), 0.0], dtype=torch.float64)
    y = torch.cross(z, x, dim=0)  # down
    rot = torch.stack([x, y, z], dim=1)  # columns: camera axes in the LiDAR frame
    cp, sp, cr, sr = math.cos(pitch), math.sin(pitch), math.cos(roll), math.sin(roll)
    pitch_m = torch.tensor([[1, 0, 0], [0, cp, sp], [0, -sp, cp]], dtype=torch.float64)  # about camera x
    roll_m = torch.tensor([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]], dtype=torch.float64)  # about camera z
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3] = rot @ pitch_m @ roll_m
    out[:3, 3] = torch.tensor([0.3, 0.1, height], dtype=torch.float64)
    return out.float()


def ring_rig(num_views: int = 6, *, pitch: float = 0.0, roll: float = 0.0, focal: float = 60.0) -> CameraRig:
    """``num_views`` cameras evenly around the car, images ``H x W``."""
    k = torch.tensor([[focal, 0.0, W / 2 + 1.3], [0.0, focal, H / 2 - 0.7], [0.0, 0.0, 1.0]])
    poses = [camera_pose(2 * math.pi * i / num_views, pitch=pitch, roll=roll) for i in range(num_views)]
    return CameraRig(
        tuple(f"CAM_{i}" for i in range(num_views)),
        k.expand(num_views, 3, 3).clone(),
        torch.stack(poses),
        torch.tensor([[H, W]] * num_views),
    )


def camera_batch(rigs: list[CameraRig], valid: torch.Tensor | None = None) -> CameraBatch:
    """A :class:`CameraBatch` of zero images for ``rigs`` (one per sample)."""
    v = len(rigs[0])
    return CameraBatch(
        images=torch.zeros(len(rigs), v, 3, H, W),
        intrinsics=torch.stack([r.intrinsics for r in rigs]),
        cam_to_lidar=torch.stack([r.cam_to_lidar for r in rigs]),
        valid=torch.stack([r.valid for r in rigs]) if valid is None else valid,
        names=rigs[0].names,
    )


def random_boxes(n: int, seed: int, *, radius: float = 25.0) -> Boxes3D:
    """``n`` boxes with velocity around the car (2-``radius`` m away)."""
    g = torch.Generator().manual_seed(seed)
    r = 3.0 + (radius - 3.0) * torch.rand(n, generator=g)
    a = 2 * math.pi * torch.rand(n, generator=g)
    t = torch.stack(
        [
            r * torch.cos(a),
            r * torch.sin(a),
            -1.0 + 2.0 * torch.rand(n, generator=g),
            *(0.5 + 4.0 * torch.rand(3, n, generator=g)),
            math.pi * (2 * torch.rand(n, generator=g) - 1),
            *(5.0 * torch.randn(2, n, generator=g)),
        ],
        dim=1,
    )
    return Boxes3D(t)


def _assert_boxes_close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got[..., :6], want[..., :6], atol=2e-3, rtol=1e-4)
    dyaw = limit_period(got[..., 6] - want[..., 6])
    assert float(dyaw.abs().max()) < 1e-4
    torch.testing.assert_close(got[..., 7:9], want[..., 7:9], atol=1e-3, rtol=1e-4)


def _round_trip(boxes: torch.Tensor, cams: CameraBatch) -> tuple[CameraBoxes, torch.Tensor, torch.Tensor]:
    """boxes ``(1, G, 9)`` -> camera boxes -> back, through every view that sees each box; returns the camera
    boxes, the recovered boxes ``(P, 9)`` and the matching originals ``(P, 9)``."""
    cb = boxes_to_camera(boxes, cams)
    b, v, g = cb.visible.nonzero(as_tuple=True)
    assert len(b) >= 10, "the fixture must make boxes visible"
    per_query = CameraBoxes(
        uv=cb.uv[b, v, g][None],
        depth=cb.depth[b, v, g][None],
        log_dims=cb.log_dims[b, v, g][None],
        rot=cb.rot[b, v, g][None],
        velocity=cb.velocity[b, v, g][None],
    )
    back = camera_to_boxes(per_query, v[None], cams)[0]
    return cb, back, boxes[b, g]


def _augment(
    boxes: Boxes3D, rig: CameraRig, angle: float, flip: str | None, scale: float, shift: list[float]
):
    """Global augmentation as the data path does it: boxes moved by Boxes3D, the same transform folded into the
    rig (``T @ cam_to_lidar``)."""
    t = torch.eye(4)
    c, s = math.cos(angle), math.sin(angle)
    rot = torch.eye(4)
    rot[:2, :2] = torch.tensor([[c, -s], [s, c]])
    boxes, t = boxes.rotate(angle), rot @ t
    if flip is not None:
        mirror = torch.eye(4)
        mirror[1 if flip == "x" else 0, 1 if flip == "x" else 0] = -1.0
        boxes, t = boxes.flip(flip), mirror @ t
    sc = torch.diag(torch.tensor([scale, scale, scale, 1.0]))
    boxes, t = boxes.scale(scale), sc @ t
    tr = torch.eye(4)
    tr[:3, 3] = torch.tensor(shift)
    boxes, t = boxes.translate(shift), tr @ t
    return boxes, rig.transform_lidar(t)


@pytest.mark.parametrize("pitch,roll", [(0.0, 0.0), (0.15, 0.0), (0.1, 0.05)])
def test_round_trip_plain_and_tilted_cameras(pitch: float, roll: float) -> None:
    boxes = random_boxes(60, seed=1).tensor[None]
    cams = camera_batch([ring_rig(pitch=pitch, roll=roll)])
    _, back, want = _round_trip(boxes, cams)
    _assert_boxes_close(back, want)


@pytest.mark.parametrize(
    "angle,flip,scale,shift",
    [
        (0.7, None, 1.0, [0.0, 0.0, 0.0]),
        (-2.1, "x", 1.07, [0.4, -0.3, 0.1]),
        (0.3, "y", 0.93, [-1.0, 0.5, -0.2]),
        (1.9, "x", 0.95, [0.0, 0.0, 0.0]),
    ],
)
def test_global_augmentation_round_trip_and_invariance(angle, flip, scale, shift) -> None:
    """After rotation / BEV flip (mirrored 3x3) / scaling / translation folded into cam_to_lidar: the camera-frame
    description equals the unaugmented one and camera_to_boxes returns the augmented boxes."""
    rig = ring_rig(pitch=0.05)
    boxes = random_boxes(60, seed=2)
    aug_boxes, aug_rig = _augment(boxes, rig, angle, flip, scale, shift)
    plain = boxes_to_camera(boxes.tensor[None], camera_batch([rig]))
    cb, back, want = _round_trip(aug_boxes.tensor[None], camera_batch([aug_rig]))
    _assert_boxes_close(back, want)
    assert torch.equal(cb.visible, plain.visible)
    vis = plain.visible
    for name in ("uv", "depth", "log_dims", "rot", "velocity"):
        torch.testing.assert_close(getattr(cb, name)[vis], getattr(plain, name)[vis], atol=2e-3, rtol=1e-4)


def test_image_flip_is_a_mirrored_virtual_camera() -> None:
    """cam_to_lidar @ diag(-1, 1, 1, 1) and cx -> W - cx: u -> W - u, sin -> -sin, v_x -> -v_x, the rest equal,
    and the round trip through the flipped camera is exact."""
    rig = ring_rig()
    k = rig.intrinsics.clone()
    k[:, 0, 2] = W - k[:, 0, 2]
    flipped = CameraRig(
        rig.names, k, rig.cam_to_lidar @ torch.diag(torch.tensor([-1.0, 1, 1, 1])), rig.image_sizes
    )
    boxes = random_boxes(60, seed=3).tensor[None]
    plain = boxes_to_camera(boxes, camera_batch([rig]))
    cb, back, want = _round_trip(boxes, camera_batch([flipped]))
    _assert_boxes_close(back, want)
    vis = plain.visible & cb.visible
    assert int(vis.sum()) >= 10
    mirror = torch.tensor([-1.0, 1.0])
    torch.testing.assert_close(cb.uv[vis][:, 0], W - plain.uv[vis][:, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(cb.uv[vis][:, 1], plain.uv[vis][:, 1], atol=1e-3, rtol=0)
    torch.testing.assert_close(cb.depth[vis], plain.depth[vis])
    torch.testing.assert_close(cb.log_dims[vis], plain.log_dims[vis])
    torch.testing.assert_close(cb.rot[vis], plain.rot[vis] * mirror)
    torch.testing.assert_close(cb.velocity[vis], plain.velocity[vis] * mirror)


def test_level_camera_heading_rule() -> None:
    """A box straight ahead of the front camera heading away from it: sin 0, cos 1; heading to the camera's right
    (LiDAR -y for a camera facing +x): sin 1, cos 0. Dims are LiDAR dims over the rig's scale."""
    rig = ring_rig(1)
    boxes = torch.tensor(
        [
            [10.0, 0.1, 1.0, 4.0, 2.0, 1.5, 0.0, 3.0, 0.0],
            [10.0, 0.1, 1.0, 4.0, 2.0, 1.5, -math.pi / 2, 0.0, -2.0],
        ]
    )
    cb = boxes_to_camera(boxes[None], camera_batch([rig]))
    torch.testing.assert_close(cb.rot[0, 0], torch.tensor([[0.0, 1.0], [1.0, 0.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(cb.velocity[0, 0], torch.tensor([[0.0, 3.0], [2.0, 0.0]]), atol=1e-5, rtol=0)
    scaled = rig.transform_lidar(torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    cb2 = boxes_to_camera(Boxes3D(boxes).scale(2.0).tensor[None], camera_batch([scaled]))
    torch.testing.assert_close(cb2.log_dims, cb.log_dims)
    torch.testing.assert_close(cb.log_dims[0, 0, 0], torch.log(torch.tensor([4.0, 2.0, 1.5])))


def test_visibility_padding_and_invalid_views() -> None:
    """A list of boxes pads per sample (padding never visible); invalid views see nothing; 7-column boxes get zero
    velocity; a box behind every camera or outside every image is invisible."""
    rig = ring_rig(2)
    valid = torch.tensor([[True, True], [True, False]])
    inside = torch.tensor([[10.0, 0.0, 1.0, 4.0, 2.0, 1.5, 0.3]])
    far_up = torch.tensor([[10.0, 0.0, 60.0, 4.0, 2.0, 1.5, 0.3]])  # far above the image
    cams = camera_batch([rig, rig], valid)
    cb = boxes_to_camera([torch.cat([inside, far_up]), inside], cams)
    assert cb.depth.shape == (2, 2, 2) and cb.velocity.shape == (2, 2, 2, 2)
    assert cb.visible.tolist() == [[[True, False], [False, False]], [[True, False], [False, False]]]
    assert float(cb.velocity.abs().max()) == 0.0
    cams_off = camera_batch([rig, rig], torch.zeros(2, 2, dtype=torch.bool))
    assert not boxes_to_camera([inside, inside], cams_off).visible.any()


def test_camera_to_boxes_gradients_and_errors() -> None:
    rig = ring_rig(3)
    cams = camera_batch([rig])
    q = 4
    fields = {
        "uv": torch.full((1, q, 2), 30.0, requires_grad=True),
        "depth": torch.full((1, q), 8.0, requires_grad=True),
        "log_dims": torch.zeros(1, q, 3, requires_grad=True),
        "rot": torch.tensor([[[0.6, 0.8]] * q], requires_grad=True),
        "velocity": torch.ones(1, q, 2, requires_grad=True),
    }
    boxes = camera_to_boxes(CameraBoxes(**fields), torch.tensor([[0, 1, 2, 0]]), cams)
    assert boxes.shape == (1, q, 9)
    boxes.square().sum().backward()
    for name, t in fields.items():
        assert t.grad is not None and float(t.grad.abs().sum()) > 0, name
    with pytest.raises(ValueError, match="view indices"):
        camera_to_boxes(
            CameraBoxes(**{k: v.detach() for k, v in fields.items()}), torch.tensor([[0, 1, 3, 0]]), cams
        )
    with pytest.raises(ValueError, match="CameraBoxes.uv"):
        CameraBoxes(
            torch.zeros(1, 2, 3),
            torch.zeros(1, 2),
            torch.zeros(1, 2, 3),
            torch.zeros(1, 2, 2),
            torch.zeros(1, 2, 2),
        )
    with pytest.raises(ValueError, match="boxes must be"):
        boxes_to_camera(torch.zeros(1, 3, 8), cams)
