"""The web console: what a receiver's store and a sender's journal hold, for operators.

::

    chttp-server console --db URL [--journal URL] [--port 8090]
                         [--allow-actions --token T [--import MODULE]]

Pages for the receiver's messages (counts by state, the oldest, search by id and scope,
one message's fingerprint, status, headers and body preview) and the sender's oplogs
(state, function and version, lease, the steps as a timeline with each send's id, URL,
status and error), a chart of outcomes over time, refreshing by themselves. Read-only
unless started with ``--allow-actions`` and a token; then a message can be acknowledged
and an open oplog resumed, by ``POST`` with the token.

The modules, one job each::

    database       a read-only engine per database (no write lock, no writes)
    queries        read-only queries over the receiver's messages, as dataclasses
    oplog_queries  the same over the sender's oplogs and their steps
    chart          outcomes over time: counted in SQL, drawn as inline SVG
    actions        the opt-in writes, through MessageStore and Journal, behind the token
    present        the Jinja2 environment (autoescaped) and display helpers
    app            the WSGI application: routes, checks, pages
    cli            the ``chttp-server console`` options and their runner
    messages_command  ``chttp-server messages list/show``: the queries above as shell lines

Templates, stylesheet and script are in ``templates/``; nothing is built.
"""

from __future__ import annotations

from chttp_server.console.actions import ActionResult, Actions
from chttp_server.console.app import ConsoleApp
from chttp_server.console.database import ConsoleDatabase

__all__ = ["ConsoleApp", "ConsoleDatabase", "Actions", "ActionResult"]
