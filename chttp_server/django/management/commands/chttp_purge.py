"""``python manage.py chttp_purge``: delete messages past their retention (docs/protocol.rst §4).

Run it from cron or a scheduler as often as the table should shrink; it deletes in
short batches, each its own statement, and on PostgreSQL never waits on a live claim
(:meth:`chttp_server.MessageStore.purge`).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from chttp_server.django.conf import SETTING_NAME, read_settings
from chttp_server.django.connection import django_engine, initialize
from chttp_server.errors import ConfigurationError
from chttp_server.store import MessageStore


class Command(BaseCommand):
    help = "Delete certified messages whose retention has passed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=1000,
                            help="rows deleted per statement (default 1000)")
        parser.add_argument("--pause", type=float, default=0.0,
                            help="seconds to sleep between batches, leaving the database "
                                 "to live traffic (default 0)")
        parser.add_argument("--share", type=float, default=None,
                            help="pace the purge by what it observes: spend at most this "
                                 "fraction of the time deleting (e.g. 0.2), each pause scaled "
                                 "from the batch before it (default: flat out)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            conf = read_settings(getattr(settings, SETTING_NAME, None))
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from exc
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        if not 0 <= options["pause"] < float("inf"):
            raise CommandError("--pause must be a finite number of seconds >= 0")
        share = options["share"]
        if share is not None and not 0 < share <= 1:
            raise CommandError("--share must be a fraction above 0 and at most 1 (e.g. 0.2)")
        engine = django_engine(conf.database)
        initialize(engine)
        store = MessageStore(engine, retention=conf.retention, claim_timeout=conf.claim_timeout)
        deleted = store.purge(batch_size=options["batch_size"], pause=options["pause"],
                              share=share)
        self.stdout.write(f"deleted {deleted} expired message(s)")
