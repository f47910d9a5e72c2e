"""``self.retry()`` after 503s, and a re-run of a task id: the same oplog, the same message.

The receiver answers 503 to the first attempts of each message id (a proxy in front of
it, :class:`tests.client.receiver.Front`); one delivery waits for an answer only
``send_deadline`` (0.4 s), then the send raises ``RunDeadlineExceeded``, unrecorded,
and the task is retried through Celery — by the body (``raise self.retry(…)``) or by
the integration when the body lets the error propagate. Every retry resends the one
recorded message id until the receiver's handler runs, once.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("task_name", [pytest.param("pay_flaky", id="self.retry"),
                                       pytest.param("pay_flaky_auto", id="automatic")])
def test_retry_after_503_resends_the_same_id(env, steady_worker, task_name):
    env.front.failures, env.front.status = 12, 503
    amount = {"pay_flaky": 501, "pay_flaky_auto": 502}[task_name]
    result = getattr(env.tasks, task_name).apply_async((amount,))

    value = result.get(timeout=60)

    (step,) = env.journal.get(result.id).steps
    assert env.front.seen[step.message_id] == 13          # 12 × 503 then through, one id
    assert env.runs_by_body()[f'{{"amount": {amount}}}'] == [step.message_id]
    ids = {mid for path, mid, _ in env.gate.attempts if path == "/flaky" and mid == step.message_id}
    assert ids == {step.message_id}
    if task_name == "pay_flaky":
        assert value["status"] == 201 and value["retries"] >= 1   # answered on a retry
    else:
        assert value == 201


def test_a_finished_task_id_returns_its_recorded_result_without_sending(env, steady_worker):
    first = env.tasks.pay.apply_async((601,))
    value = first.get(timeout=60)
    attempts = len(env.gate.attempts)
    first.forget()            # so that get() below waits for the re-run's own result

    again = env.tasks.pay.apply_async((601,), task_id=first.id)   # a manual re-run

    assert again.get(timeout=60) == value
    assert len(env.gate.attempts) == attempts                     # nothing sent
    assert len(env.runs_by_body()['{"amount": 601}']) == 1


def test_a_task_id_reused_with_other_arguments_fails_and_sends_nothing(env, steady_worker):
    first = env.tasks.pay.apply_async((602,))
    first.get(timeout=60)
    attempts = len(env.gate.attempts)
    first.forget()

    again = env.tasks.pay.apply_async((603,), task_id=first.id)

    with pytest.raises(Exception) as raised:
        again.get(timeout=60, propagate=True)
    assert type(raised.value).__name__ == "TaskIdReusedError"
    assert "602" in str(raised.value) and len(env.gate.attempts) == attempts
    assert env.journal.get(first.id).state == "done"              # the oplog is untouched
