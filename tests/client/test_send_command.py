"""``chttp-client send``: a certified curl whose reruns never send twice (issue 25 item 9).

Real processes on loopback: a receiver served by ``chttp-server serve`` that counts the
runs of its handler in a file, and ``chttp-client send`` run as a user runs it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from chttp_server.testing import free_port

RECEIVER = '''
import json

def app(environ, start_response):
    if environ["PATH_INFO"] == "/missing":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such thing"]
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    with open("runs.txt", "a") as runs:
        runs.write(body.decode() + "\\n")
    start_response("201 Created", [("Content-Type", "application/json")])
    return [json.dumps({"got": json.loads(body or b"null")}).encode()]
'''


@contextmanager
def _receiver(tmp_path: Path, port: int) -> Iterator[str]:
    (tmp_path / "recv.py").write_text(RECEIVER)
    process = subprocess.Popen(
        [sys.executable, "-m", "chttp_server.cli", "serve", "--app", "recv:app", "--db",
         "sqlite:///receiver.db", "--upgrade", "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        assert " on http://" in line, line + process.communicate()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.communicate(timeout=30)


def _send(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "chttp_client.cli", "send", "--db",
                           "sqlite:///sends.db", *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)


def _runs(tmp_path: Path) -> list[str]:
    path = tmp_path / "runs.txt"
    return path.read_text().splitlines() if path.exists() else []


def test_a_rerun_with_the_same_key_prints_the_recorded_answer(tmp_path: Path) -> None:
    with _receiver(tmp_path, free_port()) as url:
        first = _send(tmp_path, "--key", "order-1", "POST", f"{url}/orders", "--json", '{"n": 1}')
        again = _send(tmp_path, "--key", "order-1", "POST", f"{url}/orders", "--json", '{"n": 1}')
        other = _send(tmp_path, "--key", "order-1", "POST", f"{url}/orders", "--json", '{"n": 2}')
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout == '{"got": {"n": 1}}'
    assert "HTTP 201  message id " in first.stderr and "(sent)" in first.stderr
    assert again.returncode == 0 and "recorded answer, not sent again" in again.stderr
    first_id = first.stderr.split("message id ")[1].split()[0]
    assert f"message id {first_id} " in again.stderr
    # The same key with another body is refused, and nothing is sent.
    assert other.returncode == 1 and "already names another request" in other.stderr
    assert other.stdout == "" and _runs(tmp_path) == ['{"n": 1}']
    listed = subprocess.run([sys.executable, "-m", "chttp_client.cli", "list", "--all", "--db",
                             "sqlite:///sends.db"], cwd=tmp_path, capture_output=True, text=True)
    assert "order-1  done    chttp_client.send v1" in listed.stdout


def test_a_fresh_key_is_printed_and_statuses_map_to_exit_codes(tmp_path: Path) -> None:
    with _receiver(tmp_path, free_port()) as url:
        sent = _send(tmp_path, "POST", f"{url}/orders", "--data", '{"n": 3}',
                     "-H", "Content-Type: application/json")
        missing = _send(tmp_path, "GET", f"{url}/missing")
    assert sent.returncode == 0 and sent.stderr.startswith("key: "), sent.stderr
    assert missing.returncode == 4 and missing.stdout == "no such thing"


def test_no_answer_by_the_deadline_is_exit_1_in_one_line(tmp_path: Path) -> None:
    sent = _send(tmp_path, "--key", "late", "--deadline", "1", "POST",
                 f"http://127.0.0.1:{free_port()}/orders", "--json", "{}")
    assert sent.returncode == 1, sent.stderr
    assert "Traceback" not in sent.stderr and "chttp-client: error: " in sent.stderr


def test_sigkill_mid_send_then_rerun_sends_the_same_message_once(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # The receiver is down: the send is recorded, then retried until we kill the sender.
    sending = subprocess.Popen([sys.executable, "-m", "chttp_client.cli", "send", "--db",
                                "sqlite:///sends.db", "--key", "k", "POST", f"{url}/orders",
                                "--json", '{"n": 9}'], cwd=tmp_path, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    shown = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (tmp_path / "sends.db").exists():
            shown = subprocess.run([sys.executable, "-m", "chttp_client.cli", "show", "--db",
                                    "sqlite:///sends.db", "k"], cwd=tmp_path,
                                   capture_output=True, text=True).stdout
            if "send     recorded" in shown:
                break
        time.sleep(0.2)
    else:
        sending.kill()
        pytest.fail("the send was never recorded")
    sending.kill()
    sending.communicate(timeout=30)
    assert sending.returncode == -signal.SIGKILL
    recorded_id = shown.split("id=")[1].split()[0]
    with _receiver(tmp_path, port):
        rerun = _send(tmp_path, "--key", "k", "POST", f"{url}/orders", "--json", '{"n": 9}')
        again = _send(tmp_path, "--key", "k", "POST", f"{url}/orders", "--json", '{"n": 9}')
    assert rerun.returncode == 0, rerun.stderr
    assert f"message id {recorded_id} " in rerun.stderr and "(resumed)" in rerun.stderr
    assert "recorded answer" in again.stderr and again.stdout == rerun.stdout
    assert _runs(tmp_path) == ['{"n": 9}']
