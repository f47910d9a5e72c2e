"""Declaring a resumable task: what it sets up, and the mistakes refused at declaration."""

from __future__ import annotations

import pytest
from celery import Celery

import chttp_client.celery as chttp_celery
from chttp_client import Journal
from chttp_client.celery import ResumableTask, TaskConfigurationError, resumable_task


@pytest.fixture
def app():
    app = Celery("declaration", broker="memory://", set_as_current=False)
    yield app
    app.close()


@pytest.fixture
def journal(tmp_path):
    with Journal(f"sqlite:///{tmp_path / 'journal.db'}") as journal:
        yield journal


def test_public_api_is_pinned():
    assert chttp_celery.__all__ == [
        "resumable_task", "ResumableTask", "CeleryTaskError", "TaskConfigurationError",
        "TaskIdReusedError", "RunDeadlineExceeded", "SEND_DEADLINE", "BUSY_WAIT",
    ]


def test_a_task_acks_late_rejects_on_worker_lost_and_retries_without_a_count(app, journal):
    @resumable_task(app, journal, name="payouts.pay")
    def pay(url, amount=1, *, chttp_context):
        return None

    assert isinstance(pay, ResumableTask)
    assert pay.acks_late is True and pay.reject_on_worker_lost is True
    assert pay.max_retries is None
    assert pay.chttp_name == "celery:payouts.pay" and pay.chttp_version == 1
    # Celery checks calls against the body's signature, without chttp_context.
    pay.__header__("http://x", 2)
    with pytest.raises(TypeError):
        pay.__header__("http://x", 2, chttp_context=None)
    with pytest.raises(TypeError):
        pay.__header__()


@pytest.mark.parametrize("option", ["acks_late", "reject_on_worker_lost"])
def test_turning_off_late_acknowledgement_is_refused(app, journal, option):
    with pytest.raises(TaskConfigurationError, match=option):
        @resumable_task(app, journal, **{option: False})
        def pay(*, chttp_context):
            return None


def test_an_in_memory_journal_is_refused(app):
    with Journal("sqlite://") as journal, pytest.raises(TaskConfigurationError, match="in-memory"):
        resumable_task(app, journal)


def test_a_body_without_chttp_context_is_refused(app, journal):
    with pytest.raises(TypeError, match="chttp_context"):
        @resumable_task(app, journal)
        def pay(url):
            return None


def test_a_journal_is_required(app):
    with pytest.raises(TypeError, match="Journal"):
        resumable_task(app, "sqlite:///x.db")  # type: ignore[arg-type]


def test_calling_the_task_outside_celery_is_refused(app, journal):
    @resumable_task(app, journal, name="payouts.direct")
    def pay(*, chttp_context):
        return 1

    with pytest.raises(chttp_celery.CeleryTaskError, match="task id"):
        pay()


def test_an_open_oplog_of_another_version_is_refused_and_left_open(journal):
    """Only the version that wrote an oplog replays it. In-process ``apply()`` (no broker):
    version 1 leaves an open oplog (its soft time limit hit after a checkpoint), version
    2 of the body, declared under the same task name, refuses it and records nothing."""
    from celery.exceptions import SoftTimeLimitExceeded

    from chttp_client import UnknownFunctionError

    first, second = (Celery(f"v{n}", broker="memory://", set_as_current=False) for n in (1, 2))
    try:
        @resumable_task(first, journal, name="payouts.versioned")
        def old(amount, *, chttp_context):
            chttp_context.persist(amount)
            chttp_context.checkpoint()
            raise SoftTimeLimitExceeded()

        @resumable_task(second, journal, name="payouts.versioned", version=2)
        def new(amount, *, chttp_context):
            return amount

        ran = old.apply((5,), task_id="task-v1")
        assert isinstance(ran.result, SoftTimeLimitExceeded)
        assert journal.get("task-v1").state == "open"           # not recorded as failed

        refused = new.apply((5,), task_id="task-v1")

        assert isinstance(refused.result, UnknownFunctionError)
        assert "version 1" in str(refused.result)
        info = journal.get("task-v1")
        assert info.state == "open" and len(info.steps) == 1 and info.lease_owner is None
    finally:
        first.close()
        second.close()
