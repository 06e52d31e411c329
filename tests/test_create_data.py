"""``tools/create_data.py nuscenes|kitti``: outputs inside the root, parallel workers, resume after a crash."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from perception.datasets.gt_database import GTDatabase
from perception.datasets.kitti_infos import create_kitti_infos, load_kitti_infos
from perception.datasets.prep_runner import safe_pickle_load
from perception.datasets.synthetic import SyntheticParams, generate
from perception.formats.nuscenes_infos import load_nuscenes_infos

_spec = importlib.util.spec_from_file_location(
    "create_data", Path(__file__).parents[1] / "tools" / "create_data.py"
)
assert _spec is not None and _spec.loader is not None
_create_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_create_data)
create_data = _create_data.main


@pytest.fixture(scope="module")
def kitti_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kitti_src")
    generate(
        SyntheticParams(format="kitti", scenes=3, samples=3, cameras="front", objects_per_scene=8, seed=2),
        out,
    )
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _equal(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


def _outputs(root: Path) -> dict[str, object]:
    out: dict[str, object] = {
        s: safe_pickle_load(root / f"kitti_infos_{s}.pkl") for s in ("train", "val", "test")
    }
    db = GTDatabase(root / "kitti_gt_database")
    out["db"] = sorted(
        (e.sample_token, e.path, e.box, e.num_points, db.load(e).points.tobytes())
        for c in db.classes
        for e in db.entries(c)
    )
    return out


def test_kitti_cli_writes_inside_root(
    kitti_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(kitti_src, tmp_path / "k")
    assert create_data(["kitti", "--root", str(root), "--workers", "2", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "train: 3 frames computed, 0 reused" in printed
    for split, n in (("train", 3), ("val", 3), ("test", 3)):
        assert len(load_kitti_infos(root / f"kitti_infos_{split}.pkl")) == n
    assert not list(root.rglob("*.tmp"))
    # the same run with workers=0 gives identical outputs
    clean = _copy(kitti_src, tmp_path / "k0")
    assert create_data(["kitti", "--root", str(clean), "--quiet"]) == 0
    assert _equal(_outputs(root), _outputs(clean))
    # a missing root is one clear error line and exit code 1
    assert create_data(["kitti", "--root", str(tmp_path / "nope"), "--quiet"]) == 1
    assert "ImageSets/train.txt" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_kitti_resume_after_crash(kitti_src: Path, tmp_path: Path, workers: int) -> None:
    """A run that dies on one frame keeps the finished frames; the re-run computes only the missing ones and
    produces exactly what a clean run produces."""
    clean = _copy(kitti_src, tmp_path / "clean")
    create_kitti_infos(clean, progress=False)
    root = _copy(kitti_src, tmp_path / "crash")
    calib = root / "training" / "calib" / "000002.txt"
    good = calib.read_text()
    calib.write_text(good.replace("R0_rect:", "R0_rect"))  # the worker handling frame 000002 raises
    with pytest.raises(ValueError, match=r"000002\.txt:5") as err:
        create_kitti_infos(root, workers=workers, progress=False)
    assert "while preparing '000002'" in "".join(getattr(err.value, "__notes__", []))
    assert not (root / "kitti_infos_train.pkl").exists() and not list(root.rglob("*.tmp"))
    (cache,) = (root / ".perception_cache").glob("kitti_train_*")
    finished = {p.stem for p in cache.glob("*.pkl")}
    assert "000002" not in finished
    if workers == 0:
        assert finished == {"000000", "000001"}
    calib.write_text(good)
    stats = create_kitti_infos(root, progress=False)  # resuming in-process: the parts are the same either way
    assert set(stats["train"].computed) == {"000000", "000001", "000002"} - finished
    assert set(stats["train"].reused) == finished
    assert _equal(_outputs(root), _outputs(clean))
    # deleting a merged file (or the GT database files of one frame) redoes only what is missing
    (root / "kitti_infos_val.pkl").unlink()
    shutil.rmtree(root / "kitti_gt_database" / "objects" / "000001")
    stats = create_kitti_infos(root, progress=False)
    assert (
        stats["train"].computed == ("000001",)
        and stats["val"].computed == ()
        and stats["test"].computed == ()
    )
    assert _equal(_outputs(root), _outputs(clean))


def test_nuscenes_cli_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "nus"
    args = ["synthetic", "--format", "nuscenes", "--out", str(root), "--scenes", "2", "--samples", "2"]
    assert create_data([*args, "--sweeps", "1", "--cameras", "none", "--objects", "5", "--seed", "4"]) == 0
    cmd = ["nuscenes", "--root", str(root), "--version", "v1.0-mini", "--max-sweeps", "2", "--quiet"]
    assert create_data([*cmd, "--workers", "2"]) == 0
    assert "train: 2 samples computed, 0 reused" in capsys.readouterr().out
    train, sweeps = load_nuscenes_infos(root / "nuscenes_infos_v1.0-mini_2sweeps_train.pkl")
    val, _ = load_nuscenes_infos(root / "nuscenes_infos_v1.0-mini_2sweeps_val.pkl")
    assert sweeps == 2 and len(train) == 2 and len(val) == 2
    assert {i.scene_name for i in train}.isdisjoint({i.scene_name for i in val})
    before = (root / "nuscenes_infos_v1.0-mini_2sweeps_train.pkl").read_bytes()
    db = GTDatabase(root / "nuscenes_gt_database_v1.0-mini_2sweeps")
    assert len(db) > 0 and db.point_channels[-1] == "time_lag"
    (root / "nuscenes_infos_v1.0-mini_2sweeps_train.pkl").unlink()
    assert create_data(cmd) == 0
    assert "train: 0 samples computed, 2 reused" in capsys.readouterr().out
    assert (root / "nuscenes_infos_v1.0-mini_2sweeps_train.pkl").read_bytes() == before
    # a different --max-sweeps never reuses parts built for another setting
    assert (
        create_data(
            ["nuscenes", "--root", str(root), "--version", "v1.0-mini", "--max-sweeps", "1", "--quiet"]
        )
        == 0
    )
    assert "train: 2 samples computed, 0 reused" in capsys.readouterr().out
    one, _ = load_nuscenes_infos(root / "nuscenes_infos_v1.0-mini_1sweeps_train.pkl")
    assert all(len(i.sweeps) == 0 for i in one) and any(len(i.sweeps) for i in train)
