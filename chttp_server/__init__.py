"""Certified HTTP, the receiving half: exactly-once processing for WSGI applications.

::

    from chttp_server import CertifiedMiddleware, Resource

    class Account(Resource):
        def handle_post(self, req):
            req.chttp.session.add(...)   # commits together with the stored response
            return {"balance": 42}

    app = CertifiedMiddleware(Account(), db_url="sqlite:///chttp.db", upgrade_schema=True)

The wire contract this implements is ``docs/protocol.rst`` in the source distribution
(docs/protocol.rst §1 the request headers, §2 what the receiver does with a certified
request, §3 the message resource and acknowledgement, §4 errors, retention and store
failure, §5 the sender's duties).
"""

from __future__ import annotations

from chttp_server.context import CertifiedContext, get_context
from chttp_server.errors import (
    ChttpServerError,
    ConfigurationError,
    IncompleteBody,
    InvalidFirstSent,
    InvalidMessageId,
    MessageAcknowledged,
    MessageExpired,
    MessageGone,
    MessageIdRequired,
    MessageIdReused,
    MessageInProgress,
    MessageNotFound,
    MessageOutcomeUnknown,
    MessageTooOld,
    ProtocolError,
    RequestTooLarge,
    ResponseTooLarge,
    SchemaOutOfDateError,
    StoreUnavailable,
)
from chttp_server.middleware import CertifiedMiddleware, remote_user_scope, require_for_methods
from chttp_server.resource import Request, Resource
from chttp_server.store import MessageStore
from chttp_server.transaction import MessageTransaction

__all__ = [
    "CertifiedMiddleware",
    "Resource",
    "Request",
    "CertifiedContext",
    "get_context",
    "MessageStore",
    "MessageTransaction",
    "remote_user_scope",
    "require_for_methods",
    "ChttpServerError",
    "ConfigurationError",
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
    "MessageIdReused",
    "RequestTooLarge",
    "ResponseTooLarge",
    "StoreUnavailable",
]
