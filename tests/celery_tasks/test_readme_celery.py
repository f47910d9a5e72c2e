"""README.rst's "Celery" section runs as written: its module, its worker command (a real
prefork worker on a Redis of its own) and its client one-liner, then ``chttp-client``
finds the task's oplog under its task id (a re-run of an id: tests/celery_tasks/test_retry.py)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chttp_client.cli import main
from tests.celery_tasks.live import RedisServer
from tests.server.live import wait_for
from tests.test_readme import _command, _python_block

pytestmark = pytest.mark.slow


def test_the_celery_snippet_runs_as_written(env, tmp_path: Path, capsys) -> None:
    (tmp_path / "payouts.py").write_text(_python_block("# payouts.py"))
    redis = RedisServer(tmp_path)
    environment = {**os.environ, "REDIS": redis.url.rsplit("/", 1)[0],
                   "JOURNAL": f"sqlite:///{tmp_path / 'payouts.db'}", "PYTHONPATH": str(tmp_path)}
    worker_argv = _command("celery -A payouts worker")
    assert worker_argv[:3] == ["celery", "-A", "payouts"] and "prefork" in worker_argv
    log = tmp_path / "worker.log"
    with open(log, "wb") as output:
        worker = subprocess.Popen([sys.executable, "-m", *worker_argv], cwd=tmp_path, env=environment,
                                  stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: b" ready." in log.read_bytes() or worker.poll() is not None, timeout=60,
                 what="the README's worker")
        assert worker.poll() is None, log.read_text()
        client_argv = _command('python -c "import payouts')
        client_argv[-1] = client_argv[-1].replace("http://127.0.0.1:8080", env.receiver_url)
        sent = subprocess.run([sys.executable, *client_argv[1:]], cwd=tmp_path, env=environment,
                              capture_output=True, text=True, timeout=120, check=True)
        answer = ast.literal_eval(sent.stdout.strip())
        assert answer["payee"] == "alice" and answer["retries"] == 0

        journal_url = environment["JOURNAL"]
        assert main(["list", "--db", journal_url, "--all"]) == 0
        listed = capsys.readouterr().out.split()
        task_id = listed[0]
        assert listed[1:4] == ["done", "celery:payouts.pay_out", "v1"]
        assert main(["show", "--db", journal_url, task_id]) == 0
        shown = capsys.readouterr().out
        assert f"oplog     {task_id}" in shown and "send     done" in shown
        assert len(env.runs_by_body()['{"amount": 10, "payee": "alice"}']) == 1
    finally:
        os.killpg(worker.pid, 9)
        worker.wait(10)
        redis.stop()
