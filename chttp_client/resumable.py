"""``@resumable(journal)``: make a function's steps recorded, replayable and resumable.

::

    @resumable(journal)                 # version 1
    def transfer(url, amount, *, chttp_context): ...

    @resumable(journal, version=2)      # new code; version-1 oplogs still replay with v1
    def transfer(url, amount, *, chttp_context): ...

Calling the decorated function starts a new oplog and runs it to completion (or raises
what it raised). An ``async def`` function is decorated the same way: calling it then
returns a coroutine that runs the oplog (``await transfer(…)``, ``asyncio.run(transfer(…))``),
and its ``chttp_context`` is awaited
(:class:`~chttp_client.async_context.AsyncResumableContext`); its oplogs are resumed by
``journal.resume_all()``, ``await journal.resume_all_async()`` and ``chttp-client resume``
like any other. Oplogs are keyed by the function's *name* (``module.qualname`` unless
``name=`` is given) and *version*: an open oplog is replayed by exactly the version that
wrote it, because only that code is guaranteed to take the same steps. Keep an old
version decorated until ``chttp-client list`` shows none of its oplogs open; an oplog
whose version is gone is refused with
:class:`~chttp_client.errors.UnknownFunctionError` and left intact.

A function defined in a script run as ``__main__`` is journaled under the name it has
when imported — the script's file name (``python sender.py`` → ``sender.transfer``) or
the module ``python -m`` ran — so ``chttp-client resume --import sender`` finds it;
``__main__`` itself is a name no import can give. Where no such name exists (``python
-c``, a file name that is not an identifier) the decorator refuses up front and names
the fix: ``name=``.

Arguments must be recordable by :mod:`chttp_client.codec` (they are stored so that a
resume can call the function again); the result is returned as the codec decodes it.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, TypeVar, cast

from chttp_client.journal import Journal
from chttp_client.registry import importable_module, register

__all__ = ["resumable"]

F = TypeVar("F", bound=Callable[..., Any])


def resumable(journal: Journal, *, version: int = 1, name: str | None = None) -> Callable[[F], F]:
    """Decorate a function taking keyword ``chttp_context`` (see the module docstring)."""
    if not isinstance(journal, Journal):
        raise TypeError("@resumable needs a Journal: @resumable(journal)")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError("version must be a positive int")

    def decorate(function: F) -> F:
        key = name or _importable_name(function)
        register(key, version, function)

        if inspect.iscoroutinefunction(function):
            @functools.wraps(function)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                _refuse_context(kwargs)
                return await journal.run_async(key, version, function, args, kwargs)
        else:
            @functools.wraps(function)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                _refuse_context(kwargs)
                return journal.run(key, version, function, args, kwargs)

        # What the testing helper and the CLI read back off a decorated function.
        vars(wrapper).update(journal=journal, chttp_name=key, chttp_version=version,
                             chttp_function=function)
        return cast(F, wrapper)  # the same call signature as ``function``

    return decorate


def _refuse_context(kwargs: dict[str, Any]) -> None:
    if "chttp_context" in kwargs:
        raise TypeError("chttp_context is supplied by @resumable; do not pass it")


def _importable_name(function: Callable[..., Any]) -> str:
    """``module.qualname`` as an import would spell it, also for a script run as ``__main__``."""
    module = importable_module(function.__module__)
    if module is None:
        raise ValueError(
            f"@resumable: {function.__qualname__} is defined in __main__ with no module "
            "name an import could give it, so its oplogs could never be resumed; pass "
            f"@resumable(journal, name='yourmodule.{function.__qualname__}')")
    return f"{module}.{function.__qualname__}"
