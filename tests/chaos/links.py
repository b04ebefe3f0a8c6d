"""Cutting one node's peer links on loopback, as root: iptables rules in a chain of this process's own,
plus a cgroup (v2) per node so that the node's own new dials can be told apart from anyone else's.

All nodes talk over 127.0.0.1, so addresses say nothing; ports and the sending process do. To cut node X
(listen port Lx, API port Ax) while the others listen on L1..Ln, the chain (jumped to first thing in
OUTPUT, which every loopback packet crosses) drops:

1. tcp to Lx: the others' packets on links into X, and their new dials to X;
2. tcp from Lx: X's packets on those links;
3. tcp sent by a socket of X's cgroup to any of L1..Ln: X's packets on the links it dialled, and its new
   dials (the SYN never leaves);
4. tcp to the local ports of X's sockets linked to L1..Ln at the cut: the others' packets on X's dialled
   links (no new ones can form: rule 3 drops X's SYNs).

Every rule also names 127.0.0.1 (the address the mesh's nodes listen and dial on): a port number alone
matched any other test's sockets that happened to hold it on another loopback address, and a SYN to a
node on 127.0.10.1 whose port was the cut node's went unanswered ("no answer in 3 s" in CI).

X's API (Ax) and its actors' loopback traffic match none of these: the harness can still ask X and X is
not broken inside, only cut off. A cgroup match needs the socket to be made in the cgroup: `adopt` moves a
freshly started node (it opens no socket for a good while after exec) and its children follow it.

Measured here (tests/chaos/test_links.py): with node2 of 3 cut, node0 called it down after ~20 s
(DOWN_AFTER_S) and the rules counted dropped packets; after the heal the mesh linked up again.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psutil

LOOPBACK = "127.0.0.1"  # where the cut mesh's nodes listen and dial from
CGROUP2 = Path("/sys/fs/cgroup/unified")  # cgroup v2 in a hybrid tree (v1 controllers elsewhere)


def _cgroup2_root() -> Path | None:
    for p in (CGROUP2, Path("/sys/fs/cgroup")):
        if (p / "cgroup.procs").exists() and (p / "cgroup.controllers").exists():
            return p
    return None


class LinkCutError(RuntimeError):
    pass


@dataclass
class Cut:
    node: int
    rules: list[list[str]]  # iptables rule specs (without -A CHAIN)


class LinkCutter:
    """Per-process chain and cgroups; `close()` removes all of them (call it in a finally)."""

    def __init__(self, tag: str | None = None):
        tag = tag or str(os.getpid())
        self.chain = f"HMCHAOS-{tag}"[:28]
        root = _cgroup2_root()
        self.cgroot = root / f"hmchaos-{tag}" if root else None
        self.cuts: dict[int, Cut] = {}
        self.ready = False

    @staticmethod
    def unavailable() -> str:
        """Why cuts cannot be made here ('' when they can)."""
        if os.geteuid() != 0:
            return "not root"
        if _cgroup2_root() is None:
            return "no cgroup v2 hierarchy mounted"
        try:
            subprocess.run(["iptables", "-w", "-S", "OUTPUT"], check=True, capture_output=True, timeout=20)
        except FileNotFoundError:
            return "iptables is not installed"
        except subprocess.CalledProcessError as exc:
            return f"iptables does not work here: {exc.stderr.decode(errors='replace').strip()}"
        return ""

    def _ipt(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        res = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=20)
        if check and res.returncode:
            raise LinkCutError(f"iptables {' '.join(args)}: {res.stderr.strip()}")
        return res

    def open(self) -> None:
        why = self.unavailable()
        if why:
            raise LinkCutError(why)
        self._ipt("-N", self.chain)
        self._ipt("-I", "OUTPUT", "1", "-j", self.chain)
        assert self.cgroot is not None
        self.cgroot.mkdir(exist_ok=True)
        self.ready = True
        # a probe that the cgroup match loads (xt_cgroup): add and remove one rule
        self._ipt("-A", self.chain, *self._cg_match(0), "-p", "tcp", "--dport", "9", "-j", "DROP")
        self._ipt("-F", self.chain)

    def _cg_path(self, node: int) -> str:
        assert self.cgroot is not None
        return str((self.cgroot / f"node{node}").relative_to(self.cgroot.parent))

    def _cg_match(self, node: int) -> list[str]:
        (self.cgroot / f"node{node}").mkdir(exist_ok=True)
        return ["-m", "cgroup", "--path", self._cg_path(node)]

    def adopt(self, node: int, pid: int) -> None:
        """Put a just-started node (and so its future children) in its cgroup."""
        if not self.ready:
            return
        d = self.cgroot / f"node{node}"
        d.mkdir(exist_ok=True)
        (d / "cgroup.procs").write_text(str(pid))

    def cut(self, node: int, pids: list[int], listen_port: int, api_port: int, others: list[int]) -> Cut:
        """Cut node `node` (whose processes are `pids`) off from the nodes listening on `others`."""
        if node in self.cuts:
            raise LinkCutError(f"node {node} is already cut")
        others = sorted(set(others) - {listen_port})
        ip = LOOPBACK
        rules: list[list[str]] = [["-d", ip, "-p", "tcp", "--dport", str(listen_port), "-j", "DROP"],
                                  ["-s", ip, "-p", "tcp", "--sport", str(listen_port), "-j", "DROP"]]
        for chunk in _chunks(others, 15):  # multiport takes up to 15 ports
            rules.append([*self._cg_match(node), "-d", ip, "-p", "tcp", "-m", "multiport", "--dports",
                          ",".join(map(str, chunk)), "-j", "DROP"])
        dialled = sorted(own_dialled_ports(pids, set(others)) - {api_port, listen_port})
        for chunk in _chunks(dialled, 15):
            for sources in _chunks(others, 15):  # (sent by the others' listen ports to X's dialled ones)
                rules.append(["-s", ip, "-d", ip, "-p", "tcp", "-m", "multiport", "--sports",
                              ",".join(map(str, sources)), "-m", "multiport", "--dports",
                              ",".join(map(str, chunk)), "-j", "DROP"])
        c = Cut(node, rules)
        for r in rules:
            self._ipt("-A", self.chain, *r, "-m", "comment", "--comment", f"node{node}")
        self.cuts[node] = c
        return c

    def dropped(self, node: int) -> int:
        """Packets the rules of node `node`'s cut have dropped so far."""
        out = self._ipt("-L", self.chain, "-v", "-n", "-x").stdout
        return sum(int(line.split()[0]) for line in out.splitlines()[2:] if f"/* node{node} */" in line)

    def heal(self, node: int) -> int:
        """Remove node `node`'s cut; returns the packets it dropped."""
        c = self.cuts.pop(node, None)
        if c is None:
            return 0
        n = self.dropped(node)
        for r in c.rules:
            self._ipt("-D", self.chain, *r, "-m", "comment", "--comment", f"node{node}")
        return n

    def close(self) -> list[str]:
        """Remove the chain and cgroups; returns what could not be removed (never raises)."""
        problems = []
        self.cuts.clear()
        if self.ready:
            self._ipt("-D", "OUTPUT", "-j", self.chain, check=False)
            self._ipt("-F", self.chain, check=False)
            res = self._ipt("-X", self.chain, check=False)
            if res.returncode:
                problems.append(f"iptables chain {self.chain}: {res.stderr.strip()}")
        if self.cgroot is not None and self.cgroot.exists():
            for d in sorted(self.cgroot.glob("node*")):
                left = (d / "cgroup.procs").read_text().split()
                for pid in left:  # a process still alive: out to the parent group so the dir can go
                    try:
                        (self.cgroot.parent / "cgroup.procs").write_text(pid)
                    except OSError as exc:
                        problems.append(f"cgroup {d}: pid {pid}: {exc}")
                try:
                    d.rmdir()
                except OSError as exc:
                    problems.append(f"cgroup {d}: {exc}")
            try:
                self.cgroot.rmdir()
            except OSError as exc:
                problems.append(f"cgroup {self.cgroot}: {exc}")
        self.ready = False
        return problems


def own_dialled_ports(pids: list[int], remote_ports: set[int]) -> set[int]:
    """Local ports of the TCP sockets of `pids` linked to one of `remote_ports` (the links they dialled)."""
    ports = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.raddr and c.raddr.port in remote_ports and c.laddr:
                ports.add(c.laddr.port)
    return ports


def _chunks(xs: list[int], n: int) -> list[list[int]]:
    return [xs[i:i + n] for i in range(0, len(xs), n)]
