"""DSVT config: the section's own checks, the fit against the input (output_shape), presets, the YAML sections."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from pydantic import ValidationError
from test_dsvt import C, input_of, model_of, pillar_cfg, random_sparse, voxel_cfg

from perception.grid import VoxelGrid
from perception.models.backbones.dsvt import DSVTBackbone, build_dsvt
from perception.models.backbones.dsvt_config import DSVTConfig, DSVTStageConfig
from perception.models.backbones.dsvt_presets import DSVTPreset, dsvt_pillar_nuscenes, dsvt_voxel_waymo
from perception.shapes import Backbone3D, SparseShape

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PILLAR_GRID = VoxelGrid((-12.0, -9.0, -3.0, 12.0, 9.0, 1.0), (0.5, 0.5, 4.0))
"""The grid ``pillar_cfg`` is written for: (1, 36, 48)."""


def _stage0(**kw: object) -> DSVTStageConfig:
    return pillar_cfg().stages[0].model_copy(update=kw)


def _voxel_stage(s: int, **kw: object) -> tuple[DSVTStageConfig, ...]:
    stages = voxel_cfg().stages
    return stages[:s] + (stages[s].model_copy(update=kw),) + stages[s + 1 :]


def _yx_stages(first: tuple[int, int, int], second: tuple[int, int, int]) -> tuple[DSVTStageConfig, ...]:
    """Three single-block pillar stages pooling by ``first`` then ``second``."""

    def stage(stride: tuple[int, int, int] | None) -> DSVTStageConfig:
        return DSVTStageConfig(
            window_shape=(1, 6, 6),
            shift=(0, 3, 3),
            set_size=8,
            num_blocks=1,
            d_model=C,
            num_heads=4,
            dim_feedforward=32,
            downsample_stride=stride,
        )

    return (stage(first), stage(second), stage(None))


# ------------------------------------------------------------------------------------------------ output_shape


def test_output_shape_channels_grid_stride() -> None:
    """Channels = last d_model, grid = last stage grid, stride = input stride x the y strides (2 here)."""
    cfg = voxel_cfg()
    assert cfg.stage_shapes((8, 18, 20)) == ((8, 18, 20), (4, 9, 10), (1, 9, 10))
    assert cfg.stride == 2
    assert cfg.output_shape(SparseShape(C, (8, 18, 20))) == SparseShape(C, (1, 9, 10), 2)
    assert cfg.output_shape(SparseShape(C, (8, 18, 20), 4)).stride == 8
    assert pillar_cfg().output_shape(SparseShape(C, PILLAR_GRID.shape)) == SparseShape(C, (1, 36, 48), 1)


def test_grid_and_bev_shape_are_optional() -> None:
    """Without sparse_shape / bev_shape (the tiny configs), the input grid is taken and nothing is checked."""
    cfg = voxel_cfg(sparse_shape=None, bev_shape=None)
    assert cfg.output_shape(SparseShape(C, (8, 36, 41))) == SparseShape(C, (1, 18, 21), 2)
    with pytest.raises(ValueError, match="sparse_shape"):
        voxel_cfg(bev_shape=None).output_shape(SparseShape(C, (8, 36, 41)))


def test_built_backbone_reports_the_config_shapes() -> None:
    for cfg in (voxel_cfg(), pillar_cfg()):
        model = model_of(cfg)
        assert isinstance(model, Backbone3D)
        assert model.input_shape() == input_of(cfg)
        assert model.output_shape() == cfg.output_shape(input_of(cfg))
        assert (model.in_channels, model.out_channels, model.out_shape) == (C, C, model.output_shape().grid)
        out = model.eval()(random_sparse(cfg, 200))
        assert out.grid_shape == model.output_shape().grid


def test_build_checks_the_input() -> None:
    with pytest.raises(ValueError, match=r"^model\.backbone_3d\.dsvt: the input has 32 channels"):
        build_dsvt(pillar_cfg(), input_shape=SparseShape(32, (1, 36, 48)))
    model = model_of(pillar_cfg())
    parts = dict(input_layer=model.input_layer, stages=list(model.stages), poolings=list(model.poolings))
    with pytest.raises(ValueError, match="output_shape.grid"):
        DSVTBackbone(input_shape=input_of(pillar_cfg()), output_shape=SparseShape(C, (1, 18, 24)), **parts)


def test_yx_strides_equal_in_total_are_accepted() -> None:
    """Strides (1, 2, 1) then (1, 1, 2): y and x strides 2 in total. The config-time plan accepted this while the
    detector's check on the built backbone demanded equal y and x per stage; the product rule is kept (one BEV
    stride, ceil(ceil(n / a) / b) == ceil(n / ab)) and the built backbone's output matches it."""
    cfg = pillar_cfg(stages=_yx_stages((1, 2, 1), (1, 1, 2)), bev_shape=None)
    shape = cfg.output_shape(input_of(cfg))
    assert shape == SparseShape(C, (1, 18, 24), 2)
    model = model_of(cfg).eval()
    sparse = random_sparse(cfg, 300)
    with torch.no_grad():
        out = model(sparse)
    assert out.grid_shape == shape.grid
    c = sparse.coords.long()
    pooled = torch.unique(torch.stack([c[:, 0], c[:, 1], c[:, 2] // 2, c[:, 3] // 2], 1), dim=0)
    assert torch.equal(pooled, torch.unique(out.coords.long(), dim=0))
    with pytest.raises(ValidationError, match=r"y and x downsample strides differ in total \(2 vs 4\)"):
        pillar_cfg(stages=_yx_stages((1, 2, 2), (1, 1, 2)), bev_shape=None)


@pytest.mark.parametrize(
    ("cfg", "inp", "match"),
    [
        (
            pillar_cfg(),
            SparseShape(C, (1, 36, 40)),
            r"sparse_shape \(1, 36, 48\) disagrees with the input grid",
        ),
        (
            pillar_cfg(),
            SparseShape(2 * C, (1, 36, 48)),
            r"input has 32 channels but stages\[0\].d_model is 16",
        ),
        (pillar_cfg(bev_shape=(48, 36)), None, "bev_shape"),
        (voxel_cfg(bev_shape=(18, 20)), None, r"last stage's \(ny, nx\) = \(9, 10\)"),
        (pillar_cfg(stages=(_stage0(window_shape=(2, 10, 12)),)), None, "window_shape z = 2 exceeds"),
        (
            voxel_cfg(stages=_voxel_stage(0, window_shape=(1, 4, 5), shift=(0, 2, 3))),
            None,
            "window_shape z = 1 with stage grid nz = 8",
        ),
        (
            voxel_cfg(stages=_voxel_stage(2, window_shape=(2, 5, 5))),
            None,
            r"stages\[2\].window_shape z = 2 exceeds",
        ),
    ],
)
def test_fit_errors_name_the_key(cfg: DSVTConfig, inp: SparseShape | None, match: str) -> None:
    with pytest.raises(ValueError, match=r"^model\.backbone_3d\.dsvt: ") as info:
        cfg.output_shape(inp or input_of(cfg))
    assert info.match(match)


def test_grid_from_range_and_voxel_size() -> None:
    """A written sparse_shape is checked against the VoxelGrid's shape (the one shape rule, perception.grid)."""
    assert pillar_cfg().output_shape(SparseShape(C, PILLAR_GRID.shape)).grid == (1, 36, 48)
    for rng, size in (
        (PILLAR_GRID.point_cloud_range, (0.5, 0.4, 4.0)),
        ((-12.0, -9.0, -3.0, 12.0, 9.0, 5.0), PILLAR_GRID.voxel_size),
    ):
        grid = VoxelGrid(rng, size)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=f"disagrees with the input grid {re.escape(str(grid.shape))}"):
            pillar_cfg().output_shape(SparseShape(C, grid.shape))


# ------------------------------------------------------------------------------------------------ the section alone


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: pillar_cfg(stages=(_stage0(shift=(0, 21, 6)),)),
            r"stages\[0\].shift y = 21 must lie in \[0, 20\]",
        ),
        (
            lambda: pillar_cfg(stages=(_stage0(base_shift=(0, 0, 13)),)),
            r"base_shift x = 13 must lie in \[0, 12\]",
        ),
        (lambda: pillar_cfg(stages=(_stage0(num_heads=5),)), r"num_heads \(5\) must divide d_model"),
        (
            lambda: pillar_cfg(stages=(_stage0(downsample_stride=(1, 2, 2)),)),
            "downsample_stride must be None",
        ),
        (
            lambda: voxel_cfg(stages=_voxel_stage(0, downsample_stride=None)),
            r"stages\[0\].downsample_stride is required",
        ),
        (
            lambda: voxel_cfg(stages=_voxel_stage(2, d_model=32)),
            r"stages\[1\].d_model \(16\) must equal stages\[2\].d_model \(32\)",
        ),
        (lambda: voxel_cfg(pool_num_heads=3), r"pool_num_heads \(3\) must divide"),
        (lambda: pillar_cfg(windw=3), "windw"),
        (lambda: pillar_cfg(stages=()), "stages"),
        (lambda: pillar_cfg(in_channels=C), "in_channels"),  # not a key: the input brings its channels
        (lambda: pillar_cfg(voxel_size=(0.5, 0.5, 4.0)), "voxel_size"),  # not a key: the grid comes from data
        (lambda: pillar_cfg(dropout=1.0), "dropout"),
    ],
)
def test_section_validation_names_the_quantity(make, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match=match):
        make()


def test_nested_error_location_names_the_key() -> None:
    """Inside a larger schema, pydantic's location says where the section is."""
    from perception.config_types import StrictSection, validation_message

    class Backbone(StrictSection):
        dsvt: DSVTConfig

    stages = [dict(pillar_cfg().stages[0].model_dump(), num_heads=5)]
    with pytest.raises(ValidationError) as info:
        Backbone.model_validate({"dsvt": {"stages": stages}})
    assert validation_message(info.value).startswith("dsvt: stages[0].num_heads (5) must divide d_model (16)")


# ------------------------------------------------------------------------------------------------ presets, YAML


def test_authors_presets() -> None:
    p = dsvt_pillar_nuscenes()
    assert isinstance(p, DSVTPreset) and p.grid.shape == (1, 360, 360) and p.in_channels == 128
    assert p.input_shape == SparseShape(128, (1, 360, 360), 1)
    assert p.output_shape == SparseShape(128, (1, 360, 360), 1)
    cfg = p.config
    assert cfg.sparse_shape == (1, 360, 360) and cfg.stages[0].window_shape == (1, 30, 30)
    assert (
        cfg.stages[0].shift == (0, 15, 15) and cfg.stages[0].set_size == 90 and cfg.stages[0].num_blocks == 4
    )
    assert (cfg.stages[0].d_model, cfg.stages[0].num_heads, cfg.stages[0].dim_feedforward) == (128, 8, 256)
    assert not cfg.authors_pos_embed and cfg.pool_mask_empty
    w = dsvt_voxel_waymo()
    assert w.grid.shape == (32, 468, 468)
    assert w.config.stage_shapes(w.grid.shape) == (
        (32, 468, 468),
        (8, 468, 468),
        (2, 468, 468),
        (1, 468, 468),
    )
    assert [s.window_shape[0] for s in w.config.stages] == [32, 8, 2, 1]
    assert all(s.hybrid_window_shape[1:] == (24, 24) and s.set_size == 48 for s in w.config.stages)
    assert w.output_shape == SparseShape(192, (1, 468, 468), 1) and w.config.bev_shape == (468, 468)
    assert dsvt_pillar_nuscenes(authors_pos_embed=True).config.authors_pos_embed
    with pytest.raises(ValueError, match="bev_shape"):  # a preset is checked on creation
        dsvt_pillar_nuscenes(bev_shape=(180, 180))


def _dsvt_sections() -> list[Path]:
    return sorted(
        p
        for p in CONFIGS.glob("*.yaml")
        if "dsvt" in (yaml.safe_load(p.read_text()).get("model") or {}).get("backbone_3d", {})
    )


@pytest.mark.parametrize("path", _dsvt_sections(), ids=lambda p: p.name)
def test_experiment_yaml_sections_load_unchanged(path: Path) -> None:
    """Every ``model.backbone_3d.dsvt`` section of configs/ validates as DSVTConfig and fits its data grid."""
    raw = yaml.safe_load(path.read_text())
    section = raw["model"]["backbone_3d"]["dsvt"]
    cfg = DSVTConfig.model_validate(section)
    assert DSVTConfig.model_validate(cfg.model_dump()) == cfg  # the saved resolved config loads back
    grid = VoxelGrid(tuple(raw["data"]["point_cloud_range"]), tuple(raw["data"]["voxel_size"]))
    vfe = next(iter(raw["model"]["vfe"].values()))
    out = cfg.output_shape(SparseShape(vfe["filters"][-1], grid.shape))
    assert out.channels == cfg.stages[-1].d_model == raw["model"]["bev"]["pillar_scatter"]["num_bev_features"]
    assert out.grid[0] == 1 and out.grid[1:] == tuple(cfg.bev_shape or out.grid[1:])


def test_yaml_sections_found() -> None:
    assert len(_dsvt_sections()) >= 6
