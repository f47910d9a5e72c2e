"""The ASGI application of the order service (``ASGI_APPLICATION``), e.g. for uvicorn::

    uvicorn chttp_examples.django_orders.asgi:application

The same project, middleware and views as under WSGI (``wsgi.py``): Django's ASGI
handler runs the certified middleware and the sync views in one thread per request,
and async views' ORM calls (``acreate``, ``sync_to_async``) in that same thread, so
every write lands in the message's transaction (docs/django.rst, "Under ASGI").
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chttp_examples.django_orders.settings")

application = get_asgi_application()
