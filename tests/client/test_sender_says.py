"""A sender that says what it is doing (issue 25, deliverable 1).

* A send that keeps failing logs a WARNING on ``chttp_client`` at its first failed
  attempt and then ever more rarely (attempts 1, 2, 4, 8…), naming method, URL, attempt,
  reason, next try and deadline left — visible with no logging configured.
* Errors retrying cannot heal end the send at once as :class:`UnhealableSendError`
  naming them: ``https://`` spoken to a plain-HTTP port, a certificate that does not
  verify, an unsupported scheme, an invalid URL.

Real loopback servers: a closed port, a plain-HTTP server spoken TLS to, a TLS server
with a self-signed certificate; time is the fake clock's except in the subprocess.
"""

from __future__ import annotations

import http.server
import logging
import pickle
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import pytest

from chttp_client import DeadlineExceeded, Journal, RetryPolicy, UnhealableSendError, resumable
from tests.client.conftest import FakeClock

POLICY = RetryPolicy(jitter=False, initial_backoff=1, max_backoff=10, deadline=timedelta(minutes=10))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def plain_http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def self_signed_port(tmp_path: Path) -> Iterator[int]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"],
                   check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def journal(tmp_path: Path, fake_clock: FakeClock) -> Iterator[Journal]:
    journal = Journal(f"sqlite:///{tmp_path / 'journal.db'}", retry=POLICY, clock=fake_clock,
                      sleep=fake_clock.sleep)
    yield journal
    journal.close()


def sender(journal: Journal, name: str):
    @resumable(journal, name=f"tests.sender_says.{name}")
    def send(url: str, *, chttp_context):
        return chttp_context.post(url, json={"n": 1}).status_code

    return send


def test_a_failing_send_warns_at_growing_intervals(journal, fake_clock, caplog):
    url = f"http://127.0.0.1:{closed_port()}/orders"
    caplog.set_level(logging.WARNING, logger="chttp_client")
    with pytest.raises(DeadlineExceeded) as caught:
        sender(journal, "closed")(url)
    attempts = caught.value.attempts
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "chttp_client" and "failed" in r.getMessage()]
    assert attempts is not None and attempts > 20
    assert [w.split(" attempt ")[1].split(" ")[0] for w in warnings] == \
        [str(n) for n in (1, 2, 4, 8, 16, 32, 64) if n < attempts]
    first = warnings[0]
    assert first.startswith(f"chttp: POST {url} (message ") and "attempt 1 failed: ConnectError" in first
    assert "next try in 1 s, 0:10:00 left before the send's deadline" in first


def test_https_to_a_plain_http_port_is_definitive_at_once(journal, fake_clock, plain_http_port):
    send = sender(journal, "tls")
    with pytest.raises(UnhealableSendError, match="TLS handshake failed") as caught:
        send(f"https://127.0.0.1:{plain_http_port}/orders")
    assert caught.value.reason == "tls" and caught.value.attempts == 1
    assert fake_clock.sleeps == []                       # not retried at all
    # Recorded as the send's outcome: the oplog failed, nothing is left to resume, and a
    # replay raises the same error, rebuilt from the journal.
    assert journal.list_open() == [] and journal.resume_all() == []
    [oplog] = journal.list()
    with pytest.raises(UnhealableSendError) as replayed:
        journal.resume(oplog.id)
    assert (replayed.value.reason, str(replayed.value)) == ("tls", str(caught.value))
    again = pickle.loads(pickle.dumps(caught.value))
    assert (again.reason, again.attempts, str(again)) == ("tls", 1, str(caught.value))


def test_a_certificate_that_does_not_verify_is_definitive_at_once(journal, fake_clock, self_signed_port):
    with pytest.raises(UnhealableSendError, match="certificate did not verify") as caught:
        sender(journal, "certificate")(f"https://127.0.0.1:{self_signed_port}/orders")
    assert caught.value.reason == "certificate" and fake_clock.sleeps == []


@pytest.mark.parametrize("url, reason", [
    pytest.param("ftp://127.0.0.1/orders", "unsupported-scheme", id="ftp"),
    pytest.param("localhost:8000/orders", "unsupported-scheme", id="no-scheme"),
    pytest.param("http://[::1/orders", "invalid-url", id="invalid"),
])
def test_a_url_no_retry_can_send_is_definitive_at_once(journal, fake_clock, url, reason):
    with pytest.raises(UnhealableSendError) as caught:
        sender(journal, reason)(url)
    assert caught.value.reason == reason and fake_clock.sleeps == []
    assert url.split("/")[0] in str(caught.value)


def test_the_warning_shows_without_any_logging_configured(tmp_path):
    """Python's last-resort handler prints it: nothing configures logging in the script."""
    script = tmp_path / "sender.py"
    script.write_text(textwrap.dedent(f"""
        from datetime import timedelta
        from chttp_client import DeadlineExceeded, Journal, RetryPolicy, resumable

        journal = Journal("sqlite:///{tmp_path / 'j.db'}", retry=RetryPolicy(
            initial_backoff=0.01, deadline=timedelta(seconds=0.3)))

        @resumable(journal, name="sender")
        def send(*, chttp_context):
            return chttp_context.post("http://127.0.0.1:{closed_port()}/x", json={{}})

        try:
            send()
        except DeadlineExceeded as error:
            print("gave up:", error)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "attempt 1 failed: ConnectError" in done.stderr and "gave up:" in done.stdout
