"""HAProxy in front of a Patroni cluster, following the leader by Patroni's REST health check.

The other way clients find the primary (besides libpq's multi-host URL): one address,
a TCP proxy that sends each new connection to the node whose Patroni answers
``GET /primary`` with 200 (only the leader's does), checked every ``CHECK_INTERVAL``.
When the leader changes, the old one's check fails and HAProxy closes the sessions
still open to it (``on-marked-down shutdown-sessions``), so no client keeps writing to a
demoted node through a pooled connection. This is Patroni's documented HAProxy recipe.

HAProxy runs in the foreground (``-db``) on a namespace host of its own; the caller
kills it (its session) like any other process of the topology.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

from chttp_examples.multihost.netns import Host

__all__ = ["HAProxyNotFound", "find_haproxy", "haproxy_config", "start_haproxy", "PROXY_PORT",
           "CHECK_INTERVAL"]

PROXY_PORT = 5000
#: Seconds between two health checks of a node (``inter``); a node is marked down after
#: two failed checks and up after one good one.
CHECK_INTERVAL = 1


class HAProxyNotFound(RuntimeError):
    """``haproxy`` is not installed."""


def find_haproxy() -> str:
    """The path of ``haproxy``; :class:`HAProxyNotFound` if it lacks."""
    path = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                       else None)
    if path is None:
        raise HAProxyNotFound("haproxy not found (Debian: apt-get install haproxy)")
    return path


def haproxy_config(listen: str, nodes: Sequence[tuple[str, str]], *, pg_port: int,
                   rest_port: int) -> str:
    """The configuration: ``listen:PROXY_PORT`` to whichever of ``nodes`` (name, address) leads."""
    servers = "\n".join(
        f"    server {name} {address}:{pg_port} maxconn 200 check port {rest_port}"
        for name, address in nodes)
    return f"""global
    maxconn 1000

defaults
    mode tcp
    retries 2
    timeout connect 2s
    timeout client 30m
    timeout server 30m
    timeout check 2s

listen primary
    bind {listen}:{PROXY_PORT}
    option httpchk
    http-check send meth GET uri /primary
    http-check expect status 200
    default-server inter {CHECK_INTERVAL}s fall 2 rise 1 on-marked-down shutdown-sessions
{servers}
"""


def start_haproxy(host: Host, nodes: Sequence[tuple[str, str]], workdir: Path, *, pg_port: int,
                  rest_port: int) -> subprocess.Popen[str]:
    """Start HAProxy on ``host`` (foreground, own session); its log is ``workdir/haproxy.log``."""
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(host.address, nodes, pg_port=pg_port, rest_port=rest_port))
    check = subprocess.run([find_haproxy(), "-c", "-f", str(config)], capture_output=True,
                           text=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy rejected its configuration: {check.stdout}{check.stderr}")
    with open(workdir / "haproxy.log", "ab") as log:
        return subprocess.Popen(host.command(find_haproxy(), "-db", "-f", str(config)),
                                stdout=log, stderr=log, text=True, start_new_session=True)
