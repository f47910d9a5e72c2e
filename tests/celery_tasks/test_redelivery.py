"""A worker SIGKILLed while its task's certified send is in flight: the task comes back.

Real Redis, real prefork workers; the receiver holds the first attempt until the test
has killed the worker that sent it (worker and pool children, one SIGKILL), then lets
its handler run. The task is redelivered (``acks_late``) to the other worker, which
resumes the oplog keyed by the task id and resends the *same* message: the receiver's
handler ran once, and the task's result is the answer of that one run.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from chttp_client import codec

from tests.celery_tasks.live import wait_until

pytestmark = pytest.mark.slow


def lease_pid(env, task_id: str) -> int:
    info = env.journal.get(task_id)
    assert info.lease_owner is not None
    return int(info.lease_owner.split("/")[1])


def log_count(env, text: str) -> int:
    return sum(worker.log.read_bytes().count(text.encode()) for worker in env.workers)


@pytest.mark.parametrize("victim", [
    pytest.param("worker", id="whole-worker"),       # a host crash: back after visibility_timeout
    pytest.param("pool-child", id="pool-child"),     # an OOM kill: reject_on_worker_lost requeues
])
def test_killed_mid_send_is_redelivered_and_the_receiver_runs_once(env, victim):
    first, second = env.start("kill-a", "kill-b", concurrency=1)
    amount = {"worker": 7, "pool-child": 9}[victim]
    result = env.tasks.pay.apply_async((amount, "/held"))
    assert env.gate.arrived.wait(60)
    pid = wait_until(lambda: env.journal.get(result.id).lease_owner and lease_pid(env, result.id),
                     what="the lease owner")
    owner = first if first.owns(pid) else second
    assert owner.owns(pid)
    if victim == "worker":
        owner.kill()
    else:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    env.gate.release.set()          # the handler of the first attempt runs and commits
    wait_until(lambda: sum(path == "/held" for path, _, _ in env.gate.attempts) >= 2,
               what="the redelivered task's resend")
    print(f"{victim}: resent {time.monotonic() - killed_at:.1f} s after the kill")   # docs/celery.rst

    value = result.get(timeout=60)

    info = env.journal.get(result.id)
    assert info.state == "done" and info.function == "celery:tests.celery_tasks.tasks.pay"
    (step,) = info.steps
    attempts = [(mid, body) for path, mid, body in env.gate.attempts if path == "/held"]
    assert len(attempts) >= 2                                   # sent, then resent
    assert {mid for mid, _ in attempts} == {step.message_id}    # … under one id
    assert {json.loads(body)["amount"] for _, body in attempts} == {amount}
    assert len({body for _, body in attempts}) == 1              # … with one body
    assert env.runs_by_body()[f'{{"amount": {amount}}}'] == [step.message_id]   # ran once
    assert step.response is not None                              # the one run's answer
    assert value == json.loads(codec.decode(step.response["body"]))["random number"]


def test_a_duplicate_delivery_waits_for_the_running_one_and_returns_its_result(env):
    """Two deliveries of one task id at once (a redelivery past ``visibility_timeout``
    while the first still runs, or an id sent twice): the second waits on the oplog's
    lease and returns the first's recorded answer; the receiver sees one send."""
    env.start("dup-a", "dup-b", concurrency=1)
    first = env.tasks.pay.apply_async((8, "/held"))
    assert env.gate.arrived.wait(60)
    duplicate = env.tasks.pay.apply_async((8, "/held"), task_id=first.id)
    wait_until(lambda: log_count(env, f"{first.id}] received") == 2,
               what="the duplicate to be received by the other worker")
    env.gate.release.set()

    value = first.get(timeout=60)
    wait_until(lambda: log_count(env, f"{first.id}] succeeded") == 2,
               what="both deliveries to succeed")

    (step,) = env.journal.get(first.id).steps
    assert [mid for path, mid, _ in env.gate.attempts if path == "/held"] == [step.message_id]
    assert env.runs_by_body()['{"amount": 8}'] == [step.message_id]
    assert duplicate.get(timeout=10) == value


def test_a_duplicate_that_waited_busy_wait_is_requeued_until_the_first_finishes(env):
    """Past ``busy_wait`` the duplicate is rejected with requeue (never acknowledged while
    the task's outcome is unknown); it comes back, and once the first delivery finished
    it returns the recorded answer."""
    env.start("requeue-a", "requeue-b", concurrency=1)
    first = env.tasks.pay_impatient.apply_async((11, "/held"))
    assert env.gate.arrived.wait(60)
    duplicate = env.tasks.pay_impatient.apply_async((11, "/held"), task_id=first.id)
    wait_until(lambda: log_count(env, f"{first.id}] received") >= 3,
               what="the duplicate to be requeued and received again")
    assert not first.ready()
    env.gate.release.set()

    value = first.get(timeout=60)
    wait_until(lambda: log_count(env, f"{first.id}] succeeded") == 2,
               what="both deliveries to succeed")
    (step,) = env.journal.get(first.id).steps
    assert [mid for path, mid, _ in env.gate.attempts if path == "/held"] == [step.message_id]
    assert env.runs_by_body()['{"amount": 11}'] == [step.message_id]
    assert duplicate.get(timeout=10) == value


def test_a_task_that_kills_its_worker_every_time_is_abandoned(env):
    """A crash loop (the body kills its pool child after its send, every delivery): past
    the journal's ``max_resume_attempts`` redeliveries without a commit the oplog is
    abandoned and the task fails with OplogAbandonedError; its one message ran once."""
    env.start("crash-loop", concurrency=1)
    result = env.tasks.pay_and_crash.apply_async((12,))

    with pytest.raises(Exception) as raised:
        result.get(timeout=120)

    assert type(raised.value).__name__ == "OplogAbandonedError"
    info = env.journal.get(result.id)
    assert info.state == "abandoned" and "max_resume_attempts=1" in (info.abandoned_reason or "")
    (step,) = info.steps
    sent = {mid for path, mid, _ in env.gate.attempts if path == "/escrow"}
    assert sent == {step.message_id}
    assert env.runs_by_body()['{"amount": 12}'] == [step.message_id]
