"""The README's commands and statements agree with the configs they go with: the data-preparation commands of
``## Using it`` write the data set the following config's ``synthetic:`` section describes and build the info
files of its ``data.max_sweeps`` (so ``tools/train.py`` does not build a second set), and the ``make demo`` list
states the demo config's sweep count."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from perception.config import load_config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else len(README)]


def _flags(line: str) -> dict[str, str]:
    """``--flag value`` pairs of one command line."""
    words = shlex.split(line.split("#")[0])
    return {w[2:]: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def test_using_it_data_commands_match_the_config_they_are_followed_by() -> None:
    lines = [ln.strip() for ln in _section("Using it").splitlines()]
    synthetic = next(ln for ln in lines if ln.startswith("python tools/create_data.py synthetic"))
    infos = next(ln for ln in lines if ln.startswith("python tools/create_data.py nuscenes"))
    train = next(ln for ln in lines if ln.startswith("python tools/train.py"))
    cfg = load_config(REPO / shlex.split(train)[2])
    assert cfg.synthetic is not None
    syn, inf = _flags(synthetic), _flags(infos)
    assert int(inf["max-sweeps"]) == cfg.data.max_sweeps
    assert (REPO / inf["root"]).resolve() == Path(cfg.data.root).resolve() == (REPO / syn["out"]).resolve()
    assert syn["version"] == inf["version"] == cfg.synthetic.version == cfg.data.version
    s = cfg.synthetic
    wanted = {
        "scenes": s.scenes,
        "samples": s.samples,
        "sweeps": s.sweeps,
        "cameras": s.cameras,
        "seed": s.seed,
    }
    assert {k: syn.get(k) for k in wanted} == {k: str(v) for k, v in wanted.items()}
    assert s.sweeps is not None and s.sweeps + 1 >= cfg.data.max_sweeps  # the data holds the sweeps it uses


def test_make_demo_list_states_the_demo_configs_sweeps() -> None:
    cfg = load_config(REPO / "configs" / "demo_nuscenes_mini.yaml")
    assert cfg.synthetic is not None and cfg.synthetic.sweeps == cfg.data.max_sweeps - 1
    said = re.findall(r"(\d+)-sweep", _section("Two commands").split("**Learning, measured**")[0])
    assert said and {int(n) for n in said} == {cfg.data.max_sweeps}
    scenes = re.search(r"\((\d+) scenes, (\d+) keyframes", _section("Two commands"))
    assert scenes is not None
    assert (int(scenes[1]), int(scenes[2])) == (
        cfg.synthetic.scenes,
        cfg.synthetic.scenes * cfg.synthetic.samples,
    )
