"""Serving a certified application with waitress, with the limits a public server needs.

Waitress's defaults suit a server behind a reverse proxy, not one facing the network:
it stops accepting at 100 open connections, so a hundred clients that send half a
request and then one byte every few seconds (slowloris) keep every legitimate request
out for as long as they like — an outside probe of ``chttp-server serve`` saw 0 of 5
requests answered in a minute with 150 such connections (issue 11, item 6). It also
accepts request bodies of up to 1 GiB.

:class:`ServeLimits` holds the settings ``chttp-server serve`` exposes, with production
defaults, and :func:`create_server` builds a waitress server that applies them:

* ``connection_limit`` (1000): idle and half-sent connections cost a file descriptor and
  a buffer, not a thread (waitress hands a request to a thread only once it has been
  read whole), so a high limit is cheap; the loop uses ``poll()``, which, unlike
  ``select()``, has no 1024-descriptor ceiling. The process's descriptor limit is raised
  to fit when the hard limit allows, else the settings are refused.
* ``request_timeout`` (60 s): what waitress lacks — a client must send a *whole* request
  (headers and body) within this time from its first byte, or the connection is closed.
  A trickle of bytes resets waitress's own idle timer but not this one, so a slow client
  holds a connection for at most this long.
* ``channel_timeout`` (30 s): a connection with no request in progress and no activity
  for this long is closed (waitress's idle timeout; 120 s by default).
* ``max_request_body`` (64 MiB) and ``max_request_header`` (64 KiB): larger requests are
  refused by waitress itself (413 / 431) before they are buffered. The middleware's own
  cap on certified bodies (413 ``request-too-large``, docs/protocol.rst §4) should be at
  most ``max_request_body``, so that certified clients get the problem+json answer.
* ``threads`` (4): the workers that run requests; with PostgreSQL keep it within the
  engine's pool (5 + 10 overflow by default).
* ``max_connections_per_client`` (a tenth of ``connection_limit``: 100): the connections
  one client address may hold at once. A high ``connection_limit`` alone only moves the
  ceiling: an outside probe held all 1,000 slots with 1,100 trickling connections from a
  single client and 0 of 14 requests from anyone else were answered in 40 s (issue 23,
  item 5). A connection past the cap is answered ``429 too-many-connections`` at once and
  closed, without taking a slot. A client is an IPv4 address (each address of
  127.0.0.0/8 on its own; an IPv4-mapped IPv6 address counts as its IPv4 address) or an
  IPv6 /64 — the block one host is usually given, so an attacker cannot take a fresh
  address for every connection. Behind a reverse proxy every connection comes from the
  proxy: raise this to ``connection_limit`` (which turns it off) and cap per client in
  the proxy (README, *Command-line errors*).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import MultiSocketServer, TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from chttp_core.commandline import positive_int
from chttp_server.errors import ConfigurationError, problem_body

__all__ = [
    "ServeLimits", "create_server", "add_limit_arguments", "limits_from_arguments", "client_of",
]

log = logging.getLogger("chttp_server")

#: Descriptors a server needs besides its connections: listening sockets, the loop's
#: wake-up pipe, database connections, log files, the interpreter's own.
_SPARE_DESCRIPTORS = 128


@dataclass(frozen=True)
class ServeLimits:
    """How much a server lets its clients take (see the module docstring for why)."""

    #: Worker threads running requests.
    threads: int = 4
    #: Open connections before the server stops accepting more.
    connection_limit: int = 1000
    #: Seconds a connection may stay idle (no request in progress) before it is closed.
    channel_timeout: int = 30
    #: Seconds a client has, from a request's first byte, to send all of it.
    request_timeout: int = 60
    #: Largest request body in bytes (waitress answers 413 past it).
    max_request_body: int = 64 * 1024 * 1024
    #: Largest request head (request line and headers) in bytes (431 past it).
    max_request_header: int = 64 * 1024
    #: Connections the kernel queues before the server accepts them.
    backlog: int = 1024
    #: Open connections one client (:func:`client_of`) may hold; ``None``: a tenth of
    #: ``connection_limit``. Equal to ``connection_limit``, the cap is off.
    max_connections_per_client: int | None = None

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value is None and name == "max_connections_per_client":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"{name} must be a positive whole number, not {value!r}")
        if self.per_client > self.connection_limit:
            raise ConfigurationError(
                f"max_connections_per_client ({self.per_client}) must be at most "
                f"connection_limit ({self.connection_limit}) (lower "
                "--max-connections-per-client or raise --connection-limit; equal, the "
                "per-client cap is off)"
            )

    @property
    def per_client(self) -> int:
        """The connections one client may hold: the setting, or its default."""
        if self.max_connections_per_client is not None:
            return self.max_connections_per_client
        return max(1, self.connection_limit // 10)

    def waitress_options(self) -> dict[str, Any]:
        """The waitress ``Adjustments`` these limits mean."""
        return {
            "threads": self.threads,
            "connection_limit": self.connection_limit,
            "channel_timeout": self.channel_timeout,
            # How often idle and overdue connections are looked for: often enough that
            # neither timeout is overrun by much (waitress checks every 30 s by default).
            "cleanup_interval": max(1, min(self.channel_timeout, self.request_timeout) // 4),
            # waitress refuses a size *equal* to its setting; ours are the largest allowed.
            "max_request_body_size": self.max_request_body + 1,
            "max_request_header_size": self.max_request_header + 1,
            "backlog": self.backlog,
            "asyncore_use_poll": True,
            "expose_tracebacks": False,
        }


def client_of(host: str) -> str:
    """The client a connection from ``host`` counts against, for the per-client cap.

    An IPv4 address is its own client (each of 127.0.0.0/8 too, so that tests and local
    tools can stand for several clients); an IPv4-mapped IPv6 address is the IPv4 one
    (a dual-stack socket shows IPv4 clients so); any other IPv6 address counts as its
    /64, since a host is usually given a whole /64 and could otherwise take a fresh
    address for every connection. Anything else (a name) is itself.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _ClientCounts:
    """Open connections per client, shared by every listening socket of one server.

    Admitted in the loop's thread; released wherever waitress closes a channel, hence
    the lock.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._refusing: set[str] = set()

    def admit(self, client: str) -> bool:
        """Count one more connection for ``client``, or False if it holds ``cap`` already."""
        with self._lock:
            held = self._open.get(client, 0)
            if held >= self.cap:
                first = client not in self._refusing
                self._refusing.add(client)
            else:
                self._open[client] = held + 1
                return True
        if first:
            log.warning("client %s holds %s connections, the most one client may: refusing "
                        "more (429) until some close (--max-connections-per-client)",
                        client, self.cap)
        return False

    def release(self, client: str) -> None:
        with self._lock:
            held = self._open.get(client, 0) - 1
            if held > 0:
                self._open[client] = held
            else:
                self._open.pop(client, None)
            if held <= self.cap // 2:  # warn again only after a real retreat, not per slot
                self._refusing.discard(client)


def _refusal(cap: int) -> bytes:
    """The answer to a connection past the per-client cap: 429, sent before any request.

    429 with ``Retry-After`` is what certified senders already wait and retry on
    (docs/protocol.rst §5.2); browsers and other clients show it as it is.
    """
    body = problem_body(429, "too-many-connections", "Too Many Requests",
                        f"this client already holds {cap} connections to this server, the "
                        "most one client may; close some, or retry later")
    head = ("HTTP/1.1 429 Too Many Requests\r\n"
            "Content-Type: application/problem+json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Retry-After: 1\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body


class _TimedChannel(HTTPChannel):
    """A waitress channel that remembers when the request it is reading began, and gives
    its client's slot back (:class:`_ClientCounts`) when it closes."""

    request_started: float | None = None
    client: str | None = None
    client_counts: _ClientCounts | None = None

    def del_channel(self, map: Any = None) -> None:
        super().del_channel(map)
        client, counts = self.client, self.client_counts
        self.client = None  # waitress may close a channel twice; release it once
        if client is not None and counts is not None:
            counts.release(client)

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.request_started = time.monotonic()
        result: bool = super().received(data)
        if self.request is None:
            self.request_started = None  # every request read so far is complete
        return result


class _LimitedServer(TcpWSGIServer):
    """A waitress TCP server that also closes connections slower than ``request_timeout``."""

    channel_class = _TimedChannel
    request_timeout: float = ServeLimits.request_timeout
    client_counts: _ClientCounts = _ClientCounts(ServeLimits().per_client)
    refusal: bytes = b""

    def handle_accept(self) -> None:
        """waitress's accept, but a client already at its cap is answered 429 and closed
        at once: the connection never becomes a channel, so it takes no slot."""
        try:
            accepted = self.accept()
            if accepted is None:
                return
            conn, addr = accepted
            self.set_socket_options(conn)
        except OSError:
            # As waitress: a peer gone before accept() finished must not stop the server.
            log.debug("accept() failed", exc_info=True)
            return
        addr = self.fix_addr(addr)
        client = client_of(str(addr[0]))
        if not self.client_counts.admit(client):
            _refuse(conn, self.refusal)
            return
        try:
            channel = self.channel_class(self, conn, addr, self.adj, map=self._map)
        except BaseException:
            self.client_counts.release(client)
            raise
        channel.client = client
        channel.client_counts = self.client_counts

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        cutoff = time.monotonic() - self.request_timeout
        for channel in list(self.active_channels.values()):
            started = getattr(channel, "request_started", None)
            if started is not None and started < cutoff and not channel.will_close:
                log.info("closing a connection from %s: no whole request after %s s",
                         getattr(channel, "addr", "?"), self.request_timeout)
                channel.will_close = True


def create_server(
    app: Callable[..., Any],
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    limits: ServeLimits = ServeLimits(),
) -> Any:
    """A waitress server for ``app`` on ``host:port`` that enforces ``limits``.

    Like :func:`waitress.create_server` it binds at once (``effective_port`` names the
    port when ``port`` is 0) and is started with ``run()``; a host name that resolves to
    several addresses gets a socket on each.
    """
    _ensure_descriptors(limits.connection_limit)
    counts = _ClientCounts(limits.per_client)
    refusal = _refusal(limits.per_client)
    adjustments = Adjustments(host=host, port=port, **limits.waitress_options())
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adjustments.threads)
    socket_map: dict[int, Any] = {}
    servers = []
    for sockinfo in adjustments.listen:
        server = _LimitedServer(app, socket_map, dispatcher=dispatcher, adj=adjustments,
                                sockinfo=sockinfo)
        server.request_timeout = limits.request_timeout
        server.client_counts = counts
        server.refusal = refusal
        servers.append(server)
    if len(servers) == 1:
        return servers[0]
    listening = [(server.effective_host, server.effective_port) for server in servers]
    return _Servers(socket_map, adjustments, listening, dispatcher, servers[0].log_info)


class _Servers(MultiSocketServer):
    """Several listening sockets run by one loop; ``effective_port`` names the first's."""

    @property
    def effective_host(self) -> str:
        return str(self.effective_listen[0][0])

    @property
    def effective_port(self) -> int:
        return int(self.effective_listen[0][1])


def _refuse(conn: socket.socket, answer: bytes) -> None:
    """Send ``answer`` if the socket takes it at once, then close: never wait on a client
    that is over its cap (one that already sent a request may see a reset instead)."""
    try:
        conn.setblocking(False)
        conn.send(answer)
    except OSError:
        pass
    finally:
        conn.close()


def _ensure_descriptors(connections: int) -> None:
    """Raise the soft descriptor limit to fit ``connections``, or refuse the limits.

    A server that runs out of descriptors fails in ``accept()`` in ways no client can
    tell from a dead server; better to say so at start-up.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    needed = connections + _SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ConfigurationError(
            f"a connection limit of {connections} needs {needed} file descriptors but this "
            f"process may open only {hard} (ulimit -n); lower --connection-limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# -- command line --------------------------------------------------------------------


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of :class:`ServeLimits` other than ``--threads`` to ``parser``."""
    defaults = ServeLimits()
    parser.add_argument("--connection-limit", type=positive_int, default=defaults.connection_limit,
                        metavar="N", help="open connections before new ones wait "
                        f"(default: {defaults.connection_limit})")
    parser.add_argument("--channel-timeout", type=positive_int, default=defaults.channel_timeout,
                        metavar="SECONDS", help="close a connection idle this long "
                        f"(default: {defaults.channel_timeout})")
    parser.add_argument("--request-timeout", type=positive_int, default=defaults.request_timeout,
                        metavar="SECONDS", help="close a connection that has not sent a whole "
                        f"request this long after its first byte (default: {defaults.request_timeout})")
    parser.add_argument("--max-request-body", type=positive_int, default=defaults.max_request_body,
                        metavar="BYTES", help="largest request body, 413 past it "
                        f"(default: {defaults.max_request_body})")
    parser.add_argument("--max-request-header", type=positive_int,
                        default=defaults.max_request_header, metavar="BYTES",
                        help=f"largest request head (default: {defaults.max_request_header})")
    parser.add_argument("--max-connections-per-client", type=positive_int, default=None,
                        metavar="N", help="open connections one client address (an IPv6 "
                        "/64) may hold; more are answered 429 and closed (default: a tenth "
                        f"of --connection-limit, {defaults.per_client}; behind a proxy, set "
                        "it to --connection-limit and cap per client in the proxy)")


def limits_from_arguments(args: argparse.Namespace) -> ServeLimits:
    """The :class:`ServeLimits` named by options that :func:`add_limit_arguments` added."""
    return ServeLimits(
        threads=args.threads,
        connection_limit=args.connection_limit,
        channel_timeout=args.channel_timeout,
        request_timeout=args.request_timeout,
        max_request_body=args.max_request_body,
        max_request_header=args.max_request_header,
        max_connections_per_client=args.max_connections_per_client,
    )
