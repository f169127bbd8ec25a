"""How the tests share code, checked by walking every test file rather than trusting review:
helpers come from ``tests/support.py`` or from a helper module of the test's own tier, never
from a conftest (pytest imports each conftest as a module of its own) nor from a test module."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO_ROOT

TESTS = REPO_ROOT / "tests"

#: Files allowed to break the rule for a while (none now: every tier's helpers are in a module).
PENDING: tuple[str, ...] = ()


def _imported_modules(path: Path) -> list[str]:
    modules: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
        elif isinstance(node, ast.ImportFrom):
            package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
            modules.append(f"{package}.{node.module}" if node.module else package)
        elif isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
    return modules


def _breaches(path: Path) -> list[str]:
    """The test-code imports of ``path`` that break the rule."""
    tier = path.relative_to(TESTS).parts[0] if path.parent != TESTS else None
    breaches = []
    for module in _imported_modules(path):
        parts = module.split(".")
        if parts[0] != "tests" or module == "tests.support":
            continue
        name = parts[-1]
        if name == "conftest" or name.startswith("test_"):
            breaches.append(module)
        elif len(parts) < 3 or parts[1] != tier:
            breaches.append(module)  # another tier's helpers: they belong in tests/support.py
    return breaches


def _test_code() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "node_modules" not in p.parts)


def test_no_test_file_imports_from_a_conftest_a_test_module_or_another_tiers_helpers() -> None:
    files = _test_code()
    breaches = {
        str(path.relative_to(REPO_ROOT)): found
        for path in files
        if not str(path.relative_to(REPO_ROOT)).startswith(PENDING) and (found := _breaches(path))
    }

    assert len(files) > 50, "the walk sees the whole suite"
    assert breaches == {}
