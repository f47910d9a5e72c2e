"""``Resource``: write a certified REST service as classes with ``handle_<method>``.

The seed's shape (``class Resource(mu.Resource): def handle_foo(self, req)``). Under
:class:`~chttp_server.CertifiedMiddleware` a handler is already inside the certified
context: ``req.chttp`` holds the message id, the scope and the shared transaction.

A handler returns a :class:`webob.Response`, ``bytes`` (``application/octet-stream``),
``str`` (``text/plain``), ``None`` (204) or any JSON-serialisable value
(``application/json``); raising a :mod:`webob.exc` HTTP error answers with it. A request
for a method without a handler gets 405 with ``Allow`` (RFC 9110 §15.5.6).

Traversal: a path segment left after this resource is looked up with
:meth:`Resource.child` (by default in the ``children`` mapping), so ``/accounts/alice``
reaches ``Accounts().child("alice")``.
"""

from __future__ import annotations

import json
from typing import Any, Callable, ClassVar, Iterable, Mapping

import webob
import webob.exc

from chttp_server.context import CertifiedContext, get_context
from chttp_server.errors import ProtocolError

__all__ = ["Resource", "Request"]

_METHOD_PREFIX = "handle_"


class Request(webob.Request):
    """A :class:`webob.Request` that knows its certified context."""

    @property
    def chttp(self) -> CertifiedContext | None:
        """The certified context, ``None`` if the request carried no message id."""
        return get_context(self.environ)


class Resource:
    """A WSGI application that dispatches to ``handle_<method>(self, req)``."""

    #: Child resources by path segment; override :meth:`child` for dynamic children.
    children: ClassVar[Mapping[str, "Resource"]] = {}

    def child(self, segment: str) -> Resource | None:
        """The resource for the next path ``segment``, or ``None`` (404)."""
        return self.children.get(segment)

    def allowed_methods(self) -> list[str]:
        methods = {
            name[len(_METHOD_PREFIX):].upper()
            for name in dir(self)
            if name.startswith(_METHOD_PREFIX) and callable(getattr(self, name))
        }
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        req = Request(environ)
        body: Iterable[bytes] = self.dispatch(req)(environ, start_response)
        return body

    def dispatch(self, req: Request) -> webob.Response:
        """Walk to the target resource, call its handler and turn the result into a response."""
        segment = _next_segment(req)
        if segment is not None:
            target = self.child(segment)
            if target is None:
                return webob.exc.HTTPNotFound()
            req.path_info_pop()
            return target.dispatch(req)
        handler = self._handler_for(req.method)
        if handler is None:
            return webob.exc.HTTPMethodNotAllowed(
                headers=[("Allow", ", ".join(self.allowed_methods()))]
            )
        try:
            result = handler(req)
        except ProtocolError as error:
            return error.to_response()
        except webob.exc.HTTPException as error:
            return error
        return to_response(result)

    def _handler_for(self, method: str) -> Callable[[Request], Any] | None:
        handler = getattr(self, _METHOD_PREFIX + method.lower(), None)
        if handler is None and method.upper() == "HEAD":
            handler = getattr(self, _METHOD_PREFIX + "get", None)
        return handler if callable(handler) else None


def _next_segment(req: Request) -> str | None:
    """The next non-empty path segment, without consuming it; ``None`` at the end."""
    path: str = req.path_info.lstrip("/")
    if not path:
        return None
    return path.split("/", 1)[0]


def to_response(result: Any) -> webob.Response:
    """The return-value conventions described in the module docstring."""
    if isinstance(result, webob.Response):
        return result
    if result is None:
        return webob.Response(status=204)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return webob.Response(body=bytes(result), content_type="application/octet-stream")
    if isinstance(result, str):
        return webob.Response(text=result, content_type="text/plain", charset="utf-8")
    body = json.dumps(result, separators=(",", ":"), default=_json_default).encode("utf-8")
    return webob.Response(body=body, content_type="application/json", charset=None)


def _json_default(value: Any) -> Any:
    from datetime import date, datetime
    from decimal import Decimal
    from uuid import UUID

    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    raise TypeError(f"handler returned a value JSON cannot encode: {type(value).__name__}")
