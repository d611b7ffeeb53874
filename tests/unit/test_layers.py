"""The house rules of the code base, checked on its source: imports run one way, and no
module grows past ~400 lines without saying why at its top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "protocol", "store", "jobs")
SOURCES = sorted(
    p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if "migrations" not in p.parts
)

# For each area, the areas it may not import (directly, at any depth of the module).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "protocol": ("server", "store", "jobs"),
    "store": ("server", "jobs"),
    "server.auth": ("server.api", "server.ws", "server.turns", "server.app"),
    "server.llm": ("server.api", "server.ws", "server.turns", "server.app"),
    "server.turns": ("server.api", "server.ws", "server.app", "server.drain"),
    "server.api": ("server.ws", "server.turns", "server.app", "server.drain"),
    "server.ws": ("server.api", "server.app", "server.drain"),
    "server.services": ("server.api", "server.ws", "server.turns", "server.auth.identity"),
}
REASON = "Over 400 lines:"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def within(name: str, area: str) -> bool:
    return name == area or name.startswith(area + ".")


def test_sources_found() -> None:
    names = {module_name(p) for p in SOURCES}
    assert {"server.turns.manager", "server.ws.dispatch", "server.auth.identity"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=module_name)
def test_imports_run_one_way(path: Path) -> None:
    mod = module_name(path)
    bad = sorted(
        f"{mod} imports {imp}"
        for area, banned in FORBIDDEN.items()
        if within(mod, area)
        for imp in imports(path)
        if any(within(imp, b) for b in banned)
    )
    assert bad == []


def test_the_rules_catch_an_upward_import(tmp_path: Path) -> None:
    fake = tmp_path / "x.py"
    fake.write_text("from server.ws.hub import Hub\n")
    assert any(within(i, "server.ws") for i in imports(fake))


def test_no_import_cycles_between_modules() -> None:
    graph = {module_name(p): {i for i in imports(p)} for p in SOURCES}
    known = set(graph)
    edges = {m: {i for i in deps if i in known and i != m} for m, deps in graph.items()}
    seen: dict[str, int] = {}  # 1: on the path, 2: done
    cycles: list[str] = []

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for n in sorted(edges[m]):
            if seen.get(n) == 1:
                cycles.append(" -> ".join([*path[path.index(n) :], n]))
            elif n not in seen:
                visit(n, [*path, n])
        seen[m] = 2

    for m in sorted(edges):
        if m not in seen:
            visit(m, [m])
    assert cycles == []


@pytest.mark.parametrize("path", SOURCES, ids=module_name)
def test_long_modules_say_why(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if text.count("\n") > 410:
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert REASON in doc, f"{module_name(path)}: over 400 lines, no reason at its top"
