"""``serve [--host H] [--port N] [--threads T]``: the project under waitress.

Prints ``serving on http://host:port`` once the socket listens (the tests read it).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.core.wsgi import get_wsgi_application
from waitress.server import create_server


class Command(BaseCommand):
    help = "Serve this project with waitress (a threaded production WSGI server)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8080)
        parser.add_argument("--threads", type=int, default=8)

    def handle(self, *args: Any, **options: Any) -> None:
        server = create_server(get_wsgi_application(), host=options["host"],
                               port=options["port"], threads=options["threads"])
        port = server.effective_port
        self.stdout.write(f"serving on http://{options['host']}:{port}")
        self.stdout.flush()
        server.run()
