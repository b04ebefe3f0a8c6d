"""Nodes on separate hosts: Linux network namespaces, each on a /24 of its own behind a router
(tests/netns.py; root only). Proves that the peer port is reachable from the other host and that no
Thespian port or API is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ..conftest import wait_for
from ..netns import NEEDS_ROOT, Hosts

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180), pytest.mark.skipif(**NEEDS_ROOT)]


@pytest.fixture
def hosts():
    with Hosts(["a", "b"]) as h:
        yield h


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

    (b_peer,) = wait_for(b_is_up_on_a, 60, "node B to join node A across the router")

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
