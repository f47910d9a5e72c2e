"""The Django app ``chttp_server.django`` (label ``chttp``): its migration and command."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["ChttpConfig"]


class ChttpConfig(AppConfig):
    """Installed as ``"chttp_server.django"``; migrations and commands use the label ``chttp``."""

    name = "chttp_server.django"
    label = "chttp"
    verbose_name = "Certified HTTP"
    default = True
