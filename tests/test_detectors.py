"""Detectors assembled from configs: CenterPoint-spconv, DSVT-pillar-CenterPoint, DSVT-pillar-TransFusion.

For each tiny config (configs/tiny_*.yaml): build from YAML, stage shapes and head outputs on a synthetic nuScenes
batch, gradients to every parameter, empty scans, bf16 autocast, and an overfit run on one synthetic sample (loss
falls 10x, decoded boxes match the ground truth). Plus: every shipped model config loads and builds, and the
config cross-checks name the keys that disagree.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from perception.config import ConfigError, load_config
from perception.datasets.nuscenes import NuScenesDataset
from perception.datasets.nuscenes_infos import create_nuscenes_infos
from perception.datasets.synthetic import SyntheticParams, generate
from perception.models.build import build_detector
from perception.models.detector import VoxelDetector, Voxelization, total_loss
from perception.models.heads.centerpoint import CenterPointHead, CenterPointOutput
from perception.models.heads.transfusion import TransFusionOutput
from perception.ops.iou3d import boxes_iou_bev
from perception.ops.points_in_boxes import points_in_boxes
from perception.shapes import MapShape
from perception.structures import Batch, Boxes3D, Detections

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
MODEL_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if "model:" in p.read_text())
TINY = {
    "centerpoint_spconv": CONFIGS / "tiny_centerpoint_spconv.yaml",
    "dsvt_pillar_centerpoint": CONFIGS / "tiny_dsvt_pillar_centerpoint.yaml",
    "dsvt_pillar_transfusion": CONFIGS / "tiny_dsvt_pillar_transfusion.yaml",
}
VERSION = "v1.0-mini"


@pytest.fixture(autouse=True)
def one_thread():
    """Heavy tests run with one torch thread: the machine is shared and 2-thread ops stall under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def nusc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic nuScenes-mini data set written by the generator, with infos (2 sweeps)."""
    out = tmp_path_factory.mktemp("nusc_detectors")
    params = SyntheticParams(
        format="nuscenes", scenes=2, samples=2, sweeps=1, cameras="none", objects_per_scene=12, seed=3
    )
    generate(params, out)
    create_nuscenes_infos(out, VERSION, max_sweeps=2, workers=0, progress=False)
    return out


def _config(name: str, root: Path):
    return load_config(TINY[name], [f"data.root={root}", "synthetic=null"])


def _samples(root: Path, cfg, max_sweeps: int = 1) -> NuScenesDataset:
    return NuScenesDataset(
        root=root,
        version=VERSION,
        split="val",
        info_sweeps=2,
        max_sweeps=max_sweeps,
        class_names=cfg.data.class_names,
        grid=cfg.data.grid,
        mode="val",
    )


def _build(cfg, seed: int = 0) -> VoxelDetector:
    torch.manual_seed(seed)
    return build_detector(cfg.model, cfg.data)


def _empty_batch(class_names: tuple[str, ...], batch_size: int = 1) -> Batch:
    return Batch(
        points=torch.zeros((0, 5)),
        batch_index=torch.zeros(0, dtype=torch.int64),
        point_channels=("x", "y", "z", "intensity", "time_lag"),
        boxes=[Boxes3D.empty(with_velocity=True) for _ in range(batch_size)],
        labels=[torch.zeros(0, dtype=torch.int64) for _ in range(batch_size)],
        class_names=class_names,
        tokens=[f"empty{i}" for i in range(batch_size)],
    )


def _check_head_output(model: VoxelDetector, out, batch_size: int) -> None:
    h, w = model.head.coder.feature_map_size
    if isinstance(model.head, CenterPointHead):
        assert isinstance(out, CenterPointOutput)
        assert len(out.tasks) == len(model.head.task_names)
        for t, names in zip(out.tasks, model.head.task_names, strict=True):
            assert t.heatmap.shape == (batch_size, len(names), h, w)
            assert t.box_codes().shape == (batch_size, 10, h, w)
    else:
        assert isinstance(out, TransFusionOutput)
        p, k = model.head.num_proposals, model.head.num_classes
        assert out.cls_logits.shape == (batch_size, p, k)
        assert out.box_codes.shape == (batch_size, p, 10)
        assert out.iou is not None and out.iou.shape == (batch_size, p)
        assert out.dense_heatmap.shape == (batch_size, k, h, w)


def _check_detections(dets: list[Detections], batch_size: int, num_classes: int) -> None:
    assert len(dets) == batch_size
    for d in dets:
        assert isinstance(d, Detections)
        assert d.boxes.tensor.shape[1] == 9 and d.boxes.tensor.dtype == torch.float32
        assert bool(torch.isfinite(d.boxes.tensor).all())
        assert bool(((d.scores >= 0) & (d.scores <= 1)).all())
        assert bool(((d.labels >= 0) & (d.labels < num_classes)).all())


# ---------------------------------------------------------------- shipped configs


def test_model_configs_are_shipped() -> None:
    names = {p.name for p in MODEL_CONFIGS}
    assert {
        "centerpoint_spconv_nuscenes.yaml",
        "dsvt_pillar_transfusion_nuscenes.yaml",
        "dsvt_pillar_centerpoint_nuscenes.yaml",
        "dsvt_voxel_nuscenes.yaml",
        *(p.name for p in TINY.values()),
    } <= names


def test_dsvt_detector_does_not_import_spconv() -> None:
    # spconv takes seconds to import; a DSVT model (the shipped demo detector) must not pay for it, a spconv
    # model still gets it
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from perception.config import load_config\n"
        "from perception.models.build import build_detector\n"
        "import perception.engine.trainer, perception.engine.inference\n"
        "cfg = load_config(sys.argv[1]); build_detector(cfg.model, cfg.data)\n"
        "print('spconv' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1] / "configs"
    for name, expected in (("demo_detector.yaml", "False"), ("centerpoint_spconv_nuscenes.yaml", "True")):
        out = subprocess.run(
            [sys.executable, "-c", code, str(root / name)], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip().splitlines()[-1] == expected, (name, out.stdout, out.stderr)


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=[p.name for p in MODEL_CONFIGS])
def test_model_config_loads_and_builds(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.model is not None
    plan = cfg.model.plan(cfg.data)
    model = build_detector(cfg.model, cfg.data)
    # the built stages report the shapes the config-time plan computed (one computation, two moments)
    assert model.vfe.output_shape() == plan.vfe
    assert model.backbone_3d.output_shape() == plan.backbone_3d
    assert model.to_bev.output_shape() == plan.bev
    assert model.bev_backbone.output_shape() == plan.head_input == model.head.input_shape()
    assert model.head.coder.feature_stride == plan.feature_stride
    assert tuple(model.head.coder.feature_map_size) == plan.head_input.size
    assert model.voxelization.grid is cfg.data.grid and plan.grid is cfg.data.grid


def test_full_size_configs_match_the_published_models() -> None:
    cp = load_config(CONFIGS / "centerpoint_spconv_nuscenes.yaml")
    plan = cp.model.plan(cp.data)
    assert plan.grid.shape == (40, 1440, 1440) and plan.backbone_3d.grid == (2, 180, 180)
    assert plan.bev.channels == 256 and plan.head_input.channels == 512 and plan.feature_stride == 8
    dsvt = load_config(CONFIGS / "dsvt_pillar_transfusion_nuscenes.yaml")
    plan = dsvt.model.plan(dsvt.data)
    assert (
        plan.grid.shape == (1, 360, 360) and plan.head_input.size == (180, 180) and plan.feature_stride == 2
    )
    dsvt_cfg = dsvt.model.backbone_3d.dsvt
    assert dsvt_cfg is not None
    stage = dsvt_cfg.stages[0]
    assert (stage.window_shape, stage.shift, stage.set_size, stage.num_blocks) == (
        (1, 30, 30),
        (0, 15, 15),
        90,
        4,
    )
    assert (stage.d_model, stage.num_heads, stage.dim_feedforward) == (128, 8, 256)
    head = dsvt.model.head.transfusion
    assert head.num_proposals == 200 and head.with_iou and plan.head_input.channels == 384
    voxel = load_config(CONFIGS / "dsvt_voxel_nuscenes.yaml")
    plan = voxel.model.plan(voxel.data)
    assert plan.grid.shape == (32, 340, 340) and voxel.data.voxel_size == (0.32, 0.32, 0.1875)
    voxel_dsvt = voxel.model.backbone_3d.dsvt
    assert [s.window_shape[0] for s in voxel_dsvt.stages] == [32, 8, 2, 1]
    assert voxel_dsvt.stage_shapes(plan.grid.shape) == (
        (32, 340, 340),
        (8, 340, 340),
        (2, 340, 340),
        (1, 340, 340),
    )


# ---------------------------------------------------------------- cross-checks


def _error(path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    return str(info.value)


PILLAR = CONFIGS / "dsvt_pillar_transfusion_nuscenes.yaml"
SPCONV = CONFIGS / "centerpoint_spconv_nuscenes.yaml"


@pytest.mark.parametrize(
    ("path", "overrides", "needles"),
    [
        (
            PILLAR,
            ["data.voxel_size=[0.2, 0.2, 8.0]"],
            ["sparse_shape", "(1, 540, 540)", "input grid", "data.voxel_size"],
        ),
        (PILLAR, ["data.voxel_size=[0.3, 0.3, 0.2]"], ["dynamic_pillar", "one voxel along z"]),
        (PILLAR, ["model.backbone_3d.dsvt.bev_shape=[180, 180]"], ["bev_shape", "(360, 360)"]),
        (
            PILLAR,
            [
                "model.backbone_3d.dsvt.stages=[{window_shape: [1, 30, 30], shift: [0, 45, 15], set_size: 90, "
                "num_blocks: 4, d_model: 128, num_heads: 8, dim_feedforward: 256}]"
            ],
            ["shift", "45", "[0, 30]"],
        ),
        (PILLAR, ["model.vfe.dynamic_pillar.filters=[64, 64]"], ["64 channels", "d_model", "128"]),
        (PILLAR, ["model.bev.pillar_scatter.num_bev_features=256"], ["num_bev_features", "256", "128"]),
        (PILLAR, ["model.head.transfusion.feature_stride=4"], ["feature_stride", "4", "stride 2"]),
        (PILLAR, ["model.bev_backbone.layer_strides=[1, 2, 4]"], ["the stages end at strides"]),
        (PILLAR, ["model.head.transfusion.exempt_classes=[pedestrian, cone]"], ["'cone'", "class_names"]),
        (
            PILLAR,
            ["model.voxelization.mode=hard", "model.voxelization.max_points_per_voxel=10"],
            ["mode: dynamic"],
        ),
        (PILLAR, ["model.backbone_3d.spconv_resnet={}"], ["exactly one of", "spconv_resnet", "dsvt"]),
        (
            PILLAR,
            ["model.vfe.dynamic_pillar.filtres=[8]"],
            ["model.vfe.dynamic_pillar.filtres", "unknown key"],
        ),
        (SPCONV, ["model.bev.height_compression.num_bev_features=128"], ["num_bev_features", "2 z layers"]),
        (SPCONV, ["model.head.centerpoint.feature_stride=4"], ["feature_stride", "stride 8"]),
        (SPCONV, ["model.bev=null", "model.bev.pillar_scatter={}"], ["pillar_scatter", "(2, 180, 180)"]),
        (SPCONV, ["data.voxel_size=[0.075, 0.075, 8.0]"], ["spconv_resnet", "too small"]),
        (
            SPCONV,
            ["data.point_cloud_range=[-54.15, -54.15, -5.0, 54.15, 54.15, 3.0]"],
            ["181 x 181", "multiples of 2"],
        ),
        (SPCONV, ["model.head.centerpoint.tasks=[[car, truck]]"], ["belong to no task"]),
        (SPCONV, ["model.head.centerpoint.tasks=[[car, lorry]]"], ["'lorry'", "data.class_names"]),
        (SPCONV, ["model.voxelization.max_points_per_voxel=null"], ["max_points_per_voxel"]),
    ],
)
def test_cross_checks_name_what_disagrees(path: Path, overrides: list[str], needles: list[str]) -> None:
    msg = _error(path, *overrides)
    assert str(path) in msg
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_detector_constructor_checks_built_stages(nusc_root: Path) -> None:
    cfg = _config("dsvt_pillar_centerpoint", nusc_root)
    model = _build(cfg)
    parts = dict(
        voxelization=model.voxelization,
        vfe=model.vfe,
        backbone_3d=model.backbone_3d,
        to_bev=model.to_bev,
        bev_backbone=model.bev_backbone,
    )
    out = model.bev_backbone.output_shape()
    grid = cfg.data.grid

    def head(input_shape: MapShape) -> CenterPointHead:
        head_cfg = cfg.model.head.centerpoint.model_copy(update={"feature_stride": None})  # any stride
        return CenterPointHead(head_cfg, class_names=cfg.data.class_names, grid=grid, input_shape=input_shape)

    with pytest.raises(
        ValueError, match=r"the head expects MapShape\(channels=64, size=\(40, 40\), stride=Fraction\(4"
    ):
        VoxelDetector(**parts, head=head(MapShape(out.channels, grid.bev_size(4), 4)))
    with pytest.raises(ValueError, match=r"the head expects MapShape\(channels=32"):
        VoxelDetector(**parts, head=head(MapShape(32, out.size, out.stride)))
    spconv = _build(_config("centerpoint_spconv", nusc_root))
    with pytest.raises(ValueError, match="voxelization mode 'dynamic' does not fit the VFE MeanVFE"):
        VoxelDetector(**{**parts, "vfe": spconv.vfe}, head=model.head)
    with pytest.raises(ValueError, match="backbone_3d expects the grid"):
        VoxelDetector(**{**parts, "backbone_3d": spconv.backbone_3d}, head=model.head)
    with pytest.raises(TypeError, match="head must be an nn.Module following DetectionHead"):
        VoxelDetector(**parts, head=torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the VFE's grid"):
        other_grid = Voxelization(cfg.model.voxelization, grid=spconv.voxelization.grid)
        VoxelDetector(**{**parts, "voxelization": other_grid}, head=model.head)


# ---------------------------------------------------------------- forward / loss / predict


@pytest.mark.parametrize("name", list(TINY))
def test_forward_loss_predict_shapes_and_gradients(name: str, nusc_root: Path) -> None:
    cfg = _config(name, nusc_root)
    plan = cfg.model.plan(cfg.data)
    ds = _samples(nusc_root, cfg)
    batch = Batch.collate([ds[0], ds[1]])
    model = _build(cfg)

    sparse = model.voxel_features(batch)
    assert sparse.grid_shape == plan.vfe.grid and sparse.features.shape[1] == plan.vfe.channels
    assert sparse.num_voxels > 1000 and set(sparse.coords[:, 0].tolist()) == {0, 1}
    encoded = model.backbone_3d(sparse)
    assert (
        encoded.grid_shape == plan.backbone_3d.grid and encoded.features.shape[1] == plan.backbone_3d.channels
    )
    bev = model.bev_backbone(model.to_bev(encoded))
    assert bev.shape == (2, plan.head_input.channels, *plan.head_input.size)

    out = model(batch)
    _check_head_output(model, out, 2)
    losses = model.head.loss(out, batch.boxes, batch.labels)
    assert losses and all(v.ndim == 0 and v.dtype == torch.float32 for v in losses.values())
    loss = total_loss(losses)
    assert math.isfinite(loss.item()) and loss.item() > 0
    loss.backward()
    params = list(model.named_parameters())
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert all(bool(torch.isfinite(p.grad).all()) for _, p in params)
    # Every weight matrix / kernel gets a non-zero gradient. (A bias vector may legitimately get an exactly zero
    # one: the L1 subgradient of a regression output's bias is a sum of +-1 terms that can cancel.)
    zero = [n for n, p in params if p.ndim > 1 and not bool(p.grad.any())]
    assert not zero, f"all-zero gradients for {zero}"

    model.eval()
    dets = model.predict(batch)
    _check_detections(dets, 2, len(cfg.data.class_names))


@pytest.mark.parametrize("name", list(TINY))
def test_empty_scans(name: str, nusc_root: Path) -> None:
    cfg = _config(name, nusc_root)
    model = _build(cfg)
    names = cfg.data.class_names
    empty = _empty_batch(names, batch_size=2)
    model.eval()
    out = model(empty)
    _check_head_output(model, out, 2)
    _check_detections(model.predict(empty), 2, len(names))
    loss = total_loss(model.head.loss(out, empty.boxes, empty.labels))
    assert math.isfinite(loss.item())

    # one empty sample beside a real one, in training mode: the empty one has no voxels at all
    sample = _samples(nusc_root, cfg)[0]
    real = Batch.collate([sample])
    mixed = Batch(
        points=real.points,
        batch_index=real.batch_index,
        point_channels=real.point_channels,
        boxes=[real.boxes[0], Boxes3D.empty(with_velocity=True)],
        labels=[real.labels[0], torch.zeros(0, dtype=torch.int64)],
        class_names=names,
        tokens=["real", "empty"],
    )
    model.train()
    losses = model.loss(mixed)
    total_loss(losses).backward()
    assert all(math.isfinite(v.item()) for v in losses.values())
    model.eval()
    dets = model.predict(mixed)
    _check_detections(dets, 2, len(names))


@pytest.mark.parametrize("name", list(TINY))
def test_bf16_autocast_forward_backward(name: str, nusc_root: Path) -> None:
    cfg = _config(name, nusc_root)
    model = _build(cfg)
    batch = Batch.collate([_samples(nusc_root, cfg)[0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
        losses = model.head.loss(out, batch.boxes, batch.labels)
    loss = total_loss(losses)
    assert loss.dtype == torch.float32 and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def test_batch_with_wrong_point_columns_is_rejected(nusc_root: Path) -> None:
    cfg = _config("dsvt_pillar_centerpoint", nusc_root)
    model = _build(cfg)
    batch = Batch(
        points=torch.zeros((4, 4)),
        batch_index=torch.zeros(4, dtype=torch.int64),
        point_channels=("x", "y", "z", "intensity"),
        boxes=[Boxes3D.empty(with_velocity=True)],
        labels=[torch.zeros(0, dtype=torch.int64)],
        class_names=cfg.data.class_names,
        tokens=["t"],
    )
    with pytest.raises(ValueError, match="batch.points must have 5 columns"):
        model(batch)
    with pytest.raises(TypeError, match="Batch"):
        model.predict(batch.points)


# ---------------------------------------------------------------- overfit one sample

OVERFIT = {  # steps, learning rate
    "centerpoint_spconv": (150, 3e-3),
    "dsvt_pillar_centerpoint": (120, 3e-3),
    "dsvt_pillar_transfusion": (100, 3e-3),
}
MIN_POINTS = 5


def _recalibrate_batchnorm(model: VoxelDetector, batch: Batch) -> None:
    """Set BatchNorm running statistics to the statistics of ``batch`` (the one training sample)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass gives exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(batch)


def _greedy_match(dets: Detections, gt: torch.Tensor, gt_labels: torch.Tensor) -> torch.Tensor:
    """bool ``(K,)``: ground-truth boxes matched by a detection of the same class with BEV IoU > 0.5, detections
    taken by descending score, each used once."""
    matched = torch.zeros(len(gt), dtype=torch.bool)
    if len(dets) == 0 or len(gt) == 0:
        return matched
    iou = boxes_iou_bev(dets.boxes.tensor[:, :7].contiguous(), gt[:, :7].contiguous())
    for i in torch.argsort(dets.scores, descending=True).tolist():
        cand = iou[i].clone()
        cand[matched | (gt_labels != dets.labels[i])] = 0
        j = int(cand.argmax())
        if cand[j] > 0.5:
            matched[j] = True
    return matched


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TINY))
def test_overfits_one_synthetic_sample(name: str, nusc_root: Path) -> None:
    cfg = _config(name, nusc_root)
    sample = _samples(nusc_root, cfg)[0]
    batch = Batch.collate([sample])
    model = _build(cfg, seed=0)
    steps, lr = OVERFIT[name]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    history = []
    for _ in range(steps):
        loss = total_loss(model.loss(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < history[0] / 10, (history[0], history[-1])

    _recalibrate_batchnorm(model, batch)
    model.eval()
    dets = model.predict(batch)[0]
    gt = sample.boxes.tensor
    _, npts = points_in_boxes(batch.points[:, :3].contiguous(), gt[:, :7].contiguous())
    visible = npts >= MIN_POINTS
    assert int(visible.sum()) >= 8
    matched = _greedy_match(dets, gt, sample.labels)
    rate = float(matched[visible].float().mean())
    assert rate >= 0.75, f"{int(matched[visible].sum())} of {int(visible.sum())} visible boxes matched"


@pytest.mark.parametrize("name", ["centerpoint_spconv", "dsvt_pillar_transfusion"])
def test_non_finite_points_are_dropped(name: str, nusc_root: Path) -> None:
    """Points with NaN / inf values are dropped by the voxelizer (documented in ops.voxelize): same output."""
    cfg = _config(name, nusc_root)
    model = _build(cfg).eval()
    batch = Batch.collate([_samples(nusc_root, cfg)[0]])
    bad = batch.points[:3].clone()
    bad[0, 0], bad[1, 2], bad[2, 3] = float("nan"), float("inf"), float("-inf")
    dirty = Batch(
        points=torch.cat([batch.points, bad]),
        batch_index=torch.zeros(len(batch.points) + 3, dtype=torch.int64),
        point_channels=batch.point_channels,
        boxes=batch.boxes,
        labels=batch.labels,
        class_names=batch.class_names,
        tokens=batch.tokens,
    )
    with torch.no_grad():
        torch.testing.assert_close(model.bev_features(dirty), model.bev_features(batch))
