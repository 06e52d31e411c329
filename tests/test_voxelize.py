"""voxelize: numba CPU vs torch reference vs numba CUDA (simulator), and vs spconv's PointToVoxel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perception.ops.voxelize import VoxelStats, make_grid, voxelize, voxelize_with_stats
from perception.structures import DynamicVoxels, Voxels

pytestmark = pytest.mark.filterwarnings("ignore:.*torch.cuda.amp.*:FutureWarning")  # spconv import noise

NUSC_SIZE = (0.075, 0.075, 0.2)
NUSC_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
SMALL_SIZE = (0.5, 0.5, 1.0)
SMALL_RANGE = (-4.0, -4.0, -2.0, 4.0, 4.0, 2.0)


def random_points(n: int, seed: int, extent: float = 5.0, channels: int = 5) -> torch.Tensor:
    """Points in a box a bit larger than SMALL_RANGE (some out of range), with repeated voxels."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, channels, generator=g) * 2 - 1
    pts[:, :3] *= torch.tensor([extent, extent, extent / 2])
    return pts


def assert_same_voxels(a: Voxels | DynamicVoxels, b: Voxels | DynamicVoxels) -> None:
    assert type(a) is type(b)
    assert a.grid_shape == b.grid_shape
    assert torch.equal(a.coords, b.coords)
    assert torch.equal(a.counts, b.counts)
    if isinstance(a, Voxels):
        assert isinstance(b, Voxels)
        assert torch.equal(a.features, b.features)
    else:
        assert isinstance(b, DynamicVoxels)
        assert torch.equal(a.point_to_voxel, b.point_to_voxel)


def run(points: torch.Tensor, backend: str, **kw: object) -> tuple[Voxels | DynamicVoxels, VoxelStats]:
    kw.setdefault("voxel_size", SMALL_SIZE)
    kw.setdefault("point_range", SMALL_RANGE)
    return voxelize_with_stats(points, backend=backend, **kw)  # type: ignore[arg-type]


CASES = [
    dict(),
    dict(max_points_per_voxel=2),
    dict(max_points_per_voxel=3, max_voxels=20),
    dict(mode="dynamic"),
]


@pytest.mark.parametrize("kw", CASES)
def test_cpu_matches_reference_random(kw: dict) -> None:
    pts = random_points(20000, seed=1)
    pts = torch.cat([pts, pts[:3000]])  # exact duplicates
    ref, ref_stats = run(pts, "torch", **kw)
    cpu, cpu_stats = run(pts, "cpu", **kw)
    assert_same_voxels(ref, cpu)
    assert ref_stats == cpu_stats
    assert cpu_stats.num_out_of_range > 0 and cpu.num_voxels >= 20
    assert int(cpu.counts.sum()) == cpu_stats.num_kept


@pytest.mark.parametrize("kw", CASES)
def test_cuda_matches_cpu(kw: dict, cuda_backend_device: torch.device) -> None:
    pts = random_points(400, seed=2)
    pts = torch.cat([pts, pts[:100]])
    pts[7, 4] = float("nan")
    pts[9, 1] = -float("inf")
    batch = (torch.arange(pts.shape[0]) % 3 == 0).to(torch.int64)
    cpu, cpu_stats = run(pts, "cpu", batch_index=batch, **kw)
    dev = cuda_backend_device
    gpu, gpu_stats = run(pts.to(dev), "cuda", batch_index=batch.to(dev), **kw)
    assert_same_voxels(cpu, gpu.to("cpu"))
    assert cpu_stats == gpu_stats
    assert cpu_stats.num_non_finite == 2


def test_grid_matches_spconv_meta_data() -> None:
    from spconv.core_cc.csrc.sparse.all import SpconvOps

    for size, rng in [
        (NUSC_SIZE, NUSC_RANGE),
        ((0.1, 0.1, 0.15), (0, -40, -3, 70.4, 40, 1)),
        ((0.3, 0.3, 8), NUSC_RANGE),
    ]:
        _, grid_zyx, _, _ = SpconvOps.calc_point2voxel_meta_data(list(size), list(rng))
        assert list(make_grid(size, rng).shape) == list(grid_zyx)


@pytest.mark.parametrize("num_sweeps,max_voxels", [(1, 200000), (1, 5000), (3, 200000)])
def test_matches_spconv_on_nuscenes_like_scan(num_sweeps: int, max_voxels: int) -> None:
    from spconv.pytorch.utils import PointToVoxel

    from perception.datasets.synthetic import make_lidar_scan

    pts = torch.from_numpy(make_lidar_scan(num_sweeps, beams=32, seed=3))
    gen = PointToVoxel(
        vsize_xyz=list(NUSC_SIZE),
        coors_range_xyz=list(NUSC_RANGE),
        num_point_features=5,
        max_num_voxels=max_voxels,
        max_num_points_per_voxel=10,
    )
    sp_feat, sp_coords, sp_counts, sp_ids = gen.generate_voxel_with_id(pts)
    ours, stats = voxelize_with_stats(pts, NUSC_SIZE, NUSC_RANGE, 10, max_voxels)
    # same voxels, same (first-occurrence) order, same counts, same padded features
    assert torch.equal(ours.coords[:, 1:], sp_coords)
    assert torch.equal(ours.counts, sp_counts)
    assert torch.equal(ours.features, sp_feat)
    mean_ours = ours.features.sum(1) / ours.counts[:, None]
    mean_sp = sp_feat.sum(1) / sp_counts[:, None]
    assert torch.equal(mean_ours, mean_sp)
    assert stats.num_out_of_range == int((sp_ids == -1).sum()) - stats.num_over_max_voxels
    if max_voxels > ours.num_voxels:
        dyn = voxelize(pts, NUSC_SIZE, NUSC_RANGE, mode="dynamic")
        assert torch.equal(dyn.point_to_voxel, sp_ids)
    else:
        assert stats.num_over_max_voxels > 0


def test_borders_and_voxel_boundaries_match_spconv() -> None:
    from spconv.pytorch.utils import PointToVoxel

    lo = np.array(NUSC_RANGE[:3], dtype=np.float32)
    hi = np.array(NUSC_RANGE[3:], dtype=np.float32)
    size = np.array(NUSC_SIZE, dtype=np.float32)
    k = np.arange(0, 1441, 7, dtype=np.float32)[:, None]
    xyz = [
        lo + k * size,
        lo + (k * size).astype(np.float32),
        np.nextafter(lo + k * size, np.float32(-100)),
        np.nextafter(hi, np.float32(100)) - 0 * k,
        np.nextafter(hi, np.float32(-100)) + 0 * k,
        hi + 0 * k,
        lo + 0 * k,
        np.nextafter(lo, np.float32(-100)) + 0 * k,
    ]
    pts = np.concatenate(xyz).astype(np.float32)
    pts = np.concatenate([pts, pts[:, [2, 0, 1]], pts[:, [1, 2, 0]]])  # mix border values across axes
    pts = np.clip(pts, lo - 1, hi + 1)
    pts = torch.from_numpy(np.concatenate([pts, np.ones((len(pts), 1), np.float32)], axis=1))
    gen = PointToVoxel(
        vsize_xyz=list(NUSC_SIZE),
        coors_range_xyz=list(NUSC_RANGE),
        num_point_features=4,
        max_num_voxels=100000,
        max_num_points_per_voxel=50,
    )
    sp_feat, sp_coords, sp_counts, sp_ids = gen.generate_voxel_with_id(pts)
    for backend in ("cpu", "torch"):
        dyn = voxelize(pts, NUSC_SIZE, NUSC_RANGE, mode="dynamic", backend=backend)
        assert torch.equal(dyn.point_to_voxel, sp_ids)
        assert torch.equal(dyn.coords[:, 1:], sp_coords)
    assert 0 < int((sp_ids == -1).sum()) < len(pts)


def test_border_rules_explicit() -> None:
    # lower border kept in cell 0, upper border dropped, a point on a voxel boundary goes to the upper cell
    pts = torch.tensor(
        [
            [-4.0, -4.0, -2.0, 1.0],
            [4.0, 0.0, 0.0, 1.0],
            [0.0, 0.0, 2.0, 1.0],
            [0.5, 1.0, 0.0, 1.0],
            [3.99, 3.99, 1.99, 1.0],
        ]
    )
    for backend in ("torch", "cpu"):
        dyn, stats = run(pts, backend, mode="dynamic")
        assert dyn.point_to_voxel.tolist() == [0, -1, -1, 1, 2]
        assert dyn.coords.tolist() == [[0, 0, 0, 0], [0, 2, 10, 9], [0, 3, 15, 15]]
        assert stats.num_out_of_range == 2


@pytest.mark.parametrize("backend", ["torch", "cpu", "cuda"])
def test_empty_one_point_and_single_voxel(backend: str, cuda_backend_device: torch.device) -> None:
    dev = cuda_backend_device if backend == "cuda" else torch.device("cpu")
    empty = torch.zeros((0, 4), device=dev)
    v, stats = run(empty, backend)
    assert v.features.shape == (0, 1, 4) and v.coords.shape == (0, 4) and stats == VoxelStats(0, 0, 0)
    d, _ = run(empty, backend, mode="dynamic")
    assert d.point_to_voxel.shape == (0,) and d.num_voxels == 0

    one = torch.tensor([[0.1, 0.2, 0.3, 7.0]], device=dev)
    v, _ = run(one, backend, max_points_per_voxel=4)
    assert v.coords.tolist() == [[0, 2, 8, 8]] and v.counts.tolist() == [1]
    assert v.features[0, 0].tolist() == one[0].tolist() and not v.features[0, 1:].any()

    same = torch.tensor(
        [[0.1, 0.2, 0.3, float(i)] for i in range(7)], device=dev
    )  # one voxel, distinct features
    v, stats = run(same, backend, max_points_per_voxel=5)
    assert v.counts.tolist() == [5] and stats.num_over_max_points == 2
    assert v.features[0, :, 3].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]  # first P in input order
    v, stats = run(same, backend)
    assert v.features.shape == (1, 7, 4) and stats.num_dropped == 0


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_non_finite_dropped_and_counted(backend: str) -> None:
    pts = random_points(200, seed=4, extent=3.0)
    bad = {(0, 0): float("nan"), (1, 2): float("inf"), (2, 3): float("nan"), (3, 4): -float("inf")}
    for (i, j), val in bad.items():
        pts[i, j] = val
    dyn, stats = run(pts, backend, mode="dynamic")
    assert stats.num_non_finite == 4 and stats.num_out_of_range == 0
    assert (dyn.point_to_voxel[:4] == -1).all() and (dyn.point_to_voxel[4:] >= 0).all()
    hard, _ = run(pts, backend)
    assert torch.isfinite(hard.features).all()


def test_cpu_keys_across_blocks_equal_torch() -> None:
    """The CPU key step runs in blocks of 256 points: bad and out-of-range points at and around block edges,
    a batch index that changes inside a block, and a last partial block give the torch reference's result."""
    from perception.ops.voxelize_cpu import _KEY_BLOCK

    n = 3 * _KEY_BLOCK + 17
    pts = random_points(n, seed=11, extent=6.0)  # some points beyond the +-5 m range
    for i, j in ((0, 0), (_KEY_BLOCK - 1, 4), (_KEY_BLOCK, 1), (2 * _KEY_BLOCK - 1, 3), (n - 1, 2)):
        pts[i, j] = float("nan") if j % 2 else float("inf")
    batch = (torch.arange(n) * 3 // n).to(torch.int64)
    got, got_stats = run(pts, "cpu", mode="dynamic", batch_index=batch)
    want, want_stats = run(pts, "torch", mode="dynamic", batch_index=batch)
    assert got_stats == want_stats and got_stats.num_non_finite == 5 and got_stats.num_out_of_range > 0
    assert torch.equal(got.point_to_voxel, want.point_to_voxel)
    assert torch.equal(got.coords, want.coords)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_batched_equals_per_sample(backend: str) -> None:
    a, b = random_points(3000, seed=5), random_points(2000, seed=6)
    pts = torch.cat([a[:1000], b[:500], a[1000:], b[500:]])
    batch = torch.cat([torch.zeros(1000), torch.ones(500), torch.zeros(2000), torch.ones(1500)]).to(
        torch.int32
    )
    both, _ = run(pts, backend, batch_index=batch, max_points_per_voxel=4)
    for k, part in enumerate((a, b)):
        single, _ = run(part, backend, max_points_per_voxel=4)
        sel = both.coords[:, 0] == k
        assert torch.equal(both.coords[sel][:, 1:], single.coords[:, 1:])
        assert torch.equal(both.features[sel], single.features)
        assert torch.equal(both.counts[sel], single.counts)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_caps_keep_first_voxels_and_points(backend: str) -> None:
    pts = random_points(5000, seed=7, extent=3.0)
    full, _ = run(pts, backend)
    dyn, _ = run(pts, backend, mode="dynamic")
    capped, stats = run(pts, backend, max_points_per_voxel=2, max_voxels=50)
    assert capped.num_voxels == 50
    assert torch.equal(capped.coords, full.coords[:50])
    assert torch.equal(capped.features, full.features[:50, :2])
    assert stats.num_over_max_voxels == int(dyn.counts[50:].sum())
    assert stats.num_over_max_points == int((dyn.counts[:50] - 2).clamp(min=0).sum())
    assert stats.num_kept == int(capped.counts.sum())
    # first-occurrence order: first point index of each voxel increases
    first = [int(torch.nonzero(dyn.point_to_voxel == v)[0]) for v in range(dyn.num_voxels)]
    assert first == sorted(first)


def test_huge_grid_needs_no_grid_memory() -> None:
    # 1e6 x 1e6 x 1e3 cells: a dense table would need petabytes; the hash needs O(N)
    pts = random_points(1000, seed=8, extent=400.0)
    v = voxelize(pts, (1e-3, 1e-3, 1e-3), (-500, -500, -0.5, 500, 500, 0.5), backend="cpu")
    ref = voxelize(pts, (1e-3, 1e-3, 1e-3), (-500, -500, -0.5, 500, 500, 0.5), backend="torch")
    assert v.grid_shape == (1000, 1000000, 1000000)
    assert_same_voxels(v, ref)


@pytest.mark.parametrize("mode", ["hard", "dynamic"])
def test_keys_too_large_to_pack_use_the_wide_table(mode: str) -> None:
    # 2e6 x 2e6 x 1e6 cells: 62-bit keys leave no room for a packed voxel id, so the CPU kernel keeps keys and
    # ids in two arrays; results must not change
    from perception.ops.voxelize_cpu import packed_id_bits

    size, rng = (1e-4, 1e-4, 1e-4), (-100.0, -100.0, -50.0, 100.0, 100.0, 50.0)
    grid = make_grid(size, rng)
    assert packed_id_bits(int(np.prod(grid.shape)) - 1, 1000) == 0
    assert packed_id_bits(int(np.prod(make_grid(NUSC_SIZE, NUSC_RANGE).shape)) - 1, 1000) > 0
    pts = random_points(1000, seed=9, extent=120.0)
    pts = torch.cat([pts, pts[:50]])  # repeated voxels
    v = voxelize(pts, size, rng, mode=mode, backend="cpu")  # type: ignore[call-overload]
    ref = voxelize(pts, size, rng, mode=mode, backend="torch")  # type: ignore[call-overload]
    assert int(ref.counts.max()) >= 2
    assert_same_voxels(v, ref)


@pytest.mark.parametrize(
    "kw,err,match",
    [
        (dict(points=torch.zeros(4, 4, dtype=torch.float64)), TypeError, "points must have dtype float32"),
        (dict(points=torch.zeros(4)), ValueError, "points must be 2-D"),
        (dict(points=torch.zeros(4, 2)), ValueError, "C >= 3"),
        (dict(points=np.zeros((4, 4), np.float32)), TypeError, "points must be a torch.Tensor"),
        (dict(voxel_size=(0.1, 0.1)), ValueError, "voxel_size must be a sequence of 3"),
        (dict(voxel_size=(0.1, 0.0, 0.1)), ValueError, "voxel_size must be positive"),
        (dict(voxel_size=(0.1, float("nan"), 0.1)), ValueError, "voxel_size must be finite"),
        (dict(voxel_size=(0.1, "a", 0.1)), TypeError, "voxel_size must contain numbers"),
        (dict(point_range=(0, 0, 0, 1, 1)), ValueError, "point_cloud_range must be a sequence of 6"),
        (dict(point_range=(0, 0, 0, 1, -1, 1)), ValueError, "must be < "),
        (dict(point_range=(0, 0, 0, 1, 1, 0.1)), ValueError, "smaller than half a voxel"),
        (dict(max_points_per_voxel=0), ValueError, "max_points_per_voxel must be a positive int"),
        (dict(max_voxels=2.5), ValueError, "max_voxels must be a positive int"),
        (dict(max_voxels=True), ValueError, "max_voxels must be a positive int"),
        (dict(mode="dynamic", max_voxels=3), ValueError, "applies to mode='hard' only"),
        (dict(mode="soft"), ValueError, "mode must be 'hard' or 'dynamic'"),
        (dict(backend="gpu"), ValueError, "backend must be one of"),
        (
            dict(batch_index=torch.zeros(3, dtype=torch.int64)),
            ValueError,
            r"batch_index must have shape \(4,\)",
        ),
        (dict(batch_index=torch.zeros(4)), TypeError, "batch_index must have dtype int32 or int64"),
        (dict(batch_index=torch.tensor([0, -1, 0, 0])), ValueError, "batch_index must be >= 0"),
        (dict(batch_index=torch.tensor([0, 2**40, 0, 0])), ValueError, "batch_index up to"),
        (dict(voxel_size=(1e-9, 1e-9, 1e-9)), ValueError, "too large"),
    ],
)
def test_bad_inputs(kw: dict, err: type, match: str) -> None:
    args = dict(points=torch.zeros(4, 4), voxel_size=SMALL_SIZE, point_range=SMALL_RANGE)
    args.update(kw)
    with pytest.raises(err, match=match):
        voxelize(**args)


def test_cuda_backend_without_simulator_or_gpu_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA backend is usable")
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "0")
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM"):
        voxelize(torch.zeros(4, 4), SMALL_SIZE, SMALL_RANGE, backend="cuda")


coord = st.floats(-6.0, 6.0, width=32) | st.sampled_from([-4.0, 4.0, -2.0, 2.0, 0.5, -0.5, 0.0, float("nan")])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    xyz=st.lists(st.tuples(coord, coord, coord), min_size=0, max_size=60),
    p=st.none() | st.integers(1, 4),
    m=st.none() | st.integers(1, 10),
    nb=st.integers(1, 3),
)
def test_property_cpu_equals_reference(xyz: list, p: int | None, m: int | None, nb: int) -> None:
    pts = torch.tensor(xyz, dtype=torch.float32).reshape(-1, 3)
    pts = torch.cat([pts, torch.arange(len(xyz), dtype=torch.float32)[:, None]], 1)
    batch = torch.arange(len(xyz)) % nb
    ref, ref_stats = run(pts, "torch", max_points_per_voxel=p, max_voxels=m, batch_index=batch)
    cpu, cpu_stats = run(pts, "cpu", max_points_per_voxel=p, max_voxels=m, batch_index=batch)
    assert_same_voxels(ref, cpu)
    assert ref_stats == cpu_stats
    assert cpu_stats.num_kept + cpu_stats.num_dropped == len(xyz)
    assert int(cpu.counts.sum()) == cpu_stats.num_kept
    assert len({tuple(c) for c in cpu.coords.tolist()}) == cpu.num_voxels
    # every kept point lies inside its voxel (float32 index of its xyz equals the voxel coordinate)
    assert isinstance(cpu, Voxels)
    for v in range(cpu.num_voxels):
        for r in range(int(cpu.counts[v])):
            q = (cpu.features[v, r, :3] - torch.tensor(SMALL_RANGE[:3])) / torch.tensor(SMALL_SIZE)
            assert q.floor().to(torch.int32).tolist() == cpu.coords[v, [3, 2, 1]].tolist()


def test_reused_scratch_never_leaks_between_calls() -> None:
    # the CPU kernels keep their scratch buffers per thread; a large call followed by small ones, hard and
    # dynamic, must give the reference results, and returned tensors must not alias the scratch
    from concurrent.futures import ThreadPoolExecutor

    from perception.ops.voxelize_cpu import release_workspace

    big, small = random_points(3000, seed=10), random_points(40, seed=11)
    first = voxelize(small, SMALL_SIZE, SMALL_RANGE, mode="dynamic", backend="cpu")
    kept = first.point_to_voxel.clone(), first.coords.clone(), first.counts.clone()
    for pts in (big, small, big):
        for kw in CASES:
            assert_same_voxels(run(pts, "cpu", **kw)[0], run(pts, "torch", **kw)[0])
    assert torch.equal(first.point_to_voxel, kept[0])
    assert torch.equal(first.coords, kept[1]) and torch.equal(first.counts, kept[2])

    def job(seed: int) -> bool:
        pts = random_points(500 + 300 * seed, seed=seed)
        return all(
            torch.equal(run(pts, "cpu", **kw)[0].counts, run(pts, "torch", **kw)[0].counts) for kw in CASES
        )

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(job, range(8)))
    release_workspace()
    assert_same_voxels(run(small, "cpu")[0], run(small, "torch")[0])
