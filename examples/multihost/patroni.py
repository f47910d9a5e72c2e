"""A Patroni cluster on namespace hosts: three PostgreSQL nodes, a three-member etcd.

Each database host is a namespace of :class:`~.netns.Network` running one etcd member
and one Patroni (as the ``postgres`` user: PostgreSQL refuses root), which runs that
host's PostgreSQL. Patroni, not the test, decides who is the primary: it holds the
leader key in etcd, and when the leader's lease lapses (``ttl``) another node is
promoted. With ``synchronous_mode: true`` a commit is acknowledged only once the
synchronous standby has it, and only that standby may be promoted, so no acknowledged
commit is lost at a failover; that is the setting ``docs/scale.rst`` requires.

Clients find the primary with libpq's multi-host URL and ``target_session_attrs=read-write``
(:meth:`PatroniCluster.url`); the tests learn the leader from Patroni's REST API
(:meth:`PatroniCluster.leader`). Faults are the real thing: SIGKILL of the leader's
postmaster and backends, ``patronictl switchover``, and iptables rules that cut the
leader's host from the other database hosts while the receivers still reach it.

Everything lives in one temporary directory (owned by ``postgres``) and in the
network's namespaces; :meth:`PatroniCluster.destroy` SIGKILLs every process of those
namespaces (``ip netns pids``) and removes the directory.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from chttp_examples.multihost.database import process_tree, query
from chttp_examples.multihost.netns import Host, Network

from chttp_server.testing import find_postgres_bin

__all__ = ["PatroniCluster", "PatroniNode", "PatroniNotFound", "find_patroni", "wait_for",
           "PG_PORT", "REST_PORT", "ETCD_CLIENT_PORT"]

PG_PORT = 5432
REST_PORT = 8008
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
#: A short leader lease, so that a failover takes seconds (Patroni requires
#: ``loop_wait + 2 * retry_timeout <= ttl``).
TIMINGS = {"ttl": 10, "loop_wait": 1, "retry_timeout": 4}


class PatroniNotFound(RuntimeError):
    """``patroni``, ``patronictl`` or ``etcd`` is not installed."""


def find_patroni() -> dict[str, str]:
    """The paths of ``patroni``, ``patronictl`` and ``etcd``; :class:`PatroniNotFound` if one lacks."""
    found = {}
    for tool in ("patroni", "patronictl", "etcd"):
        path = shutil.which(tool) or (f"/usr/bin/{tool}" if os.path.exists(f"/usr/bin/{tool}") else None)
        if path is None:
            raise PatroniNotFound(f"{tool} not found (Debian: apt-get install patroni etcd-server)")
        found[tool] = path
    return found


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """``condition()``'s first true value, asked every 0.1 s (an exception counts as false)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # a member still starting, or the REST API between two loops
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class PatroniNode:
    """One database host: its namespace, its files, its etcd and Patroni processes."""

    name: str
    host: Host
    base: Path
    etcd: subprocess.Popen[bytes] | None = None
    patroni: subprocess.Popen[bytes] | None = None
    config: Path = field(default_factory=Path)

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def dsn_host(self) -> str:
        return f"{self.host.address}:{PG_PORT}"


class PatroniCluster:
    """Three Patroni nodes and three etcd members on namespace hosts of ``network``."""

    def __init__(self, network: Network, *, nodes: int = 3, synchronous: bool = True,
                 database: str = "mh", scope: str = "chttp", logs: Path | None = None) -> None:
        self.tools = find_patroni()
        self.bin = find_postgres_bin()
        self.network = network
        self.synchronous = synchronous
        self.database = database
        self.scope = scope
        #: Where :meth:`destroy` copies each node's Patroni, etcd and PostgreSQL logs.
        self.logs = logs
        self.base = Path(tempfile.mkdtemp(prefix="chttp-patroni-"))
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.nodes: list[PatroniNode] = []
        try:
            for number in range(1, nodes + 1):
                name = f"pg{number}"
                base = self.base / name
                base.mkdir()
                self.nodes.append(PatroniNode(name, network.add_host(name), base))
            self._chown(self.base)
            for node in self.nodes:
                self._start_etcd(node)
            for node in self.nodes:
                node.config = self._write_config(node)
                self.start(node)
            self.wait_healthy(timeout=180)
            query(PG_PORT, f'CREATE DATABASE "{database}"', host=self.leader().host.address)
        except BaseException:
            self.destroy()
            raise

    # -- files and processes -----------------------------------------------------------

    def _chown(self, path: Path) -> None:
        if self._user is None:
            return
        for root, dirs, files in os.walk(path):
            for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.chown(name, self._user.pw_uid, self._user.pw_gid)

    def _as_postgres(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if self._user is not None else list(argv)

    def _start_etcd(self, node: PatroniNode) -> None:
        address = node.host.address
        peers = ",".join(f"{n.name}=http://{n.host.address}:{ETCD_PEER_PORT}" for n in self.nodes)
        command = node.host.command(
            self.tools["etcd"], "--name", node.name, "--data-dir", str(node.base / "etcd"),
            "--listen-client-urls", f"http://{address}:{ETCD_CLIENT_PORT},http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--advertise-client-urls", f"http://{address}:{ETCD_CLIENT_PORT}",
            "--listen-peer-urls", f"http://{address}:{ETCD_PEER_PORT}",
            "--initial-advertise-peer-urls", f"http://{address}:{ETCD_PEER_PORT}",
            "--initial-cluster", peers, "--initial-cluster-state", "new",
            "--initial-cluster-token", self.network.tag,
            "--heartbeat-interval", "100", "--election-timeout", "1000")
        with open(node.base / "etcd.log", "ab") as log:
            node.etcd = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)

    def _write_config(self, node: PatroniNode) -> Path:
        """Patroni's YAML (JSON is YAML) for ``node``: the settings ``docs/scale.rst`` names."""
        address = node.host.address
        parameters = {
            "fsync": "off",   # processes die here, never the kernel: the page cache survives
            "idle_in_transaction_session_timeout": "4s",
            "unix_socket_directories": str(node.base),
            "logging_collector": "on",
            "log_line_prefix": "%m [%p] %a ",
            "log_directory": str(node.base / "log"),
            "wal_keep_size": "256MB",
        }
        config = {
            "scope": self.scope,
            "name": node.name,
            "log": {"level": "INFO", "dir": str(node.base / "patroni-log")},
            "restapi": {"listen": f"{address}:{REST_PORT}", "connect_address": f"{address}:{REST_PORT}"},
            "etcd3": {"hosts": [f"{n.host.address}:{ETCD_CLIENT_PORT}" for n in self.nodes]},
            "bootstrap": {
                "dcs": {
                    **TIMINGS,
                    # Asynchronous mode is the demonstration of what is lost without
                    # synchronous_mode: no lag limit may stop the failover there.
                    "maximum_lag_on_failover": 1048576 if self.synchronous else 2**40,
                    "synchronous_mode": self.synchronous,
                    "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": parameters},
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": f"{address},127.0.0.1:{PG_PORT}",
                "connect_address": f"{address}:{PG_PORT}",
                "data_dir": str(node.data),
                "bin_dir": str(self.bin),
                "pgpass": str(node.base / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres"},
                    "replication": {"username": "postgres"},
                    "rewind": {"username": "postgres"},
                },
                "parameters": {"unix_socket_directories": str(node.base)},
                "pg_hba": ["local all all trust", "host all all 0.0.0.0/0 trust",
                           "host replication all 0.0.0.0/0 trust"],
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }
        (node.base / "patroni-log").mkdir(exist_ok=True)
        path = node.base / "patroni.yml"
        path.write_text(json.dumps(config, indent=1))
        self._chown(node.base)
        return path

    def start(self, node: PatroniNode) -> None:
        """Start ``node``'s Patroni (which starts, or bootstraps, its PostgreSQL)."""
        command = node.host.command(*self._as_postgres(self.tools["patroni"], str(node.config)))
        with open(node.base / "patroni.out", "ab") as log:
            node.patroni = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)

    # -- state -------------------------------------------------------------------------

    def node(self, name: str) -> PatroniNode:
        return next(n for n in self.nodes if n.name == name)

    def members(self, *, skip: PatroniNode | None = None) -> list[dict[str, Any]]:
        """Patroni's ``/cluster`` view (name, role, state, lag) from the first node answering.

        ``skip``: not from that node (an isolated node's view is stale).
        """
        last: Exception | None = None
        for node in self.nodes:
            if node is skip:
                continue
            try:
                with urllib.request.urlopen(f"http://{node.host.address}:{REST_PORT}/cluster",
                                            timeout=2) as response:
                    return list(json.load(response)["members"])
            except OSError as error:
                last = error
        raise RuntimeError(f"no Patroni REST API answered: {last}")

    def leader(self, *, skip: PatroniNode | None = None, timeout: float = 60) -> PatroniNode:
        """The node whose Patroni holds the leader key and runs a writable primary.

        ``skip``: another node than that one (waits until one leads).
        """
        def found() -> PatroniNode | None:
            for member in self.members(skip=skip):
                if member["role"] == "leader" and member["state"] == "running":
                    node = self.node(member["name"])
                    if node is skip:
                        return None
                    with urllib.request.urlopen(f"http://{node.host.address}:{REST_PORT}/primary",
                                                timeout=2):
                        return node
            return None
        return wait_for(found, timeout, "a Patroni leader")  # type: ignore[no-any-return]

    def sync_standby(self, *, timeout: float = 60) -> PatroniNode:
        """The node the leader replicates to synchronously now (its own ``pg_stat_replication``).

        Asked of PostgreSQL, not of Patroni's views: right after a restart the views may
        not name one yet, or name an old one. Waits until there is one.
        """
        def found() -> PatroniNode | None:
            leader = self.leader()
            rows = query(PG_PORT, "SELECT application_name FROM pg_stat_replication "
                         "WHERE sync_state = 'sync' AND state = 'streaming'", host=leader.host.address)
            names = {n.name for n in self.nodes}
            return next((self.node(name) for (name,) in rows if name in names), None)
        return wait_for(found, timeout, "a synchronous standby")  # type: ignore[no-any-return]

    def healthy(self) -> bool:
        """Every node's view names the same leader, and that leader streams to all others.

        Patroni's views alone are not enough: an isolated node's view is stale (it still
        shows the cluster as it was before the cut). So the leader's own PostgreSQL is
        asked too: it must be writable and send WAL to every other node, one of them
        synchronously if ``synchronous_mode`` is on.
        """
        leaders = set()
        for node in self.nodes:
            with urllib.request.urlopen(f"http://{node.host.address}:{REST_PORT}/cluster",
                                        timeout=2) as response:
                members = json.load(response)["members"]
            if len(members) != len(self.nodes) or any(m["state"] != "running" for m in members):
                return False
            leaders |= {m["name"] for m in members if m["role"] == "leader"}
            if self.synchronous and not any(m["role"] == "sync_standby" for m in members):
                return False   # patronictl switches over only to the one the views name
        if len(leaders) != 1:
            return False
        leader = self.node(leaders.pop())
        ((writable, streaming, sync),) = query(
            PG_PORT, "SELECT NOT pg_is_in_recovery(), "
            "(SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'), "
            "(SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync')",
            host=leader.host.address)
        return bool(writable) and streaming == len(self.nodes) - 1 and (not self.synchronous or sync >= 1)

    def wait_healthy(self, timeout: float = 120) -> None:
        wait_for(self.healthy, timeout, f"a healthy Patroni cluster ({self._describe()})")

    def _describe(self) -> str:
        try:
            return ", ".join(f"{m['name']} {m['role']} {m['state']}" for m in self.members())
        except RuntimeError as error:
            return str(error)

    def url(self, *, driver: str = "psycopg2", **options: str) -> str:
        """The multi-host URL over every node, ``target_session_attrs=read-write``."""
        hosts = "&".join(f"host={n.dsn_host}" for n in self.nodes)
        extra = "".join(f"&{name}={value}" for name, value in options.items())
        return (f"postgresql+{driver}://postgres@/{self.database}?{hosts}"
                f"&target_session_attrs=read-write{extra}")

    # -- faults ------------------------------------------------------------------------

    def kill_postgres(self, node: PatroniNode) -> None:
        """SIGKILL ``node``'s postmaster and every backend (Patroni itself lives on)."""
        pid = int((node.data / "postmaster.pid").read_text().split()[0])
        for member in process_tree(pid):
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def switchover(self, candidate: PatroniNode) -> None:
        """``patronictl switchover`` from the current leader to ``candidate``."""
        leader = self.leader()
        done = subprocess.run(
            [self.tools["patronictl"], "-c", str(leader.config), "switchover", self.scope,
             "--leader", leader.name, "--candidate", candidate.name, "--force"],
            capture_output=True, text=True, timeout=120)
        if done.returncode != 0 or "Successfully" not in done.stdout:
            raise RuntimeError(f"patronictl switchover failed: {done.stdout}{done.stderr}")

    def isolate(self, node: PatroniNode) -> None:
        """Cut ``node`` from the other database hosts (etcd peers, replication), both ways.

        The receivers and this (root) namespace still reach it: its PostgreSQL keeps
        accepting connections while the others elect a new leader, the split-brain case.
        """
        for other in self.nodes:
            if other is node:
                continue
            for rule in (["OUTPUT", "-d", other.host.address], ["INPUT", "-s", other.host.address]):
                subprocess.run(node.host.command("iptables", "-A", *rule, "-j", "DROP"),
                               check=True, capture_output=True, timeout=30)
                node.host.cut_rules.append(rule)

    def rejoin(self, node: PatroniNode) -> None:
        self.network.restore(node.host)

    def pause_replication(self, node: PatroniNode) -> int:
        """SIGSTOP ``node``'s WAL senders: from now on no replica receives anything.

        The senders, not the receivers: WAL already sent would still reach a replica
        from its socket buffer. Returns how many were stopped.
        """
        pids = [pid for (pid,) in query(PG_PORT, "SELECT pid FROM pg_stat_replication",
                                        host=node.host.address)]
        for pid in pids:
            os.kill(int(pid), signal.SIGSTOP)
        return len(pids)

    def etcd_member_of(self, node: PatroniNode, *, avoid: PatroniNode | None = None,
                       timeout: float = 30) -> PatroniNode:
        """The node whose etcd member ``node``'s Patroni is connected to now.

        Read from the kernel, not guessed from the configuration: the established TCP
        connections to an etcd client port owned by Patroni's process (or a child) in
        ``node``'s namespace. Waits until there is one (Patroni may be between two loops),
        one other than ``avoid``'s if given.
        """
        assert node.patroni is not None
        patroni = node.patroni

        def found() -> PatroniNode | None:
            pids = set(process_tree(patroni.pid))
            lines = subprocess.run(
                node.host.command("ss", "-tnpH", "state", "established",
                                  f"( dport = :{ETCD_CLIENT_PORT} )"),
                capture_output=True, text=True, timeout=30, check=True).stdout.splitlines()
            by_address = {n.host.address: n for n in self.nodes}
            for line in lines:
                fields = line.split()
                owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
                address = next((f.rsplit(":", 1)[0] for f in fields
                                if f.endswith(f":{ETCD_CLIENT_PORT}")), None)
                if owners & pids and address in by_address and by_address[address] is not avoid:
                    return by_address[address]
            return None
        return wait_for(found, timeout, f"{node.name}'s Patroni to talk to etcd")  # type: ignore[no-any-return]

    def kill_etcd(self, node: PatroniNode) -> None:
        """SIGKILL ``node``'s etcd member (Patroni and PostgreSQL there live on)."""
        if node.etcd is not None and node.etcd.poll() is None:
            try:
                os.killpg(node.etcd.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            node.etcd.wait(10)

    def restart_etcd(self, node: PatroniNode) -> None:
        """Start ``node``'s etcd member again on its data directory (it rejoins the others)."""
        self._start_etcd(node)

    def etcd_healthy(self) -> bool:
        """Every etcd member answers ``/health`` as healthy (it has a raft leader)."""
        for node in self.nodes:
            with urllib.request.urlopen(f"http://{node.host.address}:{ETCD_CLIENT_PORT}/health",
                                        timeout=2) as response:
                if json.load(response).get("health") != "true":
                    return False
        return True

    def kill_host(self, node: PatroniNode) -> None:
        """SIGKILL every process of ``node``'s host (Patroni, PostgreSQL, etcd): the host died."""
        self._kill_all(node)

    def _kill_all(self, node: PatroniNode) -> None:
        for process in (node.patroni, node.etcd):
            if process is not None and process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        # Patroni starts the postmaster in a session of its own: every process left
        # in the namespace (postmaster, backends, runuser) goes too.
        pids = subprocess.run(["ip", "netns", "pids", node.host.netns], capture_output=True,
                              text=True, timeout=30).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        for process in (node.patroni, node.etcd):
            if process is not None:
                process.wait(10)
        wait_for(lambda: not subprocess.run(["ip", "netns", "pids", node.host.netns],
                                             capture_output=True, text=True).stdout.split(),
                  30, f"{node.name}'s processes to end")

    # -- teardown ----------------------------------------------------------------------

    @staticmethod
    def _keep_logs(node: PatroniNode, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for name in ("patroni.out", "etcd.log", "patroni-log", "log"):
            source = node.base / name
            if source.is_dir():
                shutil.copytree(source, target / name, dirs_exist_ok=True)
            elif source.exists():
                shutil.copy(source, target / name)

    def destroy(self) -> None:
        """SIGKILL every process of the database hosts and remove the files. Idempotent."""
        for node in self.nodes:
            self._kill_all(node)
            if self.logs is not None:
                self._keep_logs(node, self.logs / node.name)
        self.nodes = []
        shutil.rmtree(self.base, ignore_errors=True)
