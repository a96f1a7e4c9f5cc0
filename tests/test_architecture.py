"""The package's shape: only ``botyard.cli`` imports click, no botyard modules import
each other in a cycle, and the packages ARCHITECTURE.md restricts import only what it allows.

Read from the source with :mod:`ast`, without importing anything. Only imports
that run when a module is imported count: module-level ones, including those
under ``if``/``try``, but not those in functions (imported when called) nor under
``if TYPE_CHECKING:`` (never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "platform" / "botyard"


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root`` by dotted name (``pkg.sub``: ``sub/__init__.py``)."""
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _runtime_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements run at import: into ``if``/``try``/``with``, not into functions,
    classes, nor ``if TYPE_CHECKING:``."""
    for statement in body:
        yield statement
        if isinstance(statement, ast.If):
            test = statement.test
            name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", "")
            if name != "TYPE_CHECKING":
                yield from _runtime_statements(statement.body)
            yield from _runtime_statements(statement.orelse)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, statement.orelse, statement.finalbody):
                yield from _runtime_statements(block)
            for handler in statement.handlers:
                yield from _runtime_statements(handler.body)
        elif isinstance(statement, ast.With):
            yield from _runtime_statements(statement.body)


def imported_names(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """What ``module`` imports when it is imported: ``a.b`` for ``import a.b``; for
    ``from a import b``, ``a.b`` if that is a module of the package, else ``a``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for statement in _runtime_statements(tree.body):
        if isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            base = statement.module or ""
            if statement.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - statement.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in statement.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module of the package with the modules of the package it imports."""
    modules = module_names(root)
    return {
        name: {target for target in imported_names(name, path, modules) if target in modules}
        for name, path in modules.items()
    }


def click_importers(root: Path) -> list[str]:
    """Modules outside ``<package>.cli`` that import click."""
    modules = module_names(root)
    cli = f"{root.name}.cli"
    offenders = []
    for name, path in modules.items():
        if name == cli or name.startswith(cli + "."):
            continue
        imports = imported_names(name, path, modules)
        tree = ast.parse(path.read_text())
        imports |= {  # imports inside functions count too: click is the CLI's alone
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        imports |= {
            node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
        }
        if any(target == "click" or target.startswith("click.") for target in imports):
            offenders.append(name)
    return offenders


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each sorted."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                lowlink[node] = min(lowlink[node], lowlink[target])
            elif target in on_stack:
                lowlink[node] = min(lowlink[node], index[target])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_only_the_cli_imports_click() -> None:
    assert click_importers(PACKAGE) == []


def test_no_import_cycles() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 50  # the walk found the package
    assert "botyard.runtime.runner" in graph["botyard.runtime.supervisor"]
    assert import_cycles(graph) == []


#: Packages whose imports ARCHITECTURE.md restricts: what they may import of botyard
#: besides themselves.
ALLOWED_IMPORTS = {
    "botyard.errors": set(),
    "botyard.emulator": {"botyard.errors"},
    "botyard.database": {"botyard.errors", "botyard.registry"},
    "botyard.storage": {"botyard.database", "botyard.errors"},
}
#: Only these may import the supervisor; everything else reads the PlatformView.
SUPERVISOR_USERS = ("botyard.runtime", "botyard.cli", "botyard.sandbox")


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` for each import ARCHITECTURE.md does not allow."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            for package, allowed in ALLOWED_IMPORTS.items():
                if (
                    _within(module, package)
                    and not _within(target, package)
                    and not any(_within(target, other) for other in allowed)
                ):
                    found.append(f"{module} -> {target}")
            if target == "botyard.runtime.supervisor" and not any(
                _within(module, user) for user in SUPERVISOR_USERS
            ):
                found.append(f"{module} -> {target}")
    return found


def test_packages_import_what_the_architecture_allows() -> None:
    assert layering_violations(import_graph(PACKAGE)) == []


def test_the_layering_check_finds_an_upward_import() -> None:
    graph = {
        "botyard.storage.records": {"botyard.runtime.runner", "botyard.database.client"},
        "botyard.ops.health": {"botyard.runtime.supervisor", "botyard.runtime.view"},
        "botyard.sandbox.service": {"botyard.runtime.supervisor"},
    }
    assert layering_violations(graph) == [
        "botyard.ops.health -> botyard.runtime.supervisor",
        "botyard.storage.records -> botyard.runtime.runner",
    ]


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def bad_package(tmp_path: Path) -> Path:
    """A package with both faults, and the import forms that must not count as edges."""
    return _write(
        tmp_path / "pkg",
        {
            "__init__.py": "",
            "cli/__init__.py": "import click\n",
            "ops/__init__.py": "",
            "ops/server.py": "from click import ClickException\n",
            "ops/lazy.py": "def f():\n    import click.testing\n",
            "a.py": "from pkg import b\n",
            "b.py": "from pkg.c import thing\n",
            "c.py": "try:\n    from . import a\nexcept ImportError:\n    pass\nthing = 1\n",
            "typed.py": "import typing\nif typing.TYPE_CHECKING:\n    from pkg import d\n",
            "d.py": "import pkg.typed\n\ndef later():\n    from pkg import e\n",
            "e.py": "from pkg.d import later\n",
        },
    )


def test_the_checker_finds_click_outside_the_cli(bad_package: Path) -> None:
    assert sorted(click_importers(bad_package)) == ["pkg.ops.lazy", "pkg.ops.server"]


def test_the_checker_finds_a_cycle_and_ignores_deferred_imports(bad_package: Path) -> None:
    graph = import_graph(bad_package)
    assert graph["pkg.c"] == {"pkg.a"}  # relative, inside try
    assert graph["pkg.typed"] == set()  # TYPE_CHECKING only
    assert graph["pkg.d"] == {"pkg.typed"}  # the function's import is not run at import
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_the_checker_finds_a_module_importing_itself(tmp_path: Path) -> None:
    package = _write(tmp_path / "pkg", {"__init__.py": "", "a.py": "import pkg.a\n"})
    assert import_cycles(import_graph(package)) == [["pkg.a"]]
