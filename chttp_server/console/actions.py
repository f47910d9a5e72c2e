"""The console's only writes: acknowledge a message, resume an oplog — opt-in, with a token.

The console is read-only unless it was started with ``--allow-actions --token T``. Then
each action is a ``POST`` whose form carries the token, compared in constant time
(:func:`hmac.compare_digest`); anything else is refused with 403 by the caller. A token
is at least :data:`MIN_TOKEN_LENGTH` characters (a guessable one is refused at
start-up), and wrong guesses are limited: after :data:`MAX_FAILURES` wrong tokens within
:data:`FAILURE_WINDOW` seconds every action is refused (429, ``Retry-After``) until the
oldest of them leaves the window, the right token included — an attacker guessing at
700 a second gets 10 guesses a minute, the operator waits at most a minute. A token
in the form rather than in a cookie means a page of another site cannot make the
operator's browser act (no ambient credential, so no cross-site request forgery).

Each action goes through the public API of the half it belongs to, so it means exactly
what it means there:

* acknowledging a message is :meth:`chttp_server.MessageStore.acknowledge`, the same
  update as a sender's ``DELETE`` on its message URL (docs/protocol.rst §3): the stored
  response is dropped and a tombstone answers 410 until the expiry;
* resuming an oplog is :meth:`chttp_client.Journal.resume`, which replays the recorded
  steps and carries on (docs/protocol.rst §5). It needs the function's code: the modules
  named by ``--import`` are imported at start-up, as ``chttp-client resume`` does.

Abandoning an oplog is not offered: the journal has no public operation for it yet, and
the console does not invent one by writing the sender's tables itself.
"""

from __future__ import annotations

import hmac
import importlib
import math
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from chttp_core.db import make_engine
from chttp_core.schema import OPLOG_OPEN
from chttp_server.errors import ConfigurationError

__all__ = ["Actions", "ActionResult"]

#: The shortest token accepted: 32 characters (``secrets.token_urlsafe(24)`` gives 32).
MIN_TOKEN_LENGTH = 32
#: Wrong tokens allowed within :data:`FAILURE_WINDOW` seconds before actions pause.
MAX_FAILURES = 10
FAILURE_WINDOW = 60.0


class TooManyFailures(Exception):
    """Too many wrong tokens lately: no token is checked for ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


@dataclass(frozen=True)
class ActionResult:
    """What an action did, in words for the operator; ``ok`` is False if it could not."""

    ok: bool
    summary: str
    detail: str = ""


class Actions:
    """The enabled actions of one console, bound to its databases and token."""

    def __init__(self, *, token: str, db_url: URL | None, journal_url: URL | None,
                 imports: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigurationError(
                f"the actions' token must be at least {MIN_TOKEN_LENGTH} characters (--token "
                "or CHTTP_CONSOLE_TOKEN); make one with: python -c \"import secrets; "
                "print(secrets.token_urlsafe(32))\"")
        self._token = token.encode("utf-8")
        self._clock = clock
        self._failures: deque[float] = deque()
        self._db_url = db_url
        self._journal_url = journal_url
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._journal: Any = None
        if imports:
            if "" not in sys.path:
                sys.path.insert(0, "")
            for module in imports:
                try:
                    importlib.import_module(module)  # registers its @resumable functions
                except ImportError as error:
                    raise ConfigurationError(f"--import {module}: {error}") from error

    def token_matches(self, given: str) -> bool:
        """Constant-time comparison, so response timing does not leak the token.

        Raises :class:`TooManyFailures` instead of comparing while :data:`MAX_FAILURES`
        wrong tokens were given within the last :data:`FAILURE_WINDOW` seconds.
        """
        with self._lock:
            now = self._clock()
            while self._failures and self._failures[0] <= now - FAILURE_WINDOW:
                self._failures.popleft()
            if len(self._failures) >= MAX_FAILURES:
                wait = self._failures[0] + FAILURE_WINDOW - now
                raise TooManyFailures(max(1, math.ceil(wait)))
            if hmac.compare_digest(self._token, given.encode("utf-8")):
                return True
            self._failures.append(now)
            return False

    def acknowledge(self, scope: str, message_id: str) -> ActionResult:
        from chttp_server import MessageStore
        from chttp_server.store import MessageKey

        if self._db_url is None:
            return ActionResult(False, "this console has no receiver database (--db)")
        store = MessageStore(self._writer(), retention=timedelta(days=15), claim_timeout=5.0)
        connection = store.begin()
        try:
            before = store.acknowledge(connection, MessageKey(scope, message_id))
            store.commit(connection)  # the store ends what it began (MessageStore.begin)
        finally:
            connection.close()
        if before is None:
            return ActionResult(False, f"no message {message_id!r} in scope {scope!r}")
        if before.acknowledged:
            return ActionResult(True, f"message {message_id!r} was already acknowledged")
        return ActionResult(True, f"message {message_id!r} acknowledged: its stored "
                                  "response is dropped, a tombstone answers 410 until expiry")

    def resume(self, oplog_id: str) -> ActionResult:
        from chttp_client import JournalError

        if self._journal_url is None:
            return ActionResult(False, "this console has no journal (--journal)")
        journal = self._open_journal()
        try:
            # A finished oplog would re-raise its recorded exception, rebuilt by importing
            # the module the record names: the console never asks for that.
            state = journal.get(oplog_id).state
            if state != OPLOG_OPEN:
                return ActionResult(False, f"oplog {oplog_id!r} is {state}: nothing to resume")
            value = journal.resume(oplog_id)
        except JournalError as error:  # no such oplog, unknown function, busy, non-determinism
            return ActionResult(False, f"oplog {oplog_id!r} not resumed",
                                f"{type(error).__name__}: {error}")
        except Exception as error:  # noqa: BLE001 - the function's own outcome, now recorded
            return ActionResult(True, f"oplog {oplog_id!r} resumed and failed",
                                f"{type(error).__name__}: {error}")
        return ActionResult(True, f"oplog {oplog_id!r} resumed to its end", repr(value)[:2000])

    def _writer(self) -> Engine:
        with self._lock:
            if self._engine is None:
                assert self._db_url is not None
                self._engine = make_engine(self._db_url)
            return self._engine

    def _open_journal(self) -> Any:
        from chttp_client import Journal

        with self._lock:
            if self._journal is None:
                self._journal = Journal(self._journal_url, upgrade_schema=False)
            return self._journal

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
            if self._journal is not None:
                self._journal.close()
