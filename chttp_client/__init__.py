"""Certified HTTP, the sending half: resumable functions and certified sends.

The wire definitions both halves share live in :mod:`chttp_client.wire`.
"""

from __future__ import annotations

__all__: list[str] = []
