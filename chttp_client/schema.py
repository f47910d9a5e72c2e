"""The one :class:`MetaData` behind every table this project owns.

DESIGN.md: a single SQLAlchemy Core ``MetaData`` and a single Alembic lineage, all
tables prefixed ``chttp_``, so the whole store can sit in a host application's database
beside the host's own tables and migrations. The receiver's tables are declared in
``chttp_server.schema`` on this same object; the sender's tables are declared here.
"""

from __future__ import annotations

from sqlalchemy import MetaData

__all__ = ["metadata", "TABLE_PREFIX"]

TABLE_PREFIX = "chttp_"

#: Deterministic constraint names, so migrations can name what they alter on every dialect.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)
