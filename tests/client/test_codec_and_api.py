"""Records (codec), exceptions, the public API and the journal's schema vs its migration."""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import chttp_client
from chttp_client import codec
from chttp_core.db import make_engine
from chttp_client.errors import (
    ConcurrentStepsError, DeadlineExceeded, MessageGoneError, NonDeterminismError, UnknownFunctionError,
    UnknownOplogError,
)
from chttp_core import migrate
from chttp_core.schema import metadata
from tests.server.live import REPO_ROOT


@pytest.mark.parametrize("value", [
    pytest.param(None, id="none"),
    pytest.param([1, 2.5, "x", True], id="list"),
    pytest.param(b"\x00\xffbytes", id="bytes"),
    pytest.param(datetime(2026, 11, 28, 1, 2, 3, 456, tzinfo=timezone(timedelta(hours=2))), id="datetime"),
    pytest.param(datetime(2026, 11, 28, 1, 2, 3), id="naive-datetime"),
    pytest.param(date(2026, 11, 28), id="date"),
    pytest.param(time(12, 30), id="time"),
    pytest.param(uuid.UUID("12345678-1234-5678-1234-567812345678"), id="uuid"),
    pytest.param(Decimal("10.10"), id="decimal"),
    pytest.param((1, (b"a", Decimal("1"))), id="nested-tuple"),
    pytest.param({"$bytes": "not a tag"}, id="dollar-key-dict"),
    pytest.param({"a": {"b": [uuid.UUID(int=1)]}}, id="nested-dict"),
])
def test_codec_roundtrips(value):
    back = codec.loads(codec.dumps(value))
    assert back == value and type(back) is type(value)


@pytest.mark.parametrize("value", [pytest.param(object(), id="object"), pytest.param({1: "x"}, id="int-key"),
                                   pytest.param({1, 2}, id="set")])
def test_codec_refuses_what_it_cannot_replay(value):
    with pytest.raises(TypeError):
        codec.dumps(value)


def test_exceptions_rebuild_from_type_and_args():
    rebuilt = codec.rebuild_exception(codec.exception_record(KeyError("k")))
    assert type(rebuilt) is KeyError and rebuilt.args == ("k",)
    deadline = DeadlineExceeded("id-1", "POST", "http://x/", "too late")
    again = codec.rebuild_exception(codec.exception_record(deadline))
    assert type(again) is DeadlineExceeded and again.message_id == "id-1" and str(again) == str(deadline)


@pytest.mark.parametrize("error", [
    pytest.param(NonDeterminismError("o", 3, "send A", "send B"), id="non-determinism"),
    pytest.param(ConcurrentStepsError("o", 2, "send POST http://x/a", "send POST http://x/b"),
                 id="concurrent-steps"),
    pytest.param(UnknownFunctionError("o", "f", 1, [2]), id="unknown-function"),
    pytest.param(UnknownOplogError("o"), id="unknown-oplog"),
    pytest.param(MessageGoneError("id", "POST", "http://x/", "410 message-acknowledged", "message-acknowledged"),
                 id="message-gone"),
])
def test_exceptions_pickle_with_their_attributes(error):
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error) and again.args == error.args


def _kind(obj) -> str:
    if isinstance(obj, type) and issubclass(obj, BaseException):
        return f"exception({', '.join(base.__name__ for base in obj.__bases__)})"
    if isinstance(obj, type):
        return "class"
    if inspect.isfunction(obj):
        return "function"
    return type(obj).__name__


def test_public_api_is_pinned():
    assert chttp_client.__all__ == [
        "resumable", "Journal", "RetryPolicy", "ResumableContext", "AsyncResumableContext",
        "StepEvent", "StepRecord", "OplogInfo", "ResumeOutcome", "RecordedError", "ChttpClientError",
        "JournalError", "NonDeterminismError", "ConcurrentStepsError", "UnknownFunctionError", "UnknownOplogError", "OplogBusyError", "OplogTakenOverError", "OplogAbandonedError",
        "JournalUnavailable", "SendError",
        "DeadlineExceeded", "UnhealableSendError", "ProtocolAnswerError", "MessageRejectedError", "MessageGoneError",
        "MessageTooOldError", "MessageIdReusedError", "ResponseTooLargeError",
    ]
    assert {name: _kind(getattr(chttp_client, name)) for name in chttp_client.__all__} == {
        "resumable": "function",
        "Journal": "class",
        "RetryPolicy": "class",
        "ResumableContext": "class",
        "AsyncResumableContext": "class",
        "StepEvent": "class",
        "StepRecord": "class",
        "OplogInfo": "class",
        "ResumeOutcome": "class",
        "RecordedError": "exception(Exception)",
        "ChttpClientError": "exception(ChttpError)",
        "JournalError": "exception(ChttpClientError)",
        "NonDeterminismError": "exception(JournalError)",
        "ConcurrentStepsError": "exception(NonDeterminismError)",
        "UnknownFunctionError": "exception(JournalError)",
        "UnknownOplogError": "exception(JournalError)",
        "OplogBusyError": "exception(JournalError)",
        "OplogTakenOverError": "exception(OplogBusyError)",
        "OplogAbandonedError": "exception(JournalError)",
        "JournalUnavailable": "exception(JournalError)",
        "SendError": "exception(ChttpClientError)",
        "DeadlineExceeded": "exception(SendError)",
        "UnhealableSendError": "exception(SendError)",
        "ProtocolAnswerError": "exception(SendError)",
        "MessageRejectedError": "exception(ProtocolAnswerError)",
        "MessageGoneError": "exception(ProtocolAnswerError)",
        "MessageTooOldError": "exception(ProtocolAnswerError)",
        "MessageIdReusedError": "exception(ProtocolAnswerError)",
        "ResponseTooLargeError": "exception(ProtocolAnswerError)",
    }
    # Each name is the object its home module defines (no stale duplicate re-exported).
    from chttp_client import async_context, errors, journal, observers, records, runs

    assert chttp_client.MessageGoneError is errors.MessageGoneError
    assert chttp_client.Journal is journal.Journal and chttp_client.StepEvent is observers.StepEvent
    assert chttp_client.StepRecord is records.StepRecord and chttp_client.OplogInfo is records.OplogInfo
    assert chttp_client.AsyncResumableContext is async_context.AsyncResumableContext
    assert chttp_client.ResumeOutcome is runs.ResumeOutcome is journal.ResumeOutcome
    assert chttp_client.ConcurrentStepsError is errors.ConcurrentStepsError


def test_the_senders_protocol_errors_share_no_name_with_the_receivers():
    import chttp_server.errors as server_errors

    from chttp_client import errors as client_errors

    def defined_exceptions(module) -> set[str]:
        return {name for name, obj in vars(module).items() if isinstance(obj, type)
                and issubclass(obj, BaseException) and obj.__module__ == module.__name__}

    server_names, client_names = defined_exceptions(server_errors), defined_exceptions(client_errors)
    assert server_names and {"MessageGoneError", "MessageIdReusedError"} <= client_names
    assert client_names & server_names == set()


def test_a_protocol_error_recorded_under_its_old_name_replays_as_the_new_class():
    record = codec.exception_record(MessageGoneError("id", "POST", "http://x/", "410", "message-acknowledged"))
    record["type"] = "chttp_client.errors:MessageGone"  # as a journal written before the rename holds it
    rebuilt = codec.rebuild_exception(record)
    assert type(rebuilt) is MessageGoneError and rebuilt.message_id == "id"


def test_the_sender_imports_no_webob():
    code = ("import sys, chttp_client, chttp_client.testing, chttp_client.cli, chttp_client.incoming; "
            "print(sorted(m for m in sys.modules if m.startswith(('webob', 'chttp_server'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_journal_tables_match_their_migration(db_url):
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={
                "include_object": migrate.include_object, "compare_type": True,
                "version_table": migrate.VERSION_TABLE})
            diff = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert diff == []
    assert migrate.current_revision(db_url) == migrate.head_revision() == "0005_send_attempts"


def test_journal_without_upgrade_refuses_a_missing_schema(sqlite_url):
    from chttp_client import Journal, resumable
    import sqlite3

    from chttp_core.errors import SchemaOutOfDateError, StoreURLError

    path = sqlite_url.removeprefix("sqlite:///")
    with pytest.raises(StoreURLError, match="no database at"):   # a missing file: not made
        Journal(sqlite_url, upgrade_schema=False)
    sqlite3.connect(path).close()                 # a database without the chttp tables
    journal = Journal(sqlite_url, upgrade_schema=False)

    @resumable(journal)
    def f(*, chttp_context):
        return 1

    with pytest.raises(SchemaOutOfDateError):
        f()
    journal.close()
