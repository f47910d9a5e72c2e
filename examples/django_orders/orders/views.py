"""The views: plain Django ORM code; ``request.chttp`` only where another service is called."""

from __future__ import annotations

import json

from chttp_examples.django_orders.orders.models import Order
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_http_methods, require_POST


@require_http_methods(["GET", "POST"])
def orders(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return JsonResponse({"orders": [order.as_json() for order in Order.objects.all()]})
    payload = json.loads(request.body or b"{}")
    order = Order.objects.create(item=str(payload["item"]), quantity=int(payload.get("quantity", 1)))
    return JsonResponse(order.as_json(), status=201)


@require_POST
def ship_order(request: HttpRequest, order_id: int) -> HttpResponse:
    order = get_object_or_404(Order, pk=order_id)
    message = request.chttp
    if message is None:
        return JsonResponse({"error": "shipping needs an X-Message-ID, so that it happens once"},
                            status=400)
    # A certified send: if this view fails and the request is retried, the same
    # shipment request (same derived id) is sent again and answered from the store.
    shipment = message.post(f"{settings.SHIPPING_URL}/shipments",
                            json={"order": order.id, "item": order.item})
    shipment.raise_for_status()
    order.tracking = shipment.json()["tracking"]
    order.save(update_fields=["tracking"])
    return JsonResponse(order.as_json())
