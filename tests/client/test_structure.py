"""The sender's shape: every module imports alone, no import cycles, no private reaches.

Issue 8: the sender is made of parts with one job each; a reader can follow the
dependencies one way. These tests read the source with :mod:`ast` (so a lazy import
inside a function counts too) and import every module in a fresh interpreter.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import chttp_client
from tests.server.live import REPO_ROOT

PACKAGE_DIR = Path(chttp_client.__file__).parent
MODULES = sorted(f"chttp_client.{info.name}" for info in pkgutil.iter_modules([str(PACKAGE_DIR)]))
#: "~400 lines" (DESIGN.md: 100–400, never over ~450).
MAX_LINES = 420


def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE_DIR / (module.rsplit(".", 1)[1] + ".py")).read_text())


def _imported_modules(module: str) -> set[str]:
    """chttp_client modules ``module`` imports, anywhere in its source."""
    found: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("chttp_client.")}
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "chttp_client":  # from chttp_client import codec
                found |= {f"chttp_client.{a.name}" for a in node.names} & set(MODULES)
            elif node.module.startswith("chttp_client."):
                found.add(node.module)
    return found - {module}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle in ``graph`` as a path, or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_the_parts_of_issue_8():
    for part in ("oplog_store", "acknowledger", "context", "journal", "observers", "records"):
        assert f"chttp_client.{part}" in MODULES


def test_no_import_cycle_between_the_senders_modules():
    # The package's __init__ re-exports everything; modules import submodules, not it.
    graph = {module: _imported_modules(module) for module in MODULES if module != "chttp_client.__init__"}
    assert _cycle(graph) is None


def test_every_module_imports_in_a_fresh_interpreter():
    code = "import importlib\n" + "".join(f"importlib.import_module({m!r})\n" for m in MODULES)
    result = subprocess.run([sys.executable, "-c", code + "print('ok')"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout.strip()) == (0, "ok"), result.stderr


def _private_reaches(module: str) -> list[str]:
    """``from x import _name`` from our packages, and ``obj._name`` on anything but self/cls."""
    reaches = []
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chttp"):
            reaches += [f"from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                reaches.append(f"{ast.unparse(node)} (line {node.lineno})")
    return reaches


@pytest.mark.parametrize("module", MODULES)
def test_no_module_uses_another_modules_private_names(module):
    assert _private_reaches(module) == []


@pytest.mark.parametrize("module", MODULES)
def test_no_module_is_over_about_400_lines(module):
    lines = (PACKAGE_DIR / (module.rsplit(".", 1)[1] + ".py")).read_text().count("\n")
    assert lines <= MAX_LINES


def test_production_classes_carry_no_test_seams(sqlite_url):
    from chttp_client import Journal, ResumableContext

    journal = Journal(sqlite_url)
    try:
        assert not hasattr(journal, "fault_hook")
    finally:
        journal.close()
    for seam in ("check_script", "fault_hook", "_script"):
        assert not hasattr(ResumableContext, seam)
    assert "script" not in ResumableContext.__init__.__code__.co_varnames
