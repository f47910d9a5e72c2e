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

    def ready(self) -> None:
        from django.core.checks import register

        from chttp_server.django.checks import check_upload_limit

        # Django's own body cap against ours: `manage.py check` (and every command that
        # runs the checks) warns, naming both settings (chttp.W001).
        register(check_upload_limit)
