"""URLs of the order service."""

from __future__ import annotations

from chttp_examples.django_orders.orders import views
from django.urls import path

urlpatterns = [
    path("orders", views.orders, name="orders"),
    path("orders/<int:order_id>/ship", views.ship_order, name="ship-order"),
]
