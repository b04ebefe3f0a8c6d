"""The TCP ports a node's own processes (and the other nodes' of this machine) listen on, for the egress
proxy to keep a scraped page from. With
--scrape-allow 127.0.0.1 a page's requests reached every one of them: the node's API, its peer port, and
the Thespian admin and actor ports, which unpickle whatever arrives (this project's red team, 2026-12-06).
The set is read from the kernel — the node process and all its descendants, each LISTEN TCP socket —
not written down anywhere: actors bind their ports after the node starts, and a new actor binds a new one."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

import psutil

CACHE_S = 1.0  # an actor started since the last look is seen within this long


def _private(roll: Path) -> bool:
    """Whether `roll` is a real folder of this user's that no one else may write."""
    try:
        st = os.lstat(roll)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _roll() -> Path:
    """Where this user's roll of running nodes is: a folder no other user can make first where there is
    one (/run for root, $XDG_RUNTIME_DIR for a logged-in user), else $TMPDIR/homemesh-nodes-UID, which
    another user can make first: then the roll is not used, and the node says so (this project's red team,
    2026-12-07)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    for base in (["/run"] if os.geteuid() == 0 else []) + ([runtime] if runtime else []):
        if _private(Path(base)) and os.access(base, os.W_OK):
            return Path(base) / "homemesh-nodes"
    return Path(tempfile.gettempdir()) / f"homemesh-nodes-{os.geteuid()}"


MAX_ROLL = 64  # live nodes read from the roll at most


# this user's running nodes, a file each named by its pid and holding its start time: private to the user
ROLL = _roll()


def enrol(roll: Path = ROLL) -> Path | None:
    """Put this process on its user's roll of running nodes, so the nodes of one machine keep each other's
    ports from their scraped pages too: with `mesh up`'s `--scrape-allow 127.0.0.1` a page scraped by one
    node read another's API, and its proxy opened tunnels to the other's Thespian ports (this project's red
    team, 2026-12-07). The roll is a folder only its user may write: in a world-writable one a local user's
    64 files took the place of every node's entry, and entries of nodes killed outright did the same by
    themselves (a CI run left 197). None when the roll cannot be had (the node keeps its own ports only)."""
    try:
        with contextlib.suppress(FileExistsError):
            roll.mkdir(mode=0o700)
        if not _private(roll):
            return None
        enrolled(roll)  # (prunes what nodes gone left)
        entry, part = roll / str(os.getpid()), roll / f".{os.getpid()}.new"
        part.write_text(repr(psutil.Process().create_time()))
        os.replace(part, entry)  # (whole: a half-written entry would read as junk and be removed)
        return entry
    except (OSError, psutil.Error):
        return None


def leave(entry: Path | None) -> None:
    if entry is not None:
        entry.unlink(missing_ok=True)


def enrolled(roll: Path = ROLL) -> list[int]:
    """The pids on the roll whose processes still run, each checked against the start time its entry holds
    (a pid reused since names another process); entries that fail the check are removed."""
    if not _private(roll):
        return []
    live: list[int] = []
    try:
        names = sorted(int(n) for n in os.listdir(roll) if n.isdigit() and len(n) < 10)
    except OSError:
        return []
    for pid in names:
        if len(live) == MAX_ROLL:
            break
        entry = roll / str(pid)
        try:
            with open(entry, "rb") as f:
                started = float(f.read(40))
            if abs(psutil.Process(pid).create_time() - started) < 0.01:
                live.append(pid)
                continue
        except FileNotFoundError:
            continue  # (left meanwhile)
        except (OSError, ValueError, psutil.Error):
            pass
        with contextlib.suppress(OSError):
            entry.unlink()  # a node gone (killed outright), or not an entry at all
    return live


def listening_ports(*roots: int) -> frozenset[int]:
    """The ports a LISTEN TCP socket (IPv4 or IPv6) of any of `roots` or their descendants holds (none once
    they are gone)."""
    procs: list[psutil.Process] = []
    for root_pid in roots:
        try:
            root = psutil.Process(root_pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    listening = _listening_inodes()
    ports: set[int] = set()
    for proc in procs:
        ports.update(_listening(proc) if listening is None else _ports_by_inode(proc.pid, listening))
    return frozenset(ports)


def _listening_inodes() -> dict[int, int] | None:
    """socket inode → port of this network namespace's LISTEN TCP sockets, read once for a whole look (psutil
    reads these tables again for each process asked); None where /proc/net has no such table."""
    found: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 9 and fields[3] == "0A":  # (TCP_LISTEN)
                        found[int(fields[9])] = int(fields[1].rpartition(":")[2], 16)
        except (OSError, ValueError):
            return None
    return found


def _ports_by_inode(pid: int, listening: dict[int, int]) -> set[int]:
    """The listening ports among `pid`'s open sockets (none for a process gone, or one this node may not read)."""
    ports = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return ports
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and (port := listening.get(int(link[8:-1]))) is not None:
                ports.add(port)
    return ports


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

    def __init__(self, root_pid: int, cache_s: float = CACHE_S, roll: Path | None = None):
        self.root_pid = root_pid
        self.cache_s = cache_s
        self.roll = roll  # the machine's roll of running nodes (enrol): their ports are kept from pages too
        self.seen: tuple[float, frozenset[int]] = (float("-inf"), frozenset())
        self.lock = threading.Lock()

    def __call__(self) -> frozenset[int]:
        with self.lock:  # (those waiting meanwhile take the answer the look just made)
            when, ports = self.seen
            if time.monotonic() - when >= self.cache_s:
                others = enrolled(self.roll) if self.roll is not None else []
                ports = listening_ports(self.root_pid, *(pid for pid in others if pid != self.root_pid))
                self.seen = (time.monotonic(), ports)
            return ports
