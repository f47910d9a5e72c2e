"""The foundation both halves of certified-http stand on; it imports neither.

* :mod:`chttp_core.wire` — header names, the id syntax, the request fingerprint, HTTP
  dates and problem types (docs/protocol.rst §1, §4);
* :mod:`chttp_core.db` — engines with the per-dialect settings a store needs, and the
  test for "the database cannot be reached";
* :mod:`chttp_core.schema` — the one ``MetaData`` of every ``chttp_`` table;
* :mod:`chttp_core.migrate` — the Alembic lineage of those tables (shipped as
  ``chttp_core.migrations``), from code and from the command line;
* :mod:`chttp_core.errors` — the root :class:`ChttpError` and schema errors;
* :mod:`chttp_core.telemetry` — OpenTelemetry imported lazily once, a no-op while it is
  absent or unconfigured, and W3C trace context in and out.

Nothing here imports WebOb, ``chttp_client`` or ``chttp_server``: a sender-only service
installs the sender and this package, and nothing of the receiver.
"""

from __future__ import annotations

from chttp_core.errors import ChttpError, SchemaOutOfDateError

__all__ = ["ChttpError", "SchemaOutOfDateError"]
