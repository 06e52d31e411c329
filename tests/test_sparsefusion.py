"""SparseFusionDetector end to end on a hand-made batch (two cameras looking along +x and -x): shapes and
gradients per stage, frozen LiDAR, missing cameras (all views invalid = the LiDAR path exactly), per-view mode,
camera-only mode, a loss that falls over a few dozen steps, and the configs that build."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from perception.config import load_config
from perception.models.build import build_detector
from perception.structures import Batch, Boxes3D, CameraRig, Points, Sample

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
H, W = 64, 128
SMALL = [
    f"data.images.size=[{H},{W}]",
    "model.fusion.camera.num_proposals=16",
    "model.head.transfusion.num_proposals=16",
]


def _cfg(name: str = "fusion_tiny.yaml", *extra: str):  # type: ignore[no-untyped-def]
    return load_config(CONFIGS / name, [*SMALL, *extra])


def _rig() -> CameraRig:
    """CAM_FRONT looks along +x, CAM_BACK along -x (camera x right, y down, z forward), both 1.5 m up."""
    f = 60.0
    k = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]])
    front = torch.tensor([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.5], [0, 0, 0, 1.0]])
    back = torch.tensor([[0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.5], [0, 0, 0, 1.0]])
    return CameraRig(
        names=("CAM_FRONT", "CAM_BACK"),
        intrinsics=torch.stack([k, k]),
        cam_to_lidar=torch.stack([front, back]),
        image_sizes=torch.tensor([[H, W], [H, W]]),
    )


def _sample(seed: int, class_names: tuple[str, ...], *, cameras: bool = True, valid: bool = True) -> Sample:
    g = torch.Generator().manual_seed(seed)
    boxes = torch.tensor(
        [[12.0, 1.0, -0.8, 4.2, 1.8, 1.6, 0.3, 1.0, 0.0], [-10.0, -2.0, -0.9, 0.7, 0.7, 1.8, -1.0, 0.0, 0.5]]
    )
    pts = [
        torch.rand(300, 3, generator=g) * torch.tensor([60.0, 60.0, 3.0]) - torch.tensor([30.0, 30.0, 2.0])
    ]
    for b in boxes:
        pts.append(b[:3] + (torch.rand(80, 3, generator=g) - 0.5) * b[3:6])
    xyz = torch.cat(pts)
    lag = torch.zeros(len(xyz), 1)
    lag[::4] = 0.05  # a second sweep
    points = Points(torch.cat([xyz, torch.rand(len(xyz), 1, generator=g), lag], dim=1))
    images = rig = None
    if cameras:
        images = (torch.rand(2, 3, H, W, generator=g) * 255).to(torch.uint8)
        rig = _rig()
        if not valid:
            rig = rig.with_valid(torch.zeros(2, dtype=torch.bool))
            images = torch.zeros_like(images)
    return Sample(
        token=f"s{seed}",
        points=points,
        boxes=Boxes3D(boxes),
        labels=torch.tensor([0, 8]),
        class_names=class_names,
        images=images,
        cameras=rig,
    )


def _batch(cfg, **kw) -> Batch:  # type: ignore[no-untyped-def]
    names = tuple(cfg.data.class_names)
    return Batch.collate([_sample(1, names, **kw), _sample(2, names, **kw)], image_norm=cfg.data.image_norm)


@pytest.fixture(scope="module")
def cfg():  # type: ignore[no-untyped-def]
    return _cfg()


def _model(cfg, seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    return build_detector(cfg.model, cfg.data)


def test_forward_loss_and_gradients(cfg) -> None:  # type: ignore[no-untyped-def]
    model = _model(cfg).train()
    # residual stages start at zero output layers (the delta heatmap's output conv, the fusion branches' last
    # layers: an untrained stage reproduces its input), which block the gradient into the layers before them until
    # the first update; give every zero weight that update's worth here
    zero = [n for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and not bool(p.any())]
    assert "delta_heatmap.out.weight" in zero and any(n.startswith("fusion.") for n in zero), zero
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in zero:
                p.normal_(std=0.01)
    batch = _batch(cfg)
    losses = model.loss(batch)
    expected = {"loss_cam_heatmap", "loss_cam_cls", "loss_cam_bbox", "loss_view_cls", "loss_view_bbox"}
    expected |= {"loss_fused_heatmap", "loss_fusion_cls", "loss_fusion_bbox"}
    assert expected <= set(losses), sorted(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    lidar = {id(p) for p in model.lidar_parameters()}
    for name, p in model.named_parameters():
        if id(p) in lidar:
            assert not p.requires_grad and p.grad is None, name
    for prefix in (
        "image_encoder",
        "camera_branch",
        "view_transformer",
        "semantic_transfer",
        "delta_heatmap",
        "fusion",
    ):
        params = [(n, p) for n, p in model.named_parameters() if n.startswith(prefix + ".")]
        assert params, prefix
        reached = [n for n, p in params if p.grad is not None and bool(p.grad.abs().sum() > 0)]
        assert len(reached) >= 0.8 * len(params), (prefix, sorted({n for n, _ in params} - set(reached))[:5])


def test_frozen_lidar_stays_in_eval_mode(cfg) -> None:  # type: ignore[no-untyped-def]
    model = _model(cfg).train()
    assert not model.head.training and not model.bev_backbone.training and model.camera_branch.training
    keys = model.frozen_state_keys()
    assert keys and all(
        k.split(".")[0] in {"vfe", "backbone_3d", "to_bev", "bev_backbone", "head"} for k in keys
    )
    unfrozen = _model(_cfg("fusion_tiny.yaml", "model.fusion.freeze_lidar=false")).train()
    assert unfrozen.head.training and unfrozen.frozen_state_keys() == []
    losses = unfrozen.loss(_batch(cfg))
    assert "loss_heatmap" in losses or any(k.startswith("loss_") and "cam" not in k for k in losses)


def test_all_cameras_missing_is_the_lidar_path(cfg) -> None:  # type: ignore[no-untyped-def]
    """Every view invalid: no camera stage runs, the LiDAR queries are those of the plain TransFusion-L, and the
    detections equal those of the same batch without images."""
    from perception.models.detector import VoxelDetector

    model = _model(cfg).eval()
    missing = _batch(cfg, valid=False)
    none = _batch(cfg, cameras=False)
    with torch.no_grad():
        out = model(missing)
        assert out.camera is None and out.view is None and out.fused is not None
        lidar_only = VoxelDetector.forward(model, missing)
        assert torch.equal(out.lidar.query_index, lidar_only.query_index)
        torch.testing.assert_close(out.lidar.box_codes, lidar_only.box_codes)
        a, b = model.predict(missing), model.predict(none)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.boxes.tensor, y.boxes.tensor)
        torch.testing.assert_close(x.scores, y.scores)


def test_one_camera_missing_gives_no_candidates_from_it(cfg) -> None:  # type: ignore[no-untyped-def]
    model = _model(cfg).eval()
    batch = _batch(cfg)
    cams = batch.camera_batch()
    assert cams is not None
    batch.cameras[0] = batch.cameras[0].with_valid(torch.tensor([True, False]))  # type: ignore[index]
    with torch.no_grad():
        out = model(batch)
    view = out.camera.query_view[0]
    assert not bool((out.camera.query_valid[0] & (view == 1)).any())
    assert not bool((out.fused.valid[0, 16:] & (view == 1)).any())


def test_per_view_matches_batched(cfg) -> None:  # type: ignore[no-untyped-def]
    batched = _model(_cfg("fusion_tiny.yaml", "model.fusion.per_view=false")).eval()
    per_view = _model(cfg).eval()
    per_view.load_state_dict(batched.state_dict())
    batch = _batch(cfg)
    with torch.no_grad():
        a, b = batched(batch), per_view(batch)
    torch.testing.assert_close(a.fused.cls_logits, b.fused.cls_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.fused.box_codes, b.fused.box_codes, atol=1e-4, rtol=1e-4)


def test_camera_only_mode_predicts_from_images_alone(cfg) -> None:  # type: ignore[no-untyped-def]
    ccfg = _cfg("fusion_tiny_camera.yaml")
    model = _model(ccfg).train()
    batch = _batch(ccfg)
    losses = model.loss(batch)
    assert set(losses) == {
        "loss_cam_heatmap",
        "loss_cam_cls",
        "loss_cam_bbox",
        "loss_view_cls",
        "loss_view_bbox",
    }
    sum(losses.values()).backward()
    assert model.fusion is None and model.semantic_transfer is None
    model.eval()
    dets = model.predict(batch)
    assert len(dets) == 2 and all(d.boxes.tensor.shape[1] == 9 for d in dets)
    with pytest.raises(ValueError, match="camera_only"):
        model.predict(_batch(ccfg, cameras=False))


def test_loss_falls_when_overfitting_one_batch(cfg) -> None:  # type: ignore[no-untyped-def]
    model = _model(cfg).train()
    batch = _batch(cfg)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    first = last = math.nan
    for i in range(30):
        loss = sum(model.loss(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if i == 0 else first
        last = float(loss.detach())
    assert last < 0.6 * first, (first, last)


@pytest.mark.parametrize(
    "name",
    ["fusion_tiny_lidar.yaml", "fusion_tiny.yaml", "fusion_tiny_camera.yaml", "sparsefusion_nuscenes.yaml"],
)
def test_configs_load(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.model is not None and cfg.data.use_cameras
    assert (cfg.model.fusion is None) == (name == "fusion_tiny_lidar.yaml")


def test_reference_config_builds_and_runs(cfg) -> None:  # type: ignore[no-untyped-def]
    """The reference widths (128 / 8 heads / FFN 256, ResNet-50 + FPN 256) build and run one forward on a small
    input (grid and images shrunk so that it takes seconds)."""
    ref = load_config(
        CONFIGS / "sparsefusion_nuscenes.yaml",
        [
            f"data.images.size=[{H},{W}]",
            "data.point_cloud_range=[-24.0,-24.0,-5.0,24.0,24.0,3.0]",
        ],
    )
    f = ref.model.fusion
    assert (f.fusion.hidden_channels, f.fusion.num_heads, f.fusion.ffn_channels) == (128, 8, 256)
    assert f.camera.num_proposals == 200 and f.image_backbone.depth == 50
    model = _model(ref).eval()
    with torch.no_grad():
        out = model(_batch(ref))
    assert out.fused.cls_logits.shape == (2, 400, 10)
    assert type(model.backbone_3d).__name__ == "VoxelResBackbone8x" and ref.data.voxel_size[0] == 0.075


def test_fusion_needs_a_transfusion_head_and_images() -> None:
    from perception.config import ConfigError

    with pytest.raises(ConfigError, match="use_cameras"):
        load_config(CONFIGS / "fusion_tiny.yaml", ["data.use_cameras=false"])
