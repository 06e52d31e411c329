"""Every name a package re-exports resolves, and loading a config stays free of torch-heavy imports."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ["perception.ops", "perception.models", "perception.models.backbones", "perception.models.heads"]


@pytest.mark.parametrize("package", PACKAGES)
def test_exports_resolve(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__all__, f"{package} exports nothing"
    for name in module.__all__:
        assert getattr(module, name) is not None, f"{package}.{name}"
    with pytest.raises(AttributeError, match="no attribute"):
        _ = module.definitely_not_exported


def test_config_loading_does_not_import_spconv() -> None:
    code = (
        "import sys; from pathlib import Path; from perception.config import load_config; "
        "load_config(Path('configs/tiny_dsvt_pillar_centerpoint.yaml')); "
        "print('spconv' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_repo()
    )
    assert out.stdout.strip() == "False"


def _repo() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1])
