"""How many providers of a capability a node keeps linked before it stops looking (Node._find_workers),
sans-I/O: a real peer table, fake links and a fake DHT. Found by this project's red team (2026-12-06):
"enough" counted ids, and a few dozen keys of one operator on one /24, linked, were enough, so the node
dialled no honest worker it knew of and walked the DHT for none; placement, which draws a network prefix
as one node, then had few prefixes but the operator's to draw from."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from mesh.node.lifecycle import WANT_PER_CAP, Node
from mesh.node.peers import PeerTable
from mesh.wire.identity import Identity
from mesh.wire.records import make_record

pytestmark = pytest.mark.timeout(30)
NET = "homemesh-test"
T0 = 1_700_000_000_000


@dataclass(frozen=True)
class Link:
    """An open link from `remote_ip`, as Peer.best_conn and Node.observed_prefix read it."""
    remote_ip: str
    open: bool = True
    kind: str = "direct"
    outbound: bool = True
    dialled: str = ""


class FakeNode(SimpleNamespace):
    """What _find_workers uses of a Node: the peer table, the DHT (`found`: records it names), dials."""

    def __init__(self, found: list | None = None):
        me = Identity.generate(0)
        super().__init__(identity=me, peers=PeerTable(me.public_key, NET), dialling=set(), dialled=[],
                         walks=[], receiver=SimpleNamespace(count=lambda why: None))
        self.gateway = SimpleNamespace(transport=SimpleNamespace(find=self._find))
        self.found = found or []
        self.observed_prefix = functools.partial(Node.observed_prefix, self)

    async def _find(self, cap: str, limit: int, known: frozenset[bytes]) -> list:
        self.walks.append(limit)
        return [r for r in self.found if bytes.fromhex(r.key) not in known][:limit]

    def _dial_peer(self, peer, now: float) -> None:
        self.dialled.append(peer.addr)

    def add(self, host: str, linked: bool) -> None:
        """A python provider at `host`, linked (a direct link from that host) or only heard of."""
        peer, why = self.peers.learn(record(host), T0)
        assert why == "" and peer is not None
        if linked:
            peer.state = "up"
            peer.conns.add(Link(host))

    def find_workers(self) -> int:
        return asyncio.run(Node._find_workers(self, "python"))


def record(host: str):
    """A fresh key's record offering python at `host` (its work left undone: check_record is stubbed)."""
    return make_record(Identity.generate(0), NET, f"{host}:4750", ["python"], [], False, T0)


@pytest.fixture(autouse=True)
def quick_records(monkeypatch):
    monkeypatch.setattr("mesh.node.peers.check_record", lambda *a: "")  # (ids without their work: quick keys)
    monkeypatch.setattr("mesh.node.lifecycle.now_ms", lambda: T0)


def test_many_linked_ids_on_one_prefix_are_not_enough_workers():
    """24 ids of one operator on 203.0.113.0/24, linked, and three honest workers on other prefixes that
    gossip named: the node dials the honest ones (it dialled none: 24 ids counted as enough)."""
    node = FakeNode()
    for i in range(24):
        node.add(f"203.0.113.{i + 1}", linked=True)
    honest = ["198.51.100.7", "192.0.2.9", "100.64.3.4"]
    for host in honest:
        node.add(host, linked=False)
    assert node.find_workers() == 3
    assert sorted(node.dialled) == sorted(f"{h}:4750" for h in honest)


def test_linked_ids_on_one_prefix_make_the_node_look_in_the_dht_for_other_prefixes():
    """Nobody else known: the node walks the DHT, and dials what it names on a prefix it has no worker on,
    not the operator's next ids."""
    more_sybils = [record(f"203.0.113.{i}") for i in range(100, 104)]
    honest = [record("198.51.100.7"), record("192.0.2.9")]
    node = FakeNode(found=more_sybils + honest)
    for i in range(WANT_PER_CAP + 4):
        node.add(f"203.0.113.{i + 1}", linked=True)
    assert node.find_workers() == 2
    assert node.walks and sorted(node.dialled) == ["192.0.2.9:4750", "198.51.100.7:4750"]


def test_a_mesh_on_one_prefix_still_links_its_workers_and_then_stops_dialling():
    """Loopback: every node on 127.0.0.1. Below WANT_PER_CAP linked, the node dials more of them (one
    prefix is all there is); with WANT_PER_CAP linked it dials no more, and reports nothing dialled, so
    discovery backs off (Node._discover doubles the wait up to an hour)."""
    node = FakeNode()
    for _ in range(3):
        node.add("127.0.0.1", linked=True)
    for _ in range(10):
        node.add("127.0.0.1", linked=False)
    assert node.find_workers() == WANT_PER_CAP - 3
    assert len(node.dialled) == WANT_PER_CAP - 3
    node = FakeNode(found=[record("127.0.0.1") for _ in range(5)])
    for _ in range(WANT_PER_CAP):
        node.add("127.0.0.1", linked=True)
    for _ in range(4):
        node.add("127.0.0.1", linked=False)
    assert node.find_workers() == 0 and node.dialled == []
    assert len(node.walks) <= 1


def test_workers_on_enough_prefixes_end_the_search():
    node = FakeNode(found=[record("198.51.100.7")])
    for i in range(WANT_PER_CAP):
        node.add(f"10.{i}.0.2", linked=True)
    node.add("192.0.2.9", linked=False)
    assert node.find_workers() == 0 and node.dialled == [] and node.walks == []
