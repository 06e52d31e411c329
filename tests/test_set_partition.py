"""DSVT window / rotated-set partition: torch reference vs numba CPU vs numba CUDA (simulator), hand-computed
cases, an independent brute-force oracle, hypothesis properties and input validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from perception.ops import set_partition_cpu
from perception.ops.set_partition import (
    SetPartition,
    WindowConfig,
    set_partition,
    stage_set_partitions,
    stage_window_configs,
    window_partition,
)


def random_coords(
    num: int,
    sparse_shape: tuple[int, int, int],
    batch: int = 1,
    seed: int = 0,
    dtype: torch.dtype = torch.int32,
) -> torch.Tensor:
    """Up to ``num`` distinct voxels ``[b, z, y, x]`` in random order."""
    g = torch.Generator().manual_seed(seed)
    nz, ny, nx = sparse_shape
    cols = [torch.randint(0, n, (num,), generator=g) for n in (batch, nz, ny, nx)]
    c = torch.unique(torch.stack(cols, 1), dim=0)
    return c[torch.randperm(c.shape[0], generator=g)].to(dtype)


def brute_force(
    coords: torch.Tensor,
    sparse_shape: tuple[int, int, int],
    window: tuple[int, int, int],
    shift: tuple[int, int, int],
    set_size: int,
) -> tuple[list[list[list[int]]], list[int], list[int]]:
    """Pure-Python oracle written straight from the DSVT paper's description (dicts, sorted(), loops)."""
    nw = [math.ceil(sparse_shape[a] / window[a]) + 1 for a in range(3)]
    sh = list(shift)
    if window[0] == sparse_shape[0]:
        sh[0] = 0
    windows: dict[int, list[tuple[int, tuple[int, int, int]]]] = {}
    ids = []
    for v, (b, z, y, x) in enumerate(coords.tolist()):
        s = (z + sh[0], y + sh[1], x + sh[2])
        w = [s[a] // window[a] for a in range(3)]
        wid = b * nw[0] * nw[1] * nw[2] + w[2] * nw[1] * nw[0] + w[1] * nw[0] + w[0]
        ids.append(wid)
        windows.setdefault(wid, []).append((v, tuple(s[a] % window[a] for a in range(3))))
    orders: list[list[list[int]]] = [[], []]
    set_window = []
    for wi, wid in enumerate(sorted(windows)):
        members = windows[wid]
        n = len(members)
        m = -(-n // set_size)
        by_y = [v for v, _ in sorted(members, key=lambda e: (e[1][1], e[1][2], e[1][0]))]
        by_x = [v for v, _ in sorted(members, key=lambda e: (e[1][2], e[1][1], e[1][0]))]
        for j in range(m):
            set_window.append(wi)
            for o, ordered in enumerate((by_y, by_x)):
                orders[o].append([ordered[(j * set_size + k) * n // (m * set_size)] for k in range(set_size)])
    return orders, set_window, ids


def expected_mask(voxel_index: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(voxel_index, dtype=torch.bool)
    mask[..., 1:] = voxel_index[..., 1:] == voxel_index[..., :-1]
    return mask


def assert_same(a: SetPartition, b: SetPartition) -> None:
    assert torch.equal(a.voxel_index.cpu(), b.voxel_index.cpu())
    assert torch.equal(a.mask.cpu(), b.mask.cpu())
    assert torch.equal(a.set_window.cpu(), b.set_window.cpu())
    wa, wb = a.windows, b.windows
    for name in ("window_id", "window_index", "coords_in_window", "voxels_per_window"):
        x, y = getattr(wa, name).cpu(), getattr(wb, name).cpu()
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert (
        a.voxel_index.dtype == torch.int64
        and a.mask.dtype == torch.bool
        and a.set_window.dtype == torch.int64
    )


# ---------------------------------------------------------------------------------------------- hand-computed


def test_hand_computed_tiny_case() -> None:
    # Grid (1, 2, 4), window (1, 2, 2), set size 3. Voxels [y, x]: v0 (1,1), v1 (0,1), v2 (1,0), v3 (0,0) share
    # window 0; v4 (0,2) is alone in window 1. Windows per axis (z, y, x) = (2, 2, 3): id = wx * 4 + wy * 2 + wz.
    coords = torch.tensor(
        [[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 2]], dtype=torch.int32
    )
    for backend in ("torch", "cpu"):
        out = set_partition(coords, (1, 2, 4), (1, 2, 2), 3, backend=backend)
        assert out.windows.window_id.tolist() == [0, 0, 0, 0, 4]
        assert out.windows.window_index.tolist() == [0, 0, 0, 0, 1]
        assert out.windows.coords_in_window.tolist() == [
            [0, 1, 1],
            [0, 0, 1],
            [0, 1, 0],
            [0, 0, 0],
            [0, 0, 0],
        ]
        assert out.windows.voxels_per_window.tolist() == [4, 1]
        # Window 0: n = 4, M = 2, positions floor(t * 4 / 6) = 0 0 1 | 2 2 3. y-major order v3 v1 v2 v0,
        # x-major order v3 v2 v1 v0. Window 1: n = 1, M = 1, positions 0 0 0.
        assert out.voxel_index[0].tolist() == [[3, 3, 1], [2, 2, 0], [4, 4, 4]]
        assert out.voxel_index[1].tolist() == [[3, 3, 2], [1, 1, 0], [4, 4, 4]]
        masks = [[False, True, False], [False, True, False], [False, True, True]]
        assert out.mask[0].tolist() == masks and out.mask[1].tolist() == masks
        assert out.set_window.tolist() == [0, 0, 1]


def test_hand_computed_shifted_window() -> None:
    # Grid (1, 4, 4), window (1, 2, 2), shift (0, 1, 1): shifted [y, x] = [y + 1, x + 1]. Windows per axis
    # (2, 3, 3): id = wx * 6 + wy * 2. v0 (0,0)->(1,1): window (0,0), in (1,1); v1 (1,1)->(2,2): window (1,1),
    # in (0,0); v2 (3,2)->(4,3): window (wy 2, wx 1), in (0,1); v3 (1,2)->(2,3): window (1,1), in (0,1).
    coords = torch.tensor([[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 3, 2], [0, 0, 1, 2]], dtype=torch.int32)
    for backend in ("torch", "cpu"):
        wp = window_partition(coords, (1, 4, 4), (1, 2, 2), (0, 1, 1), backend=backend)
        assert wp.window_id.tolist() == [0, 8, 10, 8]
        assert wp.window_index.tolist() == [0, 1, 2, 1]
        assert wp.coords_in_window.tolist() == [[0, 1, 1], [0, 0, 0], [0, 0, 1], [0, 0, 1]]
        sp = set_partition(coords, (1, 4, 4), (1, 2, 2), 2, (0, 1, 1), backend=backend)
        assert sp.voxel_index[0].tolist() == [[0, 0], [1, 3], [2, 2]]
        assert sp.mask[0].tolist() == [[False, True], [False, False], [False, True]]


# ------------------------------------------------------------------------------------------ torch vs numba CPU

CASES = [
    # sparse_shape, window, shift, set_size, num, batch
    ((1, 60, 50), (1, 12, 12), (0, 0, 0), 36, 1500, 2),
    ((1, 60, 50), (1, 24, 24), (0, 6, 6), 36, 1500, 2),
    ((16, 30, 40), (4, 12, 12), (1, 2, 1), 20, 2500, 3),
    ((16, 30, 40), (8, 24, 24), (3, 6, 6), 20, 2500, 1),
    ((16, 30, 40), (16, 6, 6), (5, 3, 3), 10, 800, 2),  # full-height window: z shift ignored
    ((5, 7, 9), (5, 7, 9), (5, 7, 9), 4, 200, 2),  # shift == window, window == grid
    ((3, 10, 10), (1, 1, 1), (1, 1, 1), 1, 200, 1),
]


@pytest.mark.parametrize("case", CASES)
def test_cpu_matches_torch_and_brute_force(case: tuple) -> None:
    sparse_shape, window, shift, set_size, num, batch = case
    coords = random_coords(num, sparse_shape, batch, seed=num)
    ref = set_partition(coords, sparse_shape, window, set_size, shift, backend="torch")
    assert_same(ref, set_partition(coords, sparse_shape, window, set_size, shift, backend="cpu"))
    assert torch.equal(ref.mask, expected_mask(ref.voxel_index))
    orders, set_window, ids = brute_force(coords, sparse_shape, window, shift, set_size)
    assert ref.voxel_index.tolist() == orders
    assert ref.set_window.tolist() == set_window
    assert ref.windows.window_id.tolist() == ids


def test_int64_coords_give_same_result() -> None:
    coords = random_coords(400, (2, 20, 20), 2)
    a = set_partition(coords, (2, 20, 20), (2, 6, 6), 8, (1, 3, 3), backend="cpu")
    b = set_partition(coords.long(), (2, 20, 20), (2, 6, 6), 8, (1, 3, 3), backend="cpu")
    assert_same(a, b)
    # a non-contiguous view
    wide = torch.cat([coords, torch.ones((coords.shape[0], 1), dtype=torch.int32)], 1)[:, :4]
    assert not wide.is_contiguous()
    assert_same(a, set_partition(wide, (2, 20, 20), (2, 6, 6), 8, (1, 3, 3), backend="cpu"))


def test_cpu_sort_compaction_path_matches_dense(monkeypatch: pytest.MonkeyPatch) -> None:
    coords = random_coords(1000, (4, 50, 50), 3)
    dense = set_partition(coords, (4, 50, 50), (2, 6, 6), 12, (1, 3, 3), backend="cpu")
    monkeypatch.setattr(set_partition_cpu, "DENSE_RANGE_MIN", 0)
    monkeypatch.setattr(set_partition_cpu, "DENSE_RANGE_FACTOR", 0)
    assert not set_partition_cpu.use_dense(10, 1000)
    assert_same(dense, set_partition(coords, (4, 50, 50), (2, 6, 6), 12, (1, 3, 3), backend="cpu"))


def _edge_cases() -> list[tuple[str, torch.Tensor, tuple, tuple, tuple, int]]:
    one_window = torch.tensor([[0, 0, y, x] for y in range(3) for x in range(4)], dtype=torch.int32)
    exact = torch.tensor([[0, 0, y, x] for y in range(6) for x in range(6)], dtype=torch.int32)  # 36 voxels
    plus_one = torch.cat([exact, torch.tensor([[0, 0, 6, 0]], dtype=torch.int32)])  # 37 in a 12 x 12 window
    borders = torch.tensor(
        [[b, 0, y, x] for b in (0, 2) for y in (0, 11, 12, 23, 24, 29) for x in (0, 5, 6, 17, 18, 29)],
        dtype=torch.int32,
    )
    return [
        (
            "one voxel",
            torch.tensor([[0, 0, 3, 4]], dtype=torch.int32),
            (1, 30, 30),
            (1, 12, 12),
            (0, 0, 0),
            36,
        ),
        (
            "one voxel shifted",
            torch.tensor([[1, 0, 29, 29]], dtype=torch.int32),
            (1, 30, 30),
            (1, 12, 12),
            (0, 6, 6),
            4,
        ),
        ("one window", one_window.flip(0).contiguous(), (1, 30, 30), (1, 12, 12), (0, 0, 0), 5),
        ("exactly set_size", exact, (1, 30, 30), (1, 12, 12), (0, 0, 0), 36),
        ("set_size + 1", plus_one, (1, 30, 30), (1, 12, 12), (0, 0, 0), 36),
        ("window borders", borders, (1, 30, 30), (1, 12, 12), (0, 0, 0), 3),
        ("window borders shifted", borders, (1, 30, 30), (1, 24, 24), (0, 6, 6), 3),
        ("set_size 1", one_window, (1, 30, 30), (1, 2, 2), (0, 1, 1), 1),
    ]


@pytest.mark.parametrize("case", _edge_cases(), ids=lambda c: c[0])
def test_edge_cases_cpu_vs_torch(case: tuple) -> None:
    _, coords, sparse_shape, window, shift, set_size = case
    ref = set_partition(coords, sparse_shape, window, set_size, shift, backend="torch")
    assert_same(ref, set_partition(coords, sparse_shape, window, set_size, shift, backend="cpu"))
    assert ref.voxel_index.tolist() == brute_force(coords, sparse_shape, window, shift, set_size)[0]


def test_exactly_set_size_and_one_more() -> None:
    cases = {c[0]: c for c in _edge_cases()}
    exact = set_partition(*[cases["exactly set_size"][i] for i in (1, 2, 3)], 36, backend="cpu")
    assert exact.num_sets == 1 and not exact.mask.any()
    assert sorted(exact.voxel_index[0, 0].tolist()) == list(range(36))
    more = set_partition(*[cases["set_size + 1"][i] for i in (1, 2, 3)], 36, backend="cpu")
    assert more.num_sets == 2 and more.set_window.tolist() == [0, 0]
    # 72 slots hold 37 voxels: 35 slots repeat the slot before them, in each order.
    assert more.mask.sum(dim=(1, 2)).tolist() == [35, 35]


def test_empty_input_all_backends(cuda_backend_device: torch.device) -> None:
    coords = torch.zeros((0, 4), dtype=torch.int32)
    for backend, device in (("torch", "cpu"), ("cpu", "cpu"), ("cuda", cuda_backend_device)):
        out = set_partition(coords.to(device), (1, 30, 30), (1, 12, 12), 36, (0, 6, 6), backend=backend)
        assert out.voxel_index.shape == (2, 0, 36) and out.mask.shape == (2, 0, 36) and out.num_sets == 0
        assert out.windows.num_windows == 0 and out.windows.coords_in_window.shape == (0, 3)


def test_z_shift_ignored_for_full_height_window() -> None:
    wp = window_partition(random_coords(50, (4, 10, 10)), (4, 10, 10), (4, 5, 5), (3, 2, 2))
    assert wp.shift == (0, 2, 2) and wp.windows_per_sample == (2, 3, 3)


# -------------------------------------------------------------------------------------- stage configurations


def test_stage_window_configs_dsvt_pillar() -> None:
    base, hybrid = stage_window_configs((1, 12, 12), (1, 2, 2), (0, 6, 6))
    assert base == WindowConfig((1, 12, 12), (0, 0, 0))
    assert hybrid == WindowConfig((1, 24, 24), (0, 6, 6))


def test_stage_set_partitions_equal_single_calls() -> None:
    coords = random_coords(600, (1, 60, 60), 2)
    first, second = stage_set_partitions(coords, (1, 60, 60), (1, 12, 12), (1, 2, 2), (0, 6, 6), 36)
    assert_same(first, set_partition(coords, (1, 60, 60), (1, 12, 12), 36, backend="torch"))
    assert_same(second, set_partition(coords, (1, 60, 60), (1, 24, 24), 36, (0, 6, 6), backend="torch"))


# --------------------------------------------------------------------------------------- numba CUDA simulator


@pytest.mark.cudasim
@pytest.mark.parametrize(
    "case",
    [
        ((1, 30, 30), (1, 12, 12), (0, 0, 0), 8, 250, 2),
        ((1, 30, 30), (1, 24, 24), (0, 6, 6), 8, 250, 2),
        ((6, 20, 20), (4, 6, 6), (1, 3, 3), 5, 200, 1),
    ],
)
def test_cuda_matches_cpu(case: tuple, cuda_backend_device: torch.device) -> None:
    sparse_shape, window, shift, set_size, num, batch = case
    coords = random_coords(num, sparse_shape, batch, seed=7)
    ref = set_partition(coords, sparse_shape, window, set_size, shift, backend="cpu")
    got = set_partition(coords.to(cuda_backend_device), sparse_shape, window, set_size, shift, backend="cuda")
    assert got.voxel_index.device == cuda_backend_device
    assert_same(ref, got)


@pytest.mark.cudasim
@pytest.mark.parametrize("case", [c for c in _edge_cases() if c[1].shape[0] <= 72], ids=lambda c: c[0])
def test_cuda_edge_cases(case: tuple, cuda_backend_device: torch.device) -> None:
    _, coords, sparse_shape, window, shift, set_size = case
    ref = set_partition(coords, sparse_shape, window, set_size, shift, backend="cpu")
    got = set_partition(coords.to(cuda_backend_device), sparse_shape, window, set_size, shift, backend="cuda")
    assert_same(ref, got)


# ------------------------------------------------------------------------------------------ hypothesis properties


@st.composite
def partition_inputs(draw: st.DrawFn) -> tuple:
    nz, ny, nx = draw(st.integers(1, 4)), draw(st.integers(1, 20)), draw(st.integers(1, 20))
    window = (draw(st.integers(1, nz)), draw(st.integers(1, 8)), draw(st.integers(1, 8)))
    shift = tuple(draw(st.integers(0, w)) for w in window)
    set_size = draw(st.integers(1, 12))
    coords = random_coords(
        draw(st.integers(1, 150)), (nz, ny, nx), draw(st.integers(1, 3)), seed=draw(st.integers(0, 99))
    )
    return coords, (nz, ny, nx), window, shift, set_size


@settings(max_examples=40, deadline=None)
@given(partition_inputs())
def test_properties(inputs: tuple) -> None:
    coords, sparse_shape, window, shift, set_size = inputs
    ref = set_partition(coords, sparse_shape, window, set_size, shift, backend="torch")
    out = set_partition(coords, sparse_shape, window, set_size, shift, backend="cpu")
    assert_same(ref, out)
    wp = out.windows
    counts = torch.bincount(wp.window_index, minlength=wp.num_windows)
    assert torch.equal(counts, wp.voxels_per_window)
    sets_per_window = torch.bincount(out.set_window, minlength=wp.num_windows)
    assert torch.equal(sets_per_window, (wp.voxels_per_window + set_size - 1) // set_size)
    assert torch.equal(out.mask, expected_mask(out.voxel_index))
    c = wp.coords_in_window.long()
    keys = (
        (c[:, 1] * window[2] + c[:, 2]) * window[0] + c[:, 0],
        (c[:, 2] * window[1] + c[:, 1]) * window[0] + c[:, 0],
    )
    for order in range(2):
        idx = out.voxel_index[order]
        # every set holds voxels of its own window only ...
        assert torch.equal(wp.window_index[idx], out.set_window[:, None].expand_as(idx))
        # ... every voxel appears (in exactly one window's sets), and the slots follow the rotated order
        assert torch.equal(
            torch.bincount(idx.flatten(), minlength=coords.shape[0]) > 0,
            torch.ones(coords.shape[0], dtype=torch.bool),
        )
        for w in range(wp.num_windows):
            slots = idx[out.set_window == w].flatten()
            assert torch.equal(slots.unique(), torch.nonzero(wp.window_index == w).flatten())
            assert bool((keys[order][slots].diff() >= 0).all())
    assert bool((c >= 0).all()) and bool((c < torch.tensor(window)).all())


# ------------------------------------------------------------------------------------------------- validation


def test_duplicate_voxels_raise_on_all_backends(cuda_backend_device: torch.device) -> None:
    coords = torch.tensor([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 1, 1]], dtype=torch.int32)
    for backend, device in (("torch", "cpu"), ("cpu", "cpu"), ("cuda", cuda_backend_device)):
        with pytest.raises(ValueError, match="duplicate"):
            set_partition(coords.to(device), (1, 4, 4), (1, 2, 2), 4, backend=backend)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"coords": torch.zeros((3, 4))}, TypeError, "coords must have dtype int32 or int64"),
        ({"coords": torch.zeros((3, 3), dtype=torch.int32)}, ValueError, r"coords must have shape \(\*, 4\)"),
        ({"coords": [[0, 0, 0, 0]]}, TypeError, "coords must be a torch.Tensor"),
        ({"coords": torch.tensor([[0, 0, 10, 0]], dtype=torch.int32)}, ValueError, r"coords y \(column 2\)"),
        ({"coords": torch.tensor([[0, 0, 0, -1]], dtype=torch.int32)}, ValueError, r"coords x \(column 3\)"),
        ({"coords": torch.tensor([[-1, 0, 0, 0]], dtype=torch.int32)}, ValueError, "batch index"),
        ({"sparse_shape": (10, 10)}, TypeError, "sparse_shape must be a sequence of 3"),
        ({"window_shape": (1, 0, 4)}, ValueError, "window_shape entries must be >= 1"),
        ({"window_shape": (1, 2.0, 4)}, TypeError, "window_shape must contain ints"),
        ({"shift": (0, -1, 0)}, ValueError, "shift entries must be >= 0"),
        ({"shift": (0, 5, 0)}, ValueError, r"shift must lie in \[0, window_shape\]"),
        ({"set_size": 0}, ValueError, "set_size must be >= 1"),
        ({"set_size": 2.5}, TypeError, "set_size must be an int"),
        ({"backend": "gpu"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs: dict, error: type, match: str) -> None:
    args = {
        "coords": torch.tensor([[0, 0, 1, 2]], dtype=torch.int32),
        "sparse_shape": (1, 10, 10),
        "window_shape": (1, 4, 4),
        "set_size": 4,
        "shift": (0, 2, 2),
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        set_partition(**args)


def test_cuda_backend_without_simulator_or_gpu_is_a_clear_error() -> None:
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from perception.ops.set_partition import set_partition\n"
        "set_partition(torch.tensor([[0, 0, 1, 2]], dtype=torch.int32), (1, 4, 4), (1, 2, 2), 2, backend='cuda')\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: backend='cuda' on CPU tensors is not an error path to test here")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0 and "NUMBA_ENABLE_CUDASIM" in proc.stderr
