"""The order model."""

from __future__ import annotations

from typing import Any

from django.db import models


class Order(models.Model):
    item = models.CharField(max_length=100)
    quantity = models.IntegerField(default=1)
    tracking = models.CharField(max_length=100, null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "item": self.item, "quantity": self.quantity,
                "tracking": self.tracking}
