"""Command-line parsing shared by the tools: OpenPCDet's spellings of our flags.

:class:`ToolParser` is an ``argparse.ArgumentParser`` that every tool builds its parser with. It adds two things:

- **Underscore aliases.** Every long option ``--a-b`` also answers to ``--a_b`` (``--batch_size``,
  ``--extra_tag``, ``--ckpt_dir``, ``--eval_all``, ``--max_waiting_mins``, ...), also as ``--a_b=VALUE`` and in
  sub-commands. The aliases are not registered as option strings: before parsing, a token ``--a_b[=VALUE]`` that
  is not itself an option of the parser is rewritten to ``--a-b[=VALUE]`` when that is one (or, with
  ``allow_abbrev``, a prefix of one, which argparse then resolves as usual). So ``--help`` lists each flag once,
  messages name the hyphen spelling, and mutually exclusive groups and required options see the alias as the flag
  itself. Tokens after ``--`` are left alone.
- **``--cfg-file CONFIG``** (OpenPCDet's ``--cfg_file``) in place of a required positional ``config`` (the one
  :func:`perception.config.add_config_args` adds): the positional becomes optional in the grammar and exactly one
  of the two must be given, else the usual ``error:`` line and exit status 2.

Python API users never need this module; it sits above the engine (``app`` layer).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["CFG_FILE_FLAG", "ToolParser", "underscore_to_hyphen"]

CFG_FILE_FLAG = "--cfg-file"
_CFG_FILE_DEST = "_cfg_file_option"
_EPILOG = "Every --a-b flag also answers to OpenPCDet's spelling --a_b (e.g. --batch_size, --extra_tag)."


def underscore_to_hyphen(
    argv: Sequence[str], options: Sequence[str], *, allow_abbrev: bool = True
) -> list[str]:
    """``argv`` with each ``--a_b[=VALUE]`` token rewritten to ``--a-b[=VALUE]`` where that names an option.

    Args:
        argv: the command-line tokens (without the program name).
        options: the parser's option strings (``--batch-size``, ``-h``, ...).
        allow_abbrev: also rewrite when ``--a-b`` is a prefix of an option (argparse's abbreviations).

    A token is rewritten only when it is not an option as written and its hyphen spelling is (or starts one);
    everything after a bare ``--`` is left as it is.
    """
    known = set(options)
    out: list[str] = []
    tokens = list(argv)
    for i, token in enumerate(tokens):
        if token == "--":
            return out + tokens[i:]
        name, eq, value = token.partition("=")
        if name.startswith("--") and "_" in name and name not in known:
            hyphen = name.replace("_", "-")
            if hyphen in known or (allow_abbrev and any(o.startswith(hyphen) for o in known)):
                token = f"{hyphen}{eq}{value}"
        out.append(token)
    return out


class ToolParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that accepts OpenPCDet's spellings (see the module docstring).

    Sub-parsers made with ``add_subparsers().add_parser`` are ``ToolParser`` too (argparse makes them of the
    parent's class). Without an ``epilog`` the help ends with one line saying that underscore spellings work.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", _EPILOG)
        super().__init__(*args, **kwargs)
        self._cfg_file_action: argparse.Action | None = None

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        """``ArgumentParser.add_argument``; a required positional ``config`` also gets ``--cfg-file CONFIG``."""
        if names != ("config",) or "nargs" in kwargs or self._cfg_file_action is not None:
            return super().add_argument(*names, **kwargs)
        positional = super().add_argument("config", nargs="?", default=None, metavar="CONFIG", **kwargs)
        self._cfg_file_action = super().add_argument(
            CFG_FILE_FLAG,
            dest=_CFG_FILE_DEST,
            metavar="CONFIG",
            type=kwargs.get("type"),
            default=None,
            help="the config as an option, OpenPCDet's --cfg_file (instead of the positional CONFIG)",
        )
        return positional

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        argv = sys.argv[1:] if args is None else list(args)
        options = [s for action in self._actions for s in action.option_strings]
        argv = underscore_to_hyphen(argv, options, allow_abbrev=self.allow_abbrev)
        ns, rest = super().parse_known_args(argv, namespace)
        if self._cfg_file_action is not None:
            from_option = getattr(ns, _CFG_FILE_DEST, None)
            if hasattr(ns, _CFG_FILE_DEST):
                delattr(ns, _CFG_FILE_DEST)
            positional = getattr(ns, "config", None)
            if from_option is not None and positional is not None:
                self.error(
                    f"the config was given twice: {positional} (positional) and {CFG_FILE_FLAG} {from_option}; "
                    "give one"
                )
            if from_option is None and positional is None:
                self.error(f"the following arguments are required: CONFIG (or {CFG_FILE_FLAG} CONFIG)")
            ns.config = positional if positional is not None else from_option
        return ns, rest
