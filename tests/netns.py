"""Hosts for real-process tests: Linux network namespaces, each on a /24 of its own, joined through one
router namespace (root and iproute2 only; `pytest.mark.skipif(**NEEDS_ROOT)` skips the rest).

    router : ip_forward on, one veth per host (10.213.K.1/24), no default route and no NAT
    host K : 10.213.K.2/24, default route via 10.213.K.1, loopback up

So every host sees every other from the address it really connects from, and each on its own network
prefix (what a node spreads replicas by). Namespaces are named hm<pid><n>-<host> (router: -rt); the
veths are created inside them, so no name ever exists in the root namespace. `close()` kills what
`start_node`/`popen` started (process groups), anything else still inside, and deletes the namespaces,
even when building them failed halfway.

    with Hosts(["a", "b"]) as hosts:
        proc = hosts.start_node("a", home)         # `mesh node`, listening on hosts.ip["a"]:0
        hosts.client("a", home).request("GET", "/status")   # its API, on the host's own loopback
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.cli.client import Client
from mesh.node.actorsys import die_with_parent
from mesh.node.home import RuntimeInfo, read_token

from .conftest import ROOT, wait_for
from .p2p.nettopo import kill_ns_pids

NEEDS_ROOT = {"condition": os.geteuid() != 0 or shutil.which("ip") is None, "reason": "needs root and iproute2"}
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_serial = itertools.count()


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


@contextmanager
def inside(ns: str) -> Iterator[None]:
    """The calling thread in network namespace `ns` meanwhile (only it: a network namespace is per
    thread); sockets it opens there stay there."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        there = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(there, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), f"setns into {ns}")
        finally:
            os.close(there)
        try:
            yield
        finally:
            if _libc.setns(here, CLONE_NEWNET):
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(here)


@dataclass(frozen=True)
class NetnsClient(Client):
    """A node's API client whose connections open inside the node's namespace (its API is on the host's
    own 127.0.0.1, out of reach from the root namespace)."""

    ns: str = ""

    def request(self, method: str, path: str, body: object = None, timeout: float = 30) -> Any:
        with inside(self.ns):
            return super().request(method, path, body, timeout)


class Hosts:
    """Namespaces named by `hosts`, each on its own /24 behind one router (see the module docstring)."""

    def __init__(self, hosts: Iterable[str] = ("a", "b")) -> None:
        names = list(hosts)
        tag = f"hm{os.getpid()}{next(_serial)}"
        self.router = f"{tag}-rt"
        self.ns = {h: f"{tag}-{h}" for h in names}
        self.ip = {h: f"10.213.{k}.2" for k, h in enumerate(names, 1)}
        self.procs: list[subprocess.Popen] = []
        self._created: list[str] = []
        try:
            self._build(names)
        except BaseException:
            self.close()
            raise

    def _build(self, names: list[str]) -> None:
        for ns in (self.router, *self.ns.values()):
            sh("ip", "netns", "add", ns)
            self._created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", self.router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for k, h in enumerate(names, 1):
            port = f"h{k}"
            sh("ip", "-n", self.router, "link", "add", port, "type", "veth", "peer", "name", "eth0",
               "netns", self.ns[h])
            sh("ip", "-n", self.router, "addr", "add", f"10.213.{k}.1/24", "dev", port)
            sh("ip", "-n", self.router, "link", "set", port, "up")
            sh("ip", "-n", self.ns[h], "addr", "add", f"{self.ip[h]}/24", "dev", "eth0")
            sh("ip", "-n", self.ns[h], "link", "set", "eth0", "up")
            sh("ip", "-n", self.ns[h], "route", "add", "default", "via", f"10.213.{k}.1")

    # -- running things inside ----------------------------------------------------------------------------
    def run(self, host: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns[host], *args], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)

    def mesh(self, host: str, *args: str) -> subprocess.CompletedProcess:
        return self.run(host, sys.executable, "-m", "mesh", *args)

    def popen(self, host: str, *args: str, log: Path) -> subprocess.Popen:
        """Start `args` inside `host` in a session of its own, its output to `log`; killed (its whole
        process group) by close(), and by the kernel if this process dies first."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns[host], *args], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                    start_new_session=True, preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        self.procs.append(proc)
        return proc

    def start_node(self, host: str, home: Path, *args: str, wait: bool = True) -> subprocess.Popen:
        """`mesh node` in `host`: its peer port on the host's address, its API on the host's loopback;
        `wait`: until it published its node.json (else call wait_node)."""
        home.mkdir(parents=True, exist_ok=True)
        proc = self.popen(host, sys.executable, "-m", "mesh", "node", "--home", str(home), "--no-model",
                          "--listen", f"{self.ip[host]}:0", "--api", "127.0.0.1:0", *args,
                          log=home.parent / f"{home.name}.log")
        if wait:
            self.wait_node(proc, home)
        return proc

    def wait_node(self, proc: subprocess.Popen, home: Path, timeout: float = 60) -> RuntimeInfo:
        wait_for(lambda: (home / "node.json").exists() or proc.poll() is not None, timeout, "node start")
        assert proc.poll() is None, (home.parent / f"{home.name}.log").read_text()
        return RuntimeInfo.read(home)

    def client(self, host: str, home: Path) -> NetnsClient:
        """The API client of the node in `home`, running in `host`."""
        return NetnsClient(RuntimeInfo.read(home).api, read_token(home), self.ns[host])

    # -- teardown -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill what we started and anything else inside, then delete the namespaces. Idempotent."""
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)
        self.procs.clear()
        for ns in reversed(self._created):
            kill_ns_pids(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self._created.clear()

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
