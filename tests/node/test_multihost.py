"""Nodes on separate hosts: Linux network namespaces joined by a veth pair (root only). Proves that the
peer port is reachable from the other host and that no Thespian port or API is."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import ROOT, wait_for

pytestmark = [pytest.mark.mesh,
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2"),
]


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


class Hosts:
    """Two namespaces, A and B, on a private test subnet that exists only inside them."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{random.randrange(100)}"
        self.ns = {"a": f"hm{tag}a", "b": f"hm{tag}b"}
        net = random.randrange(1, 250)
        self.ip = {"a": f"10.213.{net}.1", "b": f"10.213.{net}.2"}
        self.procs: list[subprocess.Popen] = []
        va, vb = f"hv{tag}a", f"hv{tag}b"
        for h in ("a", "b"):
            sh("ip", "netns", "add", self.ns[h])
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        for h, dev in (("a", va), ("b", vb)):
            sh("ip", "link", "set", dev, "netns", self.ns[h])
            sh("ip", "-n", self.ns[h], "addr", "add", f"{self.ip[h]}/24", "dev", dev)
            sh("ip", "-n", self.ns[h], "link", "set", dev, "up")
            sh("ip", "-n", self.ns[h], "link", "set", "lo", "up")

    def run(self, host: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.ns[host], *args], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)

    def mesh(self, host: str, *args: str) -> subprocess.CompletedProcess:
        return self.run(host, sys.executable, "-m", "mesh", *args)

    def start_node(self, host: str, home: Path, *args: str) -> subprocess.Popen:
        cmd = ["ip", "netns", "exec", self.ns[host], sys.executable, "-m", "mesh", "node", "--home", str(home),
               "--no-model", "--listen", f"{self.ip[host]}:0", "--api", "127.0.0.1:0", *args]
        with open(home.parent / f"{home.name}.log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        self.procs.append(proc)
        wait_for(lambda: (home / "node.json").exists() or proc.poll() is not None, 60, "node start")
        assert proc.poll() is None, (home.parent / f"{home.name}.log").read_text()
        return proc

    def close(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def hosts():
    h = Hosts()
    try:
        yield h
    finally:
        h.close()


def listening_ports(hosts: Hosts, host: str) -> dict[int, str]:
    """port → local address of every TCP listener in that host's namespace."""
    out = {}
    for line in hosts.run(host, "ss", "-ltnH").stdout.splitlines():
        local = line.split()[3]
        addr, _, port = local.rpartition(":")
        out[int(port)] = addr
    return out


PROBE = """
import socket, sys, json
res = {}
for port in map(int, sys.argv[2:]):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((sys.argv[1], port)); res[port] = True
    except OSError:
        res[port] = False
    finally:
        s.close()
print(json.dumps(res))
"""


def test_two_hosts_form_a_mesh_and_only_the_peer_port_crosses(hosts: Hosts, tmp_path: Path):
    home_a, home_b = tmp_path / "a", tmp_path / "b"
    hosts.start_node("a", home_a)
    peer_a = json.loads((home_a / "node.json").read_text())["listen"]
    assert peer_a.startswith(hosts.ip["a"] + ":")
    hosts.start_node("b", home_b, "--bootstrap", peer_a)

    def b_is_up_on_a():
        res = hosts.mesh("a", "status", "--home", str(home_a), "--json")
        st = json.loads(res.stdout) if res.returncode == 0 else {"peers": []}
        return [p for p in st["peers"] if p["state"] == "up" and p["address"].startswith(hosts.ip["b"])]

    (b_peer,) = wait_for(b_is_up_on_a, 60, "node B to join node A across the veth link")

    # a job submitted on host A runs on host B
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"steps": [{"id": "x", "kind": "python", "params": {"code": "output = 6 * 7"}}]}))
    res = hosts.mesh("a", "submit", str(job), "--home", str(home_a), "--redundancy", "1", "--wait", "--json")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["steps"]["x"]["output"] == 42
    assert [r["node"] for r in rep["steps"]["x"]["replicas"]] == [b_peer["node"]]

    # from host B, only A's peer port answers; its API, Thespian admin and actor ports do not
    ports = listening_ports(hosts, "a")
    peer_port = int(peer_a.rpartition(":")[2])
    assert ports[peer_port] == hosts.ip["a"]
    others = [p for p in ports if p != peer_port]
    assert len(others) >= 4, ports  # API, Thespian admin, its external endpoint and the node's actors
    assert all(ports[p] == "127.0.0.1" for p in others), ports
    reach = json.loads(hosts.run("b", sys.executable, "-c", PROBE, hosts.ip["a"], *map(str, ports)).stdout)
    assert {int(p) for p, ok in reach.items() if ok} == {peer_port}
