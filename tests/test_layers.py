"""Every import points down (issue 11 item 2): checked by parsing each module's imports.

The layers, bottom up: core (imports no project package), locales (a leaf: it
imports nothing above core, so any layer may use it), db, services,
processing, then bot and handlers; run.py is the composition root and may import
anything. Local (function-level) imports count too: they are still dependencies.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = {
    "core",
    "locales",
    "db",
    "services",
    "processing",
    "bot",
    "handlers",
    "sandbox",
    "bench",
    "tests",
    "run",
}
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "locales": {"core", "locales"},
    "db": {"core", "db"},
    "services": {"core", "locales", "db", "services"},
    "processing": {"core", "db", "services", "processing", "locales"},
    "bot": PROJECT - {"sandbox", "bench", "tests", "run"},
    "handlers": PROJECT - {"sandbox", "bench", "tests", "run"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


def _modules(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_down(layer: str) -> None:
    modules = _modules(layer)
    assert modules, f"no modules found in {layer}/"
    wrong = {
        str(path.relative_to(ROOT)): sorted(bad)
        for path in modules
        if (bad := _imported_packages(path) - ALLOWED[layer])
    }
    assert not wrong, f"{layer}/ imports above its layer: {wrong}"


def test_core_has_no_project_dependency_beyond_itself() -> None:
    # Spelled out separately: core is what every branch builds on.
    for path in _modules("core"):
        assert _imported_packages(path) <= {"core"}, path
