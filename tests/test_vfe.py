"""VFEs: MeanVFE and the dynamic pillar / voxel VFEs against per-voxel python-loop references."""

from __future__ import annotations

import math

import pytest
import torch

from perception.grid import VoxelGrid
from perception.models.model_config import DynamicVFEConfig
from perception.models.vfe import DynamicPillarVFE, DynamicVoxelVFE, MeanVFE
from perception.shapes import SparseShape
from perception.structures import Voxels

RANGE = (-2.0, -2.0, -1.0, 2.0, 2.0, 1.0)
VOXEL = (0.5, 0.5, 0.5)
PILLAR = (0.5, 0.5, 2.0)


def random_points(n: int, seed: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points in a slightly larger box than RANGE (some fall outside), clustered so voxels hold several."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(6, 3, generator=g) * torch.tensor([4.4, 4.4, 2.4]) - torch.tensor([2.2, 2.2, 1.2])
    pick = torch.randint(0, 6, (n,), generator=g)
    xyz = centres[pick] + 0.3 * torch.randn(n, 3, generator=g)
    extra = torch.rand(n, 2, generator=g)
    bidx = torch.randint(0, batch, (n,), generator=g)
    return torch.cat([xyz, extra], dim=1), bidx


def reference_dynamic(vfe, points, bidx, pillar):  # type: ignore[no-untyped-def]
    """Straightforward per-voxel loop: returns {(b, z, y, x): feature (C,)}."""
    lo, size = vfe.grid.lo, vfe.grid.size
    nz, ny, nx = vfe.grid.shape
    voxels: dict[tuple[int, int, int, int], list[int]] = {}
    for i in range(points.shape[0]):
        p = points[i]
        if not bool(torch.isfinite(p).all()):
            continue
        ix = math.floor((float(p[0]) - lo[0]) / size[0])
        iy = math.floor((float(p[1]) - lo[1]) / size[1])
        iz = 0 if pillar else math.floor((float(p[2]) - lo[2]) / size[2])
        if not (0 <= ix < nx and 0 <= iy < ny and 0 <= iz < nz):
            continue
        voxels.setdefault((int(bidx[i]), iz, iy, ix), []).append(i)
    rows, owner = [], []
    for key, idx in voxels.items():
        pts = points[idx].double()
        mean = pts[:, :3].mean(dim=0)
        centre = torch.tensor(
            [
                lo[0] + (key[3] + 0.5) * size[0],
                lo[1] + (key[2] + 0.5) * size[1],
                lo[2] + (key[1] + 0.5) * size[2],
            ],
            dtype=torch.float64,
        )
        scale = vfe.config.feature_scale
        for j, p in enumerate(pts):
            extra = p[3:] if scale is None else p[3:] * torch.tensor(scale, dtype=torch.float64)
            raw = torch.cat([p[:3], extra]) if vfe.use_absolute_xyz else extra
            parts = [raw, p[:3] - mean, p[:3] - centre]
            if vfe.with_distance:
                parts.append(p[:3].norm().reshape(1))
            rows.append(torch.cat(parts))
            owner.append((key, j))
    x = torch.stack(rows).float()
    keys = list(voxels)
    for layer in vfe.pfn_layers:
        h = layer.relu(layer.norm(layer.linear(x)) if layer.norm is not None else layer.linear(x))
        pooled = {}
        for key in keys:
            sel = torch.tensor([r for r, (k, _) in enumerate(owner) if k == key])
            pooled[key] = h[sel].max(dim=0).values if layer.reduce == "max" else h[sel].mean(dim=0)
        if layer.last:
            return pooled
        x = torch.cat([h, torch.stack([pooled[k] for k, _ in owner])], dim=1)
    raise AssertionError("unreachable")


def by_key(sparse) -> dict:  # type: ignore[no-untyped-def]
    return {tuple(c.tolist()): f for c, f in zip(sparse.coords, sparse.features, strict=True)}


def make_vfe(pillar: bool, backend: str | None = None, **kw):  # type: ignore[no-untyped-def]
    cls = DynamicPillarVFE if pillar else DynamicVoxelVFE
    torch.manual_seed(0)
    grid = VoxelGrid(RANGE, PILLAR if pillar else VOXEL)
    return cls(DynamicVFEConfig(**kw), num_point_features=5, grid=grid, backend=backend)


def mean_vfe(grid_shape: tuple[int, int, int] = (1, 8, 8)) -> MeanVFE:
    """A MeanVFE on a grid of ``grid_shape`` (z, y, x) unit voxels from the origin."""
    nz, ny, nx = grid_shape
    return MeanVFE(num_point_features=5, grid=VoxelGrid((0, 0, 0, nx, ny, nz), (1, 1, 1)))


# ---------------------------------------------------------------------------------------------------------------
# MeanVFE
# ---------------------------------------------------------------------------------------------------------------


def test_mean_vfe_matches_loop_and_ignores_padding() -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(7, 4, 5, generator=g)  # padding rows hold garbage on purpose
    counts = torch.tensor([1, 4, 2, 3, 1, 4, 2], dtype=torch.int32)
    coords = torch.stack([torch.zeros(7), torch.zeros(7), torch.arange(7), torch.arange(7)], 1).int()
    out = mean_vfe()(Voxels(feats, coords, counts, (1, 8, 8)), batch_size=1)
    for i in range(7):
        torch.testing.assert_close(out.features[i], feats[i, : counts[i]].mean(dim=0))
    assert out.features.dtype == torch.float32 and torch.equal(out.coords, coords)
    assert out.grid_shape == (1, 8, 8)


def test_mean_vfe_empty_and_validation() -> None:
    empty = Voxels(
        torch.zeros(0, 3, 5),
        torch.zeros(0, 4, dtype=torch.int32),
        torch.zeros(0, dtype=torch.int32),
        (2, 4, 4),
    )
    out = mean_vfe((2, 4, 4))(empty, batch_size=2)
    assert out.features.shape == (0, 5) and out.batch_size == 2
    assert mean_vfe((2, 4, 4)).output_shape() == SparseShape(5, (2, 4, 4), 1)
    with pytest.raises(ValueError, match="the VFE's grid"):
        mean_vfe((1, 8, 8))(empty, batch_size=2)
    with pytest.raises(ValueError, match="5 channels"):
        mean_vfe((1, 1, 1))(
            Voxels(
                torch.zeros(1, 1, 4),
                torch.zeros(1, 4, dtype=torch.int32),
                torch.ones(1, dtype=torch.int32),
                (1, 1, 1),
            ),
            batch_size=1,
        )
    with pytest.raises(ValueError, match="batch_size"):
        mean_vfe((2, 4, 4))(empty, batch_size=0)


# ---------------------------------------------------------------------------------------------------------------
# Dynamic VFEs
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pillar, kw",
    [
        (True, {"filters": (8, 6)}),
        (False, {"filters": (8, 6)}),
        (False, {"filters": (4, 8, 6), "reduce": "mean", "with_distance": True}),
        (True, {"filters": (6,), "use_absolute_xyz": False, "use_norm": False}),
        (True, {"filters": (8, 6), "feature_scale": (0.01, 5.0)}),
        (False, {"filters": (6,), "use_absolute_xyz": False, "feature_scale": (0.5, 2.0)}),
    ],
)
@pytest.mark.parametrize("train", [True, False])
def test_dynamic_vfe_matches_loop_reference(pillar: bool, kw: dict, train: bool) -> None:
    vfe = make_vfe(pillar, **kw)
    for m in vfe.modules():  # non-trivial BN statistics for eval mode
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    vfe.train(train)
    points, bidx = random_points(120, seed=1)
    points[3, 4] = float("nan")  # dropped: non-finite in any column
    out = vfe(points, batch_index=bidx, batch_size=2)
    ref = reference_dynamic(vfe, points, bidx, pillar)
    got = by_key(out)
    assert set(got) == set(ref)
    assert out.features.shape == (len(ref), kw["filters"][-1]) and out.features.dtype == torch.float32
    assert out.grid_shape == vfe.grid.shape and out.coords.dtype == torch.int32
    for key, f in ref.items():
        torch.testing.assert_close(got[key], f, rtol=1e-4, atol=1e-4)


def test_pillar_keeps_points_outside_z_range() -> None:
    vfe = make_vfe(True, filters=(6,)).eval()
    points = torch.tensor(
        [[0.1, 0.1, 0.0, 1.0, 0.0], [0.2, 0.2, 5.0, 1.0, 0.0], [0.3, 0.3, float("nan"), 1.0, 0.0]]
    )
    out = vfe(points)
    ref = reference_dynamic(vfe, points, torch.zeros(3, dtype=torch.int64), pillar=True)
    assert out.num_voxels == 1
    torch.testing.assert_close(out.features[0], next(iter(ref.values())))
    # The z = 5 point is in the pillar: removing it changes the feature.
    assert not torch.allclose(vfe(points[:1]).features[0], out.features[0])
    voxel_vfe = make_vfe(False, filters=(6,)).eval()
    assert voxel_vfe(points).num_voxels == 1  # the voxel VFE drops it (outside z)


@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_backends_agree(backend: str, cuda_backend_device: torch.device) -> None:
    points, bidx = random_points(40, seed=2)
    outs = []
    for be in ("cpu", backend):
        torch.manual_seed(0)
        vfe = make_vfe(False, filters=(4, 6), backend=be).eval()
        outs.append(by_key(vfe(points, batch_index=bidx, batch_size=2)))
    assert set(outs[0]) == set(outs[1])
    for k in outs[0]:
        torch.testing.assert_close(outs[0][k], outs[1][k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pillar", [True, False])
def test_gradients_reach_every_parameter(pillar: bool) -> None:
    vfe = make_vfe(pillar, filters=(8, 8, 6)).train()
    points, bidx = random_points(100, seed=3)
    out = vfe(points, batch_index=bidx, batch_size=2)
    (out.features * torch.randn_like(out.features)).sum().backward()
    for name, p in vfe.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("pillar", [True, False])
def test_empty_and_single_point(pillar: bool) -> None:
    vfe = make_vfe(pillar, filters=(8, 6)).train()
    out = vfe(torch.zeros(0, 5))
    assert out.features.shape == (0, 6) and out.coords.shape == (0, 4) and out.grid_shape == vfe.grid.shape
    out.features.sum().backward()  # no error on the empty graph
    outside = torch.tensor([[10.0, 10.0, 0.0, 1.0, 0.0]])
    assert vfe(outside.repeat(3, 1)).num_voxels == 0
    single = torch.tensor([[0.1, 0.2, 0.3, 1.0, 0.0]])
    with pytest.raises(ValueError, match="more than 1 value"):
        vfe(single)  # BatchNorm batch statistics need more than one point
    vfe.eval()
    out = vfe(single)
    assert out.features.shape == (1, 6)
    torch.testing.assert_close(
        out.features[0], next(iter(reference_dynamic(vfe, single, torch.zeros(1), pillar).values()))
    )


@pytest.mark.parametrize("pillar", [True, False])
def test_bf16_autocast_runs_in_float32(pillar: bool) -> None:
    vfe = make_vfe(pillar, filters=(16, 16)).train()
    points, bidx = random_points(200, seed=4)
    ref = vfe(points, batch_index=bidx, batch_size=2).features
    vfe.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vfe(points, batch_index=bidx, batch_size=2)
    assert out.features.dtype == torch.float32
    torch.testing.assert_close(out.features, ref)
    out.features.float().sum().backward()
    for name, p in vfe.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="one voxel along z"):
        DynamicPillarVFE(DynamicVFEConfig(filters=(4,)), num_point_features=5, grid=VoxelGrid(RANGE, VOXEL))
    with pytest.raises(ValueError, match="even"):
        DynamicVFEConfig(filters=(5, 4))
    with pytest.raises(ValueError, match="filters"):
        DynamicVFEConfig(filters=())
    with pytest.raises(ValueError, match="feature_scale must have 2 values"):
        make_vfe(True, filters=(4,), feature_scale=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="greater than 0"):
        DynamicVFEConfig(filters=(4,), feature_scale=(0.0, 1.0))
    # the scale is the config's, not a weight: not in the state dict
    assert not any(
        "feature_scale" in k for k in make_vfe(True, filters=(4,), feature_scale=(1.0, 2.0)).state_dict()
    )
    vfe = make_vfe(False, filters=(4,))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        vfe(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="float32"):
        vfe(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="batch_size"):
        vfe(torch.zeros(3, 5), batch_index=torch.tensor([0, 1, 2]), batch_size=2)


def test_state_dict_layout_matches_openpcdet() -> None:
    keys = set(make_vfe(True, filters=(128, 128)).state_dict())
    assert {
        "pfn_layers.0.linear.weight",
        "pfn_layers.0.norm.running_var",
        "pfn_layers.1.linear.weight",
    } <= keys
    vfe = make_vfe(True, filters=(128, 128))
    assert vfe.pfn_layers[0].linear.weight.shape == (64, 11)  # 5 raw + 3 cluster + 3 centre, half width
    assert vfe.pfn_layers[1].linear.weight.shape == (128, 128)
