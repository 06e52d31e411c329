"""Geometric transfer: the sparse depth map against a direct loop reference, and the depth CNN added to FPN levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from perception.models.fusion.depth_transfer import (
    GeometricTransfer,
    GeometricTransferConfig,
    sparse_depth_map,
)
from perception.models.image.shapes import ImageFeatureShape
from perception.structures import CameraBatch

H, W = 32, 64


def _cams(valid: list[list[bool]]) -> CameraBatch:
    """Views looking along LiDAR directions ``yaw = 0, 2 pi / V, ...`` (camera x right, y down, z forward), with a
    different focal length and a small height offset per view."""
    b, v = len(valid), len(valid[0])
    intr = torch.zeros(b, v, 3, 3)
    c2l = torch.zeros(b, v, 4, 4)
    for i in range(b):
        for j in range(v):
            f = 30.0 + 5 * j + 3 * i
            intr[i, j] = torch.tensor([[f, 0, W / 2 + j], [0, f, H / 2 - i], [0, 0, 1]])
            yaw = 2 * math.pi * j / v + 0.1 * i
            fwd = [math.cos(yaw), math.sin(yaw), 0.0]
            right = [math.sin(yaw), -math.cos(yaw), 0.0]
            down = [0.0, 0.0, -1.0]
            rot = torch.tensor([right, down, fwd]).T  # columns: camera axes in the LiDAR frame
            c2l[i, j, :3, :3] = rot
            c2l[i, j, :3, 3] = torch.tensor([0.5 * i, 0.0, 1.5 + 0.1 * j])
            c2l[i, j, 3, 3] = 1
    return CameraBatch(
        images=torch.zeros(b, v, 3, H, W),
        intrinsics=intr,
        cam_to_lidar=c2l,
        valid=torch.tensor(valid),
        names=tuple(f"cam{j}" for j in range(v)),
    )


def _reference(points, batch_index, cams, stride, max_depth):
    """A direct loop over points and views in float64."""
    b, v = cams.batch_size, cams.num_views
    hs, ws = H // stride, W // stride
    nearest = np.full((b, v, hs, ws), np.inf)
    l2c = torch.linalg.inv(cams.cam_to_lidar.double()).numpy()
    k = cams.intrinsics.double().numpy()
    for n in range(len(points)):
        i = int(batch_index[n])
        for j in range(v):
            if not bool(cams.valid[i, j]):
                continue
            x, y, z = l2c[i, j, :3, :3] @ points[n].double().numpy() + l2c[i, j, :3, 3]
            if z <= 1e-3:
                continue
            u = (k[i, j, 0, 0] * x + k[i, j, 0, 2] * z) / z
            r = (k[i, j, 1, 1] * y + k[i, j, 1, 2] * z) / z
            if not (0 <= u < W and 0 <= r < H):
                continue
            cell = (int(r // stride), int(u // stride))
            nearest[i, j][cell] = min(nearest[i, j][cell], z)
    out = np.zeros((b, v, 2, hs, ws), dtype=np.float32)
    hit = np.isfinite(nearest)
    out[:, :, 0] = np.where(hit, np.minimum(np.where(hit, nearest, 0) / max_depth, 1.0), 0.0)
    out[:, :, 1] = hit
    return torch.from_numpy(out)


@pytest.mark.parametrize("stride", [4, 8])
def test_sparse_depth_map_matches_loop_reference(stride):
    g = torch.Generator().manual_seed(0)
    cams = _cams([[True, False, True], [True, True, False]])
    n = 3000
    points = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([60.0, 60.0, 6.0])
    points[:50] = points[:50] * 0.05  # near the cameras, some behind them
    batch_index = torch.randint(0, 2, (n,), generator=g)
    got = sparse_depth_map(points, batch_index, cams, stride, max_depth=8.0)
    want = _reference(points, batch_index, cams, stride, max_depth=8.0)
    assert got.shape == (2, 3, 2, H // stride, W // stride) and got.dtype == torch.float32
    assert torch.equal(got[:, :, 1], want[:, :, 1])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    hits = int(want[:, :, 1].sum())
    assert hits > 50 and (want[:, :, 0] == 1).any() and ((want[:, :, 0] > 0) & (want[:, :, 0] < 1)).any()
    assert not got[0, 1].any() and not got[1, 2].any()  # invalid views


def test_sparse_depth_map_keeps_the_nearest_point_of_a_cell():
    cams = _cams([[True]])
    ray = torch.tensor([[10.0, 0.0, 1.5], [5.0, 0.0, 1.5], [20.0, 0.0, 1.5]])  # straight ahead of view 0
    out = sparse_depth_map(ray, torch.zeros(3, dtype=torch.int64), cams, 4, max_depth=40.0)
    row, col = int((H / 2) // 4), int((W / 2) // 4)
    assert out[0, 0, 1].sum() == 1 and out[0, 0, 1, row, col] == 1
    assert out[0, 0, 0, row, col] == pytest.approx(5.0 / 40.0)


def test_sparse_depth_map_empty_points_and_no_valid_view_give_zeros():
    cams = _cams([[True, True]])
    empty = sparse_depth_map(torch.zeros(0, 3), torch.zeros(0, dtype=torch.int64), cams, 4, max_depth=50.0)
    assert empty.shape == (1, 2, 2, H // 4, W // 4) and not empty.any()
    points = torch.tensor([[10.0, 0.0, 1.5], [-10.0, 0.0, 1.5]])
    none = sparse_depth_map(
        points, torch.zeros(2, dtype=torch.int64), _cams([[False, False]]), 4, max_depth=50.0
    )
    assert not none.any()
    both = sparse_depth_map(points, torch.zeros(2, dtype=torch.int64), cams, 4, max_depth=50.0)
    assert both[0, 0, 1].sum() == 1 and both[0, 1, 1].sum() == 1


def test_sparse_depth_map_rejects_bad_input():
    cams = _cams([[True]])
    with pytest.raises(ValueError, match="points_xyz must be"):
        sparse_depth_map(torch.zeros(4, 4), torch.zeros(4, dtype=torch.int64), cams, 4, max_depth=50.0)
    with pytest.raises(ValueError, match="batch_index must be int64"):
        sparse_depth_map(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int32), cams, 4, max_depth=50.0)
    with pytest.raises(ValueError, match=r"batch_index must lie in \[0, 1\)"):
        sparse_depth_map(torch.zeros(1, 3), torch.ones(1, dtype=torch.int64), cams, 4, max_depth=50.0)
    with pytest.raises(ValueError, match="multiple of the depth stride 5"):
        sparse_depth_map(torch.zeros(1, 3), torch.zeros(1, dtype=torch.int64), cams, 5, max_depth=50.0)


# ----------------------------------------------------------------------------------------------------------------
# GeometricTransfer
# ----------------------------------------------------------------------------------------------------------------

SHAPE = ImageFeatureShape(channels=8, strides=(4, 8, 16, 32))


def _feats(b: int, v: int, requires_grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [
        torch.randn(b, v, 8, H // s, W // s, generator=g).requires_grad_(requires_grad) for s in SHAPE.strides
    ]


def _transfer(**kw) -> GeometricTransfer:
    torch.manual_seed(0)
    return GeometricTransfer(GeometricTransferConfig(channels=6, **kw), SHAPE)


def _depth(cams: CameraBatch, transfer: GeometricTransfer) -> torch.Tensor:
    g = torch.Generator().manual_seed(2)
    points = (torch.rand(2000, 3, generator=g) - 0.5) * torch.tensor([60.0, 60.0, 6.0])
    index = torch.randint(0, cams.batch_size, (2000,), generator=g)
    return transfer.depth_map(points, index, cams)


def test_geometric_transfer_adds_to_valid_views_only():
    transfer = _transfer()
    cams = _cams([[True, False, True], [False, True, True]])
    depth = _depth(cams, transfer)
    feats = _feats(2, 3)
    encoded_batches = []
    transfer.stem.register_forward_hook(lambda m, args, out: encoded_batches.append(args[0].shape[0]))
    out = transfer(feats, depth, cams.valid)
    assert encoded_batches == [4]
    for f, o in zip(feats, out, strict=True):
        assert o.shape == f.shape
        assert torch.equal(o[~cams.valid], f[~cams.valid])
        assert (o[cams.valid] - f[cams.valid]).abs().amax() > 0
    # the change of a view is the encoding of that view's depth map alone
    transfer.eval()
    out = transfer(feats, depth, cams.valid)
    alone = transfer.encode(depth[1, 2:])
    for f, o, a in zip(feats, out, alone, strict=True):
        torch.testing.assert_close(o[1, 2] - f[1, 2], a[0], rtol=1e-4, atol=1e-5)

    encoded_batches.clear()
    none = transfer(feats, depth, torch.zeros(2, 3, dtype=torch.bool))
    assert encoded_batches == [] and all(n is f for n, f in zip(none, feats, strict=True))


def test_geometric_transfer_gradients():
    transfer = _transfer().train()
    cams = _cams([[True, False]])
    depth = _depth(cams, transfer)
    feats = _feats(1, 2, requires_grad=True)
    out = transfer(feats, depth, cams.valid)
    weights = [torch.randn_like(o) for o in out]
    sum((o * w).sum() for o, w in zip(out, weights, strict=True)).backward()
    for name, p in transfer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    for f, w in zip(feats, weights, strict=True):  # the features pass through unchanged (a residual add)
        assert torch.equal(f.grad, w)


@pytest.mark.parametrize("strides", [(8, 16, 32), (4, 8), (16, 32, 64)])
def test_geometric_transfer_level_sizes(strides):
    shape = ImageFeatureShape(channels=4, strides=strides)
    transfer = GeometricTransfer(GeometricTransferConfig(channels=4, depth_stride=4), shape)
    depth = torch.rand(1, 2, 2, 64 // 4, 128 // 4)
    feats = [torch.zeros(1, 2, 4, 64 // s, 128 // s) for s in strides]
    out = transfer(feats, depth, torch.tensor([[True, True]]))
    assert [o.shape for o in out] == [f.shape for f in feats]


def test_geometric_transfer_rejects_mismatches():
    with pytest.raises(ValueError, match="must each divide the next"):
        GeometricTransfer(GeometricTransferConfig(depth_stride=3), SHAPE)
    transfer = _transfer()
    valid = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="feats must have 4 levels"):
        transfer(_feats(1, 2)[:3], torch.zeros(1, 2, 2, H // 4, W // 4), valid)
    with pytest.raises(ValueError, match="depth_map must be"):
        transfer(_feats(1, 2), torch.zeros(1, 2, 1, H // 4, W // 4), valid)
    with pytest.raises(ValueError, match="depth map gives"):
        transfer(_feats(1, 2), torch.zeros(1, 2, 2, H // 8, W // 8), valid)


@pytest.mark.parametrize(
    "data", [{"channels": 0}, {"max_depth": 0.0}, {"max_depth": "60"}, {"depth_stride": 0}, {"stride": 4}]
)
def test_geometric_transfer_config_is_strict(data):
    with pytest.raises(ValidationError):
        GeometricTransferConfig.model_validate(data)
