"""Rotated BEV / 3D IoU: numba CPU vs torch reference vs numba CUDA (simulator), vs shapely, edge cases, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from perception.ops.iou3d import boxes_iou_3d, boxes_iou_bev

IOU_FNS = {"bev": boxes_iou_bev, "3d": boxes_iou_3d}


def random_boxes(n: int, seed: int, spread: float = 6.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(n, 3, generator=g) * spread
    size = torch.rand(n, 3, generator=g) * 3.0 + 0.2
    yaw = (torch.rand(n, 1, generator=g) - 0.5) * 4 * math.pi
    return torch.cat([centre, size, yaw], dim=1)


def polygon(box: torch.Tensor) -> Polygon:
    x, y, _, dx, dy, _, yaw = box[:7].double().tolist()
    c, s = math.cos(yaw), math.sin(yaw)
    corners = [(u * dx / 2, v * dy / 2) for u, v in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
    return Polygon([(x + c * u - s * v, y + s * u + c * v) for u, v in corners])


def shapely_iou(a: torch.Tensor, b: torch.Tensor, mode: str) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i in range(len(a)):
        pa = polygon(a[i])
        for j in range(len(b)):
            pb = polygon(b[j])
            inter = pa.intersection(pb).area
            area_a, area_b = pa.area, pb.area
            if mode == "3d":
                za, zb = a[i, 2].item(), b[j, 2].item()
                ha, hb = a[i, 5].item(), b[j, 5].item()
                dz = max(0.0, min(za + ha / 2, zb + hb / 2) - max(za - ha / 2, zb - hb / 2))
                inter, area_a, area_b = inter * dz, area_a * ha, area_b * hb
            union = area_a + area_b - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


@pytest.mark.parametrize("mode", ["bev", "3d"])
def test_cpu_equals_torch_reference_bitwise(mode: str) -> None:
    a, b = random_boxes(60, 0), random_boxes(45, 1)
    fn = IOU_FNS[mode]
    cpu = fn(a, b, backend="cpu")
    ref = fn(a, b, backend="torch")
    assert cpu.dtype == torch.float32 and cpu.shape == (60, 45)
    assert (cpu > 0).sum() > 100  # the scene really overlaps
    assert torch.equal(cpu, ref)


@pytest.mark.parametrize("mode", ["bev", "3d"])
def test_cuda_matches_cpu(mode: str, cuda_backend_device: torch.device) -> None:
    a, b = random_boxes(12, 2, spread=3.0), random_boxes(9, 3, spread=3.0)
    fn = IOU_FNS[mode]
    cpu = fn(a, b, backend="cpu")
    cuda = fn(a.to(cuda_backend_device), b.to(cuda_backend_device), backend="cuda").cpu()
    assert (cpu > 0).sum() > 10
    if cuda_backend_device.type == "cpu":  # simulator: same float64 operations, same bits
        assert torch.equal(cuda, cpu)
    else:  # real GPU: fused multiply-adds may change the last bits
        torch.testing.assert_close(cuda, cpu, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["bev", "3d"])
def test_matches_shapely(mode: str) -> None:
    a, b = random_boxes(30, 4), random_boxes(30, 5)
    ours = IOU_FNS[mode](a.double(), b.double(), backend="cpu").double().numpy()
    np.testing.assert_allclose(ours, shapely_iou(a.double(), b.double(), mode), atol=1e-5, rtol=0)


def edge_pairs() -> dict[str, tuple[list[float], list[float], float]]:
    """name -> (box a, box b, expected BEV IoU)."""
    yaw = 0.5236
    c, s = math.cos(yaw), math.sin(yaw)
    return {
        "identical": ([1, 2, 0, 4, 2, 1.5, 0.3], [1, 2, 0, 4, 2, 1.5, 0.3], 1.0),
        "identical_large_coords": (
            [912.3, -481.7, 1, 4.6, 1.9, 1.7, -2.1],
            [912.3, -481.7, 1, 4.6, 1.9, 1.7, -2.1],
            1.0,
        ),
        "rot90_same_rectangle": ([0, 0, 0, 4, 2, 1, 0], [0, 0, 0, 2, 4, 1, math.pi / 2], 1.0),
        "rot180_same_rectangle": ([0, 0, 0, 4, 2, 1, 0.4], [0, 0, 0, 4, 2, 1, 0.4 + math.pi], 1.0),
        "touching_axis_aligned": ([0, 0, 0, 2, 2, 1, 0], [2, 0, 0, 2, 2, 1, 0], 0.0),
        "touching_corner": ([0, 0, 0, 2, 2, 1, 0], [2, 2, 0, 2, 2, 1, 0], 0.0),
        "touching_rotated": ([0, 0, 0, 3, 1, 1, yaw], [3 * c, 3 * s, 0, 3, 1, 1, yaw], 0.0),
        "apart": ([0, 0, 0, 2, 2, 1, 0.2], [10, 0, 0, 2, 2, 1, 1.0], 0.0),
        "contained": ([0, 0, 0, 4, 4, 1, 0], [0.5, -0.5, 0, 1, 2, 1, 0.7], 2.0 / 16.0),
        "half_overlap": ([0, 0, 0, 2, 2, 1, 0], [1, 0, 0, 2, 2, 1, 0], 2.0 / 6.0),
        "cross": ([0, 0, 0, 4, 1, 1, 0], [0, 0, 0, 4, 1, 1, math.pi / 2], 1.0 / 7.0),
        "degenerate_zero_length": ([0, 0, 0, 0, 2, 1, 0], [0, 0, 0, 2, 2, 1, 0], 0.0),
        "degenerate_identical_points": ([1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0], 0.0),
        "degenerate_identical_segments": ([1, 1, 0, 3, 0, 1, 0.3], [1, 1, 0, 3, 0, 1, 0.3], 0.0),
    }


@pytest.mark.parametrize("name", sorted(edge_pairs()))
def test_edge_cases_all_backends(name: str, cuda_backend_device: torch.device) -> None:
    a, b, expected = edge_pairs()[name]
    ta, tb = torch.tensor([a], dtype=torch.float32), torch.tensor([b], dtype=torch.float32)
    results = {
        "torch": boxes_iou_bev(ta, tb, backend="torch"),
        "cpu": boxes_iou_bev(ta, tb, backend="cpu"),
        "cuda": boxes_iou_bev(ta.to(cuda_backend_device), tb.to(cuda_backend_device), backend="cuda").cpu(),
    }
    for backend, iou in results.items():
        assert torch.isfinite(iou).all(), backend
        assert abs(iou.item() - expected) <= 1e-6, (backend, iou.item(), expected)
        if expected == 0.0 and "touching_rotated" not in name:
            assert iou.item() == 0.0, backend
    # Symmetric, and the same in 3D for boxes at the same height and with equal dz.
    assert abs(boxes_iou_bev(tb, ta).item() - expected) <= 1e-6
    if a[5] == b[5] and a[5] > 0:
        assert abs(boxes_iou_3d(ta, tb).item() - expected) <= 1e-6


def test_3d_specifics() -> None:
    base = [0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.3]
    cases = [
        ([0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 0.3], 1.0 / 3.0),  # half the height overlaps
        ([0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 0.3], 0.0),  # stacked, touching in z
        ([0.0, 0.0, 0.0, 2.0, 2.0, 0.0, 0.3], 0.0),  # flat box: zero volume
        ([0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.3], 0.5),  # contained in z
    ]
    for other, expected in cases:
        for backend in ("torch", "cpu"):
            iou = boxes_iou_3d(torch.tensor([base]), torch.tensor([other]), backend=backend).item()
            assert abs(iou - expected) <= 1e-6, (other, backend, iou)
            assert (
                boxes_iou_bev(torch.tensor([base]), torch.tensor([other]), backend=backend).item() > 0.999999
            )


def test_extra_columns_ignored_and_float64_accepted() -> None:
    a, b = random_boxes(8, 6), random_boxes(7, 7)
    velo_a = torch.cat([a, torch.randn(8, 2)], dim=1)
    velo_b = torch.cat([b, torch.randn(7, 2)], dim=1)
    assert torch.equal(boxes_iou_bev(velo_a, velo_b), boxes_iou_bev(a, b))
    torch.testing.assert_close(boxes_iou_3d(a.double(), b.double()), boxes_iou_3d(a, b), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_empty_inputs(backend: str) -> None:
    a = random_boxes(3, 8)
    empty = torch.zeros(0, 7)
    assert boxes_iou_bev(empty, a, backend=backend).shape == (0, 3)
    assert boxes_iou_3d(a, empty, backend=backend).shape == (3, 0)
    assert boxes_iou_bev(empty, empty, backend=backend).shape == (0, 0)


def test_empty_inputs_cuda(cuda_backend_device: torch.device) -> None:
    a = random_boxes(3, 8).to(cuda_backend_device)
    assert boxes_iou_bev(torch.zeros(0, 7, device=cuda_backend_device), a, backend="cuda").shape == (0, 3)


def test_bad_inputs_raise_clear_errors() -> None:
    good = random_boxes(2, 9)
    with pytest.raises(ValueError, match=r"boxes_a must have shape \(N, 7\+\)"):
        boxes_iou_bev(good[:, :6], good)
    with pytest.raises(ValueError, match="boxes_b must be 2-D"):
        boxes_iou_bev(good, good[0])
    with pytest.raises(TypeError, match="boxes_a must have dtype float32 or float64, got int64"):
        boxes_iou_bev(good.long(), good)
    with pytest.raises(TypeError, match="boxes_b must be a torch.Tensor"):
        boxes_iou_3d(good, good.numpy())
    bad = good.clone()
    bad[1, 6] = float("nan")
    with pytest.raises(ValueError, match="boxes_b contains NaN or inf"):
        boxes_iou_bev(good, bad)
    bad = good.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="boxes_a contains NaN or inf"):
        boxes_iou_3d(bad, good)
    bad = good.clone()
    bad[0, 4] = -1.0
    with pytest.raises(ValueError, match="negative size"):
        boxes_iou_bev(bad, good)
    with pytest.raises(ValueError, match="backend must be one of"):
        boxes_iou_bev(good, good, backend="gpu")


box_strategy = st.tuples(
    st.floats(-5, 5),
    st.floats(-5, 5),
    st.floats(-1, 1),
    st.floats(0.1, 4),
    st.floats(0.1, 4),
    st.floats(0.1, 3),
    st.floats(-math.pi, math.pi),
)


@settings(max_examples=60, deadline=None)
@given(a=box_strategy, b=box_strategy)
def test_property_symmetric_and_bounded(a: tuple[float, ...], b: tuple[float, ...]) -> None:
    ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    for fn in (boxes_iou_bev, boxes_iou_3d):
        ab = fn(ta, tb, backend="cpu").item()
        ba = fn(tb, ta, backend="cpu").item()
        assert 0.0 <= ab <= 1.0
        assert abs(ab - ba) <= 1e-6
        assert abs(fn(ta, ta, backend="cpu").item() - 1.0) <= 1e-6


@settings(max_examples=60, deadline=None)
@given(
    a=box_strategy,
    b=box_strategy,
    shift=st.tuples(st.floats(-50, 50), st.floats(-50, 50), st.floats(-3, 3)),
    angle=st.floats(-math.pi, math.pi),
)
def test_property_invariant_to_rigid_motion(
    a: tuple[float, ...], b: tuple[float, ...], shift: tuple[float, float, float], angle: float
) -> None:
    boxes = torch.tensor([a, b], dtype=torch.float64)
    c, s = math.cos(angle), math.sin(angle)
    moved = boxes.clone()
    moved[:, 0] = c * boxes[:, 0] - s * boxes[:, 1] + shift[0]
    moved[:, 1] = s * boxes[:, 0] + c * boxes[:, 1] + shift[1]
    moved[:, 2] = boxes[:, 2] + shift[2]
    moved[:, 6] = boxes[:, 6] + angle
    for fn in (boxes_iou_bev, boxes_iou_3d):
        before = fn(boxes[:1], boxes[1:], backend="cpu").item()
        after = fn(moved[:1], moved[1:], backend="cpu").item()
        assert abs(before - after) <= 1e-5
