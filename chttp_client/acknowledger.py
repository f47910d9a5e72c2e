"""Background acknowledgements: ``DELETE`` on ``X-Message-URL`` once an answer is durable.

docs/protocol.rst §3: a sender acknowledges each answer it has recorded, so that the receiver
may drop the stored response early (a later resend of the id then meets 410). The DELETE
is sent only after the commit that made the answer durable (the context queues it after
that commit, :mod:`chttp_client.context`), from one daemon thread per journal so that a
function never waits for it. A DELETE the receiver took (204, or 404/410: nothing left)
becomes an :class:`~chttp_client.oplog_store.AckMark` that the oplog's next commit
writes (:meth:`Acknowledger.take_marks`), so marking costs no commit of its own. A lost
mark only means the DELETE is repeated by a later ``resume_all()``; it is idempotent.

One acknowledgement per message: the commit that made an answer durable also *claims*
its acknowledgement for this process (``chttp_oplog_steps.ack_claimed_until``, one
lease long), and ``resume_all()`` DELETEs only answers whose claim it won
(:meth:`OplogStore.claim_pending_acks
<chttp_client.oplog_store.OplogStore.claim_pending_acks>`). A DELETE that failed
releases the claim with its mark; a process that died leaves a claim that lapses
within a lease (15 s by default). A live process's claims on DELETEs still queued or in
flight, or done with their marks not yet written, are renewed by its journal's
heartbeat (:meth:`Acknowledger.in_hand`, :mod:`chttp_client.heartbeat`), so a backlog
longer than the lease is not sent twice.

A normal exit loses none: ``journal.close()`` and the interpreter's exit (an ``atexit``
hook of each journal, :mod:`chttp_client.journal`) wait up to 2 s for the queue and
write its marks, so ``python sender.py`` leaves no answer unacknowledged.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from datetime import datetime
from typing import Callable

import httpx

from chttp_client.oplog_store import AckMark

__all__ = ["Acknowledger"]

log = logging.getLogger("chttp_client")

#: Answers that mean the receiver holds nothing more for the id (docs/protocol.rst §3).
_ACCEPTED = frozenset({200, 204, 404, 410})


class Acknowledger:
    """The DELETEs of one journal and the marks they leave (see the module docstring)."""

    def __init__(self, http_client: httpx.Client, *, clock: Callable[[], datetime],
                 timeout: float, enabled: bool = True) -> None:
        self.http_client = http_client
        self.clock = clock
        self.timeout = timeout
        #: False: nothing is queued (the crash-every-step check turns it off).
        self.enabled = enabled
        self._lock = threading.Lock()
        self._marks: list[AckMark] = []
        self._queue: queue.Queue[tuple[str, int, str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        #: The (oplog id, step) of each DELETE queued or in flight, with their count.
        self._in_hand: Counter[tuple[str, int]] = Counter()

    def in_hand(self) -> list[tuple[str, int]]:
        """The acknowledgements queued, being sent, or sent with their marks not yet
        taken by a commit: the claims this process keeps."""
        with self._lock:
            return list({*self._in_hand, *((mark.oplog_id, mark.number) for mark in self._marks)})

    def queue(self, oplog_id: str, number: int, url: str) -> None:
        """DELETE ``url`` in the background (the answer of step ``number`` is durable)."""
        if not self.enabled:
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="chttp-acknowledge", daemon=True)
                self._thread.start()
        with self._lock:
            self._in_hand[(oplog_id, number)] += 1
        self._queue.put((oplog_id, number, url))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.send(*item)
            finally:
                if item is not None:
                    with self._lock:
                        self._in_hand[item[:2]] -= 1
                        if self._in_hand[item[:2]] <= 0:
                            del self._in_hand[item[:2]]
                self._queue.task_done()

    def send(self, oplog_id: str, number: int, url: str) -> bool:
        """One best-effort DELETE now; remembered as a mark if the receiver took it."""
        try:
            response = self.http_client.request("DELETE", url, timeout=self.timeout)
        except httpx.HTTPError as error:
            log.info("chttp: acknowledgement of %s failed, will retry on resume: %s", url, error)
            taken = False
        else:
            taken = response.status_code in _ACCEPTED
            if not taken:
                log.info("chttp: acknowledgement of %s answered %s", url, response.status_code)
        # Not taken: the mark releases our claim, so that a later resume_all() retries.
        with self._lock:
            self._marks.append(AckMark(oplog_id, number, self.clock(), done=taken))
        return taken

    def take_marks(self) -> list[AckMark]:
        """The marks gathered since the last call, for the next commit to write."""
        with self._lock:
            marks, self._marks = self._marks, []
        return marks

    def join(self, timeout: float | None = None) -> bool:
        """Block until every queued DELETE was tried, at most ``timeout`` seconds (None:
        no bound); True if none is left."""
        if self._thread is None:
            return True
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(lambda: self._queue.unfinished_tasks == 0,
                                                       timeout)

    def close(self, timeout: float | None = 2.0) -> None:
        """Finish the queue, waiting at most ``timeout`` seconds, and stop the thread
        (marks stay for :meth:`take_marks`). A DELETE not tried by then is left to the
        daemon thread and, if the process ends first, to the next ``resume_all()``."""
        if self._thread is not None and self._thread.is_alive():
            if self.join(timeout):
                self._queue.put(None)
                self._thread.join()
            else:
                self._queue.put(None)
