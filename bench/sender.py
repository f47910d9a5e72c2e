"""The sender scenario: resumable functions, 10 ``persist()`` steps and one certified send.

Placeholder until :mod:`chttp_client` ships ``resumable`` and ``Journal``: it reports the
scenario as skipped rather than measuring something else under its name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.cluster import BenchDatabase
    from bench.scenarios import Options

__all__ = ["run_sender"]


def run_sender(db: BenchDatabase, options: Options) -> dict[str, object]:
    try:
        from chttp_client import Journal, resumable  # noqa: F401
    except ImportError:
        return {"skipped": "chttp_client not ready (no resumable/Journal in chttp_client yet)"}
    return {"skipped": "chttp_client not ready (sender scenario not written yet)"}
