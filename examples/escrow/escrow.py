"""The escrow service: gather → distribute, or refund — surviving SIGKILL at any moment.

Accepting a transfer is a certified POST: the transfer row commits with the stored
response, so a client that retries after losing the answer gets the same transfer id
back and never creates a second transfer. Driving it is a **resumable function**,
:func:`drive_transfer`, journaled in the escrow's own database: each withdraw, deposit
and refund is a certified send whose id is recorded before it leaves, so after a crash
``journal.resume_all()`` replays what was already answered and carries on with the same
ids — the ledgers see every leg exactly once, whatever was killed when.

Why a function and not a handler: the escrow answers the client at once (201) and does
the slow part afterwards, in a pool of driver threads. Two drivers must never run one
transfer (their sends would carry different ids), so the first step of the function is a
certified ``POST /transfers/<id>/claim`` to the escrow itself: the first claim message to
arrive becomes the transfer's driver, and because the claim is a journaled send, a
resumed oplog re-sends the *same* claim and is told "yes" again, while a second oplog for
the same transfer (a fresh one started while an older one waited for ``resume_all``) is
told "no" and stops before touching a ledger. (A claim through ``persist()`` would not
do: a persist record becomes durable only with the next send, so a crash in between
would leave a claim that no journal remembers.)

What the escrow does is written once (:mod:`~chttp_examples.escrow.steps`): the HTTP
rules (:func:`accept_transfer`, :func:`claim_transfer`, the reads) as SQL steps, and the
driver as :func:`transfer_steps`, a generator yielding its certified sends and state
writes. This module runs them under WSGI with threads and a ``def`` resumable function;
:mod:`~chttp_examples.escrow.escrow_asgi` runs the same under ASGI with an ``async def``
one.

Routes::

    POST /transfers          {"ref": n, "gather": [leg…], "distribute": [leg…]}  certified
    POST /transfers/<id>/claim                 the driver's claim (see above)     certified
    GET  /transfers          counts by state (not certified)
    GET  /transfers/<id>     one transfer and its state

    leg = {"ledger": "A", "account": "alice", "amount": 5}
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generator, Mapping, TypeVar, Union

import webob
import webob.exc
from sqlalchemy import Column, Engine, Integer, MetaData, String, Table, Text, func, insert, select, update

from chttp_core.db import make_engine
from chttp_core.migrate import upgrade
from chttp_examples.escrow.steps import BadRequest, NotFound, SqlSteps, run_sql
from chttp_server import CertifiedMiddleware, Resource, require_for_methods

__all__ = [
    "metadata",
    "transfers",
    "TERMINAL_STATES",
    "TransferStore",
    "Driver",
    "init_escrow",
    "make_app",
    "validate_transfer",
    "accept_transfer",
    "claim_transfer",
    "show_transfer",
    "count_states",
    "unclaimed_transfers",
    "set_state",
    "Send",
    "SetState",
    "transfer_steps",
]

T = TypeVar("T")

log = logging.getLogger("chttp_examples.escrow")

metadata = MetaData()

transfers = Table(
    "escrow_transfers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("ref", Integer, nullable=False),
    Column("spec", Text, nullable=False),          # the accepted request, JSON
    Column("state", String(16), nullable=False),
    Column("driver", String(64), nullable=True),   # the token of the oplog that owns it
    Column("detail", Text, nullable=True),         # JSON: gathered legs, the refusal
)

#: accepted → gathering → distributing → completed, or gathering → refunding → refunded.
TERMINAL_STATES = ("completed", "refunded")


def init_escrow(db_url: str) -> None:
    """Create chttp's tables (messages and journal) and the escrow's own."""
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        metadata.create_all(engine)
    finally:
        engine.dispose()


# -- the rules (both front ends run these: chttp_examples.escrow.steps) ---------------------


def accept_transfer(body: bytes, ledgers: Mapping[str, str]) -> SqlSteps[str]:
    """Validate a submitted transfer and write it as ``accepted``; returns its new id."""
    try:
        submitted = json.loads(body or b"null")
    except ValueError:
        raise BadRequest("expected a JSON transfer") from None
    spec = validate_transfer(submitted, ledgers)
    transfer_id = uuid.uuid4().hex   # random is fine: it commits with the stored answer
    yield insert(transfers).values(id=transfer_id, ref=spec["ref"], spec=json.dumps(spec),
                                   state="accepted")
    return transfer_id


def claim_transfer(transfer_id: str, message_id: str) -> SqlSteps[dict[str, Any]]:
    """The first claim message to arrive becomes the transfer's driver (see above)."""
    yield (
        update(transfers)
        .where(transfers.c.id == transfer_id, transfers.c.driver.is_(None))
        .values(driver=message_id, state="gathering")
    )
    row = (yield select(transfers.c.driver, transfers.c.spec)
           .where(transfers.c.id == transfer_id)).first()
    if row is None:
        raise NotFound(f"no transfer {transfer_id!r}")
    return {"claimed": row.driver == message_id, "spec": json.loads(row.spec)}


def show_transfer(transfer_id: str) -> SqlSteps[dict[str, Any]]:
    row = (yield select(transfers).where(transfers.c.id == transfer_id)).first()
    if row is None:
        raise NotFound(f"no transfer {transfer_id!r}")
    return {"id": row.id, "ref": row.ref, "state": row.state, "spec": json.loads(row.spec),
            "detail": json.loads(row.detail) if row.detail else None}


def count_states() -> SqlSteps[dict[str, Any]]:
    """``{"total": n, "states": {state: count}}`` — what the demo and the client poll."""
    rows = (yield select(transfers.c.state, func.count()).group_by(transfers.c.state)).all()
    counts = {state: count for state, count in rows}
    return {"total": sum(counts.values()), "states": counts}


def unclaimed_transfers(limit: int) -> SqlSteps[list[str]]:
    rows = (yield select(transfers.c.id).where(transfers.c.driver.is_(None))
            .order_by(transfers.c.ref).limit(limit)).scalars()
    return list(rows)


def set_state(transfer_id: str, state: str, detail: Any = None) -> SqlSteps[str]:
    """Idempotent: the driver's ``persist`` may run it again after a crash."""
    yield (update(transfers).where(transfers.c.id == transfer_id)
           .values(state=state, detail=None if detail is None else json.dumps(detail)))
    return state


class TransferStore:
    """The rules above on their own short transactions, for the driver and the reads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def set_state(self, transfer_id: str, state: str, detail: Any = None) -> str:
        with self.engine.begin() as connection:
            return run_sql(set_state(transfer_id, state, detail), connection)

    def unclaimed(self, limit: int) -> list[str]:
        with self.engine.connect() as connection:
            return run_sql(unclaimed_transfers(limit), connection)

    def counts(self) -> dict[str, Any]:
        with self.engine.connect() as connection:
            return run_sql(count_states(), connection)

    def show(self, transfer_id: str) -> dict[str, Any]:
        with self.engine.connect() as connection:
            return run_sql(show_transfer(transfer_id), connection)


# -- the driver: one rule, a sync and an async executor ----------------------------------


@dataclass(frozen=True)
class Send:
    """A certified ``POST`` of the driver; the answer (``httpx.Response``) comes back."""

    url: str
    json: Any = None


@dataclass(frozen=True)
class SetState:
    """A persisted :func:`set_state`; the state comes back."""

    transfer_id: str
    state: str
    detail: Any = None


DriverSteps = Generator[Union[Send, SetState], Any, str]


def transfer_steps(transfer_id: str, escrow_url: str, ledgers: Mapping[str, str]) -> DriverSteps:
    """What the driver of one transfer does, in order; the executor performs each effect."""
    def leg_url(leg: Mapping[str, Any], operation: str) -> str:
        return f"{ledgers[leg['ledger']]}/accounts/{leg['account']}/{operation}"

    def leg_body(leg: Mapping[str, Any]) -> dict[str, Any]:
        return {"transfer": transfer_id, "amount": leg["amount"]}

    # Claim the transfer with a certified message to ourselves: its id is journaled
    # before it leaves, so after a crash the resumed oplog re-sends the same claim and
    # gets the same answer, and a second oplog's claim (another id) is refused.
    claim = yield Send(f"{escrow_url}/transfers/{transfer_id}/claim")
    if not claim.json()["claimed"]:
        return "driven-elsewhere"
    spec = claim.json()["spec"]

    gathered: list[dict[str, Any]] = []
    refusal: dict[str, Any] | None = None
    for leg in spec["gather"]:
        answer = yield Send(leg_url(leg, "withdraw"), leg_body(leg))
        if answer.status_code != 200:   # 402 insufficient funds, 404 no such account
            refusal = {"leg": leg, "status": answer.status_code, "answer": answer.json()}
            break
        gathered.append(leg)

    # State writes are plain and idempotent: persist() runs them at least once
    # (a record is durable only with the next send), and running one twice is harmless.
    if refusal is None:
        yield SetState(transfer_id, "distributing")
        for leg in spec["distribute"]:
            answer = yield Send(leg_url(leg, "deposit"), leg_body(leg))
            if answer.status_code != 200:
                raise RuntimeError(f"deposit refused: {answer.status_code} {answer.text}")
        return str((yield SetState(transfer_id, "completed")))

    yield SetState(transfer_id, "refunding")
    for leg in reversed(gathered):
        answer = yield Send(leg_url(leg, "refund"), leg_body(leg))
        if answer.status_code != 200:
            raise RuntimeError(f"refund refused: {answer.status_code} {answer.text}")
    detail = {"refused": refusal, "refunded": gathered}
    return str((yield SetState(transfer_id, "refunded", detail)))


def make_driver_function(
    journal: Any, store: TransferStore, escrow_url: str, ledgers: Mapping[str, str]
) -> Callable[..., Any]:
    """Register ``drive_transfer`` with ``journal``; ``ledgers`` maps names to base URLs."""
    from chttp_client import resumable

    @resumable(journal, name="chttp_examples.escrow.drive_transfer")
    def drive_transfer(transfer_id: str, *, chttp_context: Any) -> str:
        steps = transfer_steps(transfer_id, escrow_url, ledgers)
        value: Any = None
        while True:
            try:
                effect = steps.send(value)
            except StopIteration as stop:
                return str(stop.value)
            if isinstance(effect, Send):
                value = chttp_context.post(effect.url, json=effect.json)
            else:
                value = chttp_context.persist(store.set_state, effect.transfer_id,
                                              effect.state, effect.detail)

    return drive_transfer


class Driver:
    """Resumes what a crash cut off, then drives new transfers in a few threads."""

    def __init__(
        self,
        journal: Any,
        store: TransferStore,
        escrow_url: str,
        ledgers: Mapping[str, str],
        *,
        # Transfers driven at once; each is one thread making certified sends.
        workers: int = 4,
        # Seconds between looks for new transfers when nobody rings.
        poll_interval: float = 0.2,
    ) -> None:
        self.journal = journal
        self.store = store
        self.drive = make_driver_function(journal, store, escrow_url, ledgers)
        self.workers = workers
        self.poll_interval = poll_interval
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="escrow-driver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        # First finish every oplog a crash left open: they hold claims nobody else can take.
        while not self._stop.is_set():
            try:
                for outcome in self.journal.resume_all(timeout=None):  # finish first: a thread of its own
                    log.warning("resumed oplog %s: %s %s", outcome.oplog_id, outcome.status,
                                outcome.error or outcome.value)
                break
            except Exception:  # a ledger may still be down; the sends retry, this retries too
                log.exception("resume_all failed; trying again")
                self._stop.wait(1.0)
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="drive") as pool:
            while not self._stop.is_set():
                with self._lock:
                    room = self.workers - len(self._running)
                    fresh = [t for t in self.store.unclaimed(self.workers * 2) if t not in self._running]
                    for transfer_id in fresh[:max(0, room)]:
                        self._running.add(transfer_id)
                        pool.submit(self._drive_one, transfer_id)
                self.wake.wait(self.poll_interval)
                self.wake.clear()

    def _drive_one(self, transfer_id: str) -> None:
        try:
            outcome = self.drive(transfer_id)
            log.info("transfer %s: %s", transfer_id, outcome)
        except Exception:
            log.exception("transfer %s: the driver raised", transfer_id)
        finally:
            with self._lock:
                self._running.discard(transfer_id)
            self.wake.set()


# -- the HTTP face ------------------------------------------------------------------------


def validate_transfer(body: Any, ledgers: Mapping[str, str]) -> dict[str, Any]:
    """The accepted shape of a transfer; :class:`BadRequest` otherwise. Money in equals money out."""
    def legs(name: str) -> list[dict[str, Any]]:
        value = body.get(name) if isinstance(body, dict) else None
        if not isinstance(value, list) or not value:
            raise BadRequest(f"{name} must be a non-empty list of legs")
        for leg in value:
            if not (isinstance(leg, dict) and leg.get("ledger") in ledgers
                    and isinstance(leg.get("account"), str)
                    and isinstance(leg.get("amount"), int) and leg["amount"] > 0):
                raise BadRequest(f"bad leg in {name}: {leg!r}")
        return [{"ledger": leg["ledger"], "account": leg["account"], "amount": leg["amount"]}
                for leg in value]

    gather, distribute = legs("gather"), legs("distribute")
    if sum(leg["amount"] for leg in gather) != sum(leg["amount"] for leg in distribute):
        raise BadRequest("gathered and distributed amounts differ")
    ref = body.get("ref")
    if not isinstance(ref, int):
        raise BadRequest("ref must be an integer")
    return {"ref": ref, "gather": gather, "distribute": distribute}


# -- the WSGI face ------------------------------------------------------------------------


class EscrowRoot(Resource):
    def __init__(self, store: TransferStore, ledgers: Mapping[str, str], wake: threading.Event) -> None:
        self.transfers = Transfers(store, ledgers, wake)

    def child(self, segment: str) -> Resource | None:
        return self.transfers if segment == "transfers" else None

    def handle_get(self, req: Any) -> Any:
        return {"service": "escrow"}


class Transfers(Resource):
    def __init__(self, store: TransferStore, ledgers: Mapping[str, str], wake: threading.Event) -> None:
        self.store = store
        self.ledgers = ledgers
        self.wake = wake

    def child(self, segment: str) -> Resource | None:
        return Transfer(self.store, segment)

    def handle_post(self, req: Any) -> Any:
        transfer_id = _webob_errors(run_sql, accept_transfer(req.body, self.ledgers),
                                    req.chttp.connection)
        self.wake.set()   # early, but the driver only sees the row once it commits
        response = webob.Response(
            status=201, content_type="application/json", charset=None,
            body=json.dumps({"id": transfer_id, "state": "accepted"}).encode(),
        )
        response.headers["Location"] = f"{req.script_name}/{transfer_id}"
        return response

    def handle_get(self, req: Any) -> Any:
        return self.store.counts()


class Transfer(Resource):
    def __init__(self, store: TransferStore, transfer_id: str) -> None:
        self.store = store
        self.transfer_id = transfer_id

    def child(self, segment: str) -> Resource | None:
        return Claim(self.transfer_id) if segment == "claim" else None

    def handle_get(self, req: Any) -> Any:
        return _webob_errors(self.store.show, self.transfer_id)


class Claim(Resource):
    """``POST /transfers/<id>/claim``: the first claimer's message id becomes the driver."""

    def __init__(self, transfer_id: str) -> None:
        self.transfer_id = transfer_id

    def handle_post(self, req: Any) -> Any:
        return _webob_errors(run_sql, claim_transfer(self.transfer_id, req.chttp.message_id),
                             req.chttp.connection)


def _webob_errors(function: Callable[..., T], *args: Any) -> T:
    """The rules' errors as WebOb's HTTP errors (what ``Resource`` renders)."""
    try:
        return function(*args)
    except BadRequest as error:
        raise webob.exc.HTTPBadRequest(str(error)) from None
    except NotFound as error:
        raise webob.exc.HTTPNotFound(str(error)) from None


def make_app(
    db_url: str,
    ledgers: Mapping[str, str],
    *,
    # Where this escrow itself answers: the driver claims transfers through it.
    escrow_url: str,
    engine: Engine | None = None,
    # Transfers driven at once.
    workers: int = 4,
    # How the driver's sends retry (chttp_client.RetryPolicy); None: the default.
    retry_policy: Any = None,
    # The driver's journal; None: one in the escrow's own database (tests pass one whose
    # HTTP goes through httpx.WSGITransport).
    journal: Any = None,
) -> tuple[CertifiedMiddleware, Driver]:
    """The escrow's WSGI application and its (not yet started) driver."""
    from chttp_client import Journal

    engine = engine or make_engine(db_url)
    metadata.create_all(engine)
    store = TransferStore(engine)
    if journal is None:
        journal = Journal(db_url) if retry_policy is None else Journal(db_url, retry=retry_policy)
    driver = Driver(journal, store, escrow_url, ledgers, workers=workers)
    app = CertifiedMiddleware(
        EscrowRoot(store, ledgers, driver.wake), engine=engine, upgrade_schema=True,
        require_id=require_for_methods("POST"),
    )
    return app, driver
