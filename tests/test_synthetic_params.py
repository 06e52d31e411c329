"""Generator parameters: defaults, clear errors for every invalid value, scene-name selection, CLI errors."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
from nuscenes.utils.splits import create_splits_scenes

from perception.datasets.synthetic import LidarSpec, SyntheticParams, generate, hdl32e, hdl64e
from perception.datasets.synthetic.nuscenes_tables import scene_names

_spec = importlib.util.spec_from_file_location(
    "create_data", Path(__file__).parents[1] / "tools" / "create_data.py"
)
assert _spec is not None and _spec.loader is not None
_create_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_create_data)


def test_defaults_per_format() -> None:
    nus = SyntheticParams()
    assert (nus.format, nus.version, nus.scenes, nus.samples, nus.num_sweeps) == (
        "nuscenes",
        "v1.0-mini",
        4,
        4,
        2,
    )
    assert nus.lidar_spec.beams == 32 and nus.lidar_spec.frequency_hz == 20.0
    kitti = SyntheticParams(format="kitti")
    assert kitti.num_sweeps == 0 and kitti.lidar_spec.beams == 64 and kitti.lidar_spec.frequency_hz == 10.0
    assert hdl64e().elevations_deg[0] == 2.0 and min(hdl32e().elevations_deg) == -30.67


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scenes": 1}, "scenes"),
        ({"scenes": 11}, "scenes must be at most 10 for version v1.0-mini"),
        ({"scenes": 851, "version": "v1.0-trainval"}, "scenes"),
        ({"samples": 1}, "samples must be >= 2"),
        ({"samples": 0}, "samples"),
        ({"sweeps": 10}, "sweeps"),
        ({"sweeps": -1}, "sweeps"),
        ({"format": "kitti", "sweeps": 1}, "sweeps is a nuscenes-only option"),
        ({"format": "kitti", "scenes": 2}, "scenes must be >= 3 for the kitti format"),
        ({"format": "waymo"}, "format"),
        ({"version": "v1.0-test"}, "version"),
        ({"cameras": "left"}, "cameras"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"objects_per_scene": -2}, "objects_per_scene"),
        ({"scene": 3}, "scene"),  # misspelt field
    ],
)
def test_invalid_params(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SyntheticParams(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"elevations_deg": (1.0, 1.0)}, "duplicate"),
        ({"elevations_deg": (95.0,)}, "elevations_deg"),
        ({"elevations_deg": (float("nan"),)}, "elevations_deg"),
        ({"elevations_deg": ()}, "elevations_deg"),
        ({"azimuth_steps": 4}, "azimuth_steps"),
        ({"frequency_hz": 0.0}, "frequency_hz"),
        ({"min_range": 50.0, "max_range": 40.0}, "min_range"),
        ({"dropout": 1.0}, "dropout"),
        ({"range_noise_std": -0.1}, "range_noise_std"),
        ({"surface_inset": 0.0}, "surface_inset"),
    ],
)
def test_invalid_lidar_spec(kwargs: dict, match: str) -> None:
    base = {"elevations_deg": (-10.0, 0.0), "azimuth_steps": 360, "frequency_hz": 10.0}
    with pytest.raises(ValueError, match=match):
        LidarSpec(**{**base, **kwargs})


@pytest.mark.parametrize("num", range(2, 11))
def test_mini_scene_names_cover_both_splits(num: int) -> None:
    splits = create_splits_scenes()
    pairs = scene_names("v1.0-mini", num)
    assert len(pairs) == num == len({n for n, _ in pairs})
    assert {s for _, s in pairs} == {"mini_train", "mini_val"}
    assert all(n in splits[s] for n, s in pairs)


def test_trainval_scene_names() -> None:
    splits = create_splits_scenes()
    pairs = scene_names("v1.0-trainval", 850)
    assert sum(s == "train" for _, s in pairs) == 700 and sum(s == "val" for _, s in pairs) == 150
    assert all(n in splits[s] for n, s in scene_names("v1.0-trainval", 5))
    with pytest.raises(ValueError, match="num_scenes"):
        scene_names("v1.0-mini", 1)


def test_generate_rejects_other_types(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="params must be a SyntheticParams"):
        generate({"format": "nuscenes"}, tmp_path)  # type: ignore[arg-type]


def test_cli_reports_invalid_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = _create_data.main
    assert main(["synthetic", "--format", "nuscenes", "--out", str(tmp_path), "--samples", "1"]) == 2
    assert "samples must be >= 2" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written
    with pytest.raises(SystemExit) as exc:
        main(["synthetic", "--out", str(tmp_path)])  # --format is required
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["synthetic", "--format", "nuscenes", "--out", str(tmp_path), "--cameras", "rear"])
    with pytest.raises(SystemExit):
        main([])  # a subcommand is required


def test_synthetic_classes_are_the_nuscenes_detection_classes() -> None:
    """The generator models exactly the ten classes of ``perception.formats.nuscenes_names`` (in the devkit's
    order, with the devkit's category -> detection-name mapping), so its scenes fit every nuScenes config."""
    from nuscenes.eval.detection.constants import DETECTION_NAMES
    from nuscenes.eval.detection.utils import category_to_detection_name

    from perception.datasets.synthetic.classes import CLASSES
    from perception.formats.nuscenes_names import NUSCENES_CLASSES

    assert [c.name for c in CLASSES] == list(DETECTION_NAMES)
    assert sorted(c.name for c in CLASSES) == sorted(NUSCENES_CLASSES)
    assert all(category_to_detection_name(c.category) == c.name for c in CLASSES)


# ---------------------------------------------------------------- sparser LiDAR (synthetic.lidar_beams)


def test_lidar_beams_spreads_over_the_default_span() -> None:
    for fmt, base in (("nuscenes", hdl32e()), ("kitti", hdl64e())):
        spec = SyntheticParams(format=fmt, lidar_beams=16).lidar_spec
        assert spec.beams == 16 and spec.name == f"{base.name}/16"
        assert min(spec.elevations_deg) == min(base.elevations_deg)
        assert max(spec.elevations_deg) == max(base.elevations_deg)
        assert spec.azimuth_steps == base.azimuth_steps and spec.max_range == base.max_range
    assert SyntheticParams(lidar_beams=32).lidar_spec == hdl32e()
    with pytest.raises(ValueError, match="lidar_beams"):
        SyntheticParams(lidar_beams=1)


def _kitti_config(tmp_path: Path, beams: int | None) -> Path:
    extra = "" if beams is None else f"\n  lidar_beams: {beams}"
    path = tmp_path / f"c{beams}.yaml"
    path.write_text(
        "data:\n  dataset: kitti\n  root: data\n  class_names: [Car]\n"
        "  point_cloud_range: [0, -40, -3, 70.4, 40, 1]\n  voxel_size: [0.2, 0.2, 4.0]\n"
        f"synthetic:\n  format: kitti\n  scenes: 3\n  samples: 1\n  cameras: front{extra}\n"
    )
    return path


def test_generated_set_records_its_lidar_and_other_beams_are_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The data set records its parameters; a config asking for another LiDAR does not reuse it."""
    from perception.config import load_config
    from perception.datasets.synthetic import read_params_record
    from perception.engine.data import prepare_data

    sparse = load_config(_kitti_config(tmp_path, 8))
    prepare_data(sparse)
    recorded = read_params_record(tmp_path / "data" / "training")
    assert recorded is not None and recorded.lidar_spec.beams == 8 and recorded.lidar_beams == 8
    prepare_data(sparse)  # the same settings: reused
    with pytest.raises(
        ValueError, match=r"HDL-64E/8 \(8 beams\).*HDL-64E \(64 beams; synthetic.lidar_beams\)"
    ):
        prepare_data(load_config(_kitti_config(tmp_path, None)))
    (tmp_path / "data" / "training" / "synthetic_params.json").unlink()  # a set from before the records
    prepare_data(load_config(_kitti_config(tmp_path, None)))
    with pytest.raises(ValueError, match=r"HDL-64E \(64 beams\), but .* HDL-64E/16"):
        prepare_data(load_config(_kitti_config(tmp_path, 16)))


def test_a_gt_database_of_another_format_version_is_built_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import json

    from perception.config import load_config
    from perception.datasets.gt_database import FORMAT_VERSION, INDEX_NAME, GTDatabase, index_format_version
    from perception.engine.data import _gt_database_dir, prepare_data

    cfg = load_config(_kitti_config(tmp_path, 8))
    prepare_data(cfg)
    db_dir = _gt_database_dir(cfg)
    index = db_dir / INDEX_NAME
    data = json.loads(index.read_text())
    data["format_version"] = FORMAT_VERSION - 1  # as an older checkout wrote it
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format_version"):
        GTDatabase(db_dir)
    with caplog.at_level(logging.INFO, logger="perception"):
        prepare_data(cfg)
    assert f"format version {FORMAT_VERSION - 1}, this code writes {FORMAT_VERSION}" in caplog.text
    assert index_format_version(db_dir) == FORMAT_VERSION and len(GTDatabase(db_dir)) > 0
    assert index_format_version(tmp_path / "nowhere") is None
