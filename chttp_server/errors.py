"""Errors raised by the receiver.

::

    ChttpServerError                   (a chttp_core.ChttpError)
     ├── ConfigurationError            (also ValueError; raised at construction time)
     ├── HandlerEndedTransaction       (also RuntimeError; a handler committed or rolled back)
     ├── StatementOutsideMessage       (also RuntimeError; a view's query from another thread)
     └── ProtocolError                 an HTTP answer of docs/protocol.rst §4, as problem+json
          ├── InvalidMessageId         400 invalid-message-id          (webob HTTPBadRequest)
          ├── MessageIdRequired        400 message-id-required         (HTTPBadRequest)
          ├── InvalidFirstSent         400 invalid-first-sent          (HTTPBadRequest)
          ├── IncompleteBody           400 incomplete-body             (HTTPBadRequest)
          ├── MessageNotFound          404 message-not-found           (HTTPNotFound)
          ├── MessageInProgress        409 message-in-progress         (HTTPConflict)
          ├── MessageGone              410                              (HTTPGone)
          │    ├── MessageAcknowledged     message-acknowledged
          │    ├── MessageExpired          message-expired
          │    └── MessageOutcomeUnknown   message-outcome-unknown
          ├── MessageTooOld            412 message-too-old             (HTTPPreconditionFailed)
          ├── RequestTooLarge          413 request-too-large           (HTTPRequestEntityTooLarge)
          ├── MessageIdReused          422 message-id-reused           (HTTPUnprocessableEntity)
          ├── ResponseTooLarge         500 response-too-large          (HTTPInternalServerError)
          └── StoreUnavailable         503 store-unavailable           (HTTPServiceUnavailable)

Every :class:`ProtocolError` is also the matching :mod:`webob.exc` class, so a WSGI
stack that knows WebOb treats it as the HTTP answer it is; called as a WSGI application
it renders RFC 9457 problem+json with the stable ``type`` that senders switch on.
Front ends that do not speak WebOb (Django, ASGI) render :meth:`ProtocolError.problem`,
the same status, headers and bytes without WebOb objects.
Exceptions keep their structured attributes (``message_id``, ``scope``, …) and pickle.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Iterable

import webob.exc
from webob import Response

from chttp_core.errors import ChttpError, SchemaOutOfDateError
from chttp_core.wire import PROBLEM_CONTENT_TYPE, Problem

__all__ = [
    "ChttpServerError",
    "ConfigurationError",
    "HandlerEndedTransaction",
    "StatementOutsideMessage",
    "SchemaOutOfDateError",
    "ProtocolError",
    "InvalidMessageId",
    "MessageIdRequired",
    "InvalidFirstSent",
    "IncompleteBody",
    "MessageNotFound",
    "MessageInProgress",
    "MessageGone",
    "MessageAcknowledged",
    "MessageExpired",
    "MessageOutcomeUnknown",
    "MessageTooOld",
    "RequestTooLarge",
    "MessageIdReused",
    "ResponseTooLarge",
    "StoreUnavailable",
    "problem_body",
    "problem_response",
]


class ChttpServerError(ChttpError):
    """Root of every error this package raises."""


class ConfigurationError(ChttpServerError, ValueError):
    """The middleware or a resource was set up wrongly; raised at construction time."""


class HandlerEndedTransaction(ChttpServerError, RuntimeError):
    """A handler called ``commit()`` or ``rollback()`` on the certified request's connection.

    That transaction belongs to the message: the claim, the handler's writes and the
    stored response commit together or not at all (docs/protocol.rst §2). Ending it
    early would store a claim without its response, or run the rest of the handler
    outside the message. Nothing is stored: the request is rolled back whole and the
    sender's retry runs the handler again. Use a savepoint
    (``connection.begin_nested()``) to undo part of the handler's work.
    """


class StatementOutsideMessage(ChttpServerError, RuntimeError):
    """A certified Django view ran a query on the message's database from another thread.

    Django gives every thread its own connection, so such a statement is not in the
    message's transaction: it would commit even when the view fails and its retry runs
    again (docs/protocol.rst §2). It is refused before it executes; the view fails and
    nothing is stored. Under ASGI, reach the database from an async view through
    Django's async ORM (``acreate``, ``aget``, …) or ``sync_to_async`` with its default
    ``thread_sensitive=True``, which run in the request's own thread; work meant to
    commit on its own belongs on another database alias.
    """

    def __init__(self, alias: str) -> None:
        super().__init__(
            f"a query on database {alias!r} from a thread other than the certified "
            "request's own would commit outside the message's transaction; use the async "
            "ORM or sync_to_async(thread_sensitive=True) (the default) in async views, or "
            "another database alias for writes meant to commit on their own"
        )
        self.alias = alias

    def __reduce__(self) -> Any:
        return (self.__class__, (self.alias,))


def problem_body(
    status: int, problem_type: str, title: str, detail: str | None = None, **members: Any
) -> bytes:
    """The RFC 9457 problem+json document, as bytes (no WebOb: any front end can send it)."""
    document: dict[str, Any] = {"type": problem_type, "title": title, "status": status}
    if detail:
        document["detail"] = detail
    document.update({key: value for key, value in members.items() if value is not None})
    return json.dumps(document).encode("utf-8")


def problem_response(
    status: int,
    problem_type: str,
    title: str,
    detail: str | None = None,
    *,
    headers: Iterable[tuple[str, str]] = (),
    **members: Any,
) -> Response:
    """An RFC 9457 problem+json response."""
    response = Response(
        status=status,
        body=problem_body(status, problem_type, title, detail, **members),
        content_type=PROBLEM_CONTENT_TYPE,
        charset=None,
    )
    for name, value in headers:
        response.headerlist.append((name, value))
    return response


def _rebuild(cls: type[ProtocolError], kwargs: dict[str, Any]) -> ProtocolError:
    return cls(**kwargs)


class ProtocolError(ChttpServerError, webob.exc.WSGIHTTPException):
    """An answer of docs/protocol.rst §4: raise it, or call it as a WSGI application."""

    code: ClassVar[int] = 500
    problem_type: ClassVar[str] = ""
    title: ClassVar[str] = ""

    def __init__(
        self,
        detail: str | None = None,
        *,
        message_id: str | None = None,
        scope: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        webob.exc.WSGIHTTPException.__init__(self, detail=detail or self.title)
        self.detail = detail or self.title
        self.message_id = message_id
        self.scope = scope
        self.retry_after = retry_after

    # webob.Response (a base class) has a ``retry_after`` header property that reads the
    # value back as a datetime; ours stays the delta-seconds integer (RFC 9110 §10.2.3).
    @property
    def retry_after(self) -> int | None:
        return self._retry_after_seconds

    @retry_after.setter
    def retry_after(self, seconds: int | None) -> None:
        self._retry_after_seconds = seconds

    def _kwargs(self) -> dict[str, Any]:
        return {
            "detail": self.detail,
            "message_id": self.message_id,
            "scope": self.scope,
            "retry_after": self.retry_after,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._kwargs()))

    def __str__(self) -> str:
        suffix = f" (message {self.message_id!r})" if self.message_id else ""
        return f"{self.code} {self.problem_type}: {self.detail}{suffix}"

    def _extra_headers(self) -> list[tuple[str, str]]:
        if self.retry_after is None:
            return []
        return [("Retry-After", str(self.retry_after))]

    def _problem_body(self) -> bytes:
        return problem_body(
            self.code,
            self.problem_type,
            self.title,
            self.detail if self.detail != self.title else None,
            message_id=self.message_id,
        )

    def problem(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """``(status, headers, body)`` of the problem+json answer, for non-WebOb front ends."""
        headers = [("Content-Type", PROBLEM_CONTENT_TYPE), *self._extra_headers()]
        return self.code, headers, self._problem_body()

    def to_response(self) -> Response:
        """Render as problem+json; ``Retry-After`` when the sender may retry as is."""
        response = Response(
            status=self.code, body=self._problem_body(),
            content_type=PROBLEM_CONTENT_TYPE, charset=None,
        )
        for name, value in self._extra_headers():
            response.headerlist.append((name, value))
        return response

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body: Iterable[bytes] = self.to_response()(environ, start_response)
        return body


class InvalidMessageId(ProtocolError, webob.exc.HTTPBadRequest):
    code = 400
    problem_type = Problem.INVALID_MESSAGE_ID
    title = "Invalid message id"


class MessageIdRequired(ProtocolError, webob.exc.HTTPBadRequest):
    code = 400
    problem_type = Problem.MESSAGE_ID_REQUIRED
    title = "A message id is required for this request"


class InvalidFirstSent(ProtocolError, webob.exc.HTTPBadRequest):
    code = 400
    problem_type = Problem.INVALID_FIRST_SENT
    title = "X-Message-First-Sent is not an HTTP-date"


class IncompleteBody(ProtocolError, webob.exc.HTTPBadRequest):
    """The body ended before its ``Content-Length``: the upload was cut off.

    Processing it would store the fingerprint of a truncated body, and the sender's
    complete retry would then look like a reused id (422). Nothing is run or stored;
    the sender retries as is.
    """

    code = 400
    problem_type = Problem.INCOMPLETE_BODY
    title = "The request body is shorter than its Content-Length"


class MessageNotFound(ProtocolError, webob.exc.HTTPNotFound):
    code = 404
    problem_type = Problem.MESSAGE_NOT_FOUND
    title = "No such message"


class MessageInProgress(ProtocolError, webob.exc.HTTPConflict):
    code = 409
    problem_type = Problem.MESSAGE_IN_PROGRESS
    title = "The message is still being processed"


class MessageGone(ProtocolError, webob.exc.HTTPGone):
    """The message was processed; its response is no longer available (docs/protocol.rst §3)."""

    code = 410


class MessageAcknowledged(MessageGone):
    problem_type = Problem.MESSAGE_ACKNOWLEDGED
    title = "The message was processed and its response acknowledged"


class MessageExpired(MessageGone):
    problem_type = Problem.MESSAGE_EXPIRED
    title = "The message was processed and its response has expired"


class MessageOutcomeUnknown(MessageGone):
    """The message's row was committed without a response: its outcome cannot be known.

    Only a handler that ended the message's transaction itself (a ``COMMIT`` sent as SQL,
    then a failure or a crash before the response was stored; or a version of this
    library that did not yet refuse that) leaves such a row. Whatever the handler did
    before its own commit is durable, so running it again could do it twice, and there is
    no response to replay: the message is answered as processed with its response gone
    (a sender stops retrying, docs/protocol.rst §3), and the receiver logs it.
    """

    problem_type = Problem.MESSAGE_OUTCOME_UNKNOWN
    title = "The message was processed but no response was stored"


class MessageTooOld(ProtocolError, webob.exc.HTTPPreconditionFailed):
    code = 412
    problem_type = Problem.MESSAGE_TOO_OLD
    title = "The message is older than this receiver's retention"


class RequestTooLarge(ProtocolError, webob.exc.HTTPRequestEntityTooLarge):
    """The certified request's body exceeds the receiver's cap (docs/protocol.rst §4).

    Refused from ``Content-Length`` before the body is read, or as soon as a chunked
    body passes the cap: the fingerprint needs the whole body in memory, so an
    unbounded one would let any client exhaust the receiver. Nothing is stored.
    """

    code = 413
    problem_type = Problem.REQUEST_TOO_LARGE
    title = "The request body exceeds this receiver's limit"


class MessageIdReused(ProtocolError, webob.exc.HTTPUnprocessableEntity):
    code = 422
    problem_type = Problem.MESSAGE_ID_REUSED
    title = "The message id was already used for a different request"


class ResponseTooLarge(ProtocolError, webob.exc.HTTPInternalServerError):
    code = 500
    problem_type = Problem.RESPONSE_TOO_LARGE
    title = "The response exceeds the storage cap and was rolled back"


class StoreUnavailable(ProtocolError, webob.exc.HTTPServiceUnavailable):
    code = 503
    problem_type = Problem.STORE_UNAVAILABLE
    title = "The message store is unavailable; the request was not processed"
