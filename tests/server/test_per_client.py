"""``chttp-server serve``'s per-client connection cap (issue 23, item 5), through the real
command line in a real process.

An outside probe held every one of the 1,000 connection slots with 1,100 trickling
connections from a single client, and 0 of 14 requests from anyone else were answered
in 40 s. These tests play that attack from one loopback address (127.0.0.2; all of
127.0.0.0/8 reaches the server on Linux, and each address counts as its own client)
while a second address (127.0.0.3) sends certified requests. Nothing is timed: the
timeouts only turn a hang into a failure.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from chttp_server.errors import ConfigurationError
from chttp_server.serving import ServeLimits, client_of

from .live import ServerProcess, wait_for
from .test_serving import address

APP = "tests.server.serving_app:app"
ATTACKER, LEGITIMATE = "127.0.0.2", "127.0.0.3"
HALF_REQUEST = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Slow: "

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="needs the whole of 127.0.0.0/8 on the loopback interface"),
]


def raise_descriptor_limit(needed: int) -> None:
    """Let this process hold ``needed`` sockets (the attacker's), or skip the test."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the attack needs {needed} descriptors; this machine allows {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def connect_from(source: str, url: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(address(url))
    except BaseException:
        sock.close()
        raise
    return sock


def answer_so_far(sock: socket.socket) -> tuple[bool, bytes]:
    """(closed by the server?, what it sent) without blocking: EOF or a reset is closed."""
    received = b""
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return True, received
            received += chunk
    except BlockingIOError:
        return False, received
    except OSError:
        return True, received
    finally:
        sock.setblocking(True)


class Attack:
    """``count`` connections from ``source``, each sending half a request and then a byte
    a second; a connection the server closes is opened again, as an attacker would."""

    def __init__(self, url: str, source: str, count: int) -> None:
        self.url, self.source = url, source
        self.sockets: list[socket.socket | None] = [None] * count
        self.reopened = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, slot: int) -> None:
        try:
            sock = connect_from(self.source, self.url)
        except OSError:
            return  # refused before connect() finished; tried again next round
        try:
            sock.sendall(HALF_REQUEST)
        except OSError:
            pass  # already answered 429 and closed: seen as closed below
        self.sockets[slot] = sock

    def open_all(self) -> None:
        for slot in range(len(self.sockets)):
            self._open(slot)

    def held(self) -> list[socket.socket]:
        """The connections the server has not closed."""
        with self._lock:
            return [sock for sock in self.sockets if sock is not None and not answer_so_far(sock)[0]]

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                for slot, sock in enumerate(self.sockets):
                    if self._stop.is_set():
                        return
                    if sock is not None and not answer_so_far(sock)[0]:
                        try:
                            sock.send(b"a")
                            continue
                        except OSError:
                            pass
                    if sock is not None:
                        sock.close()
                    self.sockets[slot] = None
                    self._open(slot)
                    self.reopened += 1

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)
        for sock in self.sockets:
            if sock is not None:
                sock.close()


@contextmanager
def attack(url: str, source: str, count: int) -> Iterator[Attack]:
    attacker = Attack(url, source, count)
    try:
        attacker.open_all()
        yield attacker
    finally:
        attacker.close()


def test_a_thousand_trickling_connections_from_one_client_leave_room_for_another(sqlite_url):
    """The probe's attack against the defaults (1,000 connections, 100 per client): 1,100
    connections from 127.0.0.2, kept open and reopened; then the probe's 14 certified
    requests from 127.0.0.3. Before the cap, 0 of 14 were answered."""
    raise_descriptor_limit(1100 + 256)
    cap = ServeLimits().per_client
    with ServerProcess(APP, sqlite_url, extra_args=("--upgrade",)) as server, \
            attack(server.url, ATTACKER, 1100) as slow:
        # Every connection is either held or refused: exactly the cap is held.
        wait_for(lambda: len(slow.held()) == cap, timeout=60,
                 what=f"the server to refuse all but {cap} of the attacker's connections")
        slow.start()
        transport = httpx.HTTPTransport(local_address=LEGITIMATE)
        with httpx.Client(transport=transport, timeout=60) as client:
            for number in range(14):
                response = client.post(f"{server.url}/pay", content=b"12345",
                                       headers={"X-Message-ID": f"probe-{number}"})
                assert response.status_code == 200, response.text
                assert response.text == "got 5 bytes"
                assert response.headers["X-Message-URL"] == f"/chttp/messages/probe-{number}"
        # The attack was in place all along: the cap's worth still held (the request
        # timeout is 60 s) while the rest keep being refused as they are reopened.
        wait_for(lambda: slow.reopened >= 1000, timeout=60,
                 what="the attacker to reopen its refused connections")
        wait_for(lambda: len(slow.held()) == cap, timeout=60,
                 what=f"the attacker to hold {cap} connections still")
    print(f"\n1,100 trickling connections from one client ({cap} held, {slow.reopened} "
          "reopenings refused): 14 of 14 requests from another client answered")


def read_to_end(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(60)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


def post_from(source: str, url: str) -> httpx.Response | None:
    """A request from ``source``; None if the server refused the connection."""
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, timeout=60) as client:
        try:
            response = client.post(url, content=b"again")
        except httpx.TransportError:
            return None  # refused with a reset before the 429 could be read
    return response


def test_a_client_over_its_cap_is_told_why_and_admitted_again_once_below(sqlite_url):
    with ServerProcess(APP, sqlite_url, extra_args=(
            "--upgrade", "--max-connections-per-client", "2")) as server, ExitStack() as stack:
        first, second, third = (stack.enter_context(connect_from(ATTACKER, server.url))
                                for _ in range(3))
        head, _, body = read_to_end(third).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 429 ")
        assert b"Retry-After: 1" in head and b"application/problem+json" in head
        assert b'"type": "too-many-connections"' in body and b"2 connections" in body
        # Another client is not affected.
        other = post_from(LEGITIMATE, f"{server.url}/x")
        assert other is not None and other.status_code == 200
        # The two held connections still work, and once one closes a slot is free again.
        first.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                      b"Connection: close\r\n\r\nok")
        assert b"got 2 bytes" in read_to_end(first)
        first.close()
        again = wait_for(lambda: (lambda r: r if r is not None and r.status_code == 200
                                  else None)(post_from(ATTACKER, f"{server.url}/x")),
                         timeout=60, what="the client to be admitted again")
        assert again.text == "got 5 bytes"
        assert not answer_so_far(second)[0], "the other held connection stays open"


@pytest.mark.parametrize("host, client", [
    ("127.0.0.2", "127.0.0.2"),
    ("127.0.0.3", "127.0.0.3"),
    ("203.0.113.7", "203.0.113.7"),
    ("::ffff:203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::2", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("::1", "::/64"),
    ("localhost", "localhost"),
])
def test_what_counts_as_one_client(host, client):
    assert client_of(host) == client


def test_the_default_cap_is_a_tenth_of_the_connection_limit():
    assert ServeLimits().per_client == 100
    assert ServeLimits(connection_limit=50).per_client == 5
    assert ServeLimits(connection_limit=5).per_client == 1
    assert ServeLimits(max_connections_per_client=1000).per_client == 1000


@pytest.mark.parametrize("value", [0, -1, 1.5, True, 1001])
def test_a_cap_that_cannot_work_is_refused(value):
    with pytest.raises(ConfigurationError, match="max_connections_per_client"):
        ServeLimits(max_connections_per_client=value)


def test_the_command_line_refuses_a_cap_above_the_connection_limit(tmp_path):
    """Exit status 2 and one line naming both options, before anything is served."""
    result = subprocess.run(
        [sys.executable, "-m", "chttp_server.cli", "serve", "--app", APP,
         "--db", f"sqlite:///{tmp_path}/r.db", "--upgrade", "--port", "0",
         "--connection-limit", "50", "--max-connections-per-client", "51"],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "--max-connections-per-client" in result.stderr and "--connection-limit" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
