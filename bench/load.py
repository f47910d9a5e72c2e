"""Load generation: wrk on loopback (preferred) or a labelled Python fallback.

Every request of the ``new`` kind carries a message id never used before (run tag,
wrk thread and a counter); the ``replay`` kind picks at random among ``replay_ids``
ids pre-stored as ``{replay_prefix}{n}``. The peer reads ``Idempotency-Key`` (a quoted
structured-field string), chttp reads ``X-Message-ID``; ``none`` sends no id at all.
wrk's ``done()`` hook prints one JSON line with counts and exact latency percentiles.
"""

from __future__ import annotations

import http.client
import json
import random
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LoadResult", "LoadSpec", "run_load", "median_result", "wrk_available", "WRK_INSTALL_HINT", "BODY",
           "PATH", "TRANSFER_PATH"]

PATH = "/items"
#: The realistic handler of bench/app.py: five statements in the request's transaction.
TRANSFER_PATH = "/transfer"
BODY = '{"amount": 1}'
WRK_INSTALL_HINT = "wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk)"

_LUA = r"""
wrk.method = "POST"
wrk.path = "__PATH__"
wrk.body = '__BODY__'
wrk.headers["Content-Type"] = "application/json"

local threads_made = 0
function setup(thread)
  threads_made = threads_made + 1
  thread:set("tid", threads_made)
end

local counter = 0
local prefix, kind, header, quoted, replay_prefix, replay_n
function init(args)
  kind = args[1]; header = args[2]; quoted = args[3] == "quoted"
  prefix = args[4] .. "-" .. tid .. "-"
  replay_prefix = args[5]; replay_n = tonumber(args[6])
  math.randomseed(os.time() * 100 + tid)
end

function request()
  local id = nil
  if kind == "new" then
    counter = counter + 1
    id = prefix .. counter
  elseif kind == "replay" then
    id = replay_prefix .. math.random(0, replay_n - 1)
  end
  if id ~= nil then
    if quoted then id = '"' .. id .. '"' end
    wrk.headers[header] = id
  end
  return wrk.format()
end

function done(summary, latency, requests)
  io.write(string.format(
    'BENCHJSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect": %d, ' ..
    '"read": %d, "write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass(frozen=True)
class LoadSpec:
    """One load run against one server."""

    address: str                      # host:port
    concurrency: int
    duration: float                   # seconds
    kind: str = "new"                 # "new" ids, "replay" stored ids, or "none"
    header: str = "X-Message-ID"      # or "Idempotency-Key" for the peer
    replay_prefix: str = "r-"
    replay_ids: int = 0
    path: str = PATH                  # PATH (minimal handler) or TRANSFER_PATH (realistic)


@dataclass
class LoadResult:
    """Throughput and latency of one run (or of the database floor)."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    tool: str
    notes: list[str] = field(default_factory=list)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def run_load(spec: LoadSpec, *, use_wrk: bool = True) -> LoadResult:
    if use_wrk and wrk_available():
        return _run_wrk(spec)
    return _run_python(spec)


def _run_wrk(spec: LoadSpec) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="chttp-bench-wrk-") as tmp:
        script = Path(tmp) / "bench.lua"
        script.write_text(_LUA.replace("__PATH__", spec.path).replace("__BODY__", BODY))
        threads = min(spec.concurrency, 2)
        quoted = "quoted" if spec.header.lower() == "idempotency-key" else "plain"
        command = [
            "wrk", "-t", str(threads), "-c", str(spec.concurrency),
            "-d", f"{max(1, round(spec.duration))}s", "--timeout", "10s",
            "-s", str(script), f"http://{spec.address}",
            "--", spec.kind, spec.header, quoted, uuid.uuid4().hex[:12],
            spec.replay_prefix, str(max(spec.replay_ids, 1)),
        ]
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=spec.duration + 60)
    line = next((l for l in result.stdout.splitlines() if l.startswith("BENCHJSON ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stdout}{result.stderr}")
    data = json.loads(line[len("BENCHJSON "):])
    socket_errors = data["connect"] + data["read"] + data["write"] + data["timeout"]
    errors = data["status_errors"] + socket_errors
    notes = [f"{data['status_errors']} non-2xx"] if data["status_errors"] else []
    if socket_errors:
        notes.append(f"{socket_errors} socket errors")
    seconds = data["duration_us"] / 1e6
    ok = data["requests"] - data["status_errors"]
    return LoadResult(rps=ok / seconds, p50_ms=data["p50_us"] / 1000,
                      p99_ms=data["p99_us"] / 1000, requests=data["requests"],
                      errors=errors, tool="wrk", notes=notes)


def _run_python(spec: LoadSpec) -> LoadResult:
    """A thread per connection, keep-alive, http.client: a fallback, slower than wrk."""
    host, port = spec.address.rsplit(":", 1)
    tag = uuid.uuid4().hex[:12]
    latencies: list[list[float]] = [[] for _ in range(spec.concurrency)]
    errors = [0] * spec.concurrency
    start = time.monotonic()
    deadline = start + spec.duration

    def worker(n: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        rng = random.Random(n)
        counter = 0
        while time.monotonic() < deadline:
            headers = {"Content-Type": "application/json"}
            if spec.kind == "new":
                counter += 1
                ident = f"{tag}-{n}-{counter}"
            elif spec.kind == "replay":
                ident = f"{spec.replay_prefix}{rng.randrange(max(spec.replay_ids, 1))}"
            else:
                ident = None
            if ident is not None:
                quoted = spec.header.lower() == "idempotency-key"
                headers[spec.header] = f'"{ident}"' if quoted else ident
            began = time.perf_counter()
            try:
                connection.request("POST", spec.path, body=BODY, headers=headers)
                response = connection.getresponse()
                response.read()
                if response.status >= 400:
                    errors[n] += 1
                else:
                    latencies[n].append(time.perf_counter() - began)
            except (OSError, http.client.HTTPException):
                errors[n] += 1
                connection.close()
                connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.close()

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(spec.concurrency)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    elapsed = time.monotonic() - start
    return summarise([x for per in latencies for x in per], elapsed, sum(errors),
                     tool="python-loadgen (fallback: wrk missing)")


def summarise(latencies_s: list[float], elapsed: float, errors: int, *, tool: str) -> LoadResult:
    """Throughput and exact percentiles from per-request latencies in seconds."""
    ordered = sorted(latencies_s)

    def percentile(p: float) -> float:
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    return LoadResult(rps=len(ordered) / elapsed if elapsed > 0 else 0.0,
                      p50_ms=percentile(50), p99_ms=percentile(99),
                      requests=len(ordered) + errors, errors=errors, tool=tool)


def median_result(results: list[LoadResult]) -> LoadResult:
    """One cell from interleaved slices: the median of each figure, the sum of the counts."""
    if len(results) == 1:
        return results[0]
    import statistics

    notes = sorted({note for result in results for note in result.notes})
    return LoadResult(
        rps=statistics.median(r.rps for r in results),
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=statistics.median(r.p99_ms for r in results),
        requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
        tool=results[0].tool,
        notes=notes,
    )


def combined(results: list[LoadResult]) -> LoadResult:
    """Back-to-back slices as one run: throughput over their whole time (not a median,
    so a slow stretch counts for as long as it lasted), the worst p99, the median p50."""
    if len(results) == 1:
        return results[0]
    import statistics

    seconds = sum(r.requests / r.rps for r in results if r.rps > 0)
    requests = sum(r.requests for r in results)
    return LoadResult(
        rps=requests / seconds if seconds else 0.0,
        p50_ms=statistics.median(r.p50_ms for r in results),
        p99_ms=max(r.p99_ms for r in results),
        requests=requests,
        errors=sum(r.errors for r in results),
        tool=results[0].tool,
        notes=sorted({note for result in results for note in result.notes}),
    )
