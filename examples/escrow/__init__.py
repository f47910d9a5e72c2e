"""The escrow: move money between two ledgers atomically, though not in isolation.

Three services, each its own process and its own database:

* :mod:`~chttp_examples.escrow.ledger` — accounts and balances; withdraw, deposit and
  refund are certified POSTs, so each is applied exactly once however often it arrives;
* :mod:`~chttp_examples.escrow.escrow` — accepts a transfer (a certified POST), then a
  resumable function gathers the contributors' money, distributes it, or refunds what it
  gathered when a ledger refuses; it survives SIGKILL at any moment;
* :mod:`~chttp_examples.escrow.client` — a resumable function submitting a stream of
  transfers.

:mod:`~chttp_examples.escrow.demo` runs them all under a chaos loop that kills and
restarts random processes, then audits every coin (:mod:`~chttp_examples.escrow.audit`).
"""

from __future__ import annotations

__all__: list[str] = []
