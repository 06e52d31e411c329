"""DSVT pooling windows: torch reference vs numba CPU vs numba CUDA (simulator), a hand-computed case,
hypothesis properties and input validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perception.ops import set_partition_cpu
from perception.ops.pool_windows import PoolWindows, pool_windows


def random_coords(
    num: int, sparse_shape: tuple[int, int, int], batch: int = 1, seed: int = 0
) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cols = [torch.randint(0, n, (num,), generator=g) for n in (batch, *sparse_shape)]
    c = torch.unique(torch.stack(cols, 1), dim=0)
    return c[torch.randperm(c.shape[0], generator=g)].int()


def assert_same(a: PoolWindows, b: PoolWindows) -> None:
    for name in ("index", "mask", "pooled_coords", "pooled_index", "slot"):
        x, y = getattr(a, name).cpu(), getattr(b, name).cpu()
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.stride == b.stride and a.pooled_shape == b.pooled_shape


def check_properties(out: PoolWindows, coords: torch.Tensor) -> None:
    """Every voxel sits in exactly one slot, in the row of its downsampled coordinate, at its x-major slot."""
    m = coords.shape[0]
    sz, sy, sx = out.stride
    c = coords.long()
    assert out.index.shape == (out.num_pooled, sz * sy * sx)
    assert torch.equal(out.mask, out.index < 0)
    assert torch.equal(out.index[out.pooled_index, out.slot], torch.arange(m))
    assert int((out.index >= 0).sum()) == m
    assert bool((~out.mask).any(dim=1).all())  # no empty pooled voxel
    pooled = out.pooled_coords.long()[out.pooled_index]
    assert torch.equal(pooled, torch.stack([c[:, 0], c[:, 1] // sz, c[:, 2] // sy, c[:, 3] // sx], 1))
    assert torch.equal(out.slot, (c[:, 3] % sx) * (sy * sz) + (c[:, 2] % sy) * sz + c[:, 1] % sz)
    # pooled voxels in DSVT order: batch, then x, y, z of the pooled coordinate, strictly increasing
    p = out.pooled_coords.long()
    npz, npy, npx = out.pooled_shape
    key = ((p[:, 0] * npx + p[:, 3]) * npy + p[:, 2]) * npz + p[:, 1]
    assert bool((key.diff() > 0).all())


def test_hand_computed_case() -> None:
    # Grid (2, 4, 4), stride (2, 2, 2): pooled grid (1, 2, 2); slot = x_in * 4 + y_in * 2 + z_in.
    # v0 [z1 y0 x1] -> pooled (0,0,0), slot 5; v1 [z0 y3 x0] -> pooled (0,1,0), slot 2; v2 [z0 y0 x0] -> (0,0,0),
    # slot 0; v3 [z1 y2 x3] -> (0,1,1), slot 5; v4 batch 1 [z0 y0 x2] -> (0,0,1), slot 0.
    coords = torch.tensor(
        [[0, 1, 0, 1], [0, 0, 3, 0], [0, 0, 0, 0], [0, 1, 2, 3], [1, 0, 0, 2]], dtype=torch.int32
    )
    for backend in ("torch", "cpu"):
        out = pool_windows(coords, (2, 4, 4), (2, 2, 2), backend=backend)
        # order: (b0, px0, py0), (b0, px0, py1), (b0, px1, py1), (b1, px1, py0)
        assert out.pooled_coords.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]]
        assert out.pooled_index.tolist() == [0, 1, 0, 2, 3]
        assert out.slot.tolist() == [5, 2, 0, 5, 0]
        expected = torch.full((4, 8), -1)
        expected[0, 5], expected[0, 0], expected[1, 2], expected[2, 5], expected[3, 0] = 0, 2, 1, 3, 4
        assert torch.equal(out.index, expected)
        assert out.pooled_shape == (1, 2, 2) and out.pool_volume == 8


CASES = [
    # sparse_shape, stride, num, batch
    ((16, 30, 40), (4, 1, 1), 2000, 2),  # DSVT 3D: z pooling
    ((16, 30, 40), (2, 2, 2), 2000, 3),
    ((1, 50, 50), (1, 2, 2), 1500, 2),  # pillars
    ((7, 9, 11), (3, 2, 4), 400, 2),  # strides not dividing the grid
    ((3, 10, 10), (1, 1, 1), 200, 1),  # stride 1: every voxel its own pooled voxel
    ((4, 6, 6), (4, 6, 6), 100, 3),  # one pooled voxel per sample
]


@pytest.mark.parametrize("case", CASES)
def test_cpu_matches_torch(case: tuple) -> None:
    sparse_shape, stride, num, batch = case
    coords = random_coords(num, sparse_shape, batch, seed=num)
    ref = pool_windows(coords, sparse_shape, stride, backend="torch")
    out = pool_windows(coords, sparse_shape, stride, backend="cpu")
    assert_same(ref, out)
    check_properties(ref, coords)
    assert ref.pooled_shape == tuple(math.ceil(n / s) for n, s in zip(sparse_shape, stride, strict=True))


def test_cpu_sort_compaction_path(monkeypatch: pytest.MonkeyPatch) -> None:
    coords = random_coords(800, (8, 40, 40), 2)
    dense = pool_windows(coords, (8, 40, 40), (2, 2, 2), backend="cpu")
    monkeypatch.setattr(set_partition_cpu, "DENSE_RANGE_MIN", 0)
    monkeypatch.setattr(set_partition_cpu, "DENSE_RANGE_FACTOR", 0)
    assert_same(dense, pool_windows(coords, (8, 40, 40), (2, 2, 2), backend="cpu"))


def test_one_voxel_and_empty(cuda_backend_device: torch.device) -> None:
    for backend, device in (("torch", "cpu"), ("cpu", "cpu"), ("cuda", cuda_backend_device)):
        one = pool_windows(
            torch.tensor([[2, 3, 5, 7]], dtype=torch.int32, device=device),
            (4, 8, 8),
            (2, 2, 2),
            backend=backend,
        )
        assert one.pooled_coords.tolist() == [[2, 1, 2, 3]]
        assert one.index.tolist() == [[-1, -1, -1, -1, -1, -1, -1, 0]]
        empty = pool_windows(
            torch.zeros((0, 4), dtype=torch.int32, device=device), (4, 8, 8), (2, 2, 2), backend=backend
        )
        assert empty.index.shape == (0, 8) and empty.pooled_coords.shape == (0, 4) and empty.num_pooled == 0


@pytest.mark.cudasim
@pytest.mark.parametrize("case", [((8, 20, 20), (2, 2, 2), 300, 2), ((1, 30, 30), (1, 3, 2), 250, 2)])
def test_cuda_matches_cpu(case: tuple, cuda_backend_device: torch.device) -> None:
    sparse_shape, stride, num, batch = case
    coords = random_coords(num, sparse_shape, batch, seed=3)
    ref = pool_windows(coords, sparse_shape, stride, backend="cpu")
    got = pool_windows(coords.to(cuda_backend_device), sparse_shape, stride, backend="cuda")
    assert got.index.device == cuda_backend_device
    assert_same(ref, got)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 6),
    st.integers(1, 12),
    st.integers(1, 12),
    st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
    st.integers(1, 120),
    st.integers(1, 3),
    st.integers(0, 99),
)
def test_properties(nz: int, ny: int, nx: int, stride: tuple, num: int, batch: int, seed: int) -> None:
    coords = random_coords(num, (nz, ny, nx), batch, seed)
    ref = pool_windows(coords, (nz, ny, nx), stride, backend="torch")
    assert_same(ref, pool_windows(coords, (nz, ny, nx), stride, backend="cpu"))
    check_properties(ref, coords)


def test_duplicate_voxels_raise_on_all_backends(cuda_backend_device: torch.device) -> None:
    coords = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.int32)
    for backend, device in (("torch", "cpu"), ("cpu", "cpu"), ("cuda", cuda_backend_device)):
        with pytest.raises(ValueError, match="duplicate"):
            pool_windows(coords.to(device), (2, 4, 4), (2, 2, 2), backend=backend)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"coords": torch.zeros((2, 4), dtype=torch.float32)}, TypeError, "coords must have dtype"),
        ({"coords": torch.zeros((2, 5), dtype=torch.int32)}, ValueError, "coords must have shape"),
        ({"coords": torch.tensor([[0, 4, 0, 0]], dtype=torch.int32)}, ValueError, r"coords z \(column 1\)"),
        ({"stride": (0, 2, 2)}, ValueError, "stride entries must be >= 1"),
        ({"stride": (2, 2)}, TypeError, "stride must be a sequence of 3"),
        ({"sparse_shape": (4, 8, 0)}, ValueError, "sparse_shape entries must be >= 1"),
        ({"backend": "numba"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs: dict, error: type, match: str) -> None:
    args = {
        "coords": torch.tensor([[0, 1, 2, 3]], dtype=torch.int32),
        "sparse_shape": (4, 8, 8),
        "stride": (2, 2, 2),
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        pool_windows(**args)
