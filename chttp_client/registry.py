"""Which code runs (and replays) the oplogs of each function name and version.

Functions are registered *globally* by ``(name, version)``, not per journal object:
``chttp-client resume --db URL --import app`` opens its own journal and still finds the
functions that ``app`` decorated (:func:`chttp_client.resumable`). An open oplog is
replayed by exactly the version that wrote it, because only that code is guaranteed to
take the same steps.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable

__all__ = ["register", "unregister", "registered_versions", "registered_functions", "importable_module"]

_REGISTRY: dict[str, dict[int, Callable[..., Any]]] = {}
_REGISTRY_LOCK = threading.Lock()


def register(name: str, version: int, function: Callable[..., Any]) -> None:
    """Make ``function`` the code that runs (and replays) oplogs of ``name``/``version``."""
    with _REGISTRY_LOCK:
        _REGISTRY.setdefault(name, {})[version] = function


def unregister(name: str, version: int | None = None) -> None:
    """Forget ``name``/``version`` (every version if None): its open oplogs are then refused."""
    with _REGISTRY_LOCK:
        if version is None:
            _REGISTRY.pop(name, None)
        else:
            _REGISTRY.get(name, {}).pop(version, None)


def registered_versions(name: str) -> list[int]:
    return sorted(_REGISTRY.get(name, {}))


def registered_functions(name: str) -> dict[int, Callable[..., Any]]:
    """A copy of ``{version: function}`` registered for ``name``."""
    with _REGISTRY_LOCK:
        return dict(_REGISTRY.get(name, {}))


def importable_module(module: str) -> str | None:
    """``module`` as an import would spell it: ``__main__`` becomes the script's name.

    ``python sender.py`` runs ``sender`` as ``__main__``, and ``python -m pkg.mod`` runs
    ``pkg.mod`` so; a resume imports them under those names. Function names and the
    names of ``persist()`` callables are recorded this way, so that an oplog written by
    the script replays when another process imports it. None where no import could
    give the name (``python -c``, a file name that is not an identifier).
    """
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    if spec is not None and spec.name not in ("", "__main__"):
        return str(spec.name)                                    # python -m package.module
    stem = os.path.splitext(os.path.basename(path))[0] if path else ""
    return stem if stem.isidentifier() else None                 # python sender.py
