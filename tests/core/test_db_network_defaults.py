"""PostgreSQL engines get bounded network waits unless the URL or the caller chose.

A silent partition must end in a 503, not in TCP's ~15 minute retransmission horizon
(docs/protocol.rst §4; tests/multihost/test_silent_partition.py shows it end to end).
Here: which options reach libpq, and that the URL's own and the caller's win.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import make_url

from chttp_core.db import POSTGRESQL_CONNECT_DEFAULTS, make_engine, postgresql_connect_args


def test_defaults_are_added_where_nobody_chose():
    chosen = postgresql_connect_args(make_url("postgresql+psycopg2://u@h/db"))
    assert chosen["connect_timeout"] == 5
    assert chosen["keepalives"] == 1
    assert chosen["tcp_user_timeout"] == 10_000  # libpq here is >= 12
    assert set(chosen) == set(POSTGRESQL_CONNECT_DEFAULTS)


def test_the_url_and_the_caller_override_a_default():
    url = make_url("postgresql+psycopg2://u@h/db?connect_timeout=2&tcp_user_timeout=4000")
    chosen = postgresql_connect_args(url, {"keepalives_idle": 60})
    assert "connect_timeout" not in chosen and "tcp_user_timeout" not in chosen
    assert chosen["keepalives_idle"] == 60
    assert chosen["keepalives_count"] == 3


def test_a_live_connection_carries_them(pg_url):
    engine = make_engine(pg_url + "?connect_timeout=7")
    try:
        with engine.connect() as connection:
            dsn = connection.connection.dbapi_connection.get_dsn_parameters()
            assert dsn["connect_timeout"] == "7"
            assert dsn["keepalives_idle"] == "10"
            assert dsn["tcp_user_timeout"] == "10000"
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()


def test_sqlite_engines_are_untouched(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        engine.dispose()
