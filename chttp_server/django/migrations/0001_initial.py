"""Create the chttp tables (messages and journal) in the database ``CHTTP["DATABASE"]`` names.

The tables belong to the chttp Alembic lineage (:mod:`chttp_core.migrate`), which keeps
its own version table (``chttp_alembic_version``); this migration runs that lineage to
head on Django's migration connection, inside Django's migration transaction, so
``python manage.py migrate`` is the only command a Django project needs. A later chttp
release with new revisions ships another Django migration that runs it again.

On any other alias this migration does nothing (like a router declining). Unapplying it
leaves the tables in place: they hold messages that senders may still retry.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import migrations

from chttp_core import migrate
from chttp_server.django.conf import SETTING_NAME, read_settings
from chttp_server.django.connection import django_engine, initialize


def upgrade_chttp_tables(apps: Any, schema_editor: Any) -> None:
    alias = schema_editor.connection.alias
    if alias != read_settings(getattr(settings, SETTING_NAME, None)).database:
        return
    engine = django_engine(alias)
    initialize(engine)
    with engine.connect() as connection:
        migrate.upgrade(connection)


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [
        migrations.RunPython(upgrade_chttp_tables, migrations.RunPython.noop),
    ]
