"""``chttp-server serve`` under connection exhaustion, slow clients and large bodies
(issue 11, item 6), through the real command line in a real process.

An outside probe found that 150 connections trickling a byte every 2 s kept every
legitimate request out of a server with waitress's defaults (it stops accepting at 100
connections). These tests open such connections and check that legitimate requests are
still answered, that a client which never finishes its request is cut off, and that an
oversized body is refused before it is read. Times are measured and printed (``-s``),
never asserted: a timeout only turns a hang into a failure.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator

import httpx
import pytest

from chttp_server.errors import ConfigurationError
from chttp_server.serving import ServeLimits, add_limit_arguments, create_server

from .live import ServerProcess, wait_for

APP = "tests.server.serving_app:app"
pytestmark = pytest.mark.slow


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


@contextmanager
def tricklers(url: str, count: int, *, every: float = 1.0,
              sources: tuple[str, ...] = ("127.0.0.1",)) -> Iterator[list[socket.socket]]:
    """``count`` connections that send half a request, then one more byte every ``every`` s,
    from the loopback addresses ``sources`` in turn (each one client to the server)."""
    sockets = []
    stop = threading.Event()
    try:
        for number in range(count):
            sock = socket.create_connection(address(url), timeout=10,
                                            source_address=(sources[number % len(sources)], 0))
            sock.sendall(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nX-Slow: ")
            sockets.append(sock)

        def trickle() -> None:
            while not stop.wait(every):
                for sock in sockets:
                    try:
                        sock.send(b"a")
                    except OSError:
                        pass  # closed by the server: what request_timeout is for

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        yield sockets
        stop.set()
        thread.join(10)
    finally:
        stop.set()
        for sock in sockets:
            sock.close()


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (EOF or reset), without blocking."""
    sock.setblocking(False)
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def test_trickling_connections_do_not_keep_legitimate_requests_out(sqlite_url):
    """The probe's attack against the default settings: 150 slow connections, then 5
    certified requests. Before, 0 of 5 were answered (waitress stopped accepting at 100).
    The 150 come from three addresses, under the per-client cap (100): one address
    past it is test_per_client's case."""
    with ServerProcess(APP, sqlite_url, extra_args=("--upgrade",)) as server, \
            tricklers(server.url, 150, sources=("127.0.0.4", "127.0.0.5", "127.0.0.6")) as slow:
        time.sleep(2)  # a couple of trickles in: the attack is established
        latencies = []
        with httpx.Client(timeout=60) as client:
            for number in range(5):
                started = time.monotonic()
                response = client.post(f"{server.url}/pay", content=b"12345",
                                       headers={"X-Message-ID": f"legit-{number}"})
                latencies.append(time.monotonic() - started)
                assert response.status_code == 200
                assert response.text == "got 5 bytes"
                assert response.headers["X-Message-URL"] == f"/chttp/messages/legit-{number}"
        still_open = sum(not closed_by_peer(sock) for sock in slow)
    print(f"\n150 trickling connections ({still_open} still open after): 5 of 5 answered, "
          f"latency max {max(latencies):.3f} s")
    assert still_open == 150, "the attack must still be in place while the requests ran"


def test_a_client_that_never_finishes_its_request_is_cut_off(sqlite_url):
    """A byte a second resets waitress's idle timer, but not the request timeout."""
    with ServerProcess(APP, sqlite_url, extra_args=(
            "--upgrade", "--request-timeout", "2", "--channel-timeout", "30")) as server, \
            tricklers(server.url, 3, every=0.5) as slow:
        started = time.monotonic()
        wait_for(lambda: all(closed_by_peer(sock) for sock in slow), timeout=60,
                 what="the server to close the trickling connections")
        elapsed = time.monotonic() - started
        # The server itself is fine: a whole request is answered.
        response = httpx.post(f"{server.url}/x", content=b"ok", timeout=60)
        assert response.status_code == 200
    print(f"\nrequest-timeout 2 s: 3 trickling connections closed after {elapsed:.1f} s")


def test_an_idle_connection_is_closed_after_the_channel_timeout(sqlite_url):
    with ServerProcess(APP, sqlite_url, extra_args=("--upgrade", "--channel-timeout", "2")) as server:
        sock = socket.create_connection(address(server.url), timeout=10)
        try:
            started = time.monotonic()
            wait_for(lambda: closed_by_peer(sock), timeout=60, what="the idle connection to close")
            elapsed = time.monotonic() - started
        finally:
            sock.close()
    print(f"\nchannel-timeout 2 s: idle connection closed after {elapsed:.1f} s")


def test_an_oversized_body_is_refused_before_it_is_read(sqlite_url):
    with ServerProcess(APP, sqlite_url, extra_args=("--upgrade", "--max-request-body", "1000")) \
            as server, httpx.Client(timeout=60) as client:
        small = client.post(f"{server.url}/x", content=b"x" * 1000,
                            headers={"X-Message-ID": "fits"})
        large = client.post(f"{server.url}/x", content=b"x" * 1001,
                            headers={"X-Message-ID": "too-large"})
        replay = client.post(f"{server.url}/x", content=b"x" * 1000,
                             headers={"X-Message-ID": "fits"})
    assert small.status_code == 200 and small.text == "got 1000 bytes"
    assert large.status_code == 413
    assert replay.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize("field", [
    "threads", "connection_limit", "channel_timeout", "request_timeout",
    "max_request_body", "max_request_header", "backlog",
])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_limits_are_checked_when_made(field, value):
    with pytest.raises(ConfigurationError, match=field):
        ServeLimits(**{field: value})


def test_the_defaults_are_production_ones():
    options = ServeLimits().waitress_options()
    assert options["connection_limit"] > 100          # waitress: 100
    assert options["max_request_body_size"] < 2**30   # waitress: 1 GiB
    assert options["channel_timeout"] < 120           # waitress: 120 s
    assert options["asyncore_use_poll"] is True       # select() stops at 1024 descriptors
    assert options["expose_tracebacks"] is False


def test_a_connection_limit_beyond_the_descriptor_limit_is_refused():
    resource = pytest.importorskip("resource")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard descriptor limit on this machine")
    with pytest.raises(ConfigurationError, match="file descriptors"):
        create_server(lambda environ, start_response: [], port=0,
                      limits=ServeLimits(connection_limit=hard + 1))


@pytest.mark.parametrize("option", ["--connection-limit", "--channel-timeout",
                                    "--request-timeout", "--max-request-body",
                                    "--max-connections-per-client"])
def test_the_command_line_refuses_nonsense_limits(option, capsys):
    parser = argparse.ArgumentParser(prog="serve")
    add_limit_arguments(parser)
    for nonsense in ("0", "-5", "ten"):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([option, nonsense])
        assert exit_info.value.code == 2
        assert option in capsys.readouterr().err
    assert parser.parse_args([option, "7"]) is not None


def test_a_served_message_id_is_unique_per_request(sqlite_url):
    """The same id twice through the hardened server is one message (a replay)."""
    message_id = str(uuid.uuid4())
    with ServerProcess(APP, sqlite_url, extra_args=("--upgrade",)) as server, \
            httpx.Client(timeout=60) as client:
        first = client.post(f"{server.url}/x", content=b"abc", headers={"X-Message-ID": message_id})
        again = client.post(f"{server.url}/x", content=b"abc", headers={"X-Message-ID": message_id})
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
