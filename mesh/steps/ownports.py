"""The TCP ports a node's own processes listen on, for the egress proxy to keep a scraped page from. With
--scrape-allow 127.0.0.1 a page's requests reached every one of them: the node's API, its peer port, and
the Thespian admin and actor ports, which unpickle whatever arrives (this project's red team, 2026-12-06).
The set is read from the kernel — the node process and all its descendants, each LISTEN TCP socket —
not written down anywhere: actors bind their ports after the node starts, and a new actor binds a new one."""

from __future__ import annotations

import threading
import time

import psutil

CACHE_S = 1.0  # an actor started since the last look is seen within this long


def listening_ports(root_pid: int) -> frozenset[int]:
    """The ports a LISTEN TCP socket (IPv4 or IPv6) of `root_pid` or any descendant holds (none once it is
    gone)."""
    try:
        root = psutil.Process(root_pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return frozenset()
    ports: set[int] = set()
    for proc in procs:
        ports.update(_listening(proc))
    return frozenset(ports)


def _listening(proc: psutil.Process) -> set[int]:
    """One process's listening TCP ports (the proxy carries nothing else); none for a process that has
    ended since the tree was read, or whose sockets this node may not read."""
    connections = getattr(proc, "net_connections", None) or proc.connections  # (psutil < 6)
    try:
        return {c.laddr.port for c in connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return set()


class OwnPorts:
    """listening_ports(root_pid), looked up again when the last look is CACHE_S old. Called from the
    proxy's threads, one look at a time: a look took 120-200 ms for a tree of 11 processes here (a loaded
    machine), and a page's pings, each asking at once when the answer aged, filled the node's thread pool."""

    def __init__(self, root_pid: int, cache_s: float = CACHE_S):
        self.root_pid = root_pid
        self.cache_s = cache_s
        self.seen: tuple[float, frozenset[int]] = (float("-inf"), frozenset())
        self.lock = threading.Lock()

    def __call__(self) -> frozenset[int]:
        with self.lock:  # (those waiting meanwhile take the answer the look just made)
            when, ports = self.seen
            if time.monotonic() - when >= self.cache_s:
                ports = listening_ports(self.root_pid)
                self.seen = (time.monotonic(), ports)
            return ports
