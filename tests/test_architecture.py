"""The shape of the code, read from its source with `ast` (nothing is imported): no import
cycle among transferlab's modules, counting imports inside functions too; no private name
(`_x`) taken from another of its modules; Lightning's and Hydra's internals reached only
through transferlab.compat."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ("transferlab", "hydra_plugins")
COMPAT = "transferlab.compat"
# What is not Lightning's or Hydra's documented API (compat.py says why each is needed).
INTERNALS = (
    "hydra._internal",
    "hydra.core.override_parser",
    "hydra.core.plugins",
    "hydra.core.utils",
    "lightning_fabric.utilities",
    "pytorch_lightning.accelerators",
    "pytorch_lightning.strategies.StrategyRegistry",
    "pytorch_lightning.loops",
    "pytorch_lightning.trainer.connectors",
)


def module_files() -> dict[str, Path]:
    """Every module of our packages by dotted name (a package by its own name)."""
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[0] not in PACKAGES:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = module_files()


def imports(name: str) -> Iterator[tuple[str, str, int]]:
    """(imported module, imported name or '', line) of every import in module `name`,
    relative imports resolved; at any depth, function bodies included."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:
                yield base, alias.name, node.lineno


def ours(module: str) -> str | None:
    """The module of ours that `module` names (or lies in), else None."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def dependencies() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for module, imported, _ in imports(name):
            target = ours(f"{module}.{imported}" if imported else module)
            if target is not None and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checks_see_real_imports():
    """Guards the checks below against reading nothing: known edges are found."""
    graph = dependencies()
    assert "transferlab.errors" in graph["transferlab.report"]
    assert "transferlab.tracking.store" in graph["transferlab.tracking.mlflow_run"]
    assert "transferlab.compat" in graph["hydra_plugins.transferlab_optuna._sweeper"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert cycles(dependencies()) == []


def test_no_private_names_across_modules():
    crossing = [
        f"{name}:{line} imports {imported} from {module}"
        for name in MODULES
        for module, imported, line in imports(name)
        if ours(module) not in (None, name)
        and imported.startswith("_")
        and not imported.startswith("__")
    ]
    assert crossing == []


def test_library_internals_only_in_compat():
    reached = [
        f"{name}:{line} imports {module}{'.' + imported if imported else ''}"
        for name in MODULES
        if name != COMPAT
        for module, imported, line in imports(name)
        if f"{module}.{imported}".startswith(INTERNALS) or module.startswith(INTERNALS)
    ]
    assert reached == []


def test_every_package_ships_in_the_wheel():
    """setuptools lists packages by hand (pyproject.toml): one left out imports in an
    editable install and is missing from the wheel."""
    import tomllib

    listed = set(
        tomllib.loads((SRC.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        ".".join(init.parent.relative_to(SRC).parts)
        for init in (SRC / "transferlab").rglob("__init__.py")
    }
    assert on_disk <= listed, sorted(on_disk - listed)
