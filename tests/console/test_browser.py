"""The console in a real headless chromium: rows, search, escaping, actions, refresh.

Every page visited is also saved as a screenshot under ``tests/artifacts/``. The stores
are filled through the real receiver and sender (:mod:`tests.console.fill`), on SQLite
and on PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest
from sqlalchemy import insert, select

from chttp_core.db import make_engine
from chttp_core.schema import messages, oplogs
from tests.console.conftest import console_for
from tests.console.fill import (
    HOSTILE_BODY,
    HOSTILE_ERROR,
    HOSTILE_FUNCTION,
    HOSTILE_HEADER,
    HOSTILE_ID,
    HOSTILE_OPLOG,
    HOSTILE_SCOPE,
    HOSTILE_URL,
    TOKEN,
    hostile,
)
from tests.server.live import wait_for

pytestmark = pytest.mark.slow


def _open(browser, base: str, path: str, **params: str) -> None:
    browser.get(base + path + ("?" + urlencode(params) if params else ""))
    wait_for(lambda: browser.execute_script("return document.readyState") == "complete",
             what=f"{path} to load")


def _shot(browser, artifacts, name: str, store) -> None:
    kind = "postgresql" if store.db_url.startswith("postgresql") else "sqlite"
    assert browser.save_screenshot(str(artifacts / f"console-{name}-{kind}.png"))


def _text(browser, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector).text


def _table(browser, table_id: str) -> list[list[str]]:
    """The table's cells as shown, read in one script: one document, never half of two.

    Reading cell by cell (a WebDriver round trip each) took ~0.8 s for 14 rows, long enough
    for a page refreshing every second to reload in the middle of the read.
    """
    return browser.execute_script(
        "var table = document.getElementById(arguments[0]);"
        "if (!table) { return []; }"
        "return Array.from(table.querySelectorAll('tbody tr:not(.empty)')).map(function (row) {"
        "  return Array.from(row.querySelectorAll('td')).map(function (cell) {"
        "    return cell.innerText.trim(); }); });", table_id)


def _never_ran(browser) -> None:
    """No stored markup became an element, and no stored script ran."""
    assert browser.execute_script("return window.__pwned") is None
    assert browser.title != "pwned"  # what every stored script would set
    sources = browser.execute_script(
        "return Array.from(document.scripts).map(function (s) { return s.src; })")
    assert [source.rsplit("/", 1)[-1] for source in sources] == ["console.js"]
    assert browser.execute_script("return document.images.length") == 0


# -- pages render the rows of the store -------------------------------------------------


def test_overview_counts_both_halves(browser, console, store, artifacts):
    _open(browser, console, "/")
    assert _text(browser, "#count-completed") == str(
        len(store.completed) + len(store.refused) + len(store.expired)
        + sum(len(ids) for ids in store.send_ids.values()))
    assert _text(browser, "#count-acknowledged") == str(len(store.acknowledged))
    assert _text(browser, "#count-expired") == str(len(store.expired))
    assert _text(browser, "#count-open") == str(len(store.open_oplogs) + len(store.stalled_oplogs))
    # lease=0 in the fill: the crashed run's lease lapsed at once, so it is stalled too.
    assert _text(browser, "#count-stalled") == str(len(store.open_oplogs) + len(store.stalled_oplogs))
    assert _text(browser, "#count-done") == str(len(store.done_oplogs))
    assert _text(browser, "#count-failed") == str(len(store.failed_oplogs))
    # Every message but the expired one was received in the last 24 hours: one bar each
    # per outcome present; the chart's caption counts them.
    from selenium.webdriver.common.by import By

    captions = [element.text for element in browser.find_elements(By.CSS_SELECTOR, "figcaption")]
    assert captions[0].startswith(f"messages received, by outcome ({store.message_count - 1})")
    assert captions[1].startswith(f"oplogs started, by state ({len(store.done_oplogs) + len(store.failed_oplogs) + len(store.open_oplogs) + 1})")
    assert browser.find_elements(By.CSS_SELECTOR, "#receiver svg rect.bar.ok")
    assert browser.find_elements(By.CSS_SELECTOR, "#receiver svg rect.bar.acknowledged")
    assert browser.find_elements(By.CSS_SELECTOR, "#sender svg rect.bar.failed")
    _never_ran(browser)
    _shot(browser, artifacts, "overview", store)


def test_messages_page_lists_every_message(browser, console, store, artifacts):
    _open(browser, console, "/messages")
    rows = {(cells[1], cells[0]): (cells[2], cells[3]) for cells in _table(browser, "messages")}
    expected = {}
    for scope, message_id in store.completed + store.expired:
        expected[(scope or "(anonymous)", message_id)] = "completed"
    for scope, message_id in store.refused:
        expected[(scope, message_id)] = "completed"
    for scope, message_id in store.acknowledged:
        expected[(scope, message_id)] = "acknowledged"
    for ids in store.send_ids.values():
        for message_id in ids:
            expected[("(anonymous)", message_id)] = "completed"
    assert {key: state for key, (state, _status) in rows.items()} == expected
    assert rows[("bob", "order-4")][1] == "400"
    assert rows[("alice", "order-1")][1] == "201"
    assert rows[("alice", "order-2")][1] == "–"  # acknowledged: the status went with the body
    assert _text(browser, ".pager").startswith(f"{store.message_count} matching")
    _shot(browser, artifacts, "messages", store)


def test_search_finds_messages_by_id_and_by_scope(browser, console, store, artifacts):
    from selenium.webdriver.common.by import By

    _open(browser, console, "/messages")
    field = browser.find_element(By.CSS_SELECTOR, "#search input[name=id]")
    field.send_keys("order-3")
    browser.find_element(By.CSS_SELECTOR, "#search button").click()
    wait_for(lambda: "id=order-3" in browser.current_url, what="the search to load")
    assert [(cells[0], cells[1]) for cells in _table(browser, "messages")] == [("order-3", "bob")]
    _shot(browser, artifacts, "search", store)

    _open(browser, console, "/messages", scope="bob")
    assert sorted(cells[0] for cells in _table(browser, "messages")) == ["order-3", "order-4"]
    # A search is literal: "_" and "%" are not wildcards.
    _open(browser, console, "/messages", id="order_")
    assert _table(browser, "messages") == []
    _open(browser, console, "/messages", state="expired")
    assert [cells[0] for cells in _table(browser, "messages")] == ["old-1"]


def test_message_page_shows_the_stored_response(browser, console, store, artifacts):
    from selenium.webdriver.common.by import By

    _open(browser, console, "/messages", id="order-1")
    browser.find_element(By.LINK_TEXT, "order-1").click()
    wait_for(lambda: "/message?" in browser.current_url, what="the message page")
    assert _text(browser, "#message-id") == "order-1"
    assert _text(browser, "#scope") == "alice"
    assert _text(browser, "#status") == "201"
    assert len(_text(browser, "#fingerprint")) == 64
    headers = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "#headers tr")]
    assert "X-Shop one" in headers and "X-Shop two" in headers
    assert json.loads(_text(browser, "#body")) == {"ok": True, "id": "order-1"}
    _shot(browser, artifacts, "message", store)

    _open(browser, console, "/message", scope="alice", id="long-body")
    assert _text(browser, "#body") == "x" * 2000
    assert _text(browser, "#truncated") == "… truncated"

    _open(browser, console, "/message", scope="alice", id="order-2")
    assert _text(browser, "#state") == "acknowledged"
    assert not browser.find_elements(By.ID, "body")

    # A message one of the oplogs sent links back to its send.
    oplog_id, ids = next(iter(store.send_ids.items()))
    _open(browser, console, "/message", scope="", id=ids[0])
    assert _text(browser, "#sent-by") == f"oplog {oplog_id} step 2"


def test_oplogs_page_lists_every_oplog(browser, console, store, artifacts):
    _open(browser, console, "/oplogs")
    rows = {cells[0]: cells for cells in _table(browser, "oplogs")}
    expected = {**{i: "done" for i in store.done_oplogs}, **{i: "failed" for i in store.failed_oplogs},
                **{i: "open" for i in store.open_oplogs + store.stalled_oplogs}}
    assert {i: cells[2] for i, cells in rows.items()} == expected
    for oplog_id in store.done_oplogs:
        assert rows[oplog_id][1] == "console_tests.transfer v1"
        assert rows[oplog_id][3] == "3 (2 sends)"
    _open(browser, console, "/oplogs", state="failed")
    assert [cells[0] for cells in _table(browser, "oplogs")] == store.failed_oplogs
    _open(browser, console, "/oplogs", q=store.done_oplogs[0][:8])
    assert [cells[0] for cells in _table(browser, "oplogs")] == store.done_oplogs[:1]
    _open(browser, console, "/oplogs")
    _shot(browser, artifacts, "oplogs", store)


def test_oplog_page_shows_the_steps_as_a_timeline(browser, console, store, artifacts):
    from selenium.webdriver.common.by import By

    oplog_id = store.done_oplogs[0]
    _open(browser, console, "/oplog", id=oplog_id)
    assert _text(browser, "#state") == "done"
    assert _text(browser, "#function") == "console_tests.transfer v1"
    steps = browser.find_elements(By.CSS_SELECTOR, "#steps li.step")
    assert [step.get_attribute("class") for step in steps] == [
        "step persist done", "step send done", "step send done"]
    sends = steps[1:]
    assert [s.find_element(By.CSS_SELECTOR, ".message-id").text for s in sends] == store.send_ids[oplog_id]
    assert [s.find_element(By.CSS_SELECTOR, ".status").text for s in sends] == ["201", "201"]
    assert [s.find_element(By.CSS_SELECTOR, ".url").text for s in sends] == [
        f"POST {store.receiver_url}/shop"] * 2
    assert steps[0].find_element(By.CSS_SELECTOR, ".outcome").text == "7"
    _shot(browser, artifacts, "oplog", store)

    _open(browser, console, "/oplog", id=store.failed_oplogs[0])
    assert _text(browser, "#state") == "failed"
    assert f"negative amount -1 {HOSTILE_ERROR}" in _text(browser, "#result")
    _never_ran(browser)

    _open(browser, console, "/oplog", id=store.open_oplogs[0])
    last = browser.find_elements(By.CSS_SELECTOR, "#steps li.step")[-1]
    assert last.get_attribute("class") == "step send recorded"
    assert last.find_element(By.CSS_SELECTOR, ".status").text == "no answer yet"


# -- stored markup is text ----------------------------------------------------------------


def test_markup_in_ids_bodies_and_records_is_shown_escaped_and_never_runs(
        browser, console, store, artifacts):
    from selenium.webdriver.common.by import By

    _open(browser, console, "/messages")
    assert HOSTILE_ID in [cells[0] for cells in _table(browser, "messages")]
    assert HOSTILE_SCOPE in [cells[1] for cells in _table(browser, "messages")]
    _never_ran(browser)

    browser.find_element(By.LINK_TEXT, HOSTILE_ID).click()
    wait_for(lambda: "/message?" in browser.current_url, what="the hostile message")
    assert _text(browser, "#message-id") == HOSTILE_ID
    assert _text(browser, "#scope") == HOSTILE_SCOPE
    assert _text(browser, "#body") == HOSTILE_BODY.decode()
    assert HOSTILE_HEADER in _text(browser, "#headers")
    _never_ran(browser)
    _shot(browser, artifacts, "hostile-message", store)

    _open(browser, console, "/oplogs")
    assert HOSTILE_OPLOG in [cells[0] for cells in _table(browser, "oplogs")]
    _never_ran(browser)
    browser.find_element(By.LINK_TEXT, HOSTILE_OPLOG).click()
    wait_for(lambda: "/oplog?" in browser.current_url, what="the hostile oplog")
    assert _text(browser, "#oplog-id") == HOSTILE_OPLOG
    assert _text(browser, "#function") == f"{HOSTILE_FUNCTION} v1"
    assert hostile(7) in _text(browser, "#arguments")
    assert _text(browser, "#steps .url") == f"POST {HOSTILE_URL}"
    assert _text(browser, "#steps .outcome") == f"builtins:RuntimeError: {HOSTILE_ERROR}"
    assert "stalled" in _text(browser, "#state")
    _never_ran(browser)
    _shot(browser, artifacts, "hostile-oplog", store)


# -- actions ------------------------------------------------------------------------------


def _submit_action(browser, form_id: str, token: str | None) -> None:
    from selenium.webdriver.common.by import By

    form = browser.find_element(By.ID, form_id)
    if token is not None:
        form.find_element(By.NAME, "token").send_keys(token)
    form.find_element(By.TAG_NAME, "button").click()
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#problem, #result"),
             what="the action's answer")


def _message_state(url: str, scope: str, message_id: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(messages.c.state).where(
                messages.c.scope == scope, messages.c.message_id == message_id)).scalar_one()
    finally:
        engine.dispose()


def _oplog_state(url: str, oplog_id: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                select(oplogs.c.state).where(oplogs.c.id == oplog_id)).scalar_one()
    finally:
        engine.dispose()


def test_actions_are_refused_without_the_token_and_work_with_it(browser, fresh_store, artifacts):
    from selenium.webdriver.common.by import By

    store = fresh_store
    with console_for(store) as read_only:
        _open(browser, read_only, "/message", scope="alice", id="order-1")
        assert not browser.find_elements(By.ID, "acknowledge")  # no form when read-only

    with console_for(store, allow_actions=True, token=TOKEN) as console:
        for token in (None, "wrong-token"):
            _open(browser, console, "/message", scope="alice", id="order-1")
            _submit_action(browser, "acknowledge", token)
            assert _text(browser, "#problem") == "missing or wrong token: action refused"
            assert browser.title.startswith("403")
            assert _message_state(store.db_url, "alice", "order-1") == "completed"
        _shot(browser, artifacts, "refused", store)

        _open(browser, console, "/message", scope="alice", id="order-1")
        _shot(browser, artifacts, "message-actions", store)
        _submit_action(browser, "acknowledge", TOKEN)
        assert _text(browser, "#result").startswith("message 'order-1' acknowledged")
        assert _message_state(store.db_url, "alice", "order-1") == "acknowledged"
        browser.find_element(By.ID, "back").click()
        wait_for(lambda: _text(browser, "#state") == "acknowledged", what="the acknowledged page")

        crashed = store.open_oplogs[0]
        _open(browser, console, "/oplog", id=crashed)
        _submit_action(browser, "resume", "wrong-token")
        assert _oplog_state(store.db_url, crashed) == "open"
        _open(browser, console, "/oplog", id=crashed)
        _submit_action(browser, "resume", TOKEN)
        assert _text(browser, "#result") == f"oplog {crashed!r} resumed to its end"
        assert _text(browser, ".detail") == "[201, 201]"
        assert _oplog_state(store.db_url, crashed) == "done"
        _shot(browser, artifacts, "resumed", store)


# -- refresh ------------------------------------------------------------------------------


def test_pages_refresh_by_themselves(browser, fresh_store):
    store = fresh_store
    with console_for(store, refresh=1) as console:
        _open(browser, console, "/messages")
        browser.execute_script("window.__before_refresh = true;")
        now = datetime.now(timezone.utc)
        engine = make_engine(store.db_url)
        try:
            with engine.begin() as connection:
                connection.execute(insert(messages).values(
                    scope="carol", message_id="arrived-later", fingerprint="a" * 64,
                    state="completed", status=201, headers="[]", body=b"{}",
                    received_at=now, expires_at=now + timedelta(days=15)))
        finally:
            engine.dispose()
        def shows_it() -> bool:
            from selenium.common.exceptions import WebDriverException

            try:
                return "arrived-later" in [cells[0] for cells in _table(browser, "messages")]
            except WebDriverException:  # the page was reloading under us
                return False

        wait_for(shows_it, what="the page to show a message stored after it loaded")
        assert browser.execute_script("return window.__before_refresh") is None

        # Paused: the link drops the refresh, and the page says so.
        _open(browser, console, "/messages", refresh="0")
        assert "paused" in _text(browser, "header .status")
