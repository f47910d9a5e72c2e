"""A replay can answer a commit that never reached the synchronous standby (expected failure).

Found by tests/multihost/test_patroni.py (the leader's host cut from the other database
hosts, two runs of nine): PostgreSQL makes a commit visible on the primary when its
wait for the synchronous standby *ends*, and that wait also ends when the backend is
terminated (a fast shutdown, as Patroni does when it demotes a leader, or
``pg_terminate_backend``): "the transaction has already committed locally, but might not
have been replicated". The client of that commit gets no answer, but a retry of the same
id waiting on the claim then finds the row and is answered from it (a replay: it only
reads and rolls back, so nothing makes it wait for the standby). When the primary then
dies, the promoted standby has no record of the message: an acknowledged answer is lost,
and the next retry runs the handler again.

Here the same sequence, step by step on the replicated pair of :mod:`.topology`, so it
fails every time: the WAL sender stopped, a first send waiting in its commit, a retry
waiting on its claim, the first backend terminated, the retry answered, the primary
killed, the standby promoted. A replay that waited for the standby to have the row
(e.g. a transaction that commits a write after reading it) would make this test pass.
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


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="a replay reads a commit whose synchronous-replication wait was "
                          "terminated: answered, then lost at the failover (docs/scale.rst)")
def test_a_replay_answers_a_commit_the_standby_never_got(failover_topology):
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
    retry.join(60)
    first.join(60)
    replay = answers.get("retry")
    if not isinstance(replay, httpx.Response) or replay.status_code != 200:
        pytest.fail(f"the retry was not answered 200: {replay!r}")
    if replay.headers.get("Idempotent-Replayed") != "true":
        pytest.fail("the retry ran the handler instead of replaying")
    nonce = replay.json()["nonce"]
    db.kill_primary()
    db.promote()
    print(f"\nfirst send: {answers.get('first')!r}; the retry answered 200 (replayed) with "
          f"nonce {nonce}; on the promoted standby: {topo.check_effects().get(message_id)}")
    assert nonce in topo.check_effects().get(message_id, []), "an acknowledged answer was lost"
