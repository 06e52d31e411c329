"""CenterBoxCoder: hand-computed cells and codes, round trips (CenterPoint and TransFusion references), the map
size of the shipped configs, errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from perception.config import load_config
from perception.grid import VoxelGrid
from perception.models.heads.box_coder import CODE_NAMES, MAX_LOG_SIZE, CenterBoxCoder

NUSC_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
NUSC_GRID = VoxelGrid(NUSC_RANGE, (0.075, 0.075, 0.2))
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _coder(stride: int = 8) -> CenterBoxCoder:
    return CenterBoxCoder(NUSC_GRID, stride)


def _random_boxes(n: int, seed: int, velocity: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    boxes = torch.cat(
        [
            (torch.rand(n, 2, generator=g) - 0.5) * 100,
            torch.rand(n, 1, generator=g) * 2 - 2,
            torch.rand(n, 3, generator=g) * 10 + 0.2,
            (torch.rand(n, 1, generator=g) - 0.5) * 2 * math.pi * 0.999,
            torch.randn(n, 2, generator=g) * 5,
        ],
        dim=1,
    )
    return boxes if velocity else boxes[:, :7]


def test_geometry() -> None:
    coder = _coder()
    assert coder.feature_map_size == (180, 180)  # 1440 x 1440 voxels / 8
    assert coder.cell_size == pytest.approx((0.6, 0.6))
    odd = CenterBoxCoder(VoxelGrid((0, -40, -3, 70.4, 40, 1), (0.05, 0.05, 0.1)), 3)
    assert odd.grid.shape_xyz[:2] == (1408, 1600)
    assert odd.feature_map_size == (534, 470)  # ceil(1600 / 3), ceil(1408 / 3)
    assert CenterBoxCoder.code_size(True) == 10 == len(CODE_NAMES)
    assert CenterBoxCoder.code_size(False) == 8


def test_encode_hand_computed() -> None:
    coder = _coder()
    box = torch.tensor([[1.0, -2.0, -0.5, 4.0, 2.0, 1.5, 0.3, 1.0, -2.0]])
    enc = coder.encode(box)
    u, v = (1.0 + 54.0) / 0.6, (-2.0 + 54.0) / 0.6  # 91.667, 86.667
    assert enc.cells.tolist() == [[91, 86]]
    assert enc.inside.tolist() == [True]
    expected = [
        u - 91,
        v - 86,
        -0.5,
        math.log(4.0),
        math.log(2.0),
        math.log(1.5),
        math.sin(0.3),
        math.cos(0.3),
        1.0,
        -2.0,
    ]
    assert enc.codes.dtype == torch.float32
    assert enc.codes[0].tolist() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("velocity", [True, False])
@pytest.mark.parametrize("stride", [1, 2, 8])
def test_round_trip_center_cells(velocity: bool, stride: int) -> None:
    coder = _coder(stride)
    boxes = _random_boxes(200, seed=stride, velocity=velocity)
    enc = coder.encode(boxes)
    assert enc.codes.shape == (200, 10 if velocity else 8)
    assert bool(((enc.codes[:, :2] >= 0) & (enc.codes[:, :2] < 1)).all())
    assert bool(enc.inside.all())
    back = coder.decode(enc.codes, enc.cells)
    torch.testing.assert_close(back, boxes, atol=2e-4, rtol=1e-5)


def test_round_trip_query_positions_and_leading_dims() -> None:
    coder = _coder(2)
    boxes = _random_boxes(24, seed=3)
    g = torch.Generator().manual_seed(4)
    queries = torch.rand(24, 2, generator=g) * torch.tensor([720.0, 720.0])  # e.g. TransFusion cell centres
    enc = coder.encode(boxes, reference=queries)
    back = coder.decode(enc.codes.view(2, 12, 10), queries.view(2, 12, 2))
    assert back.shape == (2, 12, 9)
    torch.testing.assert_close(back.view(24, 9), boxes, atol=5e-4, rtol=1e-5)


def test_cell_centers_and_metric_conversion() -> None:
    coder = CenterBoxCoder(VoxelGrid((0, 0, 0, 4, 3, 1), (0.5, 0.5, 1)), 2)
    assert coder.feature_map_size == (3, 4)
    centres = coder.cell_centers()
    assert centres.shape == (12, 2)
    assert centres[5].tolist() == [1.5, 1.5]  # row 1, col 1 -> flat index 1 * 4 + 1
    xy = coder.to_metric(centres)
    assert xy[5].tolist() == [1.5, 1.5]  # 1.5 cells of 1 m
    torch.testing.assert_close(coder.to_cell_coords(xy), centres)


def test_outside_and_degenerate_boxes() -> None:
    coder = _coder()
    boxes = torch.tensor(
        [
            [60.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0],  # beyond x_max
            [-54.0, -54.0, 0.0, 1.0, 1.0, 1.0, 0.0],  # exactly at the lower corner: cell (0, 0)
            [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0],  # zero length: coded with MIN_SIZE, finite
        ]
    )
    enc = coder.encode(boxes)
    assert enc.inside.tolist() == [False, True, True]
    assert enc.cells[1].tolist() == [0, 0]
    assert bool(torch.isfinite(enc.codes).all())
    assert enc.codes[2, 3].item() == pytest.approx(math.log(1e-3))
    empty = coder.encode(torch.zeros(0, 9))
    assert empty.codes.shape == (0, 10) and empty.cells.shape == (0, 2) and empty.inside.shape == (0,)
    assert coder.decode(torch.zeros(0, 10), torch.zeros(0, 2)).shape == (0, 9)


def test_decode_clamps_log_sizes_and_handles_bf16() -> None:
    coder = _coder()
    codes = torch.zeros(2, 8)
    codes[0, 3:6] = 1e4
    codes[1, 3:6] = -1e4
    codes[:, 7] = 1.0
    out = coder.decode(codes, torch.zeros(2, 2, dtype=torch.int64))
    assert bool(torch.isfinite(out).all())
    assert out[0, 3].item() == pytest.approx(math.exp(MAX_LOG_SIZE), rel=1e-5)
    assert coder.decode(codes.bfloat16(), torch.zeros(2, 2)).dtype == torch.float32


def _old_coder_map_size(grid: VoxelGrid, stride: int) -> tuple[int, int]:
    """The rule the coder had before it took a VoxelGrid: voxels per axis rounded in float64 (a 1e-4 relative
    tolerance to a whole number), then ``ceil(n / stride)``."""
    nx, ny = (
        round((grid.point_cloud_range[a + 3] - grid.point_cloud_range[a]) / grid.voxel_size[a])
        for a in (0, 1)
    )
    return (-(-ny // stride), -(-nx // stride))


MODEL_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.yaml") if "\nmodel:" in p.read_text())


def test_model_configs_are_found() -> None:
    assert len(MODEL_CONFIGS) >= 6


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_map_size_of_shipped_configs_is_the_grid_rule(name: str) -> None:
    """The coder's map is ``grid.bev_size(stride)``, the planned head input, and (for every shipped model config)
    the size the coder's own float64 rule gave before."""
    cfg = load_config(CONFIGS / name)
    assert cfg.model is not None, name
    grid = cfg.data.grid
    plan = cfg.model.plan(cfg.data)
    stride = plan.feature_stride
    coder = CenterBoxCoder(grid, stride)
    assert coder.feature_map_size == grid.bev_size(stride) == plan.head_input.size
    assert coder.feature_map_size == _old_coder_map_size(grid, stride)
    assert coder.cell_size == grid.cell_size(stride)


def test_errors() -> None:
    with pytest.raises(TypeError, match="VoxelGrid"):
        CenterBoxCoder((0, 0, 0, 1, 1, 1), 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stride"):
        CenterBoxCoder(VoxelGrid((0, 0, 0, 1, 1, 1), (0.5, 0.5, 1)), 0)
    coder = _coder()
    with pytest.raises(ValueError, match=r"boxes must be \(N, 7\)"):
        coder.encode(torch.zeros(3, 8))
    with pytest.raises(TypeError, match="boxes must have dtype"):
        coder.encode(torch.zeros(3, 7, dtype=torch.int32))
    nan = torch.ones(1, 7)
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        coder.encode(nan)
    with pytest.raises(ValueError, match="negative size"):
        coder.encode(torch.tensor([[0.0, 0, 0, -1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="reference must have shape"):
        coder.encode(torch.ones(2, 7), reference=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="codes must have shape"):
        coder.decode(torch.zeros(2, 9), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="reference must have shape"):
        coder.decode(torch.zeros(2, 10), torch.zeros(2, 3))
