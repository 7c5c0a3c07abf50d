"""The rooms of the code: imports point down only, and no two modules import each other.

Layers, from the bottom: plumbing that knows nothing of the gallery's domain, the models,
the core modules that need no request (notebooks, previews, the repository, homes and the
Use backends, the hub's client, the cache), the service functions, and the entry points
(pages, the API, the admin, tasks, commands). Every import is counted, also one inside a
function: a lower module that needs something above takes a callback, or sends a Celery
task by name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gallery"

# The layer of each module; a package's modules take the package's layer unless named.
LAYERS: dict[str, int] = {
    **dict.fromkeys(["settings", "logs", "uploads", "redis_cache", "sessions", "errors", "schema"],
                    0),
    "models": 1,
    **dict.fromkeys(["notebooks", "previews", "repo", "homes", "hub", "caching", "diff",
                     "metrics", "environments", "specs", "runs", "kernels", "merge"], 2),
    "services": 3,
    **dict.fromkeys(["views", "api", "admin", "forms", "tasks", "urls", "wsgi", "celery", "apps",
                     "login", "inputs", "management", "__init__"], 4),
}
NAMES = {0: "plumbing", 1: "models", 2: "core", 3: "services", 4: "entry points"}


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        if rel.parts[0] == "migrations":
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
        yield ".".join(parts) or "__init__", path


def layer_of(module: str) -> int:
    head = module.split(".")[0]
    if head not in LAYERS:
        raise AssertionError(f"gallery/{module}: give it a layer in tests/test_layers.py")
    return LAYERS[head]


def imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """The gallery modules `module` imports, anywhere in its code, with the line."""
    is_package = path.name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    if module == "__init__":
        package = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("gallery."):
                    yield alias.name.removeprefix("gallery."), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
            elif node.module and node.module.split(".")[0] == "gallery":
                base, node.module = [], node.module.removeprefix("gallery").lstrip(".") or None
            else:
                continue
            target = [*base, *(node.module.split(".") if node.module else [])]
            if node.module:
                yield ".".join(target), node.lineno
            else:  # from . import a, b
                for alias in node.names:
                    yield ".".join([*target, alias.name]), node.lineno


def known(name: str, all_modules: set[str]) -> str | None:
    """The module an import names (`a.b.c` may be the attribute `c` of module `a.b`)."""
    while name:
        if name in all_modules:
            return name
        name = name.rpartition(".")[0]
    return None


def graph() -> dict[str, dict[str, int]]:
    found = dict(modules())
    edges: dict[str, dict[str, int]] = {}
    for module, path in found.items():
        for name, line in imported(module, path):
            target = known(name, set(found))
            if target and target != module:
                edges.setdefault(module, {}).setdefault(target, line)
    return edges


def test_it_knows_the_layer_of_every_module() -> None:
    for module, _ in modules():
        layer_of(module)


def test_it_imports_downwards_only() -> None:
    upward = [
        f"gallery/{module.replace('.', '/')}:{line} ({NAMES[layer_of(module)]}) imports "
        f"{target} ({NAMES[layer_of(target)]})"
        for module, targets in graph().items() for target, line in targets.items()
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_it_has_no_circular_imports() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in edges.get(module, {}):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target):], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles, "circular imports:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("source,expected", [
    ("from . import models", "models"),
    ("from .models import Example", "models"),
    ("from ..notebooks import NotebookError", "notebooks"),
    ("from gallery import services", "services"),
    ("import gallery.tasks", "tasks"),
])
def test_it_reads_every_form_of_import(tmp_path: Path, source: str, expected: str) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "mod.py"
    path.write_text(f"def f():\n    {source}\n")
    module = "previews.mod" if source.startswith("from ..") else "mod"
    names = {name for name, _ in imported(module, path)}
    assert any(name == expected or name.startswith(expected + ".") for name in names), names


def test_it_keeps_pages_apart_from_the_json_api() -> None:
    # What pages and the API share (the metadata schema, serialisers of a job or a preview's
    # address) lives below both.
    edges = graph()
    pages = ["views", "forms", "admin"]
    assert not [page for page in pages if "api" in edges.get(page, {})]
