"""The SparseFusion fusion stage and the masked set matching."""

from __future__ import annotations

import torch

from perception.grid import VoxelGrid
from perception.models.fusion.fusion_config import FusionStageConfig
from perception.models.fusion.fusion_stage import Candidates, FusionStage
from perception.models.fusion.set_targets import build_set_targets
from perception.models.heads.box_coder import CenterBoxCoder
from perception.models.heads.transfusion_config import MatchCosts
from perception.structures import Boxes3D

GRID = VoxelGrid((-16.0, -16.0, -3.0, 16.0, 16.0, 3.0), (0.5, 0.5, 6.0))
K = 3


def _candidates(b: int, n: int, c: int, *, valid: torch.Tensor | None = None, seed: int = 0) -> Candidates:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(b, n, 2, generator=g) * 24 - 12
    boxes = torch.cat(
        [
            xy,
            torch.rand(b, n, 1, generator=g),
            torch.rand(b, n, 3, generator=g) + 1,
            torch.rand(b, n, 3, generator=g),
        ],
        dim=-1,
    )
    return Candidates(
        features=torch.randn(b, n, c, generator=g),
        boxes=boxes,
        cls_logits=torch.randn(b, n, K, generator=g),
        labels=torch.randint(0, K, (b, n), generator=g),
        scores=torch.rand(b, n, generator=g),
        valid=torch.ones(b, n, dtype=torch.bool) if valid is None else valid,
    )


def _stage(**kw: object) -> FusionStage:
    cfg = FusionStageConfig(
        hidden_channels=16, num_heads=4, ffn_channels=32, dropout=0.0, branch_channels=8, **kw
    )
    return FusionStage(
        cfg,
        lidar_channels=12,
        camera_channels=20,
        num_classes=K,
        coder=CenterBoxCoder(GRID, 2),
        with_velocity=True,
    ).eval()


def test_untrained_stage_reproduces_its_inputs() -> None:
    """Residual form with zero-initialised last layers: the fused boxes and logits are the incoming ones."""
    stage = _stage()
    lidar, cam = _candidates(2, 5, 12), _candidates(2, 4, 20, seed=1)
    out = stage(lidar, cam)
    assert out.num_lidar == 5 and out.cls_logits.shape == (2, 9, K) and out.box_codes.shape == (2, 9, 10)
    boxes = stage.coder.decode(out.box_codes, out.positions)
    expected = torch.cat([lidar.boxes, cam.boxes], dim=1)
    assert torch.allclose(boxes[..., :6], expected[..., :6], atol=1e-4)
    assert torch.allclose(torch.cos(boxes[..., 6] - expected[..., 6]), torch.ones(2, 9), atol=1e-4)
    assert torch.allclose(out.cls_logits, torch.cat([lidar.cls_logits, cam.cls_logits], dim=1))


def test_invalid_camera_candidates_change_nothing() -> None:
    """Invalid camera candidates are masked as keys: perturbing them leaves every valid output unchanged, and a
    stage with every camera candidate invalid equals the LiDAR-only call on the LiDAR candidates."""
    torch.manual_seed(0)
    stage = _stage()
    for p in stage.parameters():  # non-trivial weights everywhere (the last layers start at zero)
        p.data.normal_(0, 0.3)
    lidar = _candidates(1, 5, 12)
    valid = torch.tensor([[True, False, True, False]])
    cam = _candidates(1, 4, 20, valid=valid, seed=1)
    out = stage(lidar, cam)
    cam2 = _candidates(1, 4, 20, valid=valid, seed=1)
    cam2.features[:, ~valid[0]] = 100.0
    cam2.boxes[:, ~valid[0], :2] = 3.0
    out2 = stage(lidar, cam2)
    keep = torch.cat([torch.ones(5, dtype=torch.bool), valid[0]])
    assert torch.allclose(out.cls_logits[:, keep], out2.cls_logits[:, keep], atol=1e-5)
    assert torch.allclose(out.box_codes[:, keep], out2.box_codes[:, keep], atol=1e-5)
    none_valid = _candidates(1, 4, 20, valid=torch.zeros(1, 4, dtype=torch.bool), seed=2)
    alone, lidar_only = stage(lidar, none_valid), stage(lidar, None)
    assert torch.allclose(alone.cls_logits[:, :5], lidar_only.cls_logits, atol=1e-5)
    assert torch.allclose(alone.box_codes[:, :5], lidar_only.box_codes, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    stage = _stage().train()
    lidar, cam = _candidates(2, 5, 12), _candidates(2, 4, 20, seed=1)
    lidar.features.requires_grad_(True)
    out = stage(lidar, cam)
    (out.cls_logits.square().sum() + out.box_codes.square().sum()).backward()
    # the zero-initialised last layers get gradients; the layers before them only after a first update
    assert stage.cls_branch.layers[-1].weight.grad is not None
    assert stage.box_branch.layers[-1].weight.grad.abs().sum() > 0


def test_set_targets_never_match_invalid_candidates() -> None:
    coder = CenterBoxCoder(GRID, 2)
    cands = _candidates(1, 6, 4)
    gt = Boxes3D(cands.boxes[0, :4].clone())
    labels = cands.labels[0, :4].clone()
    codes = coder.encode(cands.boxes[0], reference=coder.to_cell_coords(cands.boxes[0, :, :2])).codes[None]
    positions = coder.to_cell_coords(cands.boxes[..., :2])
    valid = torch.tensor([[True, False, True, True, False, True]])
    t = build_set_targets(
        coder,
        codes,
        cands.cls_logits,
        positions,
        valid,
        [gt],
        [labels],
        with_velocity=True,
        costs=MatchCosts(),
    )
    assert not bool((t.positive & ~valid).any())
    assert t.num_positive == 4  # four objects, four valid candidates
    # objects outside gt_mask are not targets
    mask = torch.tensor([True, False, True, False])
    t2 = build_set_targets(
        coder,
        codes,
        cands.cls_logits,
        positions,
        valid,
        [gt],
        [labels],
        with_velocity=True,
        costs=MatchCosts(),
        gt_mask=[mask],
    )
    assert t2.num_positive == 2 and bool(t2.positive[0, 0]) and bool(t2.positive[0, 2])
