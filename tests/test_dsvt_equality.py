"""Our DSVT in compatibility mode equals the authors' implementation given their weights and the same voxels.

The fixture (tests/data/dsvt/, see its README) holds weights in the authors' layout, input voxels and the outputs
of the authors' code, recorded once; this test needs none of their code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from perception.models.backbones.dsvt import DSVTBackbone, build_dsvt
from perception.models.backbones.dsvt_convert import convert_authors_state_dict, load_authors_checkpoint
from perception.models.backbones.dsvt_presets import DSVTPreset, dsvt_config_from_authors
from perception.structures import SparseFeatures

FIXTURE = Path(__file__).parent / "data" / "dsvt" / "authors_dsvt_outputs.pt"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def fixture() -> dict[str, Any]:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


def config_of(case: dict[str, Any], **overrides: Any) -> DSVTPreset:
    nx, ny, nz = case["authors_config"]["INPUT_LAYER"]["sparse_shape"]
    return dsvt_config_from_authors(
        case["authors_config"],
        point_cloud_range=(0.0, 0.0, 0.0, nx * 0.5, ny * 0.5, nz * 0.25),
        voxel_size=(0.5, 0.5, 0.25),
        **overrides,
    )


def sparse_of(case: dict[str, Any], preset: DSVTPreset) -> SparseFeatures:
    return SparseFeatures(case["features"], case["coords"], preset.grid.shape, 2)


def ours(case: dict[str, Any], **overrides: Any) -> tuple[DSVTBackbone, DSVTPreset]:
    preset = config_of(case, **overrides)
    model = build_dsvt(preset.config, input_shape=preset.input_shape)
    model.load_state_dict(convert_authors_state_dict(case["state_dict"]), strict=True)
    return model, preset


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", ["voxel", "pillar"])
def test_compat_mode_equals_authors(fixture: dict[str, Any], name: str, mode: str) -> None:
    case = fixture[name]
    model, cfg = ours(case)
    assert cfg.config.authors_pos_embed and not cfg.config.pool_mask_empty  # compatibility mode
    model.train(mode == "train")
    with torch.no_grad():
        out = model(sparse_of(case, cfg))
    ref = case[f"output_{mode}"]
    assert torch.equal(out.coords, case["output_coords"])
    assert out.features.shape == ref.shape
    diff = (out.features - ref).abs().max().item()
    assert diff <= TOLERANCE, f"max abs diff {diff:.2e} > {TOLERANCE:g}"


@pytest.mark.parametrize("name", ["voxel", "pillar"])
def test_correct_mode_differs_from_authors(fixture: dict[str, Any], name: str) -> None:
    """The fixture is sensitive to the flags: the default (corrected) behaviour gives other outputs."""
    case = fixture[name]
    flags = {"authors_pos_embed": False}
    if name == "voxel":
        flags["pool_mask_empty"] = True
    model, cfg = ours(case, **flags)
    with torch.no_grad():
        out = model.eval()(sparse_of(case, cfg))
    assert (out.features - case["output_eval"]).abs().max() > 1e-2


def test_each_voxel_flag_alone_breaks_equality(fixture: dict[str, Any]) -> None:
    case = fixture["voxel"]
    for flags in ({"authors_pos_embed": False}, {"pool_mask_empty": True}):
        model, cfg = ours(case, **flags)
        with torch.no_grad():
            out = model.eval()(sparse_of(case, cfg))
        assert (out.features - case["output_eval"]).abs().max() > 1e-3, flags


def test_detector_checkpoint_in_authors_layout(fixture: dict[str, Any], tmp_path: Path) -> None:
    """A whole-detector OpenPCDet checkpoint (``model_state`` with ``backbone_3d.`` keys among others) loads."""
    case = fixture["voxel"]
    state = {f"backbone_3d.{k}": v for k, v in case["state_dict"].items()}
    state["vfe.pfn_layers.0.linear.weight"] = torch.randn(16, 10)
    state["dense_head.heatmap_head.1.bias"] = torch.randn(3)
    path = tmp_path / "checkpoint_epoch_24.pth"
    torch.save(
        {"epoch": 24, "it": 1000, "model_state": state, "optimizer_state": {}, "version": "pcdet+0.6.0"}, path
    )
    cfg = config_of(case)
    model = build_dsvt(cfg.config, input_shape=cfg.input_shape)
    model.load_state_dict(load_authors_checkpoint(path), strict=True)
    with torch.no_grad():
        out = model.eval()(sparse_of(case, cfg))
    assert (out.features - case["output_eval"]).abs().max().item() <= TOLERANCE
