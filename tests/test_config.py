"""Tests for perception.config: YAML -> typed config, base files, --set overrides, paths, save/reload."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from perception.config import (
    ConfigError,
    ExperimentConfig,
    add_config_args,
    config_from_args,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_overrides,
    save_config,
)
from perception.config_schema import DataConfig, path_field_keys
from perception.formats.nuscenes_names import NUSCENES_CLASSES

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

KITTI = """\
data:
  dataset: kitti
  root: data/kitti
  class_names: [Car, Pedestrian, Cyclist]
  point_cloud_range: [0, -40, -3, 70.4, 40, 1]
  voxel_size: [0.05, 0.05, 0.1]
output_root: out
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# ---------------------------------------------------------------- shipped configs


def test_configs_folder_has_the_demo_configs() -> None:
    names = {p.name for p in CONFIGS}
    assert {"demo_nuscenes_mini.yaml", "demo_kitti.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_round_trips(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.data.root.is_absolute() and cfg.output_root.is_absolute()
    assert load_config(save_config(cfg, tmp_path / "saved.yaml")) == cfg


def test_demo_nuscenes_values() -> None:
    cfg = load_config(REPO / "configs" / "demo_nuscenes_mini.yaml")
    d = cfg.data
    assert (d.dataset, d.version, d.max_sweeps) == ("nuscenes", "v1.0-mini", 10)
    assert tuple(d.class_names) == NUSCENES_CLASSES  # the shipped config lists the one class table
    assert d.point_cloud_range == (-54, -54, -5, 54, 54, 3)
    assert d.voxel_size == (0.075, 0.075, 0.2)
    assert d.grid.shape == (40, 1440, 1440)
    assert d.root == REPO / "data" / "synthetic_nuscenes_mini"
    assert cfg.output_root == REPO / "output"
    assert cfg.synthetic is not None and cfg.synthetic.format == "nuscenes"


def test_demo_kitti_values() -> None:
    d = load_config(REPO / "configs" / "demo_kitti.yaml").data
    assert (d.dataset, list(d.class_names)) == ("kitti", ["Car", "Pedestrian", "Cyclist"])
    assert d.point_cloud_range == (0, -40, -3, 70.4, 40, 1)
    assert d.voxel_size == (0.05, 0.05, 0.1)
    assert d.grid.shape == (40, 1600, 1408)


# ---------------------------------------------------------------- unknown keys, bases, files


def test_unknown_key_names_dotted_key_file_and_suggestion(tmp_path: Path) -> None:
    f = write(tmp_path / "exp.yaml", KITTI.replace("class_names", "clas_names"))
    msg = error_of(f)
    assert "data.clas_names: unknown key" in msg and str(f) in msg
    assert "Did you mean 'class_names'" in msg


@pytest.mark.parametrize(
    ("extra", "key"),
    [("modle: {}\n", "modle"), ("synthetic: {format: kitti, seeed: 1}\n", "synthetic.seeed")],
)
def test_unknown_key_top_level_and_nested(tmp_path: Path, extra: str, key: str) -> None:
    msg = error_of(write(tmp_path / "exp.yaml", KITTI + extra))
    assert f"{key}: unknown key (in {tmp_path / 'exp.yaml'})" in msg


def test_unknown_key_in_base_names_the_base_file(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", KITTI.replace("  dataset: kitti\n", "  dataset: kitti\n  voxel: 1\n"))
    child = write(tmp_path / "exp.yaml", "base: base.yaml\ndata:\n  max_sweeps: 2\n")
    msg = error_of(child)
    assert f"data.voxel: unknown key (in {tmp_path / 'base.yaml'})" in msg
    assert str(child) in msg  # header names the top file too


def test_two_level_base_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", KITTI)
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    msg = error_of(write(tmp_path / "c.yaml", "base: b.yaml\n"))
    assert "base of its own" in msg and "b.yaml" in msg and "a.yaml" in msg


def test_self_base_is_an_error(tmp_path: Path) -> None:
    assert "base of its own" in error_of(write(tmp_path / "c.yaml", "base: c.yaml\n" + KITTI))


@pytest.mark.parametrize("bad", ["base: 3\n", "base: ''\n", "base: [a.yaml]\n"])
def test_base_must_be_a_file_name(tmp_path: Path, bad: str) -> None:
    assert "'base' must be a file name" in error_of(write(tmp_path / "c.yaml", bad + KITTI))


def test_missing_file_and_missing_base(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    child = write(tmp_path / "c.yaml", "base: gone.yaml\n")
    with pytest.raises(FileNotFoundError) as info:
        load_config(child)
    assert "gone.yaml" in str(info.value) and str(child) in str(info.value)


def test_base_file_precedence(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", KITTI + "synthetic: {format: kitti, seed: 5}\n")
    child = write(tmp_path / "exp.yaml", "base: base.yaml\ndata:\n  max_sweeps: 3\n  class_names: [Car]\n")
    cfg = load_config(child)
    assert cfg.data.max_sweeps == 3 and cfg.data.class_names == ("Car",)  # file wins, lists replace
    assert cfg.data.voxel_size == (0.05, 0.05, 0.1)  # rest of the section merged from the base
    assert cfg.synthetic is not None and cfg.synthetic.seed == 5
    assert load_config(child, ["data.max_sweeps=4"]).data.max_sweeps == 4  # --set wins over the file
    no_syn = write(tmp_path / "nosyn.yaml", "base: base.yaml\nsynthetic: null\n")
    assert load_config(no_syn).synthetic is None  # null replaces a base section


# ---------------------------------------------------------------- YAML-level problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (KITTI + "output_root: again\n", "duplicate key 'output_root'"),
        (KITTI.replace("  root:", "  1: x\n  root:"), "key 1 must be a string"),
        ("- a\n- b\n", "expected a mapping"),
        ("", "expected a mapping"),
        ("data: [1, 2\n", "invalid YAML"),
    ],
)
def test_malformed_yaml(tmp_path: Path, text: str, expected: str) -> None:
    f = write(tmp_path / "bad.yaml", text)
    msg = error_of(f)
    assert expected in msg and str(f) in msg


# ---------------------------------------------------------------- types and values


@pytest.mark.parametrize(
    ("old", "new", "key", "expected"),
    [
        (
            "voxel_size: [0.05, 0.05, 0.1]",
            "voxel_size: [0.05, 0.05, 0.1]\n  max_sweeps: '3'",
            "data.max_sweeps",
            "integer",
        ),
        (
            "voxel_size: [0.05, 0.05, 0.1]",
            "voxel_size: [0.05, 0.05, 0.1]\n  max_sweeps: 0",
            "data.max_sweeps",
            "greater than or equal to 1",
        ),
        (
            "voxel_size: [0.05, 0.05, 0.1]",
            "voxel_size: [0.05, 0.05, 0.1]\n  use_cameras: 1",
            "data.use_cameras",
            "boolean",
        ),
        ("dataset: kitti", "dataset: waymo", "data.dataset", "'nuscenes' or 'kitti'"),
        ("[Car, Pedestrian, Cyclist]", "Car", "data.class_names", "tuple"),
        ("[Car, Pedestrian, Cyclist]", "[]", "data.class_names", "at least 1"),
        ("[Car, Pedestrian, Cyclist]", "[Car, Car]", "data", "unique"),
        ("[Car, Pedestrian, Cyclist]", "[Car, '']", "data.class_names[1]", "at least 1 character"),
        ("[0, -40, -3, 70.4, 40, 1]", "[0, -40, -3, 70.4, 40]", "data.point_cloud_range[5]", "required"),
        ("[0, -40, -3, 70.4, 40, 1]", "[0, -40, -3, 70.4, 40, 1, 2]", "data.point_cloud_range", "at most 6"),
        ("[0, -40, -3, 70.4, 40, 1]", "[0, -40, -3, 70.4, 40, .nan]", "data.point_cloud_range[5]", "finite"),
        ("[0, -40, -3, 70.4, 40, 1]", "[0, -40, -3, 70.4, 40, '1']", "data.point_cloud_range[5]", "number"),
        ("[0, -40, -3, 70.4, 40, 1]", "[0, 40, -3, 70.4, -40, 1]", "data", "y_min (40.0) must be < y_max"),
        ("[0, -40, -3, 70.4, 40, 1]", "[0, -40, -3, 70.43, 40, 1]", "data", "not an integer multiple"),
        ("[0.05, 0.05, 0.1]", "[0.05, -0.05, 0.1]", "data.voxel_size[1]", "greater than 0"),
        ("root: data/kitti", "root: ''", "data.root", "must not be empty"),
        ("root: data/kitti", "root: [a]", "data.root", "path"),
        ("output_root: out", "output_root: 3", "output_root", "path"),
    ],
    ids=lambda v: v.replace("\n", " ") if isinstance(v, str) else str(v),
)
def test_wrong_types_and_values_name_the_key(
    tmp_path: Path, old: str, new: str, key: str, expected: str
) -> None:
    assert old in KITTI
    f = write(tmp_path / "exp.yaml", KITTI.replace(old, new))
    msg = error_of(f)
    line = next((ln for ln in msg.splitlines() if ln.strip().startswith(key + ":")), None)
    assert line is not None, msg
    assert expected in line and str(f) in line


def test_missing_required_key(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path / "exp.yaml", KITTI.replace("  root: data/kitti\n", "")))
    assert "data.root: Field required" in msg


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", "version must be one of"),
        ("  version: v2.0\n", "version must be one of"),
    ],
)
def test_nuscenes_version_checked(tmp_path: Path, extra: str, expected: str) -> None:
    text = KITTI.replace("dataset: kitti", "dataset: nuscenes").replace("  root:", extra + "  root:")
    assert expected in error_of(write(tmp_path / "exp.yaml", text))


def test_synthetic_must_match_dataset(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path / "exp.yaml", KITTI + "synthetic: {format: nuscenes}\n"))
    assert "synthetic.format ('nuscenes') must equal data.dataset ('kitti')" in msg
    bad_cams = error_of(write(tmp_path / "e2.yaml", KITTI + "synthetic: {format: kitti, cameras: back}\n"))
    assert "synthetic.cameras:" in bad_cams


def test_grid_shape_and_tolerance() -> None:
    base = dict(dataset="kitti", root="/d", class_names=["Car"], voxel_size=[0.1, 0.2, 0.25])
    d = DataConfig.model_validate(dict(base, point_cloud_range=[-1, -2, -1, 1.00005, 2, 1]))
    assert d.grid.shape == (8, 20, 20)  # off by 5e-5 m: within tolerance
    with pytest.raises(ValidationError, match="integer multiple"):
        DataConfig.model_validate(dict(base, point_cloud_range=[-1, -2, -1, 1.0002, 2, 1]))


def test_config_is_frozen() -> None:
    cfg = load_config(REPO / "configs" / "demo_kitti.yaml")
    with pytest.raises(ValidationError):
        cfg.data.max_sweeps = 3  # type: ignore[misc]


# ---------------------------------------------------------------- --set overrides


def test_override_values_are_yaml(tmp_path: Path) -> None:
    f = write(tmp_path / "exp.yaml", KITTI)
    cfg = load_config(
        f,
        [
            "data.point_cloud_range=[0,-20,-3,35.2,20,1]",
            "data.use_cameras=true",
            "data.class_names=[Car]",
            "data.max_sweeps=2",
            "data.max_sweeps=3",  # later wins
        ],
    )
    assert cfg.data.point_cloud_range == (0, -20, -3, 35.2, 20, 1)
    assert cfg.data.grid.shape == (40, 800, 704)
    assert cfg.data.use_cameras is True and cfg.data.class_names == ("Car",) and cfg.data.max_sweeps == 3


def test_override_creates_and_removes_sections(tmp_path: Path) -> None:
    f = write(tmp_path / "exp.yaml", KITTI)
    cfg = load_config(f, ["synthetic.format=kitti", "synthetic.seed=7"])
    assert cfg.synthetic is not None and (cfg.synthetic.seed, cfg.synthetic.scenes) == (7, 10)
    g = write(tmp_path / "syn.yaml", KITTI + "synthetic: {format: kitti}\n")
    assert load_config(g, ["synthetic=null"]).synthetic is None
    assert load_config(g, ["synthetic="]).synthetic is None  # empty YAML value is null


def test_override_unknown_key_says_it_came_from_set(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path / "exp.yaml", KITTI), ("data.voxel_sise=[1,1,1]",))
    assert "data.voxel_sise: unknown key (in --set data.voxel_sise=[1,1,1])" in msg
    assert "Did you mean 'voxel_size'" in msg


def test_override_wrong_type_names_the_set_item(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path / "exp.yaml", KITTI), ("data.max_sweeps=many",))
    assert (
        "data.max_sweeps: Input should be a valid integer (got 'many') (in --set data.max_sweeps=many)" in msg
    )


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("data.max_sweeps", "expected KEY=VALUE"),
        ("=3", "must be dotted names"),
        ("data..x=3", "must be dotted names"),
        ("1data=3", "must be dotted names"),
        ("data.voxel_size=[1,2", "is not valid YAML"),
        ("data={a: 1, a: 2}", "duplicate key"),
        ("base=other.yaml", "only allowed in a config file"),
    ],
)
def test_bad_override_syntax(item: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_overrides([item])
    assert expected in str(info.value) and repr(item) in str(info.value)


def test_override_into_a_value_is_an_error(tmp_path: Path) -> None:
    msg = error_of(write(tmp_path / "exp.yaml", KITTI), ("data.root.x=1",))
    assert "data.root is a str, not a section" in msg


def test_parse_overrides_rejects_a_bare_string() -> None:
    with pytest.raises(TypeError, match="sequence"):
        parse_overrides("data.max_sweeps=3")  # type: ignore[arg-type]
    assert parse_overrides(["a.b=1", "c= x y "]) == [("a.b", 1), ("c", "x y")]


# ---------------------------------------------------------------- paths


def test_paths_relative_to_config_file_not_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path / "cfgs" / "exp.yaml", KITTI.replace("root: data/kitti", "root: ../data/kitti"))
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    cfg = load_config(os.path.relpath(f, elsewhere))
    assert cfg.data.root == tmp_path / "data" / "kitti"
    assert cfg.output_root == tmp_path / "cfgs" / "out"
    # a --set path also resolves against the config's folder, not the cwd
    assert load_config(f, ["data.root=x"]).data.root == tmp_path / "cfgs" / "x"
    assert load_config(f, ["data.root=/abs/k"]).data.root == Path("/abs/k")


def test_base_paths_relative_to_the_base_file(tmp_path: Path) -> None:
    write(tmp_path / "common" / "base.yaml", KITTI)
    child = write(tmp_path / "exp" / "child.yaml", "base: ../common/base.yaml\noutput_root: runs\n")
    cfg = load_config(child)
    assert cfg.data.root == tmp_path / "common" / "data" / "kitti"  # written in the base
    assert cfg.output_root == tmp_path / "exp" / "runs"  # written in the child


def test_default_output_root_and_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    f = write(tmp_path / "exp.yaml", KITTI.replace("output_root: out\n", "").replace("data/kitti", "~/kitti"))
    cfg = load_config(f)
    assert cfg.output_root == tmp_path / "output"
    assert cfg.data.root == tmp_path / "home" / "kitti"


def test_path_fields_are_found_by_schema() -> None:
    assert path_field_keys(ExperimentConfig) == [
        "data.root",
        "model.fusion.image_backbone.pretrained",
        "output_root",
    ]


# ---------------------------------------------------------------- save / reload


def test_save_and_reload_identical_with_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write(tmp_path / "cfgs" / "exp.yaml", "base: base.yaml\ndata: {max_sweeps: 4}\n")
    write(tmp_path / "cfgs" / "base.yaml", KITTI + "synthetic: {format: kitti, seed: 3}\n")
    cfg = load_config(src, ["data.use_cameras=true"])
    out = save_config(cfg, tmp_path / "output" / "exp" / "default" / "config.yaml")
    text = out.read_text()
    assert "root: ../../../cfgs/data/kitti" in text and "base:" not in text
    monkeypatch.chdir(tmp_path / "output")
    assert load_config(out) == cfg
    absolute = save_config(cfg, tmp_path / "abs.yaml", relative_paths=False)
    assert f"root: {tmp_path / 'cfgs' / 'data' / 'kitti'}" in absolute.read_text()
    assert load_config(absolute) == cfg


def test_paths_sharing_only_the_root_stay_absolute(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "exp.yaml", KITTI), ["data.root=/opt/kitti"])
    text = save_config(cfg, tmp_path / "run" / "config.yaml").read_text()
    assert "root: /opt/kitti\n" in text and "output_root: ../out\n" in text
    assert load_config(tmp_path / "run" / "config.yaml") == cfg


def test_relative_paths_survive_moving_the_tree(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "a" / "cfgs" / "exp.yaml", KITTI))
    save_config(cfg, tmp_path / "a" / "run" / "config.yaml")
    (tmp_path / "a").rename(tmp_path / "b")
    moved = load_config(tmp_path / "b" / "run" / "config.yaml")
    assert moved.data.root == tmp_path / "b" / "cfgs" / "data" / "kitti"
    assert moved.data.model_copy(update={"root": cfg.data.root}) == cfg.data


def test_dict_round_trip_and_checkpoint(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "demo_nuscenes_mini.yaml")
    d = config_to_dict(cfg)
    assert d["data"]["root"] == str(REPO / "data" / "synthetic_nuscenes_mini")
    assert json.loads(json.dumps(d)) == d  # plain types only
    assert config_from_dict(d) == cfg
    torch.save({"config": d, "state": {}}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert config_from_dict(loaded["config"]) == cfg
    rel = config_to_dict(cfg, relative_to=REPO)
    assert rel["data"]["root"] == "data/synthetic_nuscenes_mini" and rel["output_root"] == "output"
    assert config_from_dict(rel, base_dir=REPO) == cfg


def test_config_from_dict_errors() -> None:
    d = config_to_dict(load_config(REPO / "configs" / "demo_kitti.yaml"))
    d["data"]["root"] = "relative/dir"
    with pytest.raises(ConfigError, match=r"data.root: relative path 'relative/dir' needs .*\(in ckpt.pt\)"):
        config_from_dict(d, source="ckpt.pt")
    d["base"] = "x.yaml"
    with pytest.raises(ConfigError, match="base: unknown key"):
        config_from_dict(d, base_dir="/")
    with pytest.raises(TypeError, match="mapping"):
        config_from_dict([("data", {})])  # type: ignore[arg-type]


finite = st.floats(-100, 100, allow_nan=False).map(lambda v: round(v, 3))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lo=st.tuples(finite, finite, finite),
    voxel=st.tuples(*[st.sampled_from([0.05, 0.075, 0.1, 0.2, 0.25, 0.32, 0.5, 1.0])] * 3),
    n=st.tuples(*[st.integers(1, 2000)] * 3),
    classes=st.lists(st.text("abcdefghij_", min_size=1, max_size=8), min_size=1, max_size=5, unique=True),
    sweeps=st.integers(1, 20),
    cams=st.booleans(),
    seed=st.integers(-(2**40), 2**40),
)
def test_random_configs_round_trip(tmp_path: Path, lo, voxel, n, classes, sweeps, cams, seed) -> None:  # type: ignore[no-untyped-def]
    hi = [a + k * v for a, k, v in zip(lo, n, voxel, strict=True)]
    data = {
        "data": {
            "dataset": "kitti",
            "root": "d",
            "class_names": classes,
            "point_cloud_range": [*lo, *hi],
            "voxel_size": list(voxel),
            "max_sweeps": sweeps,
            "use_cameras": cams,
        },
        "synthetic": {"format": "kitti", "seed": seed},
    }
    cfg = config_from_dict(data, base_dir=tmp_path)
    assert cfg.data.grid.shape == (n[2], n[1], n[0])
    assert load_config(save_config(cfg, tmp_path / "r" / "c.yaml")) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg


# ---------------------------------------------------------------- argparse


def test_add_config_args(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path / "exp.yaml", KITTI)
    parser = argparse.ArgumentParser(prog="train.py")
    add_config_args(parser)
    args = parser.parse_args(
        [str(f), "--set", "data.max_sweeps=2", "data.use_cameras=true", "--set", "synthetic.format=kitti"]
    )
    assert args.set == ["data.max_sweeps=2", "data.use_cameras=true", "synthetic.format=kitti"]
    cfg = config_from_args(args)
    assert cfg.data.max_sweeps == 2 and cfg.data.use_cameras and cfg.synthetic is not None
    assert parser.parse_args([str(f)]).set == []
    with pytest.raises(SystemExit):
        parser.parse_args([str(f), "--set", "max_sweeps"])
    assert "expected KEY=VALUE" in capsys.readouterr().err
    only_set = argparse.ArgumentParser()
    add_config_args(only_set, config_positional=False)
    assert vars(only_set.parse_args(["--set", "a=1"])) == {"set": ["a=1"]}


@pytest.mark.parametrize(
    "text, value", [("1e-3", 1e-3), ("5E4", 5e4), ("1.0e3", 1e3), (".5e-2", 5e-3), ("+2e-4", 2e-4)]
)
def test_exponent_numbers_parse_in_files_and_overrides(tmp_path: Path, text: str, value: float) -> None:
    """PyYAML (YAML 1.1) reads 1e-3 as a string; the loader reads it as the number people mean."""
    base = REPO / "configs" / "demo_detector.yaml"
    f = write(tmp_path / "exp.yaml", f"base: {base}\ntrain:\n  optimizer: {{lr: {text}}}\n")
    cfg = load_config(f)
    assert cfg.train is not None and cfg.train.optimizer.lr == pytest.approx(value)
    cfg = load_config(base, [f"train.optimizer.lr={text}"])
    assert cfg.train is not None and cfg.train.optimizer.lr == pytest.approx(value)
    assert parse_overrides(["a=10", "b=abc1e3", "c=1e"]) == [("a", 10), ("b", "abc1e3"), ("c", "1e")]
