"""A worker SIGKILLed while its task's certified send is in flight: the task comes back.

Real Redis, real prefork workers; the receiver holds the first attempt until the test
has killed the worker that sent it (worker and pool children, one SIGKILL), then lets
its handler run. The task is redelivered (``acks_late``) to the other worker, which
resumes the oplog keyed by the task id and resends the *same* message: the receiver's
handler ran once, and the task's result is the answer of that one run.
"""

from __future__ import annotations

import json

import pytest

from chttp_client import codec

from tests.celery_tasks.live import wait_until

pytestmark = pytest.mark.slow


def lease_pid(env, task_id: str) -> int:
    info = env.journal.get(task_id)
    assert info.lease_owner is not None
    return int(info.lease_owner.split("/")[1])


def test_killed_mid_send_is_redelivered_and_the_receiver_runs_once(env):
    first, second = env.worker("kill-a", concurrency=1), env.worker("kill-b", concurrency=1)
    result = env.tasks.pay.apply_async((7, "/held"))
    assert env.gate.arrived.wait(60)
    pid = wait_until(lambda: env.journal.get(result.id).lease_owner and lease_pid(env, result.id),
                     what="the lease owner")
    victim = first if first.owns(pid) else second
    assert victim.owns(pid)
    victim.kill()
    env.gate.release.set()          # the handler of the first attempt runs and commits

    value = result.get(timeout=60)

    info = env.journal.get(result.id)
    assert info.state == "done" and info.function == "celery:tests.celery_tasks.tasks.pay"
    (step,) = info.steps
    attempts = [(mid, body) for path, mid, body in env.gate.attempts if path == "/held"]
    assert len(attempts) >= 2                                   # sent, then resent
    assert {mid for mid, _ in attempts} == {step.message_id}    # … under one id
    assert {json.loads(body)["amount"] for _, body in attempts} == {7}
    assert len({body for _, body in attempts}) == 1              # … with one body
    assert env.runs_by_body()['{"amount": 7}'] == [step.message_id]   # ran once
    assert step.response is not None                              # the one run's answer
    assert value == json.loads(codec.decode(step.response["body"]))["random number"]
