"""Hosts on one machine: network namespaces joined to a bridge, and partitions between them.

The root namespace owns a bridge with the address ``10.<a>.<b>.1``; that is where the
"database host" (PostgreSQL, PgBouncer) listens. Every other host is a namespace with a
veth pair into the bridge and its own address ``10.<a>.<b>.<n>``, so hosts talk to one
another over a real (virtual) Ethernet, and a partition is a real iptables rule inside
one host's namespace.

Every name made here starts with one random prefix (``chmh<hex>``), so parallel runs
never collide, and :meth:`Network.destroy` removes all of it — called by the context
manager even when a test fails. Deleting a namespace also deletes its veth pair and its
iptables rules, so a crashed run leaves nothing a later :func:`sweep` cannot remove.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["Host", "Network", "NetworkUnavailable", "require_network", "leftovers", "sweep", "PREFIX"]

#: Every interface and namespace name made here starts with this (``ip link`` allows 15 chars).
PREFIX = "chmh"


class NetworkUnavailable(RuntimeError):
    """This machine cannot build the topology (not root, or ``ip``/``iptables`` missing)."""


def require_network() -> None:
    """Raise :class:`NetworkUnavailable` naming what is missing; the tests skip on it."""
    if os.geteuid() != 0:
        raise NetworkUnavailable("network namespaces need root (run the tests as root)")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            raise NetworkUnavailable(f"{tool!r} not found (Debian: apt-get install iproute2 iptables)")


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result


@dataclass
class Host:
    """One namespace: ``name`` as the tests call it, ``netns`` as ``ip`` knows it."""

    name: str
    netns: str
    address: str
    link: str = ""
    cut_rules: list[list[str]] = field(default_factory=list)

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]


class Network:
    """A bridge in the root namespace and any number of hosts attached to it."""

    def __init__(self) -> None:
        require_network()
        self.tag = f"{PREFIX}{random.randrange(16**4):04x}"
        self.subnet = f"10.{random.randrange(200, 250)}.{random.randrange(1, 250)}"
        self.gateway = f"{self.subnet}.1"
        self.bridge = f"{self.tag}br"
        self.hosts: dict[str, Host] = {}
        self._made_bridge = False
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._made_bridge = True
        # A bridge without an address of its own takes the lowest of its ports' MACs, so
        # adding a host can change the gateway's MAC under the other hosts' ARP caches:
        # their packets to the database host then go nowhere until the entry is
        # re-resolved (up to ~30 s, seen as stalled requests). A fixed MAC never changes.
        _run("ip", "link", "set", self.bridge, "address",
             "02:" + ":".join(f"{random.randrange(256):02x}" for _ in range(5)))
        _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        """A new namespace with a veth into the bridge and the next free address."""
        number = len(self.hosts) + 2
        netns = f"{self.tag}-{name}"
        outside, inside = f"{self.tag}v{number}", f"{self.tag}p{number}"
        host = Host(name, netns, f"{self.subnet}.{number}", outside)
        _run("ip", "netns", "add", netns)
        self.hosts[name] = host
        _run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        _run("ip", "link", "set", outside, "master", self.bridge)
        _run("ip", "link", "set", outside, "up")
        _run("ip", "link", "set", inside, "netns", netns)
        _run(*host.command("ip", "addr", "add", f"{host.address}/24", "dev", inside))
        _run(*host.command("ip", "link", "set", inside, "up"))
        _run(*host.command("ip", "link", "set", "lo", "up"))
        return host

    # -- partitions ------------------------------------------------------------------

    def cut(self, host: Host, ports: Sequence[int]) -> None:
        """Drop every packet between ``host`` and the database host's ``ports`` (both ways).

        DROP, not REJECT: the host's open connections hang as on a dead link, which is
        the hard case (a refused connection fails fast and is easy).
        """
        for port in ports:
            for rule in (["OUTPUT", "-d", self.gateway, "-p", "tcp", "--dport", str(port)],
                         ["INPUT", "-s", self.gateway, "-p", "tcp", "--sport", str(port)]):
                _run(*host.command("iptables", "-A", *rule, "-j", "DROP"))
                host.cut_rules.append(rule)

    def restore(self, host: Host) -> None:
        """Remove the rules :meth:`cut` added to ``host``."""
        while host.cut_rules:
            rule = host.cut_rules.pop()
            _run(*host.command("iptables", "-D", *rule, "-j", "DROP"), check=False)

    # -- teardown --------------------------------------------------------------------

    def destroy(self) -> None:
        """Remove every rule, namespace, veth and the bridge made here. Idempotent."""
        for host in list(self.hosts.values()):
            self.restore(host)
            # Delete the veth ourselves: a deleted namespace takes its end with it only
            # asynchronously, and the outer end would linger for a moment.
            _run("ip", "link", "delete", host.link, check=False)
            _run("ip", "netns", "delete", host.netns, check=False)
            del self.hosts[host.name]
        if self._made_bridge:
            _run("ip", "link", "delete", self.bridge, check=False)
            self._made_bridge = False

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()


def leftovers() -> tuple[list[str], list[str]]:
    """Namespaces and links with our prefix that exist now (for tests and :func:`sweep`)."""
    spaces = [line.split()[0] for line in _run("ip", "netns", "list").stdout.splitlines()
              if line.startswith(PREFIX)]
    links = [line.split(":")[1].strip().split("@")[0]
             for line in _run("ip", "-o", "link", "show").stdout.splitlines()
             if line.split(":")[1].strip().startswith(PREFIX)]
    return spaces, links


def sweep() -> None:
    """Remove what a killed run left behind (namespaces and links with our prefix)."""
    spaces, links = leftovers()
    for netns in spaces:
        _run("ip", "netns", "delete", netns, check=False)
    for link in links:
        _run("ip", "link", "delete", link, check=False)
