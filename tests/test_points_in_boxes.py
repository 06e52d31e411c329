"""points_in_boxes: numba CPU vs torch reference vs numba CUDA (simulator) bit for bit, vs shapely in BEV, surface
rule, overlaps, NaN/inf, empty inputs, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Point, Polygon

from perception.ops.points_in_boxes import points_in_boxes


def scene(n_points: int, n_boxes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    points = torch.cat(
        [
            torch.rand(n_points, 3, generator=g) * torch.tensor([20.0, 20.0, 3.0]),
            torch.rand(n_points, 2, generator=g),
        ],
        1,
    )
    boxes = torch.cat(
        [
            torch.rand(n_boxes, 2, generator=g) * 20,
            torch.rand(n_boxes, 1, generator=g) * 3,
            torch.rand(n_boxes, 3, generator=g) * 4 + 0.5,
            (torch.rand(n_boxes, 1, generator=g) - 0.5) * 4 * math.pi,
        ],
        1,
    )
    return points, boxes


def polygon(box: torch.Tensor) -> Polygon:
    x, y, _, dx, dy, _, yaw = box[:7].double().tolist()
    c, s = math.cos(yaw), math.sin(yaw)
    corners = [(u * dx / 2, v * dy / 2) for u, v in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
    return Polygon([(x + c * u - s * v, y + s * u + c * v) for u, v in corners])


def test_cpu_equals_torch_reference() -> None:
    points, boxes = scene(5000, 30, seed=0)
    index, counts = points_in_boxes(points, boxes, backend="cpu")
    ref_index, ref_counts = points_in_boxes(points, boxes, backend="torch")
    assert index.dtype == torch.int64 and counts.dtype == torch.int64
    assert index.shape == (5000,) and counts.shape == (30,)
    assert torch.equal(index, ref_index) and torch.equal(counts, ref_counts)
    assert (index >= 0).sum() > 500 and counts.sum() > (index >= 0).sum()  # boxes overlap in this scene


def test_cuda_matches_cpu(cuda_backend_device: torch.device) -> None:
    points, boxes = scene(300, 12, seed=1)
    points[::37] = float("nan")
    cpu = points_in_boxes(points, boxes, backend="cpu")
    cuda = points_in_boxes(points.to(cuda_backend_device), boxes.to(cuda_backend_device), backend="cuda")
    assert cuda[0].device == cuda_backend_device
    assert torch.equal(cuda[0].cpu(), cpu[0]) and torch.equal(cuda[1].cpu(), cpu[1])
    assert (cpu[0] >= 0).sum() > 20


def test_matches_shapely_in_bev() -> None:
    points, boxes = scene(2000, 15, seed=2)
    boxes[:, 2] = 1.5
    boxes[:, 5] = 10.0  # every point is inside every box in z: the test is BEV only
    index, counts = points_in_boxes(points, boxes)
    polys = [polygon(b) for b in boxes]
    expected_counts = np.zeros(len(polys), dtype=np.int64)
    checked = 0
    for i, p in enumerate(points[:, :2].double().tolist()):
        pt = Point(p)
        inside = [poly.covers(pt) for poly in polys]
        expected_counts += np.array(inside)
        if min(poly.exterior.distance(pt) for poly in polys) < 1e-4:
            continue  # within rounding of an edge: decided by float32 arithmetic, not by shapely
        checked += 1
        expected = inside.index(True) if any(inside) else -1
        assert index[i].item() == expected
    assert checked > 1900
    assert np.abs(counts.numpy() - expected_counts).max() <= 1


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
def test_surface_counts_as_inside(backend: str, cuda_backend_device: torch.device) -> None:
    dev = cuda_backend_device if backend == "cuda" else torch.device("cpu")
    box = torch.tensor([[1.0, 2.0, 0.5, 4.0, 2.0, 1.0, 0.0]])
    up = lambda v: float(np.nextafter(np.float32(v), np.float32(np.inf)))  # noqa: E731
    down = lambda v: float(np.nextafter(np.float32(v), np.float32(-np.inf)))  # noqa: E731
    pts = torch.tensor(
        [
            [3.0, 2.0, 0.5],  # +x face
            [-1.0, 2.0, 0.5],  # -x face
            [1.0, 3.0, 0.5],  # +y face
            [1.0, 2.0, 1.0],  # top face
            [1.0, 2.0, 0.0],  # bottom face
            [3.0, 3.0, 1.0],  # corner
            [
                1.0,
                2.0,
                down(0.0),
            ],  # -1.4e-45 below the bottom, but the float32 offset -0.5 - 1.4e-45 rounds to -0.5
            [up(3.0), 2.0, 0.5],  # one float32 step outside
            [1.0, up(3.0), 0.5],
            [1.0, 2.0, up(1.0)],
            [1.0, 2.0, -(2.0**-24)],  # offset -0.5 - 2**-24 is exact in float32: outside
            [float("nan"), 2.0, 0.5],
            [1.0, float("inf"), 0.5],
            [1.0, 2.0, float("-inf")],
        ]
    )
    index, counts = points_in_boxes(pts.to(dev), box.to(dev), backend=backend)
    assert index.cpu().tolist() == [0] * 7 + [-1] * 7
    assert counts.cpu().tolist() == [7]


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
def test_overlaps_rotations_and_degenerate_boxes(backend: str, cuda_backend_device: torch.device) -> None:
    dev = cuda_backend_device if backend == "cuda" else torch.device("cpu")
    boxes = torch.tensor(
        [
            [10.0, 0.0, 0.0, 4.0, 2.0, 2.0, math.pi / 2],  # rotated 90 degrees: 2 m along x, 4 m along y
            [0.0, 0.0, 0.0, 4.0, 4.0, 2.0, 0.0],
            [0.0, 0.0, 0.0, 2.0, 2.0, 2.0, math.pi],  # inside box 1, rotated 180 degrees
            [20.0, 0.0, 0.0, 0.0, 2.0, 2.0, 0.0],  # zero length: only points with x == 20 exactly
        ]
    )
    pts = torch.tensor(
        [
            [0.5, 0.5, 0.0],  # in boxes 1 and 2 -> 1
            [1.5, 1.5, 0.0],  # only in box 1
            [10.0, 1.9, 0.0],  # in box 0 (long side along y)
            [11.5, 0.0, 0.0],  # outside box 0 (short side along x)
            [20.0, 0.5, 0.0],  # on the flat box 3
            [20.001, 0.5, 0.0],
        ]
    )
    index, counts = points_in_boxes(pts.to(dev), boxes.to(dev), backend=backend)
    assert index.cpu().tolist() == [1, 1, 0, -1, 3, -1]
    assert counts.cpu().tolist() == [1, 2, 1, 1]


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_empty_inputs(backend: str) -> None:
    points, boxes = scene(10, 3, seed=3)
    index, counts = points_in_boxes(points[:0], boxes, backend=backend)
    assert index.shape == (0,) and counts.tolist() == [0, 0, 0]
    index, counts = points_in_boxes(points, boxes[:0], backend=backend)
    assert index.tolist() == [-1] * 10 and counts.shape == (0,)


def test_float64_and_extra_columns() -> None:
    points, boxes = scene(500, 8, seed=4)
    velo = torch.cat([boxes, torch.randn(8, 2)], 1)
    base = points_in_boxes(points, boxes)
    assert all(torch.equal(x, y) for x, y in zip(points_in_boxes(points[:, :3], velo), base, strict=True))
    assert all(
        torch.equal(x, y) for x, y in zip(points_in_boxes(points.double(), boxes.double()), base, strict=True)
    )


def test_bad_inputs() -> None:
    points, boxes = scene(10, 3, seed=5)
    with pytest.raises(ValueError, match=r"points must have shape \(N, 3\+\)"):
        points_in_boxes(points[:, :2], boxes)
    with pytest.raises(ValueError, match="points must be 2-D"):
        points_in_boxes(points[0], boxes)
    with pytest.raises(TypeError, match="points must have dtype float32 or float64, got int32"):
        points_in_boxes(points.int(), boxes)
    with pytest.raises(ValueError, match=r"boxes must have shape \(N, 7\+\)"):
        points_in_boxes(points, boxes[:, :6])
    bad = boxes.clone()
    bad[0, 2] = float("nan")
    with pytest.raises(ValueError, match="boxes contains NaN or inf"):
        points_in_boxes(points, bad)
    bad = boxes.clone()
    bad[0, 5] = -0.1
    with pytest.raises(ValueError, match="negative size"):
        points_in_boxes(points, bad)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 200), k=st.integers(0, 8))
def test_property_cpu_equals_torch_and_counts_consistent(seed: int, n: int, k: int) -> None:
    points, boxes = scene(n, k, seed)
    index, counts = points_in_boxes(points, boxes)
    ref = points_in_boxes(points, boxes, backend="torch")
    assert torch.equal(index, ref[0]) and torch.equal(counts, ref[1])
    assign = torch.bincount(index[index >= 0], minlength=k)
    assert torch.all(assign <= counts)


def test_parallel_kernel_keeps_torchs_thread_count() -> None:
    """numba's OpenMP layer would reset the shared runtime to all cores; the op keeps torch's count."""
    import subprocess
    import sys

    code = (
        "import torch; torch.set_num_threads(1);"
        "from perception.ops import points_in_boxes, scatter;"
        "points_in_boxes(torch.rand(1000, 3), torch.tensor([[0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 0.0]]));"
        "scatter(torch.rand(100, 4), torch.zeros(100, dtype=torch.int64), 1);"
        "print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "1"
