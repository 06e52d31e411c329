"""Typed structures: validation errors, geometric conventions and round trips."""

from __future__ import annotations

import math

import pytest
import torch

from perception.grid import VoxelGrid
from perception.structures import (
    Batch,
    Boxes3D,
    CameraRig,
    Detections,
    DynamicVoxels,
    Points,
    Sample,
    Voxels,
    limit_period,
)


def _random_boxes(n: int, seed: int = 0, velocity: bool = True) -> Boxes3D:
    g = torch.Generator().manual_seed(seed)
    centre = (torch.rand(n, 3, generator=g) - 0.5) * 80
    dims = torch.rand(n, 3, generator=g) * 5 + 0.3
    yaw = (torch.rand(n, 1, generator=g) - 0.5) * 2 * math.pi
    cols = [centre, dims, yaw]
    if velocity:
        cols.append((torch.rand(n, 2, generator=g) - 0.5) * 20)
    return Boxes3D(torch.cat(cols, dim=1))


def _points_in_box_local(xyz: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """Independent inside test: move into the box frame and compare with the half sizes (strict, float64)."""
    d = xyz.double() - box[:3].double()
    c, s = math.cos(float(box[6])), math.sin(float(box[6]))
    lx = d[:, 0] * c + d[:, 1] * s
    ly = -d[:, 0] * s + d[:, 1] * c
    half = box[3:6].double() / 2
    return (lx.abs() < half[0]) & (ly.abs() < half[1]) & (d[:, 2].abs() < half[2])


# ---------------------------------------------------------------------------------------------- boxes


def test_corners_follow_the_convention() -> None:
    box = Boxes3D(torch.tensor([[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, math.pi / 2]]))
    c = box.corners()[0]
    # yaw 90 deg: the heading (dx = 4) points along +y, so the front-left corner is at (1 - 1, 2 + 2, 3 - 0.5).
    torch.testing.assert_close(c[0], torch.tensor([0.0, 4.0, 2.5]), atol=1e-5, rtol=0)
    torch.testing.assert_close(c.mean(0), torch.tensor([1.0, 2.0, 3.0]))
    assert c[4:, 2].eq(3.5).all() and c[:4, 2].eq(2.5).all()


def test_bev_corners_are_counter_clockwise_with_box_area() -> None:
    boxes = _random_boxes(50, velocity=False)
    p = boxes.bev_corners().double()
    x, y = p[..., 0], p[..., 1]
    area = 0.5 * (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1)  # shoelace, positive for CCW
    torch.testing.assert_close(area, (boxes.dims[:, 0] * boxes.dims[:, 1]).double(), rtol=1e-5, atol=1e-4)


def test_corners_round_trip() -> None:
    boxes = _random_boxes(100, velocity=False)
    back = Boxes3D.from_corners(boxes.corners())
    torch.testing.assert_close(back.tensor[:, :6], boxes.tensor[:, :6], atol=1e-4, rtol=1e-5)
    dyaw = limit_period(back.yaw - boxes.yaw)
    assert dyaw.abs().max() < 1e-4


@pytest.mark.parametrize("op", ["rotate", "flip_x", "flip_y", "scale", "translate"])
def test_global_transforms_are_invertible(op: str) -> None:
    boxes = _random_boxes(64)
    pts = Points(torch.randn(500, 5) * 20)
    fwd = {
        "rotate": (lambda b: b.rotate(0.7), lambda b: b.rotate(-0.7)),
        "flip_x": (lambda b: b.flip("x"), lambda b: b.flip("x")),
        "flip_y": (lambda b: b.flip("y"), lambda b: b.flip("y")),
        "scale": (lambda b: b.scale(1.07), lambda b: b.scale(1 / 1.07)),
        "translate": (lambda b: b.translate([1.0, -2.0, 0.5]), lambda b: b.translate([-1.0, 2.0, -0.5])),
    }[op]
    b2 = fwd[1](fwd[0](boxes))
    torch.testing.assert_close(b2.tensor[:, :6], boxes.tensor[:, :6], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(b2.tensor[:, 7:], boxes.tensor[:, 7:], atol=1e-4, rtol=1e-5)
    assert limit_period(b2.yaw - boxes.yaw).abs().max() < 1e-5
    p2 = fwd[1](fwd[0](pts))
    torch.testing.assert_close(p2.tensor, pts.tensor, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("op", ["rotate", "flip_x", "flip_y", "scale", "translate"])
def test_points_inside_a_box_stay_inside_after_a_global_transform(op: str) -> None:
    boxes = _random_boxes(8, seed=3, velocity=True)
    # points sampled inside each box (80% of the half size) and some outside
    g = torch.Generator().manual_seed(1)
    local = (torch.rand(8, 40, 3, generator=g) - 0.5) * 0.8 * boxes.dims[:, None, :]
    inside = Boxes3D(boxes.tensor.clone())
    xyz = (inside.corners().mean(1)[:, None, :] + 0 * local).clone()
    c, s = torch.cos(boxes.yaw)[:, None], torch.sin(boxes.yaw)[:, None]
    xyz[..., 0] += local[..., 0] * c - local[..., 1] * s
    xyz[..., 1] += local[..., 0] * s + local[..., 1] * c
    xyz[..., 2] += local[..., 2]
    outside = torch.randn(300, 3) * 40
    cloud = Points(torch.cat([xyz.reshape(-1, 3), outside]), ("x", "y", "z"))
    before = torch.stack([_points_in_box_local(cloud.xyz, b) for b in boxes.tensor])
    apply = {
        "rotate": lambda o: o.rotate(-2.3),
        "flip_x": lambda o: o.flip("x"),
        "flip_y": lambda o: o.flip("y"),
        "scale": lambda o: o.scale(0.93),
        "translate": lambda o: o.translate(torch.tensor([3.0, 0.2, -1.0])),
    }[op]
    b2, p2 = apply(boxes), apply(cloud)
    after = torch.stack([_points_in_box_local(p2.xyz, b) for b in b2.tensor])
    assert before[:, :320].any(0).all()  # every sampled point is inside its box
    assert torch.equal(before, after)


def test_velocity_follows_rotation_and_flip() -> None:
    b = Boxes3D(torch.tensor([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 1.0, 0.0]]))
    torch.testing.assert_close(b.rotate(math.pi / 2).velocity, torch.tensor([[0.0, 1.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.flip("y").velocity, torch.tensor([[-1.0, 0.0]]))
    assert abs(float(b.flip("y").yaw) - (-math.pi)) < 1e-6  # pi wraps to -pi in [-pi, pi)


def test_limit_period_range() -> None:
    a = torch.linspace(-20, 20, 1001)
    w = limit_period(a)
    assert bool((w >= -math.pi).all() and (w < math.pi).all())
    torch.testing.assert_close(torch.sin(w), torch.sin(a), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("tensor", "err", "match"),
    [
        (torch.zeros(3, 8), ValueError, r"\(N, 7\)"),
        (torch.zeros(3, 7, dtype=torch.float64), TypeError, "float32"),
        (torch.zeros(7), ValueError, "2-D"),
        (torch.tensor([[0, 0, 0, -1, 1, 1, 0.0]]), ValueError, ">= 0"),
    ],
)
def test_boxes_validation(tensor: torch.Tensor, err: type[Exception], match: str) -> None:
    with pytest.raises(err, match=match):
        Boxes3D(tensor)


# ---------------------------------------------------------------------------------------------- points


def test_points_validation_and_channels() -> None:
    with pytest.raises(ValueError, match="4 columns but 5 channel names"):
        Points(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="start with"):
        Points(torch.zeros(2, 3), ("y", "x", "z"))
    with pytest.raises(TypeError, match="float32"):
        Points(torch.zeros(2, 5, dtype=torch.float16))
    with pytest.raises(TypeError, match="torch.Tensor"):
        Points([[0.0, 0.0, 0.0]], ("x", "y", "z"))  # type: ignore[arg-type]
    p = Points(torch.arange(10.0).reshape(2, 5))
    torch.testing.assert_close(p.channel("time_lag"), torch.tensor([4.0, 9.0]))
    with pytest.raises(KeyError, match="channels are"):
        p.channel("ring")


def test_in_range_mask_checks_all_three_axes_and_non_finite() -> None:
    rng = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    pts = torch.tensor(
        [
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 1.0],  # on the upper z border -> outside (half-open)
            [-1.0, -1.0, -1.0],  # on the lower border -> inside
            [0.0, 0.0, 5.0],  # z out
            [0.0, 5.0, 0.0],
            [5.0, 0.0, 0.0],
            [float("nan"), 0.0, 0.0],
            [0.0, float("inf"), 0.0],
        ]
    )
    mask = Points(pts, ("x", "y", "z")).in_range_mask(VoxelGrid(rng, (0.5, 0.5, 0.5)))
    assert mask.tolist() == [True, False, True, False, False, False, False, False]
    assert Points(pts, ("x", "y", "z")).finite_mask().tolist() == [True] * 6 + [False, False]


def test_in_range_mask_is_the_voxelizers_rule() -> None:
    """Points kept by the range mask are exactly those the voxelizer puts in a voxel, at the borders too."""
    from perception.ops.voxelize import voxelize

    grid = VoxelGrid((-51.2, -51.2, -5.0, 51.2, 51.2, 3.0), (0.1, 0.1, 0.2))
    hi = torch.tensor(grid.hi)
    near = torch.nextafter(hi, torch.tensor(-1e9))  # the largest float32 below each upper border
    gen = torch.Generator().manual_seed(0)
    pts = torch.cat(
        [
            (torch.rand(2000, 3, generator=gen) - 0.5) * 120,  # inside and outside
            hi.expand(3, 3).clone(),  # on the upper borders
            near.expand(3, 3).clone(),  # just below them (float32 quotient may round up to the grid size)
            torch.tensor(grid.lo).expand(2, 3).clone(),
        ]
    )
    mask = Points(pts, ("x", "y", "z")).in_range_mask(grid)
    kept = voxelize(pts, grid, mode="dynamic").point_to_voxel >= 0
    assert torch.equal(mask, kept) and 0 < int(mask.sum()) < len(pts)
    # The rule this replaced (``lo <= p < hi`` in metres) kept the points just below the upper borders, whose
    # float32 voxel index rounds up to the grid size: the voxelizer drops them, and now the filter does too.
    old_rule = ((pts >= torch.tensor(grid.lo)) & (pts < hi)).all(dim=1)
    assert bool(old_rule[2003:2006].all()) and not bool(mask[2003:2006].any())


# ---------------------------------------------------------------------------------------------- cameras


def _rig() -> CameraRig:
    # Camera looking along LiDAR +x: camera z = lidar x, camera x = -lidar y, camera y = -lidar z.
    r = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    front = torch.eye(4)
    front[:3, :3] = r
    front[:3, 3] = torch.tensor([1.5, 0.0, 1.6])
    back = front.clone()
    back[:3, :3] = torch.diag(torch.tensor([-1.0, -1.0, 1.0])) @ r  # rotated 180 deg about z
    k = torch.tensor([[1266.0, 0.0, 816.0], [0.0, 1266.0, 491.0], [0.0, 0.0, 1.0]])
    return CameraRig(
        ("CAM_FRONT", "CAM_BACK"),
        torch.stack([k, k]),
        torch.stack([front, back]),
        torch.tensor([[900, 1600]] * 2),
    )


def test_camera_projection_round_trip_and_visibility() -> None:
    rig = _rig()
    xyz = torch.tensor([[20.0, 0.0, 1.6], [20.0, 3.0, 0.0], [-20.0, 0.0, 0.0]])
    uv, depth, vis = rig.project(xyz)
    torch.testing.assert_close(
        uv[0, 0], torch.tensor([816.0, 491.0])
    )  # straight ahead hits the principal point
    assert vis[0].tolist() == [True, True, False] and vis[1].tolist() == [False, False, True]
    assert uv[0, 1, 0] < 816  # a point to the left (+y) appears left in the image
    back = rig.unproject(uv, depth)
    torch.testing.assert_close(back[0, :2], xyz[:2], atol=1e-3, rtol=1e-5)  # the third is behind the camera
    torch.testing.assert_close(back[1, 2], xyz[2], atol=1e-3, rtol=1e-5)


def test_camera_rig_follows_global_lidar_transform() -> None:
    rig = _rig()
    xyz = torch.tensor([[20.0, 1.0, 0.5], [15.0, -2.0, 1.0]])
    angle = 0.4
    t = torch.eye(4)
    t[:2, :2] = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = Points(xyz, ("x", "y", "z")).rotate(angle).xyz
    uv0, _, _ = rig.project(xyz)
    uv1, _, _ = rig.transform_lidar(t).project(moved)
    torch.testing.assert_close(uv1, uv0, atol=1e-2, rtol=1e-5)


def test_camera_rig_validation() -> None:
    rig = _rig()
    with pytest.raises(ValueError, match=r"intrinsics must have shape \(2, 3, 3\)"):
        CameraRig(rig.names, rig.intrinsics[:1], rig.cam_to_lidar, rig.image_sizes)
    bad = rig.cam_to_lidar.clone()
    bad[0, 3, 0] = 1
    with pytest.raises(ValueError, match="last row"):
        CameraRig(rig.names, rig.intrinsics, bad, rig.image_sizes)
    with pytest.raises(TypeError, match="int64"):
        CameraRig(rig.names, rig.intrinsics, rig.cam_to_lidar, rig.image_sizes.int())


# ---------------------------------------------------------------------------------------------- samples


def _sample(token: str, n: int, k: int, with_images: bool = False) -> Sample:
    names = ("car", "pedestrian")
    images = torch.randint(0, 255, (2, 3, 9, 16), dtype=torch.uint8) if with_images else None
    return Sample(
        token,
        Points(torch.randn(n, 5)),
        _random_boxes(k, seed=n),
        torch.randint(0, 2, (k,)),
        names,
        images,
        _rig() if with_images else None,
    )


@pytest.mark.parametrize("with_images", [False, True])
def test_batch_collate_unbatch_round_trip(with_images: bool) -> None:
    samples = [
        _sample("a", 10, 3, with_images),
        _sample("b", 0, 0, with_images),
        _sample("c", 7, 1, with_images),
    ]
    batch = Batch.collate(samples)
    assert batch.batch_size == 3 and batch.points.shape == (17, 5)
    assert batch.batch_index.tolist() == [0] * 10 + [2] * 7
    for s, r in zip(samples, batch.unbatch(), strict=True):
        assert s.token == r.token
        assert torch.equal(s.points.tensor, r.points.tensor)
        assert torch.equal(s.boxes.tensor, r.boxes.tensor) and torch.equal(s.labels, r.labels)
        if with_images:
            assert r.images is not None and s.images is not None and torch.equal(s.images, r.images)
    moved = batch.to("meta")
    assert moved.points.device.type == "meta" and moved.boxes[0].tensor.device.type == "meta"


def test_batch_and_sample_validation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Batch.collate([])
    a, b = _sample("a", 3, 1), _sample("b", 3, 1)
    b.points = Points(torch.zeros(3, 3), ("x", "y", "z"))
    with pytest.raises(ValueError, match="point channels"):
        Batch.collate([a, b])
    with pytest.raises(ValueError, match="images or none"):
        Batch.collate([_sample("a", 3, 1, True), _sample("b", 3, 1, False)])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        Sample("x", Points(torch.zeros(0, 5)), _random_boxes(1), torch.tensor([2]), ("car", "pedestrian"))
    with pytest.raises(ValueError, match="together"):
        Sample(
            "x",
            Points(torch.zeros(0, 5)),
            Boxes3D.empty(),
            torch.zeros(0, dtype=torch.int64),
            ("car",),
            None,
            _rig(),
        )


def test_detections_and_voxels() -> None:
    det = Detections(_random_boxes(5), torch.rand(5), torch.arange(5))
    top = det.select(det.scores > 0.5)
    assert len(top) == int((det.scores > 0.5).sum())
    with pytest.raises(ValueError, match=r"scores must have shape \(5,\)"):
        Detections(_random_boxes(5), torch.rand(4), torch.arange(5))
    vox = Voxels(
        torch.zeros(4, 10, 5),
        torch.zeros(4, 4, dtype=torch.int32),
        torch.ones(4, dtype=torch.int32),
        (40, 1440, 1440),
    )
    assert vox.num_voxels == 4 and vox.to("meta").features.device.type == "meta"
    with pytest.raises(TypeError, match="int32"):
        Voxels(
            torch.zeros(4, 10, 5),
            torch.zeros(4, 4, dtype=torch.int64),
            torch.ones(4, dtype=torch.int32),
            (1, 1, 1),
        )
    dyn = DynamicVoxels(
        torch.tensor([0, -1, 0]),
        torch.zeros(1, 4, dtype=torch.int32),
        torch.tensor([2], dtype=torch.int32),
        (1, 1, 1),
    )
    assert dyn.num_voxels == 1
