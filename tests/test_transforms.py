"""Global transforms, filters, shuffling and Compose, each on a case with a known answer."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from perception.datasets.transforms import (
    Compose,
    GlobalRotation,
    GlobalScaling,
    GlobalTranslation,
    ObjectRangeFilter,
    PointRangeFilter,
    PointShuffle,
    RandomFlip,
)
from perception.grid import VoxelGrid
from perception.ops.points_in_boxes import points_in_boxes
from perception.structures import Boxes3D, CameraRig, Points, Sample

CLASSES = ("car", "pedestrian")


def front_camera() -> CameraRig:
    """One pinhole camera 1.5 m above the LiDAR looking along +x (camera z = LiDAR x, x = -y, y = -z)."""
    c2l = torch.eye(4)
    c2l[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    c2l[:3, 3] = torch.tensor([0.2, 0.0, 1.5])
    k = torch.tensor([[[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]]])
    return CameraRig(("CAM_FRONT",), k, c2l[None], torch.tensor([[480, 640]]))


def make_sample(seed: int = 0) -> Sample:
    """Two boxes with velocities, 40 points strictly inside each, 100 background points, a camera."""
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.tensor(
        [[12.0, 3.0, -0.5, 4.0, 2.0, 1.6, 0.4, 3.0, 1.0], [20.0, -4.0, 0.0, 0.8, 0.6, 1.8, -2.0, 0.0, 1.2]]
    )
    inside = []
    for b in boxes:
        local = (torch.rand(40, 3, generator=gen) - 0.5) * 0.9 * b[3:6]
        c, s = math.cos(b[6]), math.sin(b[6])
        xy = local[:, :2] @ torch.tensor([[c, s], [-s, c]])
        inside.append(torch.cat([xy + b[:2], local[:, 2:] + b[2]], dim=1))
    background = torch.rand(100, 3, generator=gen) * torch.tensor([10.0, 10.0, 2.0]) + torch.tensor(
        [-5.0, -5.0, -2]
    )
    xyz = torch.cat([*inside, background])
    extra = torch.rand(len(xyz), 2, generator=gen)
    points = Points(torch.cat([xyz, extra], dim=1))
    images = torch.zeros((1, 3, 8, 8), dtype=torch.uint8)
    return Sample("tok", points, Boxes3D(boxes), torch.tensor([0, 1]), CLASSES, images, front_camera())


def assert_same(a: Sample, b: Sample, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a.points.tensor, b.points.tensor, atol=atol, rtol=0)
    ta, tb = a.boxes.tensor, b.boxes.tensor
    torch.testing.assert_close(ta[:, :6], tb[:, :6], atol=atol, rtol=0)
    torch.testing.assert_close(ta[:, 7:], tb[:, 7:], atol=atol, rtol=0)
    dyaw = torch.remainder(ta[:, 6] - tb[:, 6] + math.pi, 2 * math.pi) - math.pi
    assert float(dyaw.abs().max()) < atol
    torch.testing.assert_close(a.labels, b.labels)
    assert a.cameras is not None and b.cameras is not None
    torch.testing.assert_close(a.cameras.cam_to_lidar, b.cameras.cam_to_lidar, atol=atol, rtol=0)


GLOBAL_TRANSFORMS = {
    "rotation": GlobalRotation((-math.pi / 4, math.pi / 4)),
    "rotation_large": GlobalRotation((2.5, 3.0)),
    "scaling": GlobalScaling((0.9, 1.1)),
    "flip_x": RandomFlip(x=True, y=False, probability=1.0),
    "flip_y": RandomFlip(x=False, y=True, probability=1.0),
    "translation": GlobalTranslation((0.5, 0.5, 0.2)),
    "chain": Compose(
        [
            RandomFlip(x=True, y=True, probability=1.0),
            GlobalRotation((0.3, 0.6)),
            GlobalScaling((0.9, 1.1)),
            GlobalTranslation((1.0, 1.0, 0.3)),
        ]
    ),
}


@pytest.mark.parametrize("axis", ["x", "y", "both"])
def test_flip_twice_is_identity(axis: str) -> None:
    flip = RandomFlip(x=axis in ("x", "both"), y=axis in ("y", "both"), probability=1.0)
    rng = np.random.default_rng(0)
    s = make_sample()
    once = flip(s, rng)
    assert not torch.allclose(once.points.tensor, s.points.tensor)
    assert_same(flip(once, rng), s)


def test_rotate_then_back_is_identity() -> None:
    a = 0.7
    s = make_sample()
    out = GlobalRotation((-a, -a))(
        GlobalRotation((a, a))(s, np.random.default_rng(0)), np.random.default_rng(1)
    )
    assert_same(out, s)


@pytest.mark.parametrize("name", list(GLOBAL_TRANSFORMS))
def test_points_stay_inside_their_boxes(name: str) -> None:
    s = make_sample()
    before, counts = points_in_boxes(s.points.tensor, s.boxes.tensor)
    assert counts.tolist() == [40, 40]
    out = GLOBAL_TRANSFORMS[name](s, np.random.default_rng(3))
    after, _ = points_in_boxes(out.points.tensor, out.boxes.tensor)
    assert torch.equal(before, after)
    assert torch.equal(out.points.tensor[:, 3:], s.points.tensor[:, 3:])  # other channels untouched


@pytest.mark.parametrize("name", list(GLOBAL_TRANSFORMS))
def test_camera_projection_unchanged(name: str) -> None:
    s = make_sample()
    corners = s.boxes.corners().reshape(-1, 3)  # carried through the transform as points
    s = dataclasses.replace(s, points=Points(torch.cat([corners, torch.zeros(len(corners), 2)], dim=1)))
    assert s.cameras is not None
    uv, depth, visible = s.cameras.project(corners)
    assert bool(visible.all())  # the test boxes are in front of the camera
    out = GLOBAL_TRANSFORMS[name](s, np.random.default_rng(5))
    assert out.cameras is not None and out.images is s.images
    assert not torch.allclose(out.points.xyz, corners)
    uv2, depth2, visible2 = out.cameras.project(out.points.xyz)
    torch.testing.assert_close(uv2, uv, atol=2e-3, rtol=0)  # pixels
    torch.testing.assert_close(depth2, depth, atol=1e-4, rtol=0)
    assert torch.equal(visible2, visible)


def test_velocities_follow_the_transform() -> None:
    s = make_sample()
    v = s.boxes.velocity
    assert v is not None
    rng = np.random.default_rng(0)
    rotated = GlobalRotation((math.pi / 2, math.pi / 2))(s, rng).boxes
    torch.testing.assert_close(rotated.velocity, torch.stack([-v[:, 1], v[:, 0]], dim=1), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        rotated.center[:, :2], torch.stack([-s.boxes.center[:, 1], s.boxes.center[:, 0]], 1)
    )
    flipped = RandomFlip(x=True, probability=1.0)(s, rng).boxes
    torch.testing.assert_close(flipped.velocity, torch.stack([v[:, 0], -v[:, 1]], dim=1))
    flipped = RandomFlip(x=False, y=True, probability=1.0)(s, rng).boxes
    torch.testing.assert_close(flipped.velocity, torch.stack([-v[:, 0], v[:, 1]], dim=1))
    scaled = GlobalScaling((2.0, 2.0))(s, rng).boxes
    torch.testing.assert_close(scaled.velocity, 2 * v)
    torch.testing.assert_close(scaled.dims, 2 * s.boxes.dims)
    torch.testing.assert_close(GlobalTranslation((1.0, 1.0, 1.0))(s, rng).boxes.velocity, v)


def test_flip_probability_zero_and_determinism() -> None:
    s = make_sample()
    out = RandomFlip(x=True, y=True, probability=0.0)(s, np.random.default_rng(0))
    assert torch.equal(out.points.tensor, s.points.tensor)
    pipeline = GLOBAL_TRANSFORMS["chain"]
    a = Compose([RandomFlip(True, True), GlobalRotation((-1, 1)), PointShuffle()])(
        s, np.random.default_rng(9)
    )
    b = Compose([RandomFlip(True, True), GlobalRotation((-1, 1)), PointShuffle()])(
        s, np.random.default_rng(9)
    )
    assert torch.equal(a.points.tensor, b.points.tensor) and torch.equal(a.boxes.tensor, b.boxes.tensor)
    c = pipeline(s, np.random.default_rng(10))
    assert not torch.equal(a.points.tensor[:, :3], c.points.tensor[:, :3])


def test_translation_and_scaling_values() -> None:
    s = make_sample()
    out = GlobalTranslation((0.0, 0.0, 0.0))(s, np.random.default_rng(0))
    assert torch.equal(out.points.tensor, s.points.tensor)
    rng = np.random.default_rng(4)
    expected = np.random.default_rng(4).normal(size=3) * np.array([1.0, 2.0, 0.5])
    out = GlobalTranslation((1.0, 2.0, 0.5))(s, rng)
    torch.testing.assert_close(
        out.points.xyz - s.points.xyz, torch.tensor(expected).float().expand(len(s.points), 3)
    )
    out = GlobalScaling((1.5, 1.5))(s, rng)
    torch.testing.assert_close(out.points.xyz, 1.5 * s.points.xyz)


def test_point_shuffle_is_a_permutation() -> None:
    s = make_sample()
    out = PointShuffle()(s, np.random.default_rng(1))
    assert not torch.equal(out.points.tensor, s.points.tensor)
    key = lambda t: t[torch.argsort(t[:, 0])]  # noqa: E731  (x values are distinct)
    assert torch.equal(key(out.points.tensor), key(s.points.tensor))
    again = PointShuffle()(s, np.random.default_rng(1))
    assert torch.equal(out.points.tensor, again.points.tensor)
    empty = Sample(
        "e", Points(torch.zeros((0, 5))), Boxes3D.empty(), torch.zeros(0, dtype=torch.int64), CLASSES
    )
    assert len(PointShuffle()(empty, np.random.default_rng(0)).points) == 0


def test_point_range_filter_uses_x_y_and_z() -> None:
    xyz = torch.tensor(
        [[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.99, 0.99, 0.99], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0, 0, -1.01],
         [0.0, 1.0, 0.0], [float("nan"), 0, 0]]
    )  # fmt: skip
    s = Sample("t", Points(xyz, ("x", "y", "z")), Boxes3D.empty(), torch.zeros(0, dtype=torch.int64), CLASSES)
    out = PointRangeFilter(VoxelGrid((-1, -1, -1, 1, 1, 1), (0.5, 0.5, 0.5)))(s, np.random.default_rng(0))
    assert out.points.tensor.tolist() == xyz[:3].tolist()  # upper borders excluded, lower included


def test_point_range_filter_keeps_what_the_voxelizer_keeps() -> None:
    """The filter's kept points are exactly the dynamic voxelizer's (``point_to_voxel >= 0``), on and just below
    the upper borders too (where a float32 quotient rounds up to the grid size) and on the lower borders."""
    from perception.ops.voxelize import voxelize

    grid = VoxelGrid((-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), (0.075, 0.075, 0.2))
    lo, hi = torch.tensor(grid.lo), torch.tensor(grid.hi)
    below = torch.nextafter(hi, torch.tensor(-1e9))  # the largest float32 under each upper border
    gen = torch.Generator().manual_seed(3)
    rand = (torch.rand(3000, 3, generator=gen) - 0.5) * 130
    xyz = torch.cat([rand, hi.expand(2, 3), below.expand(4, 3), lo.expand(2, 3)])
    # one coordinate at a time on a border, the others inside
    for axis in range(3):
        for value in (lo[axis], hi[axis], below[axis], torch.nextafter(lo[axis], torch.tensor(-1e9))):
            p = torch.zeros(1, 3)
            p[0, axis] = value
            xyz = torch.cat([xyz, p])
    s = Sample("t", Points(xyz, ("x", "y", "z")), Boxes3D.empty(), torch.zeros(0, dtype=torch.int64), CLASSES)
    out = PointRangeFilter(grid)(s, np.random.default_rng(0))
    kept = voxelize(xyz, grid, mode="dynamic").point_to_voxel >= 0
    assert 0 < int(kept.sum()) < len(xyz)
    assert torch.equal(out.points.tensor, xyz[kept])


def test_object_range_filter() -> None:
    boxes = torch.tensor(
        [[0.0, 0.0, 5.0, 1, 1, 1, 0], [10.0, 0.0, 0.0, 1, 1, 1, 0], [-10.0, 5.0, 0.0, 1, 1, 1, 0],
         [3.0, -10.0, 0.0, 1, 1, 1, 0], [9.99, -10.0, 0.0, 4, 4, 1, 0]]
    )  # fmt: skip
    labels = torch.tensor([0, 1, 0, 1, 0])
    s = Sample("t", Points(torch.zeros((0, 5))), Boxes3D(boxes), labels, CLASSES)
    out = ObjectRangeFilter(VoxelGrid((-10, -10, -2, 10, 10, 2), (0.5, 0.5, 0.5)))(
        s, np.random.default_rng(0)
    )
    # z ignored by default; x = 10 (upper border) dropped; box 4 kept though it has no points and sticks out
    assert out.boxes.tensor.tolist() == boxes[[0, 2, 3, 4]].tolist()
    assert out.labels.tolist() == [0, 0, 1, 0]
    out = ObjectRangeFilter(VoxelGrid((-10, -10, -2, 10, 10, 2), (0.5, 0.5, 0.5)), use_z=True)(
        s, np.random.default_rng(0)
    )
    assert out.labels.tolist() == [0, 1, 0]


class EpochRecorder:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return sample

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_compose_forwards_set_epoch_and_checks_output() -> None:
    rec = EpochRecorder()
    pipeline = Compose([PointShuffle(), rec, Compose([rec])])
    pipeline.set_epoch(3)
    assert rec.epochs == [3, 3]
    with pytest.raises(TypeError, match="returned NoneType"):
        Compose([lambda s, r: None])(make_sample(), np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"transforms\[0\] must be callable"):
        Compose([3])  # type: ignore[list-item]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="angle_range"):
        GlobalRotation((1.0, -1.0))
    with pytest.raises(ValueError, match="scale_range must be > 0"):
        GlobalScaling((0.0, 1.0))
    with pytest.raises(ValueError, match="scale_range"):
        GlobalScaling((1.0,))
    with pytest.raises(ValueError, match="probability"):
        RandomFlip(probability=1.5)
    with pytest.raises(ValueError, match="std"):
        GlobalTranslation((1.0, -1.0, 0.0))
    with pytest.raises(TypeError, match="VoxelGrid"):
        PointRangeFilter((0, 0, 0, 1, 1, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="VoxelGrid"):
        ObjectRangeFilter((0, 0, 0, 1, 1, 1))  # type: ignore[arg-type]
