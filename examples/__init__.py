"""Runnable applications built on both halves of Certified HTTP.

Installed as the package ``chttp_examples`` (``setup.cfg`` maps it to ``examples/``), so
``chttp-server demo`` runs from an installed distribution, not only from a checkout.
"""

from __future__ import annotations

__all__: list[str] = []
