"""The ledger service: accounts with balances that never go negative.

A plain, naive bank: ``POST /accounts/<name>/withdraw`` subtracts, ``…/deposit`` and
``…/refund`` add, and each applied operation is written to ``ledger_operations`` with the
transfer it belongs to. Nothing in this code deduplicates anything — there is no unique
constraint on the transfer id, no "have I seen this before?" query. Exactly-once comes
entirely from :class:`~chttp_server.CertifiedMiddleware`: the handler's writes go through
``req.chttp.connection``, the transaction that also stores the response, so a retried
message is answered from the store and never runs the handler twice. That is why the
audit can count rows in ``ledger_operations`` and demand exactly one per leg.

The rules (:func:`apply_leg` and the reads) are SQL steps (:mod:`~chttp_examples.escrow.steps`)
shared with the ASGI twin, :mod:`~chttp_examples.escrow.ledger_asgi`; this module's
``Resource`` classes are the WSGI face.

A withdraw the balance cannot cover is refused with **402** (``insufficient-funds``).
It is a definitive answer: stored like any other, replayed to every retry, and recorded
as a ``refused`` operation so the audit sees refusals exactly once too. (Not 409 or 422:
those statuses carry protocol meanings a sender acts on, docs/protocol.rst §4.)

Routes::

    GET  /accounts                     every account and balance (not certified)
    GET  /accounts/<name>              one account
    POST /accounts/<name>/withdraw     {"transfer": id, "amount": n}   certified
    POST /accounts/<name>/deposit      {"transfer": id, "amount": n}   certified
    POST /accounts/<name>/refund       {"transfer": id, "amount": n}   certified
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, TypeVar

import webob
import webob.exc
from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Executable,
    Integer,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    update,
)

from chttp_core.db import make_engine
from chttp_core.migrate import upgrade
from chttp_examples.escrow.steps import BadRequest, NotFound, SqlSteps, run_sql
from chttp_server import CertifiedMiddleware, Resource, require_for_methods

__all__ = [
    "metadata",
    "accounts",
    "operations",
    "OPERATIONS",
    "EFFECT",
    "init_ledger",
    "make_app",
    "list_accounts",
    "show_account",
    "apply_leg",
    "parse_leg",
    "problem",
]

T = TypeVar("T")

#: The ledger's own tables, beside (not inside) chttp's ``MetaData``.
metadata = MetaData()

accounts = Table(
    "ledger_accounts",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("opening", Integer, nullable=False),
    Column("balance", Integer, nullable=False),
    # Belt and braces: the handler already refuses; the database refuses too.
    CheckConstraint("balance >= 0", name="balance_not_negative"),
)

operations = Table(
    "ledger_operations",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("transfer", String(128), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("account", String(64), nullable=False),
    Column("amount", Integer, nullable=False),
    Column("message_id", String(128), nullable=False),
)

#: The certified operations and what each does to a balance.
EFFECT: Mapping[str, int] = {"withdraw": -1, "deposit": +1, "refund": +1, "refused": 0}
OPERATIONS = ("withdraw", "deposit", "refund")


def init_ledger(db_url: str, balances: Mapping[str, int]) -> None:
    """Create the tables (chttp's and the ledger's) and open ``balances`` if none exist yet."""
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        metadata.create_all(engine)
        with engine.begin() as connection:
            if connection.execute(select(func.count()).select_from(accounts)).scalar_one() == 0:
                connection.execute(insert(accounts), [
                    {"name": name, "opening": amount, "balance": amount}
                    for name, amount in balances.items()
                ])
    finally:
        engine.dispose()


def make_app(db_url: str, *, engine: Engine | None = None) -> CertifiedMiddleware:
    """The ledger as a WSGI application; every POST must carry a message id."""
    engine = engine or make_engine(db_url)
    metadata.create_all(engine)
    return CertifiedMiddleware(
        LedgerRoot(engine), engine=engine, upgrade_schema=True,
        require_id=require_for_methods("POST"),
    )


# -- the rules (both front ends run these: chttp_examples.escrow.steps) ---------------------


def list_accounts() -> SqlSteps[dict[str, int]]:
    """Every account and its balance."""
    rows = (yield select(accounts).order_by(accounts.c.name)).all()
    return {row.name: row.balance for row in rows}


def show_account(name: str) -> SqlSteps[dict[str, Any]]:
    """One account; :class:`NotFound` if there is none."""
    balance = (yield _balance(name)).scalar_one_or_none()
    if balance is None:
        raise NotFound(f"no account {name!r}")
    return {"account": name, "balance": balance}


def apply_leg(account: str, kind: str, body: bytes, message_id: str
              ) -> SqlSteps[tuple[int, dict[str, Any]]]:
    """One leg of a transfer on the message's connection: ``(status, JSON body)``.

    200 and the new balance, or 402 insufficient-funds (a problem document, recorded as
    a ``refused`` operation); :class:`BadRequest`, :class:`NotFound` otherwise. Naive
    on purpose: it never asks whether this transfer was seen before.
    """
    transfer, amount = parse_leg(body)
    if kind == "withdraw":
        # One statement: atomic against a concurrent withdraw on PostgreSQL too.
        statement = (
            update(accounts)
            .where(accounts.c.name == account, accounts.c.balance >= amount)
            .values(balance=accounts.c.balance - amount)
        )
    else:
        statement = (
            update(accounts)
            .where(accounts.c.name == account)
            .values(balance=accounts.c.balance + amount)
        )
    row = (yield statement.returning(accounts.c.balance)).first()
    if row is None:
        balance = (yield _balance(account)).scalar_one_or_none()
        if balance is None:
            raise NotFound(f"no account {account!r}")
        yield _record(message_id, transfer, "refused", account, amount)
        return 402, problem("insufficient-funds", "Insufficient funds",
                            f"{account} holds {balance}, cannot withdraw {amount}", 402,
                            account=account, balance=balance, amount=amount)
    yield _record(message_id, transfer, kind, account, amount)
    return 200, {"account": account, "operation": kind, "amount": amount,
                 "transfer": transfer, "balance": row.balance}


def parse_leg(body: bytes) -> tuple[str, int]:
    """``{"transfer": id, "amount": n}`` → ``(id, n)``; :class:`BadRequest` otherwise."""
    try:
        leg = json.loads(body or b"null")
        transfer, amount = leg["transfer"], leg["amount"]
    except (ValueError, TypeError, KeyError):
        raise BadRequest('expected {"transfer": id, "amount": n}') from None
    if not isinstance(transfer, str) or not isinstance(amount, int) or isinstance(amount, bool) \
            or amount <= 0:
        raise BadRequest("transfer must be a string, amount a positive integer")
    return transfer, amount


def problem(type_: str, title: str, detail: str, status: int, **extra: Any) -> dict[str, Any]:
    """An RFC 9457 problem document; as a 4xx it is stored and replayed like any answer."""
    return {"type": type_, "title": title, "status": status, "detail": detail, **extra}


def _record(message_id: str, transfer: str, kind: str, account: str, amount: int) -> Executable:
    return insert(operations).values(transfer=transfer, kind=kind, account=account,
                                     amount=amount, message_id=message_id)


def _balance(name: str) -> Executable:
    return select(accounts.c.balance).where(accounts.c.name == name)


# -- the WSGI face ------------------------------------------------------------------------


class LedgerRoot(Resource):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def child(self, segment: str) -> Resource | None:
        return Accounts(self.engine) if segment == "accounts" else None

    def handle_get(self, req: Any) -> Any:
        return {"service": "ledger"}


class Accounts(Resource):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def child(self, segment: str) -> Resource | None:
        return Account(self.engine, segment)

    def handle_get(self, req: Any) -> Any:
        with self.engine.connect() as connection:
            return run_sql(list_accounts(), connection)


class Account(Resource):
    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name

    def child(self, segment: str) -> Resource | None:
        return Operation(self.name, segment) if segment in OPERATIONS else None

    def handle_get(self, req: Any) -> Any:
        with self.engine.connect() as connection:
            return _webob_errors(run_sql, show_account(self.name), connection)


class Operation(Resource):
    """``POST /accounts/<name>/<kind>``: one leg of a transfer, applied exactly once."""

    def __init__(self, account: str, kind: str) -> None:
        self.account = account
        self.kind = kind

    def handle_post(self, req: Any) -> Any:
        connection: Connection = req.chttp.connection   # the message's own transaction
        status, body = _webob_errors(
            run_sql, apply_leg(self.account, self.kind, req.body, req.chttp.message_id),
            connection)
        if status == 200:
            return body
        return webob.Response(status=status, body=json.dumps(body).encode(),
                              content_type="application/problem+json", charset=None)


def _webob_errors(function: Callable[..., T], *args: Any) -> T:
    """The rules' errors as WebOb's HTTP errors (what ``Resource`` renders)."""
    try:
        return function(*args)
    except BadRequest as error:
        raise webob.exc.HTTPBadRequest(str(error)) from None
    except NotFound as error:
        raise webob.exc.HTTPNotFound(str(error)) from None
