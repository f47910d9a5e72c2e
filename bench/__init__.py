"""Benchmarks for certified-http: ``python -m bench``.

Measures what exactly-once costs against the same application without it, against the
database's own one-row-insert transaction rate (the physical floor), and against a
packaged peer (``idemkit``'s WSGI middleware on PostgreSQL), all on one throwaway
PostgreSQL cluster with durable commits (``fsync`` and ``synchronous_commit`` on).
The ratios it prints are the result; nothing here is asserted by the test suite.
"""

from __future__ import annotations

__all__: list[str] = []
