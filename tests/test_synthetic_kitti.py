"""Synthetic KITTI: layout, calib text format, labels that contain their LiDAR points through the calib."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from perception.datasets.synthetic import SyntheticParams
from perception.datasets.synthetic.kitti_writer import frame_for, scene_for

_spec = importlib.util.spec_from_file_location(
    "create_data", Path(__file__).parents[1] / "tools" / "create_data.py"
)
assert _spec is not None and _spec.loader is not None
_create_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_create_data)
create_data = _create_data.main

KITTI_TYPES = {"Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram", "Misc", "DontCare"}
ARGS = ["--scenes", "3", "--samples", "2", "--objects", "30", "--seed", "5"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kitti")
    assert (
        create_data(["synthetic", "--format", "kitti", "--out", str(out), "--cameras", "front", *ARGS]) == 0
    )
    return out


def read_calib(path: Path) -> dict[str, np.ndarray]:
    calib = {}
    for line in path.read_text().splitlines():
        key, values = line.split(":", 1)
        calib[key] = np.array([float(v) for v in values.split()])
    return calib


def test_layout(root: Path) -> None:
    sets = {s: (root / "ImageSets" / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert len(sets["train"]) == len(sets["val"]) == len(sets["test"]) == 2
    assert not set(sets["train"]) & set(sets["val"])
    for split, ids in sets.items():
        sub = root / ("testing" if split == "test" else "training")
        for fid in ids:
            assert (sub / "velodyne" / f"{fid}.bin").stat().st_size % 16 == 0  # float32 x 4
            assert (sub / "calib" / f"{fid}.txt").is_file()
            assert Image.open(sub / "image_2" / f"{fid}.png").size == (1242, 375)
            assert (sub / "label_2" / f"{fid}.txt").is_file() == (split != "test")
    velo = np.fromfile(root / "training" / "velodyne" / "000000.bin", dtype=np.float32).reshape(-1, 4)
    assert 80_000 < len(velo) < 140_000 and ((velo[:, 3] >= 0) & (velo[:, 3] <= 1)).all()
    assert not (root / "testing" / "label_2").exists()


def test_calib_format(root: Path) -> None:
    calib = read_calib(root / "training" / "calib" / "000000.txt")
    assert list(calib) == ["P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam", "Tr_imu_to_velo"]
    assert [len(v) for v in calib.values()] == [12, 12, 12, 12, 9, 12, 12]
    p2 = calib["P2"].reshape(3, 4)
    np.testing.assert_allclose(p2[:, :3], calib["P0"].reshape(3, 4)[:, :3])
    r0 = calib["R0_rect"].reshape(3, 3)
    np.testing.assert_allclose(r0 @ r0.T, np.eye(3), atol=1e-9)
    tr = calib["Tr_velo_to_cam"].reshape(3, 4)
    # Velodyne forward (+x) looks along the camera's optical axis (+z); Velodyne up (+z) is camera -y.
    np.testing.assert_allclose(tr[:, :3] @ [1, 0, 0], [0, 0, 1])
    np.testing.assert_allclose(tr[:, :3] @ [0, 0, 1], [0, -1, 0])


def _label_box_in_velo(
    fields: list[float], calib: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, float]:
    """KITTI label (h w l, bottom centre x y z in rect cam, ry) -> LiDAR centre (3,), dims [l w h], yaw."""
    h, w, length, x, y, z, ry = fields[7:14]
    rect_from_velo = np.eye(4)
    rect_from_velo[:3, :3] = calib["R0_rect"].reshape(3, 3)
    tr = np.eye(4)
    tr[:3] = calib["Tr_velo_to_cam"].reshape(3, 4)
    rect_from_velo = rect_from_velo @ tr
    velo_from_rect = np.linalg.inv(rect_from_velo)
    bottom = velo_from_rect[:3, :3] @ [x, y, z] + velo_from_rect[:3, 3]
    heading = velo_from_rect[:3, :3] @ [np.cos(ry), 0.0, -np.sin(ry)]
    return bottom + [0.0, 0.0, h / 2], np.array([length, w, h]), float(np.arctan2(heading[1], heading[0]))


def _inside(
    points: np.ndarray, centre: np.ndarray, dims: np.ndarray, yaw: float, margin: float
) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    d = points - centre
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
    return (np.abs(local) <= dims / 2 + margin).all(axis=1)


def test_labels_contain_their_points(root: Path) -> None:
    params = SyntheticParams(
        format="kitti", scenes=3, samples=2, objects_per_scene=30, seed=5, cameras="front"
    )
    scene = scene_for(params, 0)
    checked = 0
    for k, fid in enumerate(["000000", "000001"]):
        frame = frame_for(params, scene, 0, k)
        lines = (root / "training" / "label_2" / f"{fid}.txt").read_text().splitlines()
        assert lines == frame.labels  # the files hold exactly what the generator labelled
        calib = read_calib(root / "training" / "calib" / f"{fid}.txt")
        velo = np.fromfile(root / "training" / "velodyne" / f"{fid}.bin", dtype=np.float32).reshape(-1, 4)
        for line, obj in zip(lines, frame.label_objects, strict=True):
            parts = line.split()
            assert parts[0] in KITTI_TYPES and len(parts) == 15
            if obj < 0:
                assert parts[0] == "DontCare"
                continue
            centre, dims, yaw = _label_box_in_velo([float(v) for v in parts[1:]], calib)
            own = velo[frame.scan.object_index == obj, :3].astype(np.float64)
            # Labels are written with 2 decimals (as KITTI's), so allow 5 cm of rounding.
            assert _inside(own, centre, dims, yaw, 0.05).all(), line
            # ... and the box interior (5 cm in from the faces) holds no other object's or ground points.
            interior = _inside(velo[:, :3].astype(np.float64), centre, dims, yaw, -0.05)
            assert (frame.scan.object_index[interior] == obj).all(), line
            checked += len(own) > 0
    assert checked >= 10


def test_2d_boxes_are_projections(root: Path) -> None:
    calib = read_calib(root / "training" / "calib" / "000000.txt")
    p2 = calib["P2"].reshape(3, 4)
    checked = 0
    for line in (root / "training" / "label_2" / "000000.txt").read_text().splitlines():
        parts = line.split()
        if parts[0] == "DontCare" or float(parts[1]) > 0:
            continue
        h, w, length, x, y, z, ry = (float(v) for v in parts[8:15])
        xs, zs = np.array([1, 1, -1, -1]) * length / 2, np.array([1, -1, -1, 1]) * w / 2
        c, s = np.cos(ry), np.sin(ry)
        corners = np.array(
            [
                [x + c * a + s * b, y - hh, z - s * a + c * b]
                for a, b in zip(xs, zs, strict=True)
                for hh in (0.0, h)
            ]
        )
        uvw = np.hstack([corners, np.ones((8, 1))]) @ p2.T
        uv = uvw[:, :2] / uvw[:, 2:]
        np.testing.assert_allclose(
            [uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()],
            [float(v) for v in parts[4:8]],
            atol=2.5,
        )
        alpha_error = (float(parts[3]) - (ry - np.arctan2(x, z)) + np.pi) % (2 * np.pi) - np.pi
        assert abs(alpha_error) < 0.02, line
        checked += 1
    assert checked >= 3


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    def run(out: Path) -> dict[str, bytes]:
        assert (
            create_data(
                [
                    "synthetic",
                    "--format",
                    "kitti",
                    "--out",
                    str(out),
                    "--cameras",
                    "none",
                    "--scenes",
                    "3",
                    "--samples",
                    "1",
                    "--objects",
                    "10",
                    "--seed",
                    "9",
                ]
            )
            == 0
        )
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    a, b = run(tmp_path / "a"), run(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert not any("image_2" in k for k in a)
