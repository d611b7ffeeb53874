"""`protocol` stays sans-I/O: no trio, no sockets, no database, no server/store."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import protocol

ALLOWED_THIRD_PARTY = {"pydantic", "pydantic_core", "orjson"}
FORBIDDEN_STDLIB = {"socket", "ssl", "asyncio", "selectors", "sqlite3", "threading", "subprocess"}
SOURCES = sorted(Path(protocol.__file__).parent.glob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_sources_found() -> None:
    assert {p.name for p in SOURCES} >= {
        "errors.py",
        "close_codes.py",
        "frames.py",
        "codec.py",
        "turn.py",
        "coalesce.py",
        "resume.py",
    }


def test_protocol_imports_only_pure_modules() -> None:
    for path in SOURCES:
        for name in _imports(path):
            if name in {"protocol", "__future__"} or name in ALLOWED_THIRD_PARTY:
                continue
            assert name in sys.stdlib_module_names, f"{path.name} imports {name}"
            assert name not in FORBIDDEN_STDLIB, f"{path.name} imports {name}"


def test_every_module_declares_all() -> None:
    for path in SOURCES:
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        declared = [
            node
            for node in tree.body
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
        ]
        assert declared, f"{path.name} has no __all__"


def test_every_public_name_exists() -> None:
    import importlib

    for path in SOURCES:
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"protocol.{path.stem}")
        for name in module.__all__:
            assert hasattr(module, name), f"protocol.{path.stem}.{name}"
