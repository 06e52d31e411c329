"""Load, override and save experiment configs (YAML under ``configs/`` -> :class:`ExperimentConfig`).

Rules:

* A config file is a YAML mapping validated by the typed schema of :mod:`perception.config_schema`. Unknown
  or misspelt keys, wrong types, duplicate keys and non-string keys are errors that name the dotted key and
  the file (or the ``--set`` item) it came from.
* A file may name at most one base file, ``base: other.yaml`` (relative to the file). The base is merged
  under the file: mappings merge key by key, anything else (scalars, lists, ``null``) replaces. A base that has
  a base of its own is an error.
* Paths resolve against the directory of the file that wrote them (a base's paths against the base's folder),
  never against the working directory. Paths given with ``--set`` resolve against the top config's folder.
* ``--set a.b=c`` overrides any key after the files are merged; the value is parsed as a YAML scalar or list
  (``--set data.point_cloud_range=[0,-40,-3,70.4,40,1]``, ``--set synthetic=null``). Precedence: base < file
  < ``--set`` (later ``--set`` items win).
* :func:`save_config` writes the resolved config (no ``base``) with paths relative to the written file, so
  loading it back gives an equal object; :func:`config_to_dict` / :func:`config_from_dict` do the same through
  a plain dict with absolute paths (what checkpoints store).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from perception.config_schema import ExperimentConfig, map_path_values, section_at

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "add_config_args",
    "config_from_args",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "parse_overrides",
    "save_config",
]

BASE_KEY = "base"
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_Prov = dict[tuple[str, ...], str]  # dotted key -> where its value came from (file path or "--set ...")


class ConfigError(ValueError):
    """A config file, dict or ``--set`` override is malformed; the message names the key and its source."""


class _StrictLoader(yaml.SafeLoader):
    """YAML safe loader that rejects duplicate keys and non-string keys instead of silently keeping one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str):
            raise ConfigError(f"line {line}: key {key!r} must be a string (quote it)")
        if key in out:
            raise ConfigError(f"line {line}: duplicate key {key!r}")
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 (PyYAML) reads ``1e-3``, ``5e4`` and ``1.0e3`` as strings (its floats need a dot and a signed
# exponent); YAML 1.2 and every other reader people use take them as numbers. This resolver is tried after
# PyYAML's own int and float rules, so ``10`` stays an int and ``1.5`` a float as before.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+\Z"),
    list("-+0123456789."),
)


def _yaml_problem(exc: Exception) -> str:
    """One-line description of a YAML error (problem and line/column) instead of PyYAML's multi-line dump."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def _read_yaml(path: Path) -> dict[str, Any]:
    """Read one config file into a dict; errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # a SafeLoader subclass
    except (yaml.YAMLError, ConfigError) as exc:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def parse_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """Parse ``["a.b=c", ...]`` into ``[("a.b", value), ...]`` with values parsed as YAML.

    Raises:
        ConfigError: an item without ``=``, a malformed dotted key, the ``base`` key, or a value that is not
            valid YAML. The message quotes the ``--set`` item.
    """
    if isinstance(items, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not a single string")
    parsed: list[tuple[str, Any]] = []
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. data.max_sweeps=5")
        key, text = item.split("=", 1)
        key = key.strip()
        if not _KEY_RE.match(key):
            raise ConfigError(f"--set {item!r}: key {key!r} must be dotted names like data.voxel_size")
        if key.split(".")[0] == BASE_KEY:
            raise ConfigError(f"--set {item!r}: '{BASE_KEY}' is only allowed in a config file")
        try:
            value = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
        except (yaml.YAMLError, ConfigError) as exc:
            raise ConfigError(
                f"--set {item!r}: value {text!r} is not valid YAML: {_yaml_problem(exc)}"
            ) from None
        parsed.append((key, value))
    return parsed


def _record(tree: Mapping[str, Any], source: str, prov: _Prov, prefix: tuple[str, ...] = ()) -> None:
    for key, value in tree.items():
        prov[prefix + (key,)] = source
        if isinstance(value, Mapping):
            _record(value, source, prov, prefix + (key,))


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, everything else in ``top`` replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _absolute(base_dir: Path) -> Callable[[str], str]:
    def fn(p: str) -> str:
        q = Path(p).expanduser()
        return p if not p.strip() else os.path.normpath(q if q.is_absolute() else base_dir / q)

    return fn


def _loc_str(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _format_error(err: Mapping[str, Any], prov: _Prov, default: str) -> str:
    loc = tuple(err["loc"])
    keys = tuple(str(p) for p in loc if isinstance(p, str))
    source = next((prov[keys[:n]] for n in range(len(keys), 0, -1) if keys[:n] in prov), default)
    if err["type"] == "extra_forbidden":
        section = section_at(ExperimentConfig, list(keys[:-1]))
        allowed = sorted(section.model_fields) if section is not None else []
        hint = difflib.get_close_matches(keys[-1], allowed, n=1)
        did = f"Did you mean '{hint[0]}'? " if hint else ""
        return f"  {_loc_str(loc)}: unknown key (in {source}). {did}Allowed keys here: {', '.join(allowed)}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    got = "" if err["type"] in ("missing", "value_error") else f" (got {err.get('input')!r:.80})"
    return f"  {_loc_str(loc)}: {msg}{got} (in {source})"


def _validate(data: Mapping[str, Any], base_dir: Path | None, prov: _Prov, what: str) -> ExperimentConfig:
    context = {"base_dir": base_dir} if base_dir is not None else {}
    try:
        return ExperimentConfig.model_validate(data, context=context)
    except ValidationError as exc:
        lines = [_format_error(e, prov, what) for e in exc.errors()]
        raise ConfigError(f"invalid config {what}:\n" + "\n".join(lines)) from None


def _apply_overrides(data: dict[str, Any], overrides: Sequence[str], prov: _Prov) -> dict[str, Any]:
    for item, (key, value) in zip(overrides, parse_overrides(overrides), strict=True):
        *parents, leaf = key.split(".")
        node = data
        for i, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parents[: i + 1])
                raise ConfigError(
                    f"--set {item!r}: {where} is a {type(child).__name__}, not a section of keys"
                )
            node = child
        node[leaf] = value
        source = f"--set {item}"
        prov[tuple(key.split("."))] = source
        if isinstance(value, Mapping):
            _record(value, source, prov, tuple(key.split(".")))
    return data


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Load a YAML experiment config, merge its base file and apply ``--set`` overrides.

    Args:
        path: config file; a relative ``path`` is taken relative to the working directory (it is a CLI argument),
            but every path *inside* the file resolves against the file's folder.
        overrides: ``"dotted.key=yaml_value"`` items applied after the files are merged, in order.

    Raises:
        FileNotFoundError: the file or its base does not exist.
        ConfigError: invalid YAML, a second-level base, an unknown key, a wrong type or value, or a bad override;
            the message names the dotted key and the file or ``--set`` item it came from.
    """
    path = Path(os.path.normpath(Path(path).expanduser().absolute()))
    data = _read_yaml(path)
    prov: _Prov = {}
    what = str(path)
    base_name = data.pop(BASE_KEY, None)
    if base_name is not None:
        if not isinstance(base_name, str) or not base_name.strip():
            raise ConfigError(f"{path}: '{BASE_KEY}' must be a file name, got {base_name!r}")
        base_path = Path(os.path.normpath(path.parent / Path(base_name).expanduser()))
        if not base_path.is_file():
            raise FileNotFoundError(f"{path}: base config not found: {base_path}")
        base = _read_yaml(base_path)
        if BASE_KEY in base:
            raise ConfigError(
                f"{path}: its base {base_path} has a base of its own ({base[BASE_KEY]!r}); "
                "at most one level of base is allowed: copy what you need into one file"
            )
        _record(base, str(base_path), prov)
        _record(data, str(path), prov)
        data = _merge(map_path_values(ExperimentConfig, base, _absolute(base_path.parent)), data)
        what = f"{path} (base {base_path})"
    else:
        _record(data, str(path), prov)
    data = _apply_overrides(copy.deepcopy(data), overrides, prov)  # copy: YAML aliases share objects
    return _validate(data, path.parent, prov, what)


def config_to_dict(
    cfg: ExperimentConfig, relative_to: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """Plain dict (str/int/float/bool/list/None/dict) of ``cfg``, e.g. to store inside a checkpoint.

    Args:
        relative_to: if given, path fields are written relative to this folder (unless they share nothing but
            the filesystem root with it); otherwise absolute.
    """
    data = cfg.model_dump(mode="json")
    if relative_to is not None:
        start = os.path.abspath(relative_to)

        def rel(p: str) -> str:  # paths sharing only the filesystem root with ``start`` stay absolute
            return p if os.path.commonpath([p, start]) == Path(p).anchor else os.path.relpath(p, start)

        map_path_values(ExperimentConfig, data, rel)
    return data


def config_from_dict(
    data: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None, source: str = "<dict>"
) -> ExperimentConfig:
    """Validate a dict (e.g. from :func:`config_to_dict` or a checkpoint) into an :class:`ExperimentConfig`.

    Args:
        base_dir: folder that relative paths resolve against; without it relative paths are an error.
        source: how error messages name where the dict came from.
    """
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a mapping, got {type(data).__name__}")
    return _validate(data, Path(base_dir).absolute() if base_dir is not None else None, {}, source)


def save_config(cfg: ExperimentConfig, path: str | os.PathLike[str], *, relative_paths: bool = True) -> Path:
    """Write the resolved ``cfg`` to ``path`` as YAML (creating parent folders); ``load_config`` reads it back equal.

    Args:
        relative_paths: write path fields relative to ``path``'s folder (portable when moved together with the
            data; paths sharing only the filesystem root with it stay absolute); ``False`` writes absolute paths.

    Returns:
        the absolute path written.
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config_to_dict(cfg, relative_to=path.parent if relative_paths else None)
    header = "# Resolved experiment config (perception.config.save_config)"
    header += "; relative paths are relative to this file's folder.\n" if relative_paths else ".\n"
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=110)
    path.write_text(header + text, encoding="utf-8")
    return path


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, one-line lists (``voxel_size: [0.1, 0.1, 0.2]``)."""


_Dumper.add_representer(
    list, lambda dumper, value: dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=True)
)


def _override_arg(text: str) -> str:
    try:
        parse_overrides([text])
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_config_args(parser: argparse.ArgumentParser, *, config_positional: bool = True) -> None:
    """Add ``CONFIG`` (positional, if ``config_positional``) and ``--set KEY=VALUE [KEY=VALUE ...]`` (repeatable).

    Parsed as ``args.config`` and ``args.set`` (a list of strings); see :func:`config_from_args`.
    """
    if config_positional:
        parser.add_argument(
            "config", type=Path, help="experiment YAML file, e.g. configs/demo_nuscenes_mini.yaml"
        )
    parser.add_argument(
        "--set",
        dest="set",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        type=_override_arg,
        help="override config keys, values parsed as YAML, e.g. --set data.max_sweeps=5 data.use_cameras=true",
    )


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """``load_config(args.config, args.set)`` for a parser set up by :func:`add_config_args`."""
    return load_config(args.config, args.set)
