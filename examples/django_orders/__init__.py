"""An order service in Django, made exactly-once by two settings lines.

The views are written the way the Django tutorial writes them — ``Order.objects.create``
on the default database — and know nothing of certified HTTP except ``request.chttp``
in the one view that calls another service. With ``"chttp_server.django"`` in
``INSTALLED_APPS`` and ``"chttp_server.django.CertifiedMiddleware"`` in ``MIDDLEWARE``
(see :mod:`.settings`), every request that carries ``X-Message-ID`` (or
``Idempotency-Key``) runs once: a retry gets the stored answer, and a view that fails
leaves nothing written (docs/protocol.rst §2).

* ``POST /orders`` ``{"item": "tea", "quantity": 2}`` → 201 ``{"id": …}``
* ``GET /orders`` → every order
* ``POST /orders/<id>/ship`` → asks the shipping service (``SHIPPING_URL``) for a
  shipment with a certified send, records its tracking number on the order.

Run it (``python -m chttp_examples.django_orders`` is its ``manage.py``)::

    export CHTTP_ORDERS_DB=sqlite:///orders.db
    python -m chttp_examples.django_orders migrate
    python -m chttp_examples.django_orders serve --port 8080
"""
from __future__ import annotations
