"""Which code runs (and replays) the oplogs of each function name and version.

Functions are registered *globally* by ``(name, version)``, not per journal object:
``chttp-client resume --db URL --import app`` opens its own journal and still finds the
functions that ``app`` decorated (:func:`chttp_client.resumable`). An open oplog is
replayed by exactly the version that wrote it, because only that code is guaranteed to
take the same steps.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

__all__ = ["register", "unregister", "registered_versions", "registered_functions"]

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
