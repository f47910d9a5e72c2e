"""The README's per-client recipes for a proxy in front of ``chttp-server serve`` (issue 23,
item 5), run as written: nginx's ``limit_conn`` and HAProxy's stick table, each in front
of a real ``serve`` whose own per-client cap is off (every connection comes from the
proxy), as the README says to run it.

One client (127.0.0.2) opens 150 connections through the proxy, each sending a whole
request head and then none of its 1,000-byte body (the proxies count a connection once
its head is read, or from accept); the proxy must hold 100 of them (its cap) and refuse
the rest, while a second client (127.0.0.3) is answered. Skipped where
nginx or HAProxy is not installed. Nothing is timed.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from .live import ServerProcess, wait_for
from .test_per_client import LEGITIMATE, connect_from, raise_descriptor_limit
from .test_serving import address

APP = "tests.server.serving_app:app"
ATTACKER = "127.0.0.2"
README = (Path(__file__).resolve().parents[2] / "README.rst").read_text(encoding="utf-8")
SLOW_HEAD = (b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
             b"X-Message-ID: slow\r\n\r\n")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"),
                       reason="needs the whole of 127.0.0.0/8 on the loopback interface"),
]


def readme_block(first_line: str) -> str:
    """The README's literal block whose first line is ``first_line``, dedented."""
    for block in re.findall(r"::\n\n((?:    .*\n|\n)+)", README):
        lines = [line[4:] for line in block.rstrip("\n").splitlines()]
        if lines and lines[0] == first_line:
            return "\n".join(lines) + "\n"
    raise AssertionError(f"no literal block starting with {first_line!r} in README.rst")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def nginx(tmp_path: Path, listen: int, backend: str) -> list[str]:
    recipe = readme_block("limit_conn_zone $binary_remote_addr zone=per_client:10m;")
    assert "listen 80;" in recipe and "http://127.0.0.1:8080" in recipe
    recipe = recipe.replace("listen 80;", f"listen 127.0.0.1:{listen};") \
                   .replace("http://127.0.0.1:8080", f"http://{backend}")
    config = tmp_path / "nginx.conf"
    config.write_text(
        f"daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log;\nevents {{ worker_connections 1024; }}\n"
        f"http {{\naccess_log off;\nclient_body_temp_path {tmp_path}/body;\n"
        f"proxy_temp_path {tmp_path}/proxy;\n{recipe}}}\n")
    return ["nginx", "-p", str(tmp_path), "-e", f"{tmp_path}/error.log", "-c", str(config)]


def haproxy(tmp_path: Path, listen: int, backend: str) -> list[str]:
    recipe = readme_block("frontend web")
    assert "bind :80" in recipe and "127.0.0.1:8080" in recipe
    recipe = recipe.replace("bind :80", f"bind 127.0.0.1:{listen}") \
                   .replace("127.0.0.1:8080", backend)
    config = tmp_path / "haproxy.cfg"
    config.write_text(recipe)
    return ["haproxy", "-db", "-f", str(config)]


def start_proxy(proxy: Callable[[Path, int, str], list[str]], tmp_path: Path,
                backend: str) -> tuple[subprocess.Popen[bytes], int]:
    """The proxy listening on a free port. A port picked free can be taken before the
    proxy binds it (by anything on the machine), so a proxy that exits is started again
    on another."""
    errors = []
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(proxy(tmp_path, port, backend),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: process.poll() is not None or accepts(port), timeout=30,
                 what=f"{proxy.__name__} to listen")
        if process.poll() is None:
            return process, port
        errors.append(process.communicate()[1].decode(errors="replace"))
    raise AssertionError(f"{proxy.__name__} did not start:\n" + "\n".join(errors))


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Slow:
    """A connection that sent a whole head and trickles its body; what came back so far."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.received, self.closed = sock, b"", False

    def poll(self) -> None:
        if self.closed:
            return
        self.sock.setblocking(False)
        try:
            while chunk := self.sock.recv(4096):
                self.received += chunk
            self.closed = True
        except BlockingIOError:
            pass
        except OSError:
            self.closed = True
        finally:
            self.sock.setblocking(True)

    @property
    def refused(self) -> bool:
        return self.closed or self.received.startswith(b"HTTP/1.1 429")

    @property
    def held(self) -> bool:
        return not self.closed and not self.received


@pytest.fixture
def slow_connections() -> Iterator[list[Slow]]:
    """The attacker's connections, closed after the test whatever happened."""
    connections: list[Slow] = []
    try:
        yield connections
    finally:
        for connection in connections:
            connection.sock.close()


@pytest.mark.parametrize("proxy", [nginx, haproxy])
def test_the_readme_proxy_recipe_caps_one_client_and_serves_another(
        proxy, sqlite_url, tmp_path, slow_connections):
    program = proxy.__name__
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")
    raise_descriptor_limit(150 + 256)
    with ServerProcess(APP, sqlite_url, extra_args=(
            "--upgrade", "--connection-limit", "1000",
            "--max-connections-per-client", "1000")) as server:
        host, backend_port = address(server.url)
        process, port = start_proxy(proxy, tmp_path, f"{host}:{backend_port}")
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(150):
                try:
                    sock = connect_from(ATTACKER, url)
                except ConnectionResetError:
                    # HAProxy counts from accept: its refusal (a reset) can arrive before
                    # connect() returns on a busy machine (seen once in a full run).
                    refused = Slow(socket.socket())
                    refused.sock.close()
                    refused.closed = True
                    slow_connections.append(refused)
                    continue
                slow_connections.append(Slow(sock))
                try:
                    sock.sendall(SLOW_HEAD)
                except OSError:
                    pass  # refused already

            def settled() -> bool:
                for connection in slow_connections:
                    connection.poll()
                return sum(c.refused for c in slow_connections) == 50

            wait_for(settled, timeout=60, what=f"{program} to refuse 50 of 150 connections")
            assert sum(c.held for c in slow_connections) == 100
            if program == "nginx":  # limit_conn_status 429: answered, so senders retry
                assert all(c.received.startswith(b"HTTP/1.1 429") for c in slow_connections
                           if c.refused)
            transport = httpx.HTTPTransport(local_address=LEGITIMATE)
            with httpx.Client(transport=transport, timeout=60) as client:
                for number in range(14):
                    response = client.post(f"{url}/pay", content=b"12345",
                                           headers={"X-Message-ID": f"via-{program}-{number}"})
                    assert response.status_code == 200, response.text
                    assert response.text == "got 5 bytes"
            for connection in slow_connections:
                connection.poll()
            assert sum(c.held for c in slow_connections) == 100, "the attack stayed in place"
        finally:
            process.terminate()
            process.communicate(timeout=30)
