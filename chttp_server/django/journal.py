"""The journal of views' own certified sends (``request.chttp.post(...)``), chosen once.

A view's sends are resumable steps (:mod:`chttp_client.incoming`): their records must
survive the rollback of the request's transaction, so the journal always commits on
connections of its own, never on Django's request connection:

* ``CHTTP["JOURNAL"]`` a ``chttp_client.Journal``: that one;
* a URL (``"sqlite:///outgoing.db"``): a journal there, its schema brought to head on
  first use;
* ``None`` on PostgreSQL: a journal on separate connections to the same database (the
  ``chttp_`` journal tables are created by ``manage.py migrate`` with the others);
* ``None`` on SQLite: none — a view that sends is told to set ``CHTTP["JOURNAL"]``,
  because a second connection to the same SQLite file would wait for the request's
  own write lock.
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.db import connections

from chttp_client import Journal
from chttp_server.django.conf import SETTING_NAME
from chttp_core.errors import StoreURLError
from chttp_server.django.connection import separate_engine
from chttp_server.errors import ConfigurationError

__all__ = ["journal_for"]


class _NoJournal:
    """Stands for a journal that was not configured; any use names the setting."""

    def __getattr__(self, name: str) -> NoReturn:
        raise ConfigurationError(
            "a view's certified sends need a journal outside the SQLite message store "
            f"(its file is locked by the request's transaction): set {SETTING_NAME}"
            "['JOURNAL'] = 'sqlite:///outgoing.db' (another file) in settings"
        )

    def __repr__(self) -> str:
        return "<no journal configured>"


def journal_for(setting: Any, alias: str) -> Any:
    """The journal views' sends use (see the module docstring)."""
    if isinstance(setting, Journal):
        return setting
    if isinstance(setting, str):
        try:
            return Journal(setting)
        except StoreURLError as error:   # a typo in the URL: named with the setting
            raise ConfigurationError(f"{SETTING_NAME}['JOURNAL']: {error}") from None
    if setting is not None:
        raise ConfigurationError(f"{SETTING_NAME}['JOURNAL'] must be a Journal, a URL or None")
    if connections[alias].vendor == "postgresql":
        return Journal(engine=separate_engine(alias), upgrade_schema=False)
    return _NoJournal()
