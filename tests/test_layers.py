"""The layers of docs/architecture.rst hold in the code, and its paths name real code.

Dependencies point one way: chttp_core <- chttp_client <- chttp_server <- front ends <-
examples. Read with ``ast`` over every file of each package (a lazy import inside a
function counts as much as one at the top), so a new module cannot slip an upward
import past the check by not being imported by the tests.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("chttp_core", "chttp_client", "chttp_server")

#: What each package may not import: (package, forbidden top-level names).
FORBIDDEN = {
    "chttp_core": {"chttp_client", "chttp_server", "webob", "chttp_examples"},
    "chttp_client": {"chttp_server", "webob", "chttp_examples"},
    "chttp_server": {"chttp_examples"},
}
#: The one sanctioned exception: ``chttp-server demo`` runs the escrow example, so its
#: handler imports it when (and only when) the command runs.
DEMO_COMMAND = ("chttp_server/cli.py", "_cmd_demo", "chttp_examples.escrow")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in the file, absolute or relative."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                package = path.relative_to(ROOT).parent.parts
                base = ".".join(package[: len(package) - node.level + 1])
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            else:
                found.append((node.lineno, node.module or ""))
    return found


def upward_imports(package: str) -> list[str]:
    forbidden = FORBIDDEN[package]
    demo_lines = _demo_command_lines()
    return [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in forbidden
        and not (path.relative_to(ROOT).as_posix() == DEMO_COMMAND[0] and line in demo_lines
                 and module == DEMO_COMMAND[2])
    ]


def _demo_command_lines() -> set[int]:
    """The lines of the demo command's handler (a function body: a lazy import)."""
    tree = ast.parse((ROOT / DEMO_COMMAND[0]).read_text(encoding="utf-8"))
    [handler] = [node for node in tree.body
                 if isinstance(node, ast.FunctionDef) and node.name == DEMO_COMMAND[1]]
    return set(range(handler.lineno, (handler.end_lineno or handler.lineno) + 1))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_a_layer_above_its_own(package):
    assert upward_imports(package) == []


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    import webob\n    from chttp_server import store\n")
    assert [name for _line, name in imported_modules(lazy)] == ["webob", "chttp_server"]


def test_the_receivers_core_does_not_import_its_front_ends():
    """The front ends (Flask, Django, the console) adapt the receiver; the receiver's
    own modules never need them. The ``chttp-server`` command is itself a front end."""
    front_ends = ("chttp_server.flask", "chttp_server.django", "chttp_server.console")
    core = [path for path in sorted((ROOT / "chttp_server").glob("*.py"))
            if path.stem not in ("flask", "cli")]
    reaches = [
        f"{path.name}:{line} imports {module}"
        for path in core
        for line, module in imported_modules(path)
        if module.startswith(front_ends)
    ]
    assert reaches == []


# -- the paths of docs/architecture.rst name code that exists --------------------------

_ARCHITECTURE = ROOT / "docs" / "architecture.rst"
#: A literal that is a dotted Python name: ``middleware.CertifiedMiddleware.__call__``.
_DOTTED = re.compile(r"``([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)``")
#: Literals that name a variable in an example, not code of the package.
_EXAMPLE_NAMES = {"app.wsgi_app", "req.chttp.post", "request.chttp"}


def _class_index() -> dict[str, list[object]]:
    index: dict[str, list[object]] = {}
    for package in LIBRARY:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "migrations" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            try:
                module = importlib.import_module(name)
            except Exception:  # noqa: BLE001 - e.g. a Django module that needs settings;
                continue       # a path naming it then fails to resolve below
            for attribute, value in vars(module).items():
                # type(), not isinstance(): a lazy object (Django's settings) would load
                if issubclass(type(value), type) and value.__module__ == name:
                    index.setdefault(attribute, []).append(value)
    return index


def _resolves(dotted: str, classes: dict[str, list[object]]) -> bool:
    head, *rest = dotted.split(".")
    roots: list[object] = list(classes.get(head, []))
    for prefix in ("", "chttp_server.", "chttp_client.", "chttp_core."):
        parts = (prefix + dotted).split(".")
        for cut in range(len(parts), 0, -1):
            try:
                module = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            roots.append((module, parts[cut:]))
            break
    for root in roots:
        target, path = root if isinstance(root, tuple) else (root, rest)
        try:
            for part in path:
                target = getattr(target, part)
        except AttributeError:
            continue
        return True
    return False


def test_the_architecture_paths_name_real_functions():
    text = _ARCHITECTURE.read_text(encoding="utf-8")
    paths = text[text.index("A certified request's path"):]
    named = sorted({m.group(1) for m in _DOTTED.finditer(paths)} - _EXAMPLE_NAMES)
    assert len(named) > 40
    classes = _class_index()
    assert [name for name in named if not _resolves(name, classes)] == []


def test_the_architecture_page_has_no_open_todo():
    assert "TODO" not in _ARCHITECTURE.read_text(encoding="utf-8")
