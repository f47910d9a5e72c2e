"""A replay never answers a commit that has not reached the synchronous standby.

Found by tests/multihost/test_patroni.py (the leader's host cut from the other database
hosts, two runs of nine, before the fix): PostgreSQL makes a commit visible on the
primary when its wait for the synchronous standby *ends*, and that wait also ends when
the backend is terminated (a fast shutdown, as Patroni does when it demotes a leader, or
``pg_terminate_backend``): "the transaction has already committed locally, but might not
have been replicated". The client of that commit gets no answer; a retry of the same id
waiting on the claim then found the row and was answered from it — a read-only
transaction never waits for the standby — and when the primary died, the promoted
standby had no record of the message: an acknowledged answer lost, and the next retry
ran the handler again.

Here the same sequence, step by step on the replicated pair of :mod:`.topology`: the WAL
sender stopped, a first send waiting in its commit, a retry waiting on its claim, the
first backend terminated. The retry must now be *held* (its own commit waits for the
standby: ``MessageStore.hold_until_replicated``), not answered; the primary is killed
and the standby promoted; the retry got no answer, and the next retry, on the promoted
standby, runs the handler there once — every answer the client was given is one the
surviving database holds.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import httpx
import pytest
from chttp_examples.multihost.database import query

pytestmark = pytest.mark.slow


def _wait(condition: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
    return value


def test_a_replay_waits_for_the_standby_and_answers_nothing_it_could_lose(failover_topology):
    topo = failover_topology
    db = topo.db
    message_id, body = "hole-1", '{"n": 1}'
    headers = {"X-Message-ID": message_id, "Content-Type": "application/json"}
    answers: dict[str, Any] = {}

    def send(name: str, receiver: int) -> None:
        try:
            answers[name] = httpx.post(f"{topo.receivers[receiver].url}/effects", content=body,
                                       headers=headers, timeout=60)
        except httpx.HTTPError as error:
            answers[name] = error

    db.pause_replication()
    first = threading.Thread(target=send, args=("first", 0))
    first.start()
    ((waiting,),) = _wait(lambda: query(db.primary.port, "SELECT pid FROM pg_stat_activity "
                                        "WHERE wait_event = 'SyncRep'", database=db.database),
                          "the first send's commit to wait for the standby")
    retry = threading.Thread(target=send, args=("retry", 1))
    retry.start()
    _wait(lambda: query(db.primary.port, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = "
                        "'Lock' AND query LIKE '%%chttp%%'", database=db.database),
          "the retry to wait on the claim")
    query(db.primary.port, "SELECT pg_terminate_backend(%s)", (waiting,))
    # The retry found the row, but its own commit now waits for the standby.
    _wait(lambda: query(db.primary.port, "SELECT pid FROM pg_stat_activity WHERE wait_event = "
                        "'SyncRep' AND pid <> %s", (waiting,), database=db.database),
          "the retry's commit to wait for the standby")
    first.join(60)
    assert retry.is_alive() and "retry" not in answers, f"answered early: {answers.get('retry')!r}"

    db.kill_primary()
    db.promote()
    retry.join(60)
    held = answers.get("retry")
    print(f"\nfirst send: {answers.get('first')!r}; the held retry got {held!r}")
    assert not (isinstance(held, httpx.Response) and held.status_code < 300), \
        "the retry was answered from a commit the standby never got"
    assert message_id not in topo.check_effects()   # the promoted standby never had it

    # The next retry runs the handler on the promoted standby, once.
    again = _wait(lambda: _answered(topo.receivers[0].url, body, headers), "an answer after the failover", 60)
    assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") != "true"
    assert topo.check_effects()[message_id] == [again.json()["nonce"]]


def _answered(url: str, body: str, headers: dict[str, str]) -> httpx.Response | None:
    """The receiver's answer once it is a definitive one (a 503 while it reconnects: None)."""
    try:
        response = httpx.post(f"{url}/effects", content=body, headers=headers, timeout=30)
    except httpx.HTTPError:
        return None
    return None if response.status_code == 503 else response
