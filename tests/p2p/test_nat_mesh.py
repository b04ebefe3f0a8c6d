"""Real nodes behind real NATs (network namespaces, MASQUERADE home routers): a public bootstrap node and
one node behind each of two NATs. Nodes behind NAT need nothing but --bootstrap: AutoNAT tells them they
are unreachable, the public node relays for them, they advertise circuit addresses, and DCUtR punches a
direct link where the NATs allow (routers that silently drop unsolicited packets) and not where they
answer with resets and map each connection to a random port (symmetric NATs). Jobs run across them, and nothing readable crosses the 'internet' bridge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.core.trust import UNKNOWN_PREFIX
from mesh.node.p2p.addresses import peer_id_of
from mesh.node.p2p.nat import PER_PREFIX_CIRCUITS
from mesh.wire.identity import load

from ..conftest import wait_for
from .nettopo import Topology

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(300)]
PORT = 4750
SECRET = "homemesh-canary-7f3a"  # in the step code, its prompt-like parameter and its output
JOB = {"name": "across", "steps": [{"id": "s", "kind": "python", "params": {
    "code": f"output = '{SECRET}'[::-1] + '-' + str(sum(range(100)))"}}]}
EXPECTED = SECRET[::-1] + "-4950"
HONEST_S = 8  # the faulty relay's honest window per circuit (--fault-after; the node's default is 20)
SLOW_JOB = {"name": "slow", "timeout": 25, "steps": [{"id": "s", "kind": "python", "params": {
    "code": f"import time\ntime.sleep({HONEST_S + 2})\noutput = '{SECRET}'[::-1] + '-' + str(sum(range(100)))"}}]}


class NatMesh:
    """Nodes by name; each runs in the namespace of its `where` (several may share one, on other ports)."""

    def __init__(self, topo: Topology, tmp: Path):
        self.t, self.tmp = topo, tmp
        self.ips = {"pub": topo.pub_ip, "lan1": topo.lan1_ip, "lan2": topo.lan2_ip}
        self.logs: dict[str, Path] = {}
        self.where: dict[str, str] = {}
        self.procs: dict[str, subprocess.Popen] = {}

    def home(self, role: str) -> Path:
        return self.tmp / role

    def start(self, role: str, where: str = "", port: int = PORT, bootstrap: str = "", extra: tuple = ()) -> None:
        where = self.where[role] = where or role
        cmd = [sys.executable, "-P", "-m", "mesh", "node", "--home", str(self.home(role)), "--no-model",
               "--no-scrape", "--listen", f"{self.ips[where]}:{port}", "--api", f"127.0.0.1:{port + 1}", *extra]
        if where != "pub":
            cmd += ["--bootstrap", bootstrap or f"{self.t.pub_ip}:{PORT}"]
        self.logs[role] = self.tmp / f"{role}.log"
        self.procs[role] = self.t.popen(where, *cmd, stdout=self.logs[role].open("w"), stderr=subprocess_stdout(),
                                        cwd=str(Path(__file__).resolve().parents[2]))

    def kill(self, role: str) -> None:
        """SIGKILL the node's whole process group: it leaves without a word, like a machine that died."""
        proc = self.procs.pop(role)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def cli(self, role: str, *args: str, timeout: float = 60) -> dict:
        res = self.t.run(self.where.get(role, role), sys.executable, "-P", "-m", "mesh", *args, "--home", str(self.home(role)), "--json",
                         timeout=timeout, cwd=str(Path(__file__).resolve().parents[2]))
        assert res.returncode in (0, 3), f"mesh {args} in {role}: {res.stderr}\n{self.tail(role)}"
        return json.loads(res.stdout)

    def status(self, role: str) -> dict:
        try:
            return self.cli(role, "status", timeout=20)
        except (AssertionError, json.JSONDecodeError):
            return {}

    def peer(self, role: str, other: str) -> dict:
        if not (self.home(other) / "node.json").exists():
            return {}
        node = self.node_id(other)
        return next((p for p in self.status(role).get("peers", []) if p["node"] == node), {})

    def node_id(self, role: str) -> str:
        return json.loads((self.home(role) / "node.json").read_text())["node"]

    def submit(self, role: str, redundancy: int, job: dict = JOB) -> dict:
        path = self.tmp / f"job-{role}.json"
        path.write_text(json.dumps(job))
        return self.cli(role, "submit", str(path), "--redundancy", str(redundancy), "--wait", timeout=180)

    def tail(self, role: str) -> str:
        path = self.logs.get(role)
        return "\n".join(path.read_text().splitlines()[-15:]) if path and path.exists() else ""


def subprocess_stdout():
    return subprocess.STDOUT


def replicas_on(report: dict) -> set[str]:
    return {r["node"] for r in report["steps"]["s"]["replicas"] if r["agreed"]}


@pytest.mark.parametrize("nat,punches", [("drop", True), ("reset", False)])
def test_nodes_behind_two_nats_work_together(tmp_path: Path, nat: str, punches: bool):
    with Topology("hmnat", nat=nat, timeout=30) as t, t.capture(tmp_path / "wan.cap") as cap:
        m = NatMesh(t, tmp_path)
        t0 = time.monotonic()
        m.start("pub")
        wait_for(lambda: (m.home("pub") / "node.json").exists(), 60, "the public node to start")
        m.start("lan1")
        m.start("lan2")
        for role in ("lan1", "lan2"):
            wait_for(lambda r=role: (m.home(r) / "node.json").exists(), 60, f"{role} to start")
        # AutoNAT: the public node is reachable, the NATed ones are not, and they advertise relay circuits
        wait_for(lambda: m.status("pub").get("reachability") == "public", 60, "pub to learn it is public")
        for role in ("lan1", "lan2"):
            wait_for(lambda r=role: m.status(r).get("reachability") == "private", 60, f"{role} to learn it is private")
            wait_for(lambda r=role: "/p2p-circuit/" in m.peer("pub", r).get("address", ""), 60,
                     f"{role} to advertise a circuit address\n{m.tail(role)}")
        formed = time.monotonic() - t0

        # a job at r=2 from the public node runs on both NATed nodes
        t1 = time.monotonic()
        rep = m.submit("pub", 2)
        from_pub = time.monotonic() - t1
        assert rep["status"] == "done", rep
        assert rep["steps"]["s"]["output"] == EXPECTED
        assert replicas_on(rep) == {m.node_id("lan1"), m.node_id("lan2")}

        # a job submitted behind one NAT runs on the other NAT's node, through the relay first
        wait_for(lambda: (p := m.peer("lan1", "lan2")).get("connected") and p.get("state") == "up", 60,
                 f"lan1 to reach lan2 through the relay\n{m.tail('lan1')}")
        first_kind = m.peer("lan1", "lan2")["connection"]
        # the first link is through the relay; behind drop NATs the punch (~2 s later) may beat this look,
        # and `hole-punched` itself means a direct link to a peer first reached through a relay
        assert first_kind in (("relayed", "hole-punched") if punches else ("relayed",)), first_kind
        t2 = time.monotonic()
        rep = m.submit("lan1", 2)
        from_lan = time.monotonic() - t2
        assert rep["status"] == "done", json.dumps(rep["steps"])[:3000]
        assert m.node_id("lan2") in replicas_on(rep)
        assert m.status("pub")["relayed_bytes"] > 0  # the relay counts what it carried (/metrics)
        if punches:
            wait_for(lambda: m.peer("lan1", "lan2").get("connection") == "hole-punched", 30,
                     f"a hole-punched link lan1→lan2\n{m.tail('lan1')}")
            rep = m.submit("lan1", 2)
            assert rep["status"] == "done" and m.node_id("lan2") in replicas_on(rep), json.dumps(rep["steps"])[:3000]
        else:
            assert m.peer("lan1", "lan2").get("connection") == "relayed"
        print(f"nat={nat}: formed in {formed:.1f} s, first lan1→lan2 link {first_kind}, "
              f"job r=2 from pub {from_pub:.2f} s, from lan1 {from_lan:.2f} s, "
              f"lan1→lan2 now {m.peer('lan1', 'lan2').get('connection')}")
        seen = cap.read()
    assert len(seen) > 10_000, "the capture saw almost nothing: it did not watch the internet link"
    for needle in (SECRET.encode(), SECRET[::-1].encode(), b"sum(range(100))", b'"kind":"step"', b"hello"):
        assert needle not in seen, f"{needle!r} crossed the internet in clear text"


@pytest.mark.parametrize("fault", ["relay-drop", "relay-delay"])
def test_a_relay_that_drops_or_delays_only_delays_jobs(tmp_path: Path, fault: str):
    """The relay carrying lan1↔lan2 (NATs that refuse hole punching) forwards nothing, or forwards late.
    Jobs from lan1 still finish with the right answer: a replica stuck behind the relay moves to another
    worker. lan1 and lan2 reserve on the faulty relay (their only bootstrap); the honest public worker
    does not relay."""
    with Topology("hmrly", nat="reset", timeout=30) as t:
        m = NatMesh(t, tmp_path)
        m.start("relay", "pub", PORT, extra=("--fault", fault, "--fault-after", str(HONEST_S)))
        m.start("worker", "pub", PORT + 2, extra=("--no-relay", "--bootstrap", f"{t.pub_ip}:{PORT}"))
        wait_for(lambda: all((m.home(r) / "node.json").exists() for r in ("relay", "worker")), 60, "pub nodes")
        m.start("lan1")
        m.start("lan2")
        wait_for(lambda: all((m.home(r) / "node.json").exists() for r in ("lan1", "lan2")), 60, "lan nodes")
        wait_for(lambda: "/p2p-circuit/" in m.peer("lan1", "lan2").get("address", ""), 90,
                 f"lan1 to learn lan2's circuit address\n{m.tail('lan2')}")
        wait_for(lambda: len([p for p in m.status("lan1").get("peers", []) if p["state"] == "up"]) >= 3, 60,
                 "lan1 to see the three others up (lan2 through the relay, while it still forwards)")
        # The step outlasts the relay's honest window (HONEST_S into each circuit, opened before the job),
        # so lan2's answer must cross a relay that has turned hostile; the job's replica deadline is 25 s.
        t0 = time.monotonic()
        rep = m.submit("lan1", 2, SLOW_JOB)
        took = time.monotonic() - t0
        assert rep["status"] == "done", rep
        assert rep["steps"]["s"]["output"] == EXPECTED  # never a corrupted answer
        placed = [r["node"] for r in rep["steps"]["s"]["replicas"]]
        assert m.node_id("lan2") in placed, "lan2 (its own prefix) was not given a replica: nothing was tested"
        print(f"{fault}: job at r=2 from lan1 in {took:.1f} s; replicas "
              f"{[(r['node'][:8], r['agreed']) for r in rep['steps']['s']['replicas']]}, lan2 {m.node_id('lan2')[:8]}")


def test_a_node_behind_nat_keeps_two_relays_and_survives_losing_one(tmp_path: Path):
    """lan2 (behind a NAT that refuses hole punching) holds slots on both public relays and its record
    names both circuits. The relay lan1 reaches it through dies without a word; lan1 reaches lan2
    through the other one, and a job from lan1 that needs lan2 still runs there."""
    with Topology("hmtwo", nat="reset", timeout=30) as t:
        m = NatMesh(t, tmp_path)
        m.start("relay1", "pub", PORT)
        m.start("relay2", "pub", PORT + 2, extra=("--bootstrap", f"{t.pub_ip}:{PORT}"))
        wait_for(lambda: all((m.home(r) / "node.json").exists() for r in ("relay1", "relay2")), 60, "relays")
        m.start("lan1")
        m.start("lan2")
        wait_for(lambda: all((m.home(r) / "node.json").exists() for r in ("lan1", "lan2")), 60, "lan nodes")
        wait_for(lambda: len([a for a in m.status("lan2").get("advertised", []) if "/p2p-circuit/" in a]) == 2,
                 90, f"lan2 to advertise circuits through both relays\n{m.tail('lan2')}")
        link = {}
        wait_for(lambda: (link.update(m.peer("lan1", "lan2")) or link).get("connected")
                 and link.get("state") == "up" and "/p2p-circuit/" in link.get("address", ""), 60,
                 f"lan1 to reach lan2 through a relay\n{m.tail('lan1')}")
        dead = "relay1" if f"/tcp/{PORT}/" in link["address"] else "relay2"
        t0 = time.monotonic()
        m.kill(dead)
        via = {}
        wait_for(lambda: (via.update(m.peer("lan1", "lan2")) or via).get("connected") and via.get("state") == "up"
                 and "/p2p-circuit/" in via.get("address", "") and via["address"] != link["address"], 60,
                 f"lan1 to reach lan2 through the other relay\n{m.tail('lan1')}\n{m.tail('lan2')}")
        moved = time.monotonic() - t0
        rep = m.submit("lan1", 2)  # its workers: the surviving relay and lan2
        assert rep["status"] == "done" and rep["steps"]["s"]["output"] == EXPECTED, json.dumps(rep)[:3000]
        assert m.node_id("lan2") in replicas_on(rep)
        assert len([a for a in m.status("lan2")["advertised"] if "/p2p-circuit/" in a]) == 1  # the lost one is gone
        print(f"{dead} killed: lan1 reached lan2 through the other relay after {moved:.1f} s")


def test_one_network_takes_only_a_few_of_a_nats_nodes_circuit_slots_on_its_relay(tmp_path: Path):
    """A throwaway key asked the relay for 64 circuits to a node behind NAT and never sent a byte: the
    relay granted all 64, the node's limit per reservation, held idle; every other peer then got
    NO_RESERVATION for it, and a node behind a NAT that refuses hole punching could not reach it at all
    (found by this session's p2p attacker). Now one network prefix may hold PER_PREFIX_CIRCUITS circuits
    to one node through a relay at once."""
    with Topology("hmhog", nat="reset", timeout=30) as t:
        m = NatMesh(t, tmp_path)
        m.start("pub")
        wait_for(lambda: (m.home("pub") / "node.json").exists(), 60, "the public node to start")
        m.start("lan1")
        wait_for(lambda: "/p2p-circuit/" in m.peer("pub", "lan1").get("address", ""), 90,
                 f"lan1 to hold a circuit slot on pub\n{m.tail('lan1')}")
        relay_id, dest_id = (str(peer_id_of(load(m.home(r)).public_key)) for r in ("pub", "lan1"))
        hog = t.popen("pub", sys.executable, str(Path(__file__).with_name("circuit_hog.py")),
                      f"/ip4/{t.pub_ip}/tcp/{PORT}", relay_id, dest_id, "64", "60", f"/ip4/{t.pub_ip}/tcp/{PORT + 50}",
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                      cwd=str(Path(__file__).resolve().parents[2]))
        try:
            line = hog.stdout.readline()
            assert line, hog.stderr.read()[-3000:]
            codes = json.loads(line)
        finally:
            os.killpg(hog.pid, signal.SIGKILL)
            hog.wait(timeout=30)
        assert codes.get("100", 0) == PER_PREFIX_CIRCUITS, codes
        assert codes.get("201", 0) == 64 - PER_PREFIX_CIRCUITS, codes  # RESOURCE_LIMIT_EXCEEDED


def test_peers_reached_only_through_relays_are_one_group_not_one_each(tmp_path: Path):
    """Red team H (2026-12-08, F1): a link through a relay has no address of the peer's own, and each such
    peer was grouped by its circuit address, which ends in its own id: every sybil behind one relay-only
    machine counted as a network prefix of its own. A fresh submitter then gave an operator's five ids
    39-42 of ~50 seats and accepted its wrong answer for 11-12 jobs of 12; two relayed sybils passed the
    two-prefix rule for outvote proofs and framed an honest worker. Now every peer reached only through a
    relay is in one group (UNKNOWN_PREFIX): two nodes behind one NAT that refuses hole punching, seen from
    behind another, are one group, and a job at r=2 from there takes one seat of that group, the other on
    the public node."""
    with Topology("hmgrp", nat="reset", timeout=30) as t:
        m = NatMesh(t, tmp_path)
        m.start("pub")
        wait_for(lambda: (m.home("pub") / "node.json").exists(), 60, "the public node to start")
        m.start("lan1")
        m.start("lan1b", where="lan1", port=PORT + 10)
        m.start("lan2")
        for role in ("lan1", "lan1b", "lan2"):
            wait_for(lambda r=role: (m.home(r) / "node.json").exists(), 60, f"{role} to start")
        for role in ("lan1", "lan1b"):
            wait_for(lambda r=role: (p := m.peer("lan2", r)).get("connected") and p.get("state") == "up", 120,
                     f"lan2 to reach {role} through the relay\n{m.tail('lan2')}")
        seen = {r: m.peer("lan2", r) for r in ("pub", "lan1", "lan1b")}
        assert seen["lan1"]["connection"] == seen["lan1b"]["connection"] == "relayed", seen
        assert seen["lan1"]["prefix"] == seen["lan1b"]["prefix"] == UNKNOWN_PREFIX, seen
        assert seen["pub"]["prefix"] == f"{t.pub_ip.rsplit('.', 1)[0]}.0/24", seen
        for _ in range(6):
            rep = m.submit("lan2", 2)
            assert rep["status"] == "done", json.dumps(rep["steps"])[:3000]
            assert m.node_id("pub") in replicas_on(rep), "two seats went to the one relayed group"
