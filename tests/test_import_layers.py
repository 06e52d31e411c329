"""The import graph of ``perception.*``: no circles, and arrows only downward through the layers.

Every ``import`` / ``from ... import`` in the package's source is read with :mod:`ast`, function-level imports
included (a function-level import that hides a circle is a circle); only imports under ``if TYPE_CHECKING:`` are
left out (they never run). An import of a package's own parent (``from . import x``) counts as an import of ``x``.

Layers, lowest first (a module may import its own layer's modules and the layers listed as allowed):

======================  ====================================================================================
layer                   modules
======================  ====================================================================================
base                    structures, grid, shapes, config_types, _validate, _lazy, io_atomic, formats.*
ops                     ops.*
datasets                datasets.* (may use base and ops; never models or evaluation)
models                  models.* (base and ops; never datasets)
config                  config, config_schema, train_config (the schema: base and the models' config modules)
evaluation              evaluation.* (base, ops; never datasets)
engine                  engine.* (everything below)
app                     viz.*, demo_scene and the rest: the top
======================  ====================================================================================
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = {
    "perception": REPO / "perception",
    "perception.ops": REPO / "ops",
    "perception.datasets": REPO / "datasets",
}

BASE = {
    "perception.structures",
    "perception.grid",
    "perception.shapes",
    "perception.config_types",
    "perception._validate",
    "perception._lazy",
    "perception.io_atomic",
}
ALLOWED: dict[str, set[str]] = {
    "base": {"base"},
    "ops": {"base", "ops"},
    "datasets": {"base", "ops", "datasets"},
    "models": {"base", "ops", "models"},
    "config": {"base", "models", "config"},
    "evaluation": {"base", "ops", "evaluation"},
    "engine": {"base", "ops", "datasets", "models", "config", "evaluation", "engine"},
    "app": {"base", "ops", "datasets", "models", "config", "evaluation", "engine", "app"},
}


def layer(module: str) -> str:
    """The layer of a ``perception.*`` module name."""
    if module in BASE or module.startswith("perception.formats"):
        return "base"
    for prefix in ("ops", "datasets", "models", "evaluation", "engine"):
        if module == f"perception.{prefix}" or module.startswith(f"perception.{prefix}."):
            return prefix
    if module in ("perception.config", "perception.config_schema", "perception.train_config"):
        return "config"
    return "app"


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            if package == "perception" and parts and parts[0] in ("ops", "datasets"):
                continue
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(module: str, node: ast.Import | ast.ImportFrom, is_package: bool) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            root = ".".join(base + ([node.module] if node.module else []))
        else:
            root = node.module or ""
        # "from pkg import sub" imports pkg.sub when sub is a module; otherwise it reads a name of pkg
        names = [f"{root}.{a.name}" if f"{root}.{a.name}" in MODULES else root for a in node.names]
    found = {_resolve(n) for n in names if n.startswith("perception")}
    return {t for t in found if t is not None and t != module and not module.startswith(t + ".")}


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                ids.update(id(n) for n in ast.walk(sub))
    return ids


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``perception.*`` modules it imports at run time (any depth in the file)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_nodes(tree)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in skip:
                edges |= _targets(module, node, path.name == "__init__.py")
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


GRAPH = import_graph()


def test_the_graph_is_read() -> None:
    assert len(MODULES) > 100
    assert "perception.grid" in GRAPH["perception.ops.voxelize"]
    assert "perception.models.model_config" in GRAPH["perception.config_schema"]


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    found = cycles(GRAPH)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    own = layer(module)
    wrong = sorted(t for t in GRAPH[module] if layer(t) not in ALLOWED[own])
    assert not wrong, f"{module} ({own}) imports {[(t, layer(t)) for t in wrong]}"


def test_datasets_never_import_evaluation() -> None:
    bad = [
        (m, t) for m, ts in GRAPH.items() if layer(m) == "datasets" for t in ts if layer(t) == "evaluation"
    ]
    assert not bad
