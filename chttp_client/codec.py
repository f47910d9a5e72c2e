"""JSON records for the oplog: values, arguments, results and exceptions.

The journal must store whatever a resumable function persists, receives and returns, and
hand back *the same thing* on replay. JSON keeps records readable (``chttp-client show``)
and safe to load (pickle would execute code from the database), so the few common types
JSON lacks are written as one-key tagged objects::

    bytes     {"$bytes": "<base64>"}        datetime {"$datetime": "<ISO 8601>"}
    date      {"$date": "2026-11-28"}       time     {"$time": "12:00:00"}
    UUID      {"$uuid": "…"}                Decimal  {"$decimal": "1.10"}
    tuple     {"$tuple": [...]}             a dict whose only key starts with "$"
                                            {"$dict": {...}} (so it never reads as a tag)

Anything else raises :class:`TypeError` when it is recorded, so a value that cannot be
replayed is refused on the first run rather than discovered after a crash. A function
sees the *decoded* form even on its first run (see :func:`roundtrip`), so first run and
replay behave alike.

Exceptions are recorded as their import path and arguments and rebuilt with
``cls(*args)``; one that cannot be rebuilt comes back as :class:`RecordedError`.

A record that cannot be read back — text that is not JSON, a tag this version does not
know (written by a newer one), a tagged value that is malformed — raises
:class:`CodecError`, a :class:`~chttp_client.errors.JournalError`, never a bare
``KeyError`` or ``binascii.Error`` from deep inside; ``where`` (e.g. ``"oplog X step
3"``) names the record in its message. Before, an unknown tag came back silently as a
one-key dict, so a replay could carry on with a value the function never saw.
"""

from __future__ import annotations

import base64
import importlib
import json
import uuid
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from chttp_client.errors import JournalError

__all__ = [
    "CodecError",
    "encode",
    "decode",
    "dumps",
    "loads",
    "roundtrip",
    "exception_record",
    "rebuild_exception",
    "RecordedError",
]


class RecordedError(Exception):
    """An exception recorded in the oplog whose class could not be rebuilt on replay.

    ``type_path`` is ``module:qualname`` of the original class, ``args`` its arguments.
    """

    def __init__(self, type_path: str, args: list[Any], message: str) -> None:
        super().__init__(type_path, args, message)
        self.type_path = type_path
        self.recorded_args = args
        self.message = message

    def __str__(self) -> str:
        return f"{self.type_path}: {self.message}"


class CodecError(JournalError):
    """An oplog record that cannot be decoded: corrupted, or from a newer version.

    ``where`` names the record (``"oplog X step 3"``) when the caller said, ``detail``
    what is wrong with it.
    """

    def __init__(self, detail: str, where: str | None = None) -> None:
        super().__init__(detail, where)
        self.detail = detail
        self.where = where

    def __str__(self) -> str:
        prefix = f"{self.where}: " if self.where else ""
        return f"{prefix}unreadable oplog record: {self.detail}"


def encode(value: Any) -> Any:
    """``value`` as plain JSON data, with the tagged forms above."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, time):
        return {"$time": value.isoformat()}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, tuple):
        return {"$tuple": [encode(item) for item in value]}
    if isinstance(value, list):
        return [encode(item) for item in value]
    if isinstance(value, dict):
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"oplog records need str dict keys, not {type(key).__name__}")
            encoded[key] = encode(item)
        if len(encoded) == 1 and next(iter(encoded)).startswith("$"):
            return {"$dict": encoded}
        return encoded
    raise TypeError(
        f"cannot record a {type(value).__module__}.{type(value).__qualname__} in the oplog "
        "(JSON, bytes, datetime, date, time, UUID, Decimal and tuples are supported)"
    )


_TAGS = {
    "$bytes": lambda raw: base64.b64decode(raw, validate=True),
    "$datetime": datetime.fromisoformat,
    "$date": date.fromisoformat,
    "$time": time.fromisoformat,
    "$uuid": uuid.UUID,
    "$decimal": Decimal,
}


def decode(data: Any, *, where: str | None = None) -> Any:
    """The inverse of :func:`encode`; :class:`CodecError` for a record it cannot read.

    :func:`encode` never writes a one-key dict whose key starts with ``$`` other than as
    a tag (it wraps such a dict in ``$dict``), so an unknown ``$`` key is a tag from a
    newer version, or corruption: either way not a value to hand to a function.
    """
    try:
        return _decode(data)
    except CodecError as error:
        error.where = error.where or where
        raise
    except (TypeError, ValueError, AttributeError, ArithmeticError, RecursionError) as error:
        # binascii.Error and decimal.InvalidOperation are ValueError / ArithmeticError.
        raise CodecError(f"{type(error).__name__}: {error}", where) from error


def _decode(data: Any) -> Any:
    if isinstance(data, list):
        return [_decode(item) for item in data]
    if isinstance(data, dict):
        if len(data) == 1:
            (key, raw), = data.items()
            if key in _TAGS:
                if not isinstance(raw, str):
                    raise CodecError(f"{key} holds a {type(raw).__name__}, not a string")
                try:
                    return _TAGS[key](raw)
                except (ValueError, ArithmeticError) as error:
                    raise CodecError(f"malformed {key} value {raw[:40]!r}") from error
            if key == "$tuple":
                if not isinstance(raw, list):
                    raise CodecError(f"$tuple holds a {type(raw).__name__}, not a list")
                return tuple(_decode(item) for item in raw)
            if key == "$dict":
                if not isinstance(raw, dict):
                    raise CodecError(f"$dict holds a {type(raw).__name__}, not an object")
                return {name: _decode(item) for name, item in raw.items()}
            if isinstance(key, str) and key.startswith("$"):
                raise CodecError(f"unknown tag {key[:40]!r} (written by a newer version?)")
        return {name: _decode(item) for name, item in data.items()}
    return data


def dumps(value: Any) -> str:
    # sort_keys=False: dict order is part of the value a function sees.
    return json.dumps(encode(value), separators=(",", ":"), allow_nan=True)


def parse(text: str, *, where: str | None = None) -> Any:
    """The JSON data of a stored record, its tags *not* decoded; :class:`CodecError` if
    ``text`` is not JSON.

    For a record holding encoded values that are decoded later, one by one (a step's
    ``outcome``, ``request``, ``response``): decoding them here too would unwrap a
    ``$dict`` twice.
    """
    try:
        return json.loads(text)
    except (TypeError, ValueError, RecursionError) as error:
        raise CodecError(f"not JSON ({type(error).__name__}: {error})", where) from error


def loads(text: str, *, where: str | None = None) -> Any:
    """Decode a :func:`dumps` text; :class:`CodecError` if it is not one."""
    return decode(parse(text, where=where), where=where)


def roundtrip(value: Any) -> Any:
    """``value`` as a replay will return it (tuples stay tuples, floats stay floats)."""
    return loads(dumps(value))


def _type_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def exception_record(error: BaseException) -> dict[str, Any]:
    """A JSON-ready record of ``error``: type path, arguments and message."""
    try:
        args = encode(list(error.args))
    except TypeError:
        args = [str(error)]
    return {"type": _type_path(type(error)), "args": args, "message": str(error)}


#: Classes renamed since records were written: old type path -> new type path. A
#: protocol error recorded before the rename replays as the class its code now catches.
_RENAMED = {
    f"chttp_client.errors:{old}": f"chttp_client.errors:{old}Error"
    for old in ("MessageRejected", "MessageGone", "MessageTooOld", "MessageIdReused", "ResponseTooLarge")
}


def rebuild_exception(record: object, *, where: str | None = None) -> BaseException:
    """The exception ``record`` describes, or :class:`RecordedError` if it cannot be made.

    :class:`CodecError` if ``record`` is not an exception record at all.
    """
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        raise CodecError("an exception record without a type", where)
    recorded_type: str = record["type"]
    type_path = _RENAMED.get(recorded_type, recorded_type)
    args = decode(record.get("args", []), where=where)
    if not isinstance(args, (list, tuple)):
        raise CodecError("an exception record whose args are not a list", where)
    module_name, _, qualname = type_path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
        if isinstance(target, type) and issubclass(target, BaseException):
            rebuilt = target(*args)
            return rebuilt
    except Exception:  # noqa: BLE001 - any failure means "cannot rebuild"
        pass
    return RecordedError(type_path, list(args), str(record.get("message", "")))
