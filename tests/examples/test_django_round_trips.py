"""Round trips of a certified Django request, and the connection Django gets back.

On psycopg 3, in Django's outermost ``atomic`` block, ``BEGIN`` travels with the claim
and ``COMMIT`` with the stored response (three round trips: the claim, the view's
insert, the response) and a replay is two (the claim, the hold with ``COMMIT``)
(chttp_server.fused_transaction.lend, chttp_server.store_dbapi). Counted by libpq's own
trace of what the client sends (tests/examples/django_round_trips.py), not by time.
Inside a caller's transaction (Django's ``TestCase``) the message stays a savepoint and
nothing commits. On psycopg2 the outcomes are the same. On every path the connection
goes back to Django as Django left it, and a view's write after its own ``COMMIT`` is
refused, unsent, and never durable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.examples.django_live import django_env
from tests.server.live import REPO_ROOT

pytestmark = pytest.mark.slow

#: What Django expects of its connection outside any ``atomic`` block.
AT_REST = {"django autocommit": True, "in atomic block": False, "needs rollback": False,
           "driver autocommit": True, "server idle": True}


def run(db_url: str, directory: Path, *, driver: str, prepared: bool) -> Any:
    env = django_env(db_url, directory, CHTTP_CHECK_DRIVER=driver,
                     CHTTP_CHECK_PREPARED="1" if prepared else "0")
    env.pop("DJANGO_SETTINGS_MODULE")
    done = subprocess.run([sys.executable, "-m", "tests.examples.django_round_trips",
                           str(directory)], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=[
    pytest.param(("psycopg", False), id="psycopg3"),
    pytest.param(("psycopg", True), id="psycopg3-prepared"),
    pytest.param(("psycopg2", False), id="psycopg2"),
])
def answers(request, pg_cluster, tmp_path_factory) -> Any:
    driver, prepared = request.param
    name = f"round_trips_{driver}_{int(prepared)}"
    found = run(pg_cluster.create_database(name), tmp_path_factory.mktemp(name),
                driver="psycopg2" if driver == "psycopg2" else "", prepared=prepared)
    assert found["driver"] == driver
    return found


def at_rest(state: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in state.items() if name != "cursor class"}


def test_the_connection_goes_back_to_django_as_django_left_it(answers):
    cursor_class = answers["state before"]["cursor class"]  # Django's own
    assert at_rest(answers["state before"]) == AT_REST
    for step in ("certified", "replay", "explode", "busy", "commits then writes", "after"):
        assert at_rest(answers[step]["state"]) == AT_REST, step
        assert answers[step]["state"]["cursor class"] == cursor_class, step
    # Inside the caller's transaction: still in it, Django's state untouched.
    assert answers["nested"]["state"] == {
        "django autocommit": False, "in atomic block": True, "needs rollback": False,
        "driver autocommit": False, "cursor class": cursor_class, "server idle": False}
    assert at_rest(answers["nested state after the caller's rollback"]) == AT_REST


def test_every_path_answers_as_before(answers):
    assert [answers["certified"]["status"], answers["certified"]["replayed"]] == [201, None]
    assert [answers["replay"]["status"], answers["replay"]["replayed"]] == [201, "true"]
    assert answers["nested"]["status"] == 201
    assert answers["explode"]["status"] == answers["explode retried"] == 500  # ran again
    assert answers["busy"]["status"] == 429
    assert answers["after"]["status"] == 201
    # counted: warm-1, f-1 and f-6 (f-2 rolled back with the caller's transaction)
    assert answers["orders"]["counted"] == 3
    assert answers["orders"]["doomed"] == answers["orders"]["busy"] == 0


def test_a_write_after_the_views_own_commit_is_refused_and_never_durable(answers):
    """The view commits (its first order and the claim are durable), then writes again:
    in driver autocommit that write would commit on its own (psycopg 3), and psycopg2,
    which trusts a transaction status of its own, would send it without ``BEGIN``. The
    guard refuses it unsent; the view fails (500) and every retry is 410."""
    assert answers["commits then writes"]["status"] == 500
    assert answers["commits then writes retried"] == 410
    assert answers["orders"]["cw"] == 1
    assert answers["orders"]["cw-after"] == 0
    trips = answers["commits then writes"]["round trips"]
    if trips is not None:
        assert not any("'cw-after'" in trip for trip in trips)  # never sent


def trips_of(answers: Any, step: str) -> list[str]:
    trips = answers[step]["round trips"]
    if trips is None:
        pytest.skip("psycopg2 has no libpq trace")
    return list(trips)


def test_a_certified_request_is_three_round_trips(answers):
    claim, insert, response = trips_of(answers, "certified")
    assert claim.startswith("BEGIN; EXECUTE chttp_claim_")
    assert insert.startswith('INSERT INTO "orders_order"')
    assert response.startswith("EXECUTE chttp_complete_") and response.endswith("; COMMIT")


def test_a_replay_is_two_round_trips_and_still_holds_for_the_standbys(answers):
    claim, hold = trips_of(answers, "replay")
    assert claim.startswith("BEGIN; EXECUTE chttp_claim_")
    assert "pg_logical_emit_message" in hold and hold.endswith("; COMMIT")


def test_a_rolled_back_message_is_rolled_back_by_django(answers):
    for step in ("explode", "busy"):
        claim, insert, end = trips_of(answers, step)
        assert claim.startswith("BEGIN; EXECUTE chttp_claim_") and end == "ROLLBACK", step


def test_inside_a_callers_transaction_the_message_is_a_savepoint_and_commits_nothing(answers):
    trips = trips_of(answers, "nested")
    assert trips[0] == "BEGIN" and trips[1].startswith("SAVEPOINT")  # Django's own
    assert trips[-1].startswith("RELEASE SAVEPOINT")
    assert not any(trip.startswith("BEGIN;") or "COMMIT" in trip for trip in trips)
