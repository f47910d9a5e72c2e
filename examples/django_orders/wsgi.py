"""The WSGI application of the order service (``WSGI_APPLICATION``)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chttp_examples.django_orders.settings")

application = get_wsgi_application()
