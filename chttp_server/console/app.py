"""The console as a WSGI application: routes, request checks and page rendering.

::

    GET  /                      overview: both halves' counts and outcome charts
    GET  /messages              the receiver's messages: counts, search, one page of rows
    GET  /message?scope=&id=    one message: fingerprint, status, headers, body preview
    POST /message/acknowledge   (actions only) acknowledge it
    GET  /oplogs                the sender's oplogs: counts, search, one page of rows
    GET  /oplog?id=             one oplog and the timeline of its steps
    POST /oplog/resume          (actions only) resume it
    GET  /console.css, /console.js

Ids and scopes travel in the query string, never in the path: a scope is any string
(the authenticated principal) and an oplog id may hold ``/``.

Defences, since the pages show whatever clients stored: autoescaped templates
(:mod:`~chttp_server.console.present`); a Content-Security-Policy that runs only the
console's own script file, so even a markup bug could not execute a stored ``<script>``;
a ``Host`` check (a console on loopback answers only to loopback names, so a web page
that rebinds its DNS name to 127.0.0.1 cannot read it); no ``GET`` that changes state;
actions only with the token (:mod:`~chttp_server.console.actions`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from importlib.resources import files
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlencode

from sqlalchemy import exc as sa_exc
from webob import Request, Response

from chttp_server.console import chart, oplog_queries, queries
from chttp_server.console.actions import Actions, ActionResult, TooManyFailures
from chttp_server.console.database import ConsoleDatabase
from chttp_server.console.present import ago, make_environment, preview_body

__all__ = ["ConsoleApp", "LOOPBACK_NAMES", "DEFAULT_REFRESH"]

log = logging.getLogger("chttp_server.console")

#: Host names a console bound to loopback answers to.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
#: Seconds between two refreshes of a page (0: never).
DEFAULT_REFRESH = 5

_SECURITY_HEADERS = [
    ("Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
]
_STATIC = {"/console.css": "text/css", "/console.js": "text/javascript"}


class _Refusal(Exception):
    """An answer other than a page: status and a sentence for the operator."""

    def __init__(self, status: int, message: str,
                 headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = list(headers)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _href(path: str, **params: Any) -> str:
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return f"{path}?{query}" if query else path


class ConsoleApp:
    """Pages over a receiver's store (``db``) and a sender's journal (``journal``).

    Either may be ``None`` (that half's pages then say so). ``actions`` enables the
    ``POST`` actions; ``allowed_hosts`` ``None`` accepts any ``Host``.
    """

    def __init__(
        self,
        *,
        db: ConsoleDatabase | None,
        journal: ConsoleDatabase | None,
        # The enabled actions and their token; None: the console is read-only.
        actions: Actions | None = None,
        # Seconds between automatic refreshes of a page; 0 turns them off.
        refresh: int = DEFAULT_REFRESH,
        # Host names (without port) the console answers to; None: any.
        allowed_hosts: Sequence[str] | None = LOOPBACK_NAMES,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.db = db
        self.journal = journal
        self.actions = actions
        self.refresh = refresh
        self.allowed_hosts = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        self.clock = clock
        self._templates = make_environment()
        self._static = {path: files("chttp_server.console").joinpath(
            "templates", path.lstrip("/")).read_bytes() for path in _STATIC}
        self._routes: dict[tuple[str, str], Callable[[Request, datetime], Any]] = {
            ("GET", "/"): self._overview,
            ("GET", "/messages"): self._messages,
            ("GET", "/message"): self._message,
            ("POST", "/message/acknowledge"): self._acknowledge,
            ("GET", "/oplogs"): self._oplogs,
            ("GET", "/oplog"): self._oplog,
            ("POST", "/oplog/resume"): self._resume,
        }

    def close(self) -> None:
        """Release the databases' connections (and the actions' engine and journal)."""
        for database in (self.db, self.journal):
            if database is not None:
                database.dispose()
        if self.actions is not None:
            self.actions.close()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        body: Iterable[bytes] = self._respond(request)(environ, start_response)
        return body

    # -- dispatch ---------------------------------------------------------------------

    def _respond(self, request: Request) -> Response:
        try:
            self._check_host(request)
            if request.path_info in _STATIC and request.method in ("GET", "HEAD"):
                response = Response(body=self._static[request.path_info],
                                    content_type=_STATIC[request.path_info], charset="utf-8")
            else:
                response = self._page(request)
        except _Refusal as refusal:
            response = self._error_page(refusal.status, refusal.message)
            response.headerlist.extend(refusal.headers)
        except sa_exc.SQLAlchemyError as error:
            # The driver's words name hosts, ports and database states: the log only.
            log.warning("chttp console: database error on %s: %s", request.path_info, error)
            response = self._error_page(
                503, "the database could not be read; the console's log says why")
        response.headerlist.extend(_SECURITY_HEADERS)
        return response

    def _check_host(self, request: Request) -> None:
        if self.allowed_hosts is None:
            return
        host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        if host.strip("[]").lower() not in self.allowed_hosts:
            raise _Refusal(403, "this console answers only to "
                                + ", ".join(sorted(self.allowed_hosts)))

    def _page(self, request: Request) -> Response:
        handler = self._routes.get((request.method, request.path_info))
        if handler is None:
            allowed = sorted(m for m, path in self._routes if path == request.path_info)
            if allowed:
                response = self._error_page(405, f"{request.path_info} takes {', '.join(allowed)}")
                response.allow = allowed
                return response
            raise _Refusal(404, f"no page at {request.path_info}")
        try:
            result = handler(request, self.clock())
        except UnicodeDecodeError:
            raise _Refusal(400, "the query string is not UTF-8") from None
        if isinstance(result, Response):
            return result
        template, context, *status = result
        if request.method == "GET" and self.refresh:
            params = {k: v for k, v in request.GET.items() if k != "refresh"}
            context["pause_href"] = _href(request.path_info, **params, refresh=0)
            if request.GET.get("refresh") == "0":
                context["resume_href"] = _href(request.path_info, **params)
        return self._render(template, context, *status)

    def _render(self, template: str, context: dict[str, Any], status: int = 200) -> Response:
        now = context.setdefault("now", self.clock())
        context.setdefault("refresh", self.refresh)
        context.setdefault("pause_href", "")
        context.setdefault("resume_href", "")
        body = self._templates.get_template(template).render(
            db=self.db, journal=self.journal, actions=self.actions is not None,
            href=_href, ago=lambda moment: ago(moment, now), **context)
        return Response(body=body.encode("utf-8"), status=status,
                        content_type="text/html", charset="utf-8")

    def _error_page(self, status: int, message: str) -> Response:
        return self._render("error.html", {"status": status, "message": message,
                                           "refresh": 0}, status)

    # -- pages ------------------------------------------------------------------------

    def _overview(self, request: Request, now: datetime) -> tuple[str, dict[str, Any]]:
        window = chart.WINDOWS.get(request.GET.get("window", ""), chart.DEFAULT_WINDOW)
        context: dict[str, Any] = {"window": window, "windows": chart.WINDOWS, "now": now,
                                   "refresh": self._refresh_of(request)}
        if self.db is not None:
            with self.db.connect() as connection:
                context["messages"] = queries.message_summary(connection, now)
                context["message_chart"] = chart.draw(
                    chart.message_outcomes(connection, now, window))
        if self.journal is not None:
            with self.journal.connect() as connection:
                context["oplogs"] = oplog_queries.oplog_summary(connection, now)
                context["oplog_chart"] = chart.draw(chart.oplog_outcomes(connection, now, window))
        return "overview.html", context

    def _messages(self, request: Request, now: datetime) -> tuple[str, dict[str, Any]]:
        database = self._need(self.db, "--db")
        state = request.GET.get("state", "")
        search = queries.MessageFilter(
            message_id=request.GET.get("id", "").strip(), scope=request.GET.get("scope", ""),
            state=state if state in queries.MESSAGE_STATES else "", page=_page_number(request))
        with database.connect() as connection:
            summary = queries.message_summary(connection, now)
            rows, total = queries.search_messages(connection, search, now)
        return "messages.html", {"summary": summary, "search": search, "rows": rows,
                                 "total": total, "pages": _pages(total), "now": now,
                                 "states": queries.MESSAGE_STATES,
                                 "refresh": self._refresh_of(request)}

    def _message(self, request: Request, now: datetime) -> tuple[str, dict[str, Any]]:
        database = self._need(self.db, "--db")
        scope, message_id = request.GET.get("scope", ""), request.GET.get("id", "")
        with database.connect() as connection:
            detail = queries.get_message(connection, scope, message_id)
        if detail is None:
            raise _Refusal(404, f"no message {message_id!r} in scope {scope!r}")
        sends: list[tuple[str, int]] = []
        if self.journal is not None:
            with self.journal.connect() as connection:
                sends = oplog_queries.sends_of_message(connection, message_id)
        preview = None
        if detail.body is not None:
            preview = preview_body(detail.body, detail.row.body_size or 0)
        return "message.html", {"message": detail, "m": detail.row, "preview": preview,
                                "sends": sends, "now": now, "refresh": self._refresh_of(request)}

    def _oplogs(self, request: Request, now: datetime) -> tuple[str, dict[str, Any]]:
        database = self._need(self.journal, "--journal")
        state = request.GET.get("state", "")
        states = (*oplog_queries.OPLOG_STATES, "stalled")
        search = oplog_queries.OplogFilter(text=request.GET.get("q", "").strip(),
                                     state=state if state in states else "",
                                     page=_page_number(request))
        with database.connect() as connection:
            summary = oplog_queries.oplog_summary(connection, now)
            rows, total = oplog_queries.search_oplogs(connection, search, now)
        return "oplogs.html", {"summary": summary, "search": search, "rows": rows,
                               "total": total, "pages": _pages(total), "now": now,
                               "states": states, "refresh": self._refresh_of(request)}

    def _oplog(self, request: Request, now: datetime) -> tuple[str, dict[str, Any]]:
        database = self._need(self.journal, "--journal")
        oplog_id = request.GET.get("id", "")
        with database.connect() as connection:
            detail = oplog_queries.get_oplog(connection, oplog_id)
        if detail is None:
            raise _Refusal(404, f"no oplog {oplog_id!r}")
        return "oplog.html", {"oplog": detail, "o": detail.row, "now": now,
                              "refresh": self._refresh_of(request)}

    # -- actions ----------------------------------------------------------------------

    def _authorised(self, request: Request) -> Actions:
        if self.actions is None:
            raise _Refusal(403, "this console is read-only: start it with --allow-actions "
                                "and a token to enable actions")
        try:
            matches = self.actions.token_matches(request.POST.get("token", ""))
        except TooManyFailures as paused:
            log.warning("chttp console: %s refused without checking the token: too many "
                        "wrong tokens lately (from %s)", request.path_info, request.remote_addr)
            raise _Refusal(429, "too many wrong tokens lately: actions are paused; try again "
                                f"in {paused.retry_after} s",
                           headers=[("Retry-After", str(paused.retry_after))]) from None
        if not matches:
            log.warning("chttp console: %s refused, missing or wrong token (from %s)",
                        request.path_info, request.remote_addr)
            raise _Refusal(403, "missing or wrong token: action refused")
        return self.actions

    def _acknowledge(self, request: Request, now: datetime) -> tuple[str, dict[str, Any], int]:
        actions = self._authorised(request)
        scope, message_id = request.POST.get("scope", ""), request.POST.get("id", "")
        result = actions.acknowledge(scope, message_id)
        log.info("chttp console: acknowledge %r in scope %r (from %s): %s",
                 message_id, scope, request.remote_addr, result.summary)
        back = _href("/message", scope=scope, id=message_id) if result.ok else "/messages"
        return self._action_page(result, back, now)

    def _resume(self, request: Request, now: datetime) -> tuple[str, dict[str, Any], int]:
        actions = self._authorised(request)
        oplog_id = request.POST.get("id", "")
        result = actions.resume(oplog_id)
        log.info("chttp console: resume %r (from %s): %s %s",
                 oplog_id, request.remote_addr, result.summary, result.detail)
        return self._action_page(result, _href("/oplog", id=oplog_id), now)

    @staticmethod
    def _action_page(result: ActionResult, back: str, now: datetime) -> tuple[str, dict[str, Any], int]:
        # Never refreshed: reloading the answer to a POST would post again.
        return "action.html", {"result": result, "back": back, "now": now,
                               "refresh": 0}, 200 if result.ok else 409

    # -- helpers ----------------------------------------------------------------------

    @staticmethod
    def _need(database: ConsoleDatabase | None, option: str) -> ConsoleDatabase:
        if database is None:
            raise _Refusal(404, f"this console was started without {option}")
        return database

    def _refresh_of(self, request: Request) -> int:
        return 0 if request.GET.get("refresh") == "0" else self.refresh


def _page_number(request: Request) -> int:
    raw = request.GET.get("page", "1")
    return min(int(raw), 100_000) if raw.isdigit() and int(raw) > 0 else 1


def _pages(total: int) -> int:
    return max(1, -(-total // queries.PAGE_SIZE))
