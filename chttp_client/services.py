"""What one run of a resumable function uses of its journal, in one object.

:class:`~chttp_client.journal.Journal` makes it (``journal.services``) for each
:class:`~chttp_client.context.ResumableContext`, so the context depends on these parts
and not on the journal that assembles them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

import httpx

from chttp_client.acknowledger import Acknowledger
from chttp_client.heartbeat import Heartbeat
from chttp_client.oplog_store import OplogStore
from chttp_client.sending import RetryPolicy

__all__ = ["RunServices"]


@dataclass(frozen=True)
class RunServices:
    """What a run needs of its journal: where to write, how to send, what time it is."""

    store: OplogStore
    acknowledger: Acknowledger
    http_client: httpx.Client
    retry: RetryPolicy
    clock: Callable[[], datetime]
    sleep: Callable[[float], None]
    #: How long a lease lasts without a commit renewing it.
    lease: timedelta
    #: Renews the lease while a send is in flight.
    heartbeat: Heartbeat
