"""A NAT test topology in Linux network namespaces (root, iproute2, iptables).

    wan  : bridge br0, the "internet" (198.18.0.0/24, RFC 2544 test range: nothing leaks to the host)
    pub  : public host 198.18.0.10
    r1   : home router, wan0 198.18.0.1, lan0 10.1.0.1, MASQUERADE  ->  lan1: 10.1.0.10
    r2   : home router, wan0 198.18.0.2, lan0 10.2.0.1, MASQUERADE  ->  lan2: 10.2.0.10

Routers forward lan->wan and ESTABLISHED,RELATED back; unsolicited inbound (conntrack NEW/INVALID on wan0) is
silently dropped (nat="drop", the usual home router: it keeps a connection's source port, so a TCP simultaneous
open between two such LANs gets through) or, for TCP, answered with a reset (nat="reset", a hostile NAT that also
maps each connection to a random port, as symmetric NATs do: a peer's address seen by a third party is not where
its next connection comes from, so hole punching fails every time, not just when the two SYNs' timing is off). IPv6 is off everywhere, loopback is up everywhere. Routers have no default
route, so lan1 cannot reach lan2's private network at all.

    with Topology("hmt", nat=("drop", "reset")) as t:
        t.run("lan1", "ping", "-c1", t.pub_ip)
        srv = t.popen("pub", sys.executable, "server.py")
        with t.capture() as cap:            # payload bytes seen on the internet bridge
            ...
        assert b"secret" not in cap.read()

Namespaces are named <prefix><pid>_<n>-<role> (n counts topologies in this process), so parallel runs never collide; everything (processes started
through popen, namespaces and the veths inside them) is removed on exit, even when setup fails halfway.
`cleanup(prefix)` removes namespaces that dead runs of this prefix left behind.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROLES = ("wan", "pub", "r1", "r2", "lan1", "lan2")
NAT_MODES = ("drop", "reset")
_REST = re.compile(r"^(?P<pid>\d+)_\d+-(?P<role>[a-z0-9]+)$")     # what follows the prefix in a namespace name
_serial = itertools.count()


def unavailable_reason() -> str | None:
    """Why the topology cannot be built on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: apt-get install iproute2 iptables)"
    return _probe()


@functools.cache
def _probe() -> str | None:
    """Creating a namespace and loading an iptables NAT rule in it can still fail (containers, no modules)."""
    ns = f"hmprobe{os.getpid()}"
    try:
        for cmd in (["ip", "netns", "add", ns],
                    ["ip", "netns", "exec", ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "lo",
                     "-j", "MASQUERADE"]):
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            if res.returncode:
                return f"{' '.join(cmd[:3])}… failed: {res.stderr.strip()}"
        return None
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def skip_unless_available() -> None:
    """pytest.skip (with the reason) when the topology cannot be built here."""
    reason = unavailable_reason()
    if reason:
        import pytest
        pytest.skip(reason)


def _netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup(prefix: str, *, include_live: bool = False) -> list[str]:
    """Delete namespaces <prefix><pid>_<n>-<role> whose pid is dead (all of them with include_live). Returns names."""
    removed = []
    for name in _netns_list():
        m = _REST.match(name[len(prefix):]) if name.startswith(prefix) else None
        if not m or m["role"] not in ROLES:
            continue
        if include_live or not _pid_alive(int(m["pid"])):
            kill_ns_pids(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
            removed.append(name)
    return removed


def kill_ns_pids(ns: str) -> None:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10).stdout
    for pid in out.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class Capture:
    """A raw AF_PACKET capture on the internet bridge; `read()` gives the TCP/UDP payload bytes seen so far."""

    def __init__(self, topo: Topology, path: Path):
        self.path = Path(path)
        self.path.write_bytes(b"")
        self.proc = topo.popen("wan", sys.executable, "-u", "-c", _CAPTURE_SCRIPT, topo.wan_iface, str(self.path),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"capture failed to start: {line!r} {self.proc.stderr.read()!r}")

    def read(self) -> bytes:
        return self.path.read_bytes()

    def stop(self) -> bytes:
        if self.proc.poll() is None:
            time.sleep(0.2)              # let frames already in flight reach the socket
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.read()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# Runs inside the wan namespace: one raw socket on the bridge (promiscuous, so frames forwarded between ports
# are seen), appending each IPv4 TCP/UDP payload to a file, flushed per packet.
_CAPTURE_SCRIPT = r"""
import signal, socket, struct, sys
iface, path = sys.argv[1], sys.argv[2]
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
s.bind((iface, 0))
out = open(path, "ab", buffering=0)
print("ready", flush=True)
while True:
    frame = s.recv(65535)
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        continue
    ip = frame[14:]
    ihl, proto, total = (ip[0] & 15) * 4, ip[9], struct.unpack("!H", ip[2:4])[0]
    seg = ip[ihl:total]
    if proto == 6 and len(seg) >= 20:
        data = seg[(seg[12] >> 4) * 4:]
    elif proto == 17 and len(seg) >= 8:
        data = seg[8:]
    else:
        continue
    if data:
        out.write(data)
"""


class Topology:
    """The namespaces described in the module docstring; a context manager. `nat` is one mode for both
    routers or a (r1, r2) pair, each "drop" or "reset"."""

    wan_net = "198.18.0.0/24"
    pub_ip = "198.18.0.10"
    r1_ip, r2_ip = "198.18.0.1", "198.18.0.2"            # the routers' public (wan) addresses
    r1_lan_ip, r2_lan_ip = "10.1.0.1", "10.2.0.1"
    lan1_ip, lan2_ip = "10.1.0.10", "10.2.0.10"
    wan_iface = "br0"                                   # in namespace "wan": every internet packet crosses it

    def __init__(self, prefix: str = "hmt", nat: str | tuple[str, str] = "drop", timeout: float = 10.0):
        if not re.fullmatch(r"[a-z]{1,8}", prefix):
            raise ValueError("prefix: 1-8 lowercase letters (the pid follows it)")
        self.nat = (nat, nat) if isinstance(nat, str) else tuple(nat)
        if len(self.nat) != 2 or any(m not in NAT_MODES for m in self.nat):
            raise ValueError(f"nat must be one of {NAT_MODES} or a pair of them, got {nat!r}")
        self.prefix, self.timeout = prefix, timeout
        tag = f"{prefix}{os.getpid()}_{next(_serial)}"
        self.names = {role: f"{tag}-{role}" for role in ROLES}
        self._created: list[str] = []
        self._procs: list[subprocess.Popen] = []

    # -- running things inside ------------------------------------------------------------------------------
    def ns(self, name: str) -> str:
        """Namespace name for a role ("lan1") or a full name."""
        return self.names.get(name, name)

    def run(self, ns: str, *cmd: str, check: bool = False, timeout: float | None = None,
            **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(["ip", "netns", "exec", self.ns(ns), *cmd], check=check,
                              timeout=timeout or self.timeout, **kw)

    def popen(self, ns: str, *cmd: str, **kw) -> subprocess.Popen:
        """Start a process inside a namespace; it is killed (whole process group) on teardown."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(ns), *cmd], **kw)
        self._procs.append(proc)
        return proc

    def capture(self, path: str | Path | None = None) -> Capture:
        """Capture payload bytes crossing the internet bridge (a context manager; `read()` any time)."""
        return Capture(self, path or Path(f"/tmp/{self.names['wan']}.cap"))

    def _sh(self, ns: str | None, *cmd: str) -> None:
        full = ["ip", "netns", "exec", self.ns(ns), *cmd] if ns else list(cmd)
        res = subprocess.run(full, capture_output=True, text=True, timeout=self.timeout)
        if res.returncode:
            raise RuntimeError(f"{' '.join(full)}: {res.stderr.strip()}")

    # -- building -----------------------------------------------------------------------------------------
    def __enter__(self) -> Topology:
        skip_unless_available()
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _add_ns(self, role: str) -> None:
        ns = self.names[role]
        self._sh(None, "ip", "netns", "add", ns)
        self._created.append(ns)
        for key in ("all", "default"):
            self._sh(ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")
        self._sh(ns, "ip", "link", "set", "lo", "up")

    def _veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        # Created directly inside the two namespaces: no name ever exists in the host namespace.
        self._sh(None, "ip", "-n", self.ns(ns_a), "link", "add", if_a, "type", "veth",
                 "peer", "name", if_b, "netns", self.ns(ns_b))

    def _up(self, ns: str, iface: str, cidr: str | None = None) -> None:
        if cidr:
            self._sh(ns, "ip", "addr", "add", cidr, "dev", iface)
        self._sh(ns, "ip", "link", "set", iface, "up")

    def _build(self) -> None:
        for role in ROLES:
            self._add_ns(role)
        self._sh("wan", "ip", "link", "add", self.wan_iface, "type", "bridge")
        self._sh("wan", "ip", "link", "set", self.wan_iface, "promisc", "on", "up")
        # If br_netfilter is loaded, keep bridged frames out of the wan namespace's iptables (best effort).
        subprocess.run(["ip", "netns", "exec", self.names["wan"], "sysctl", "-qw",
                        "net.bridge.bridge-nf-call-iptables=0"], capture_output=True, timeout=self.timeout)
        hosts = {"pub": (self.pub_ip, None), "r1": (self.r1_ip, "wan0"), "r2": (self.r2_ip, "wan0")}
        for role, (ip, _) in hosts.items():
            port, inner = f"p-{role}", "wan0" if role != "pub" else "eth0"
            self._veth("wan", port, role, inner)
            self._sh("wan", "ip", "link", "set", port, "master", self.wan_iface)
            self._up("wan", port)
            self._up(role, inner, f"{ip}/24")
        for n, (router, lan) in enumerate((("r1", "lan1"), ("r2", "lan2"))):
            lan_ip, gw = (self.lan1_ip, self.r1_lan_ip) if n == 0 else (self.lan2_ip, self.r2_lan_ip)
            self._veth(router, "lan0", lan, "eth0")
            self._up(router, "lan0", f"{gw}/24")
            self._up(lan, "eth0", f"{lan_ip}/24")
            self._sh(lan, "ip", "route", "add", "default", "via", gw)
            self._nat(router, self.nat[n])

    def _nat(self, router: str, mode: str) -> None:
        ipt = functools.partial(self._sh, router, "iptables", "-w")
        self._sh(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ipt("-t", "nat", "-A", "POSTROUTING", "-o", "wan0", "-j", "MASQUERADE",
            *(("--random-fully",) if mode == "reset" else ()))  # reset: a random public port per connection
        ipt("-P", "FORWARD", "DROP")
        ipt("-A", "FORWARD", "-i", "lan0", "-o", "wan0", "-j", "ACCEPT")
        ipt("-A", "FORWARD", "-i", "wan0", "-o", "lan0", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
            "-j", "ACCEPT")
        for chain in ("INPUT", "FORWARD"):
            if mode == "reset":
                ipt("-A", chain, "-i", "wan0", "-p", "tcp", "-m", "conntrack", "--ctstate", "NEW,INVALID",
                    "-j", "REJECT", "--reject-with", "tcp-reset")
            ipt("-A", chain, "-i", "wan0", "-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP")

    # -- teardown ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Kill what we started, then delete our namespaces (their veths go with them). Idempotent."""
        for proc in self._procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self._procs.clear()
        for ns in reversed(self._created):
            kill_ns_pids(ns)                      # anything else still inside (children of our processes)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=self.timeout)
        self._created.clear()
