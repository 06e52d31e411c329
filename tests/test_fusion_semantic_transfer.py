"""Semantic transfer: exactly zero where no valid view sees a cell (all views invalid: zero everywhere), a cell's
delta depends only on the views that see it, per_view gives the same result, the cell cap keeps the documented
cells, gradients reach every parameter and the image features."""

from __future__ import annotations

import pytest
import test_fusion_geometry as geo
import torch

from perception.grid import VoxelGrid
from perception.models.fusion.semantic_transfer import SemanticTransfer, SemanticTransferConfig
from perception.models.image.shapes import ImageFeatureShape

GRID = VoxelGrid((-24.0, -24.0, -5.0, 24.0, 24.0, 3.0), (0.5, 0.5, 8.0))
STRIDE = 4  # 24 x 24 cells of 2 m
C, CI = 16, 8
SHAPE = ImageFeatureShape(CI, (4, 8, 16, 32))


def _module(**kw) -> SemanticTransfer:
    torch.manual_seed(0)
    cfg = SemanticTransferConfig(heights=(-1.0, 0.5), num_heads=4, **kw)
    return SemanticTransfer(cfg, bev_channels=C, image_shape=SHAPE, grid=GRID, feature_stride=STRIDE)


def _inputs(valid: torch.Tensor | None = None, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    rigs = [geo.ring_rig(6, pitch=0.05) for _ in range(batch)]
    cams = geo.camera_batch(rigs, valid)
    bev = torch.randn(batch, C, 24, 24, generator=g)
    occupied = torch.rand(batch, 24, 24, generator=g) < 0.4
    feats = [torch.randn(batch, 6, CI, geo.H // s, geo.W // s, generator=g) for s in SHAPE.strides]
    return bev, occupied, feats, cams


def _seen_by(st: SemanticTransfer, cams, views) -> torch.Tensor:
    """bool (B, V, H * W): which views see some lifted point of each cell."""
    xy = st.cell_xy
    z = st.heights
    xyz = torch.cat([xy[:, None].expand(-1, len(z), -1), z.view(1, -1, 1).expand(len(xy), -1, 1)], dim=-1)
    _, _, vis = cams.project(xyz.reshape(1, -1, 3).expand(cams.batch_size, -1, -1))
    return vis.reshape(cams.batch_size, cams.num_views, len(xy), len(z)).any(-1)[:, views]


def test_zero_exactly_where_no_valid_view_sees_the_cell() -> None:
    st = _module()
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[0, [0, 3]] = False
    valid[1] = False
    bev, occupied, feats, cams = _inputs(valid)
    delta = st(bev, occupied, feats, cams)
    assert delta.shape == bev.shape
    seen = _seen_by(st, cams, slice(None)).any(1).reshape(2, 24, 24) & occupied
    nonzero = (delta != 0).any(dim=1)
    assert torch.equal(nonzero, seen)
    assert seen[0].sum() > 20 and not seen[1].any()
    none = torch.zeros(2, 6, dtype=torch.bool)
    assert not st(*_inputs(none)[:3], geo.camera_batch([geo.ring_rig(6)] * 2, none)).any()


def test_a_cell_depends_only_on_the_views_that_see_it() -> None:
    st = _module()
    bev, occupied, feats, cams = _inputs()
    base = st(bev, occupied, feats, cams)
    perturbed = [f.clone() for f in feats]
    for f in perturbed:
        f[:, 2] += 3.0 * torch.randn_like(f[:, 2])
    moved = st(bev, occupied, perturbed, cams)
    sees2 = _seen_by(st, cams, 2).reshape(2, 24, 24)
    changed = (moved != base).any(dim=1)
    assert changed.any()
    assert not (changed & ~sees2).any()
    assert (changed == (sees2 & occupied)).all()


def test_per_view_gives_the_same_result() -> None:
    st = _module()
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 4] = False
    bev, occupied, feats, cams = _inputs(valid)
    torch.testing.assert_close(
        st(bev, occupied, feats, cams, per_view=True), st(bev, occupied, feats, cams), rtol=1e-5, atol=1e-6
    )


def test_cell_cap_keeps_the_nearest_or_the_highest_priority_cells() -> None:
    st = _module(max_cells=10)
    bev, occupied, feats, cams = _inputs()
    index, mask = st.select_cells(occupied)
    assert index.shape == (2, 10) and mask.all()
    dist = st.cell_xy.norm(dim=1)
    for i in range(2):
        occ = occupied[i].reshape(-1)
        assert occ[index[i]].all()
        assert float(dist[index[i]].max()) <= float(dist[occ].sort().values[9]) + 1e-6
    priority = torch.rand(2, 24, 24)
    index, _ = st.select_cells(occupied, priority)
    for i in range(2):
        p = torch.where(occupied[i], priority[i], -1.0).reshape(-1)
        assert set(index[i].tolist()) == set(p.topk(10).indices.tolist())
    delta = st(bev, occupied, feats, cams, priority=priority)
    assert int((delta != 0).any(1).sum(dim=(1, 2)).max()) <= 10


def test_fewer_cells_than_the_cap_and_empty_maps() -> None:
    st = _module()
    bev, occupied, feats, cams = _inputs()
    occupied[1] = False
    index, mask = st.select_cells(occupied)
    assert mask[0].sum() == occupied[0].sum() and not mask[1].any()
    delta = st(bev, torch.zeros_like(occupied), feats, cams)
    assert not delta.any()


def test_gradients_reach_every_parameter_and_the_inputs() -> None:
    st = _module(num_levels=2)
    bev, occupied, feats, cams = _inputs()
    bev.requires_grad_()
    feats = [f.requires_grad_() for f in feats]
    delta = st(bev, occupied, feats, cams)
    (delta * torch.randn_like(delta)).sum().backward()
    missing = [n for n, p in st.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert bev.grad.abs().sum() > 0 and feats[0].grad.abs().sum() > 0 and feats[1].grad.abs().sum() > 0
    assert feats[2].grad is None  # only the finest 2 levels are sampled


def test_shape_errors_name_the_argument() -> None:
    st = _module()
    bev, occupied, feats, cams = _inputs()
    with pytest.raises(ValueError, match="bev must be"):
        st(bev[:, :, :20], occupied, feats, cams)
    with pytest.raises(ValueError, match="occupied must be"):
        st(bev, occupied.float(), feats, cams)
    with pytest.raises(ValueError, match=r"feats\[1\]"):
        st(bev, occupied, [feats[0], feats[2], feats[2], feats[3]], cams)
    with pytest.raises(ValueError, match="num_levels"):
        _module(num_levels=5)
    with pytest.raises(ValueError, match="heights"):
        SemanticTransferConfig(heights=())
