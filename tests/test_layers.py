"""The package's layering (issue 27): subpackages import only downwards, no module imports
itself back through another, and no facecheck import hides inside a function (the way
cycles were once dodged), except the CLI's, which are lazy on purpose (start-up time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import facecheck

ROOT = Path(facecheck.__file__).parent
# Lowest first: a package may import its own modules and those of packages before it.
LAYERS = (
    "image",
    "backbones",
    "features",
    "heads",
    "decision",
    "detector",
    "training",
    "evaluation",
    "service",
    "cli",
)
LAZY_ALLOWED = {"cli"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if "versions" in parts:  # Alembic revision scripts are loaded by Alembic
            continue
        out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str) -> list[tuple[str, bool]]:
    """(imported facecheck module, at module level?) for every import in the file; names
    imported from a package that are its modules count as those modules."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    typing_only = set()
    for n in tree.body:
        if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
            typing_only |= {id(x) for x in ast.walk(n)}
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for n in ast.walk(tree):
        if id(n) in typing_only:
            continue
        if isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - n.level + 1])
                base = f"{base}.{n.module}" if n.module else base
            if base.split(".")[0] != "facecheck":
                continue
            for a in n.names:
                out.append((f"{base}.{a.name}", id(n) in top))
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] == "facecheck":
                    out.append((a.name, id(n) in top))
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for target, _ in _imports(path, m):
            while target not in mods:  # "facecheck.x.y.Name" -> "facecheck.x.y"
                target = target.rsplit(".", 1)[0]
            if target != m:
                graph[m].add(target)
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return -1  # the package root (its version) sits below everything
    return LAYERS.index(parts[1])


def test_every_module_sits_in_a_layer():
    loose = [m for m in _modules() if m.count(".") == 1 and m.split(".")[1] not in LAYERS]
    assert loose == []


def test_imports_only_point_down():
    wrong = [
        f"{m} -> {t}" for m, targets in _graph().items() for t in targets if _layer(t) > _layer(m)
    ]
    assert wrong == []


def test_no_import_cycles():
    graph, state, cycles = _graph(), {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(graph[m]):
            if t == "facecheck" or t not in graph:
                continue
            if state.get(t) == "open":
                cycles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_no_facecheck_import_inside_a_function_outside_the_cli():
    hidden = [
        f"{m} imports {t} inside a function"
        for m, path in _modules().items()
        for t, at_top in _imports(path, m)
        if not at_top and m.split(".")[1] not in LAZY_ALLOWED
    ]
    assert hidden == []


@pytest.mark.parametrize("bad", ["facecheck.cli.main", "facecheck.service.app"])
def test_the_check_sees_an_upward_import(tmp_path, bad):
    """The test above can fail: an image module importing a higher layer is caught."""
    path = tmp_path / "x.py"
    path.write_text(f"from {bad} import something\n")
    (target,) = _imports(path, "facecheck.image.x")
    assert _layer(target[0]) > _layer("facecheck.image.x")
