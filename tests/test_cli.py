"""OpenPCDet's spellings on every tool (:mod:`perception.cli`): ``--a_b`` parses exactly as ``--a-b`` for every
flag of every parser (sub-commands included), ``--help`` lists each flag once, ``--cfg_file CONFIG`` replaces the
positional config, and ``tools/test.py``'s ``--eval_all --ckpt_dir DIR`` form resolves to the same folder as
``--eval-all DIR``. Parsing only (and ``main`` up to its first file check): milliseconds each."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest

from perception.cli import CFG_FILE_FLAG, ToolParser, underscore_to_hyphen

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny_centerpoint_spconv.yaml"


def _tool(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"_cli_tool_{name}", REPO / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_underscore_tokens_are_rewritten_only_where_they_name_an_option() -> None:
    options = ["--batch-size", "--extra-tag", "--eval-all", "--set", "-h"]
    argv = [
        "--batch_size",
        "2",
        "--extra_tag=a_b",
        "--eval_all",
        "--set",
        "x_y=1",
        "--not_ours",
        "--",
        "--batch_size",
    ]
    assert underscore_to_hyphen(argv, options) == [
        "--batch-size", "2", "--extra-tag=a_b", "--eval-all", "--set", "x_y=1", "--not_ours", "--", "--batch_size",
    ]  # fmt: skip
    assert underscore_to_hyphen(["--batch_s", "2"], options) == ["--batch-s", "2"]  # an abbreviation
    assert underscore_to_hyphen(["--batch_s", "2"], options, allow_abbrev=False) == ["--batch_s", "2"]


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every parser of tools built by ``build_parser``, sub-commands as their own entries."""
    out = [(name, _tool(name).build_parser()) for name in ("train", "test", "create_data", "infer")]
    for name, parser in list(out):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                out += [(f"{name} {cmd}", sub) for cmd, sub in action.choices.items()]
    return out


def _base_argv(parser: argparse.ArgumentParser, skip: argparse.Action) -> list[str]:
    """Arguments that satisfy ``parser``'s required positionals, options and groups without ``skip``."""
    argv: list[str] = []
    for action in parser._actions:
        if action is skip or isinstance(action, argparse._SubParsersAction):
            continue
        if not action.option_strings:  # positionals: the config (unless --cfg-file is the flag tested)
            argv += [] if CFG_FILE_FLAG in skip.option_strings else ["a.yaml"]
        elif action.required:
            argv += [action.option_strings[0], *([str(action.choices[0])] if action.choices else ["1"])]
    for group in parser._mutually_exclusive_groups:
        if group.required and skip not in group._group_actions:
            argv += [group._group_actions[0].option_strings[0], "x"]
    return argv


def _flag_argv(action: argparse.Action, flag: str) -> list[str]:
    if action.nargs == 0:
        return [flag]
    special = {"set": "k=1", "image_size": "1242x375"}  # values whose type is not a plain number
    value = str(action.choices[0]) if action.choices else special.get(action.dest, "2")
    return [flag, value]


def test_every_hyphen_flag_of_every_tool_answers_to_its_underscore_spelling() -> None:
    checked = set()
    for name, parser in _parsers():
        assert isinstance(parser, ToolParser), name
        for action in parser._actions:
            for flag in action.option_strings:
                if not flag.startswith("--") or "-" not in flag[2:]:
                    continue
                base = _base_argv(parser, action)
                hyphen = parser.parse_args([*base, *_flag_argv(action, flag)])
                underscore = parser.parse_args(
                    [*base, *_flag_argv(action, "--" + flag[2:].replace("-", "_"))]
                )
                assert underscore == hyphen, (name, flag)
                # the config alias fills the positional's dest; infer.py's own --cfg-file is a plain option
                dest = "config" if flag == CFG_FILE_FLAG and not hasattr(hyphen, action.dest) else action.dest
                assert getattr(hyphen, dest) not in (None, False, []), (name, flag)  # the flag took effect
                checked.add(flag)
    assert {
        "--batch-size",
        "--extra-tag",
        "--eval-all",
        "--ckpt-dir",
        "--max-waiting-mins",
        "--cfg-file",
    } <= checked
    assert {"--max-iterations", "--no-gt-database", "--no-progress"} <= checked


def test_help_lists_each_flag_once_and_says_underscores_work(capsys: pytest.CaptureFixture[str]) -> None:
    for name, parser in _parsers():
        text = parser.format_help()
        body, _, epilog = text.rpartition("Every --a-b flag")
        assert "also answers to OpenPCDet's spelling --a_b" in epilog, name
        invocations = [
            re.split(r"\s{2,}", ln.strip())[0] for ln in body.splitlines() if ln.strip().startswith("-")
        ]
        flags = [t for t in " ".join([parser.format_usage(), *invocations]).split() if "--" in t]
        assert flags and not [f for f in flags if "_" in f.split("=")[0]], name
    with pytest.raises(SystemExit):
        _tool("test").build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert out.count("--batch-size BATCH_SIZE") == 2  # once in the usage, once in the list
    assert "--batch_size BATCH_SIZE" not in out


@pytest.mark.parametrize("tool", ["train", "test"])
def test_cfg_file_replaces_the_positional_config(tool: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = _tool(tool).build_parser()
    rest = ["--ckpt", "c.pth"] if tool == "test" else []
    assert parser.parse_args(["--cfg_file", "x.yaml", *rest]).config == Path("x.yaml")
    assert parser.parse_args(["--cfg-file=x.yaml", *rest]).config == Path("x.yaml")
    assert parser.parse_args(["x.yaml", *rest]).config == Path("x.yaml")
    assert not hasattr(parser.parse_args(["x.yaml", *rest]), "_cfg_file_option")
    with pytest.raises(SystemExit) as err:
        parser.parse_args(rest)
    assert err.value.code == 2
    assert f"{tool}.py: error: the following arguments are required: CONFIG (or --cfg-file CONFIG)" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["x.yaml", "--cfg_file", "y.yaml", *rest])
    assert (
        f"{tool}.py: error: the config was given twice: x.yaml (positional) and --cfg-file y.yaml; give one"
        in capsys.readouterr().err
    )


def test_openpcdet_train_command_line() -> None:
    args = _tool("train").build_parser().parse_args(
        ["--cfg_file", str(CONFIG), "--batch_size", "4", "--extra_tag", "exp1", "--launcher", "pytorch",
         "--sync_bn", "--max_iterations", "7"]
    )  # fmt: skip
    assert (args.config, args.batch_size, args.extra_tag, args.launcher) == (CONFIG, 4, "exp1", "pytorch")
    assert args.sync_bn and args.max_iterations == 7


def test_test_py_eval_all_forms(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--eval-all DIR`` (ours) and ``--eval_all --ckpt_dir DIR`` (OpenPCDet's) name the same folder; the flag
    alone names the run's own ``ckpt/``; contradictions are one error line (exit status 2), nothing written."""
    test = _tool("test")
    out = f"output_root={tmp_path / 'out'}"
    missing = tmp_path / "missing"
    parser = test.build_parser()
    ours = parser.parse_args([str(CONFIG), "--eval-all", str(missing)])
    theirs = parser.parse_args(["--cfg_file", str(CONFIG), "--eval_all", "--ckpt_dir", str(missing)])
    assert (ours.eval_all, ours.ckpt_dir, theirs.eval_all, theirs.ckpt_dir) == (missing, None, True, missing)
    assert ours.max_waiting_mins == 0.0 and ours.poll_seconds == 30.0 and ours.launcher == "none"

    cases = [
        ([str(CONFIG), "--eval-all", str(missing)], f"--eval-all {missing}: no such folder"),
        (
            ["--cfg_file", str(CONFIG), "--eval_all", "--ckpt_dir", str(missing)],
            f"--eval-all {missing}: no such folder",
        ),
        (
            ["--cfg_file", str(CONFIG), "--eval_all"],
            f"--eval-all {tmp_path / 'out' / CONFIG.stem / 'default' / 'ckpt'}: no such folder",
        ),
        (
            [str(CONFIG), "--eval-all", str(missing), "--ckpt_dir", str(tmp_path)],
            f"--eval-all {missing} and --ckpt-dir {tmp_path}: give the folder once",
        ),
        (
            [str(CONFIG), "--ckpt", str(CONFIG), "--ckpt_dir", str(tmp_path)],
            "--ckpt-dir is read by --eval-all only (OpenPCDet: --eval_all --ckpt_dir DIR)",
        ),
        (
            [str(CONFIG), "--eval-all", str(CONFIG)],
            f"--eval-all {CONFIG}: a file, not a folder of checkpoints (score one file with --ckpt)",
        ),
    ]
    for argv, message in cases:
        assert test.main([*argv, "--set", out]) == 2, argv
        assert capsys.readouterr().err == f"test.py: error: {message}\n"
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        parser.parse_args([str(CONFIG), "--eval-all", str(tmp_path), "--max_waiting_mins", "-1"])
    assert (
        "argument --max-waiting-mins: must be a number of minutes >= 0, got '-1'" in capsys.readouterr().err
    )


def test_visualize_and_create_data_take_underscore_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _tool("visualize").main(["--data", str(CONFIG), "--score_threshold", "2"])
    assert "--score-threshold must lie in [0, 1], got 2.0" in capsys.readouterr().err  # parsed, then checked
    args = (
        _tool("create_data")
        .build_parser()
        .parse_args(["kitti", "--root", "r", "--no_gt_database", "--workers", "2"])
    )
    assert args.no_gt_database and args.workers == 2
