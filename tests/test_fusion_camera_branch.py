"""Camera branch: query selection over views and levels (invalid views give no queries), the per-view decoder
equal to the batched one, heatmap targets on the projected centre of the right view and level, box codes that
lift back onto the ground truth, a loss with gradients that falls when overfitting, and its input checks."""

from __future__ import annotations

import pytest
import torch

from perception.grid import VoxelGrid
from perception.models.fusion.camera_branch import CameraBranch
from perception.models.fusion.camera_config import CameraBranchConfig
from perception.models.fusion.camera_geometry import boxes_to_camera, camera_to_boxes
from perception.models.fusion.camera_targets import (
    assign_levels,
    camera_heatmap_targets,
    decode_codes,
    encode_codes,
    pad_labels,
    projected_extent,
)
from perception.models.image.shapes import ImageFeatureShape
from perception.structures import CameraBatch

H, W = 64, 128
SHAPE = ImageFeatureShape(channels=8, strides=(8, 16))
CLASSES = ("car", "pedestrian", "cyclist")
GRID = VoxelGrid(point_cloud_range=(-30.0, -30.0, -3.0, 30.0, 30.0, 1.0), voxel_size=(0.5, 0.5, 4.0))
CFG = CameraBranchConfig(
    num_proposals=12, hidden_channels=16, num_heads=4, ffn_channels=32, num_points=2, dropout=0.0
)
GT = [
    torch.tensor(
        [[12.0, 1.0, -0.8, 4.2, 1.8, 1.6, 0.3, 1.0, 0.0], [-8.0, -2.0, -0.9, 0.7, 0.7, 1.8, -1.0, 0.0, 0.5]]
    ),
    torch.tensor([[20.0, -3.0, -0.7, 1.8, 0.6, 1.7, 2.0, -0.5, 0.2]]),
]
LABELS = [torch.tensor([0, 1]), torch.tensor([2])]


def _cams(batch: int = 2, valid: torch.Tensor | None = None) -> CameraBatch:
    """CAM_FRONT looks along +x, CAM_BACK along -x, 1.5 m up."""
    f = 60.0
    k = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]])
    front = torch.tensor([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.5], [0, 0, 0, 1.0]])
    back = torch.tensor([[0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.5], [0, 0, 0, 1.0]])
    return CameraBatch(
        images=torch.zeros(batch, 2, 3, H, W),
        intrinsics=torch.stack([k, k])[None].expand(batch, 2, 3, 3).clone(),
        cam_to_lidar=torch.stack([front, back])[None].expand(batch, 2, 4, 4).clone(),
        valid=torch.ones(batch, 2, dtype=torch.bool) if valid is None else valid,
        names=("CAM_FRONT", "CAM_BACK"),
    )


def _feats(seed: int, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 2, SHAPE.channels, H // s, W // s, generator=g) for s in SHAPE.strides]


def _branch(seed: int = 0, **kw) -> CameraBranch:  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    cfg = CFG.model_copy(update=kw) if kw else CFG
    return CameraBranch(cfg, class_names=CLASSES, image_shape=SHAPE, grid=GRID, with_velocity=True)


def test_output_shapes_and_query_bookkeeping() -> None:
    branch = _branch().eval()
    out = branch(_feats(0), _cams())
    b, q = 2, CFG.num_proposals
    assert [tuple(h.shape) for h in out.heatmaps] == [(2, 2, 3, 8, 16), (2, 2, 3, 4, 8)]
    for name in ("query_view", "query_level", "query_labels"):
        assert getattr(out, name).shape == (b, q) and getattr(out, name).dtype == torch.int64
    assert out.query_features.shape == (b, q, 16) and out.cls_logits.shape == (b, q, 3)
    assert (
        out.center_offset.shape == (b, q, 2)
        and out.log_dims.shape == (b, q, 3)
        and out.rot.shape == (b, q, 2)
    )
    assert out.codes(True).shape == (b, q, 10) and out.codes(False).shape == (b, q, 8)
    assert bool((out.depth > 0).all()) and bool(out.query_valid.all())
    # scores are the heatmap probabilities of the chosen (view, level, class, cell), descending
    for i in range(b):
        for j in range(q):
            lvl, v, c = int(out.query_level[i, j]), int(out.query_view[i, j]), int(out.query_labels[i, j])
            s = SHAPE.strides[lvl]
            col, row = int(out.query_pixel[i, j, 0] // s), int(out.query_pixel[i, j, 1] // s)
            p = out.heatmaps[lvl][i, v, c, row, col].sigmoid()
            torch.testing.assert_close(out.query_scores[i, j], p)
    assert bool((out.query_scores[:, :-1] >= out.query_scores[:, 1:]).all())


def test_invalid_view_gives_no_queries_and_no_influence() -> None:
    branch = _branch().eval()
    feats = _feats(1)
    valid = torch.tensor([[True, False], [True, True]])
    out = branch(feats, _cams(valid=valid))
    assert not bool((out.query_view[0] == 1).any()) and bool(out.query_valid.all())
    assert bool((out.heatmaps[0][0, 1] == -1e4).all())
    # whatever the invalid view's features, sample 0's queries are unchanged
    other = [f.clone() for f in feats]
    for f in other:
        f[0, 1] = torch.randn_like(f[0, 1]) * 10
    again = branch(other, _cams(valid=valid))
    torch.testing.assert_close(again.query_features[0], out.query_features[0])
    # every view invalid: the queries exist but none is valid
    none = branch(feats, _cams(valid=torch.zeros(2, 2, dtype=torch.bool)))
    assert not bool(none.query_valid.any())


def test_per_view_equals_batched() -> None:
    branch = _branch().eval()
    feats, cams = _feats(2), _cams()
    a = branch(feats, cams, per_view=False)
    b = branch(feats, cams, per_view=True)
    assert torch.equal(a.query_view, b.query_view)
    for name in ("query_features", "cls_logits", "center_offset", "log_depth", "log_dims", "rot", "velocity"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-5)


def test_heatmap_targets_on_the_projected_centre() -> None:
    cams = _cams()
    desc = boxes_to_camera(GT, cams)
    extent = projected_extent(GT, cams)
    labels = pad_labels(LABELS, 2, torch.device("cpu"))
    sizes = SHAPE.level_sizes((H, W))
    heat, count = camera_heatmap_targets(
        desc,
        extent,
        labels,
        num_classes=3,
        strides=SHAPE.strides,
        level_sizes=sizes,
        min_overlap=0.1,
        min_radius=1,
    )
    assert desc.visible is not None
    # object 0 of sample 0 (x = 12 m) is in front of CAM_FRONT only, object 1 (x = -8 m) of CAM_BACK only
    assert (
        desc.visible[0].tolist() == [[True, False], [False, True]] and count == int(desc.visible.sum()) == 3
    )
    level = assign_levels(extent, SHAPE.strides)
    for i, j, g in ((0, 0, 0), (0, 1, 1), (1, 0, 0)):
        lvl, s = int(level[i, j, g]), SHAPE.strides[int(level[i, j, g])]
        col, row = (desc.uv[i, j, g] / s).floor().long().tolist()
        assert float(heat[lvl][i, j, int(labels[i, g]), row, col]) == 1.0
        assert float(heat[lvl][i, 1 - j, int(labels[i, g])].max()) == 0.0  # nothing in the other view
    assert sum(int((h == 1.0).sum()) for h in heat) == 3
    # a nearer object is larger in the image and goes to a coarser (or the same) level
    assert float(extent[0, 0, 0].prod()) > float(extent[1, 0, 0].prod())


def test_codes_lift_back_onto_the_ground_truth() -> None:
    """encode -> decode -> camera_to_boxes reproduces the LiDAR box, for any query cell the object matched."""
    cams = _cams()
    desc = boxes_to_camera(GT, cams)
    pixel = torch.tensor([[40.0, 20.0], [100.0, 30.0]])
    stride = torch.tensor([8.0, 16.0])
    for i, j, g in ((0, 0, 0), (0, 1, 1)):
        sel = type(desc)(
            uv=desc.uv[i, j, [g, g]],
            depth=desc.depth[i, j, [g, g]],
            log_dims=desc.log_dims[i, j, [g, g]],
            rot=desc.rot[i, j, [g, g]],
            velocity=desc.velocity[i, j, [g, g]],
        )
        codes = encode_codes(sel, pixel, stride, True)
        back = decode_codes(codes, pixel, stride)
        back = type(back)(
            uv=back.uv[None],
            depth=back.depth[None],
            log_dims=back.log_dims[None],
            rot=back.rot[None],
            velocity=back.velocity[None],
        )
        view = torch.full((1, 2), j)
        one = CameraBatch(
            images=cams.images[i : i + 1],
            intrinsics=cams.intrinsics[i : i + 1],
            cam_to_lidar=cams.cam_to_lidar[i : i + 1],
            valid=cams.valid[i : i + 1],
            names=cams.names,
        )
        boxes = camera_to_boxes(back, view, one)[0]
        torch.testing.assert_close(boxes, GT[i][g].expand(2, 9), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="columns"):
        decode_codes(torch.zeros(2, 7), pixel, stride)


def test_loss_gradients_and_overfit() -> None:
    branch = _branch(3).train()
    feats, cams = _feats(4), _cams()
    losses = branch.loss(branch(feats, cams), cams, GT, LABELS)
    assert set(losses) == {"loss_cam_heatmap", "loss_cam_cls", "loss_cam_bbox"}
    assert all(bool(torch.isfinite(v)) and float(v.detach()) > 0 for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in branch.named_parameters() if p.grad is None or not bool(p.grad.any())]
    assert not missing, missing
    opt = torch.optim.Adam(branch.parameters(), lr=3e-3)
    first = last = 0.0
    for step in range(30):
        opt.zero_grad()
        total = sum(branch.loss(branch(feats, cams), cams, GT, LABELS).values())
        total.backward()  # type: ignore[union-attr]
        opt.step()
        first = float(total.detach()) if step == 0 else first  # type: ignore[union-attr]
        last = float(total.detach())  # type: ignore[union-attr]
    assert last < 0.6 * first, (first, last)


def test_loss_with_invalid_views_and_no_ground_truth() -> None:
    branch = _branch().train()
    feats = _feats(5)
    cams = _cams(valid=torch.tensor([[False, False], [True, False]]))
    empty = [torch.zeros(0, 9), torch.zeros(0, 9)]
    losses = branch.loss(branch(feats, cams), cams, empty, [torch.zeros(0, dtype=torch.int64)] * 2)
    assert (
        all(bool(torch.isfinite(v)) for v in losses.values())
        and float(losses["loss_cam_bbox"].detach()) == 0.0
    )
    losses = branch.loss(branch(feats, cams), cams, GT, LABELS)
    assert all(bool(torch.isfinite(v)) for v in losses.values())


def test_input_checks() -> None:
    branch = _branch()
    with pytest.raises(ValueError, match="feature level 1"):
        branch([_feats(0)[0], torch.zeros(2, 2, 8, 3, 3)], _cams())
    with pytest.raises(ValueError, match="num_proposals"):
        _branch(num_proposals=10_000)(_feats(0), _cams())
    with pytest.raises(ValueError, match="ground-truth"):
        branch.loss(branch(_feats(0), _cams()), _cams(), GT[:1], LABELS[:1])
    with pytest.raises(ValueError, match="divide"):
        CameraBranchConfig(hidden_channels=10, num_heads=4)
