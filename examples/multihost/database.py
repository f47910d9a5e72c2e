"""The database host: a PostgreSQL primary, its streaming standby, and PgBouncer.

The standby is a ``pg_basebackup -R`` copy of the primary that streams its WAL. With
``synchronous=True`` the primary names it in ``synchronous_standby_names``, so a commit
is acknowledged to the client only once the standby has flushed it: a commit the client
saw survives the primary's death. With ``synchronous=False`` it does not, which is the
demonstration of what asynchronous replication costs (``docs/scale.rst``).

Both servers are :class:`chttp_server.testing.PostgresCluster` instances listening on
``127.0.0.1`` and on the bridge address; PgBouncer (Debian's package) listens on the
bridge in transaction pooling mode. Faults are the real thing: SIGKILL of the primary's
whole process tree, ``pg_promote()``, SIGSTOP of the standby's WAL receiver (a lagging
standby), SIGKILL of PgBouncer.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from chttp_server.testing import PostgresCluster, free_port

__all__ = ["ReplicatedPostgres", "PgBouncer", "PgBouncerNotFound", "find_pgbouncer", "query",
           "process_tree"]

#: The standby's name in ``synchronous_standby_names`` and ``pg_stat_replication``.
STANDBY_NAME = "standby1"


class PgBouncerNotFound(RuntimeError):
    """No ``pgbouncer`` binary on this machine."""


def find_pgbouncer() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if found is None:
        raise PgBouncerNotFound("pgbouncer not found (Debian: apt-get install pgbouncer)")
    return found


def query(port: int, sql: str, params: Sequence[Any] = (), *, database: str = "postgres",
          host: str = "127.0.0.1") -> list[tuple[Any, ...]]:
    """Run one statement in autocommit on ``host:port`` and return its rows (if any)."""
    import psycopg2

    connection = psycopg2.connect(host=host, port=port, user="postgres", dbname=database,
                                  connect_timeout=5)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        connection.close()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents first (from ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        tree += frontier
    return tree


def _wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # a server still starting or restarting: ask again
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class ReplicatedPostgres:
    """A primary and one streaming standby, both reachable on ``listen`` (the bridge)."""

    def __init__(self, *, listen: str, subnet: str, synchronous: bool = True,
                 database: str = "mh") -> None:
        self.listen = listen
        self.synchronous = synchronous
        self.database = database
        common = {
            "listen_addresses": f"127.0.0.1,{listen}",
            "fsync": "off",   # processes die here, never the kernel: the page cache survives
            # A receiver cut off mid-transaction must not hold its claim (a row lock) for
            # ever: PostgreSQL ends an idle-in-transaction session after this long.
            "idle_in_transaction_session_timeout": "4s",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "hot_standby": "on",
        }
        # synchronous_standby_names is set (ALTER SYSTEM) only once the standby streams:
        # before that, every commit (CREATE DATABASE included) would wait for it.
        self.primary = PostgresCluster(settings=common)
        self.standby: PostgresCluster | None = None
        with open(self.primary.data / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {subnet}.0/24 trust\n")
        try:
            self.primary.start()
            query(self.primary.port, f'CREATE DATABASE "{database}"')
            self.standby = PostgresCluster(settings=common)
            shutil.rmtree(self.standby.data)
            user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
            command = [str(self.primary.bin / "pg_basebackup"), "-D", str(self.standby.data),
                       "-R", "-X", "stream", "-c", "fast", "-d",
                       f"host=127.0.0.1 port={self.primary.port} user=postgres "
                       f"application_name={STANDBY_NAME}"]
            if user is not None:
                command = ["runuser", "-u", "postgres", "--", *command]
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"pg_basebackup failed: {done.stderr}")
            self.standby.start()
            if synchronous:
                query(self.primary.port,
                      f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
                query(self.primary.port, "SELECT pg_reload_conf()")
            wanted = "sync" if synchronous else "async"
            _wait_for(lambda: query(self.primary.port,
                                    "SELECT 1 FROM pg_stat_replication WHERE application_name = %s "
                                    "AND state = 'streaming' AND sync_state = %s",
                                    (STANDBY_NAME, wanted)),
                      60, f"the standby streaming ({wanted})")
        except BaseException:
            self.destroy()
            raise

    # -- addresses -------------------------------------------------------------------

    def multihost_url(self, **options: str) -> str:
        """libpq's multi-host URL: whichever of the two accepts writes (``read-write``)."""
        assert self.standby is not None
        extra = "".join(f"&{name}={value}" for name, value in options.items())
        return (f"postgresql://postgres@/{self.database}?host={self.listen}:{self.primary.port}"
                f"&host={self.listen}:{self.standby.port}&target_session_attrs=read-write{extra}")

    # -- faults ----------------------------------------------------------------------

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster and every backend: the host died."""
        pid = int((self.primary.data / "postmaster.pid").read_text().split()[0])
        for member in process_tree(pid):
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_for(lambda: not _alive(pid), 10, "the primary to die")
        self.primary.running = False

    def promote(self) -> None:
        """Promote the standby (``pg_promote``) and wait until it accepts writes."""
        assert self.standby is not None
        query(self.standby.port, "SELECT pg_promote(true, 60)")
        _wait_for(lambda: query(self.standby.port, "SELECT NOT pg_is_in_recovery()")[0][0],
                  60, "the standby to leave recovery")

    def pause_replication(self) -> None:
        """SIGSTOP the primary's WAL sender: from now on the standby receives nothing.

        Stopping the sender (not the standby's receiver) matters: WAL already sent would
        still sit in the receiver's socket buffer and reach the standby after all. With
        synchronous replication every commit now waits; without it, commits go on and
        are acknowledged to clients while the standby falls behind (a lagging standby).
        """
        pid = _wait_for(lambda: query(self.primary.port,
                                      "SELECT pid FROM pg_stat_replication WHERE application_name = %s",
                                      (STANDBY_NAME,))[0][0], 30, "the primary's WAL sender")
        os.kill(int(pid), signal.SIGSTOP)

    def inspect_old_primary(self, sql: str) -> list[tuple[Any, ...]]:
        """Start the killed primary's data alone, on a private port, and run ``sql`` there.

        Nothing else can reach it (loopback only, a port nobody was told): this is only to
        see what the dead primary had committed, e.g. answers that never reached the standby.
        """
        self.primary.port = free_port()
        self.primary.settings["listen_addresses"] = "127.0.0.1"
        self.primary.settings["synchronous_standby_names"] = "''"
        self.primary.start()
        try:
            return query(self.primary.port, sql, database=self.database)
        finally:
            self.primary.stop("immediate")

    def destroy(self) -> None:
        for cluster in (self.standby, self.primary):
            if cluster is None:
                continue
            try:
                cluster.destroy()
            except RuntimeError:  # already dead (killed by a test): remove its files
                cluster.running = False
                shutil.rmtree(cluster.base, ignore_errors=True)


def _pid_in(path: Path) -> int | None:
    """The pid a pid file names, or None (absent, or not written completely yet)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Whether any thread of process ``pid`` still runs (and so may hold its sockets).

    A zombie counts as dead: only its parent (pg_ctl, runuser: gone) would reap it, and
    it has closed its files. But a multi-threaded process's leader turns zombie while
    its other threads are still exiting, and the files they share (PgBouncer's listening
    socket) close only with the last of them: so every thread is looked at.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for task in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
            return True
    return False


class PgBouncer:
    """PgBouncer in transaction pooling mode in front of ``backend_port``, on ``listen``."""

    def __init__(self, *, listen: str, backend_port: int, pool_size: int = 20) -> None:
        self.binary = find_pgbouncer()
        self.listen = listen
        self.port = free_port()
        self.backend_port = backend_port
        # Its own directory under /tmp: PgBouncer runs as postgres, which must reach it.
        self.base = base = Path(tempfile.mkdtemp(prefix="chttp-pgbouncer-"))
        self.pool_size = pool_size
        self.process: subprocess.Popen[bytes] | None = None
        self.config = base / "pgbouncer.ini"
        self.log = base / "pgbouncer.log"
        #: PgBouncer writes its pid here once it listens (see :meth:`start`).
        self.pidfile = base / "pgbouncer.pid"
        (base / "users.txt").write_text('"postgres" ""\n')
        self._write_config()
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            user = pwd.getpwnam("postgres")
            for path in (base, base / "users.txt", self.config):
                os.chown(path, user.pw_uid, user.pw_gid)

    def _write_config(self) -> None:
        self.config.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.backend_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {self.listen},127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.base / 'users.txt'}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 1000\n"
            f"default_pool_size = {self.pool_size}\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.log}\n"
            f"pidfile = {self.pidfile}\n"
            "server_login_retry = 1\n"
            "admin_users = postgres\n"
        )

    def start(self) -> PgBouncer:
        """Start PgBouncer and return once *this* process listens on :attr:`port`.

        Ready means: the pid file exists (PgBouncer writes it only after binding its
        listening sockets), names a live process of this start, and the port accepts.
        A connection alone is no proof: a PgBouncer still dying, or anything else on the
        port, accepts it while the new one fails to bind ("Address already in use",
        FATAL "nowhere to listen on") and exits. That is then a RuntimeError with
        PgBouncer's own words, not a silent outage the load would stall on.
        """
        command = [self.binary, str(self.config)]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        # A stale pid file (SIGKILL leaves it) would count as ready before the new one binds.
        self.pidfile.unlink(missing_ok=True)
        with open(self.base / "stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr,
                                            start_new_session=True)

        def accepting() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:   # runuser exits with its PgBouncer
                output = (self.base / "stderr.log").read_text()
                log = self.log.read_text() if self.log.exists() else ""
                raise RuntimeError(f"pgbouncer exited: {output[-1000:]}{log[-1000:]}")
            if _pid_in(self.pidfile) not in process_tree(self.process.pid):
                raise OSError("pgbouncer has not bound its port yet")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        deadline = time.monotonic() + 30
        while True:
            try:
                accepting()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise TimeoutError("pgbouncer did not start") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL PgBouncer (and the runuser wrapper); return once every process is gone.

        Reaping the wrapper is not enough: ``runuser`` forks PgBouncer, and the wrapper
        can be reaped while PgBouncer is still exiting with its listening socket open.
        A :meth:`start` in that moment met the dying listener while the new PgBouncer
        failed to bind and exited, and the receivers found nothing on the port for
        good: the stall seen once in tests/multihost/test_failover.py's PgBouncer restart.
        """
        if self.process is None or self.process.poll() is not None:
            return
        tree = process_tree(self.process.pid)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in tree:   # a member that left the group dies too
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(10)
        # Every thread gone: the listening socket is closed and the port free.
        _wait_for(lambda: not any(_alive(pid) for pid in tree), 10, "pgbouncer to die")

    def restart(self) -> None:
        self.kill()
        self.start()

    def url(self, database: str, **options: str) -> str:
        extra = "&".join(f"{name}={value}" for name, value in options.items())
        return f"postgresql://postgres@{self.listen}:{self.port}/{database}" + (f"?{extra}" if extra else "")

    def stop(self) -> None:
        """Kill it and remove its files."""
        self.kill()
        shutil.rmtree(self.base, ignore_errors=True)
