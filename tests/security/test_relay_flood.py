"""Relay reservations cannot all be taken by one machine (issue 19: "relay reservations can be flooded
too"), over real connections: 40 libp2p hosts with fresh keys, all on one machine, ask a real node for a
reservation each with py-libp2p's own client (the code a node behind a NAT runs). py-libp2p alone gives
every one of them a slot for an hour (128 in all); the node now gives one network prefix 4, and a slot
whose holder left is free again."""

from __future__ import annotations

import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo

from mesh.node.p2p.addresses import parse, peer_id_of
from mesh.node.p2p.nat import Nat
from mesh.node.p2p.reservations import PER_PREFIX
from mesh.node.p2p.transport import build_host
from mesh.node.p2p.triothread import TrioThread
from mesh.wire.identity import Identity

from ..conftest import wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(240)]

ATTACKERS = 40


class Reservers:
    """Hosts that each hold a reservation on `relay` as long as they run (`granted`: those it took)."""

    def __init__(self, relay: str, relay_key: bytes):
        self.target = parse(relay)
        self.relay_id = peer_id_of(relay_key)
        self.thread = TrioThread("reservers")
        self.thread.start()
        self.granted: list[str] = []
        self.asked = 0
        self.stops: list[trio.Event] = []  # one per host, to end it
        self.holders: list[trio.Event] = []  # the stops of hosts that hold a reservation

    def ask(self, n: int) -> int:
        """`n` more hosts ask; returns how many of them were granted a reservation."""
        before = len(self.granted)
        self.thread.run_blocking(self._ask, n)
        return len(self.granted) - before

    async def _ask(self, n: int) -> None:
        done = trio.Event()
        left = [n]

        async def one() -> None:
            stop = trio.Event()
            self.stops.append(stop)
            host = build_host(Identity.generate())
            async with host.run([trio_addr()]):
                try:
                    await host.connect(PeerInfo(self.relay_id, [self.target.addr]))
                    nat = Nat(host, relay=False)
                    async with trio.open_nursery() as nursery:
                        addr = await nat.reserve(self.relay_id, self.target.addr, nursery)
                        if addr:
                            self.granted.append(addr)
                            self.holders.append(stop)
                        self.asked += 1
                        left[0] -= 1
                        if not left[0]:
                            done.set()
                        await stop.wait()
                        nursery.cancel_scope.cancel()
                    with trio.move_on_after(5):
                        await host.get_network().close_peer(self.relay_id)
                except Exception:  # noqa: BLE001 - a refused connect counts as not granted
                    self.asked += 1
                    left[0] -= 1
                    if not left[0]:
                        done.set()
                    await stop.wait()

        for _ in range(n):
            self.thread.nursery.start_soon(one)
        with trio.fail_after(120):
            await done.wait()

    def leave(self) -> None:
        """One host holding a reservation goes (its link closes)."""
        self.thread.post(self.holders.pop(0).set)

    def close(self) -> None:
        for stop in self.stops:
            self.thread.post(stop.set)
        self.thread.stop()


def trio_addr():
    from multiaddr import Multiaddr

    return Multiaddr("/ip4/127.0.0.1/tcp/0")


def test_one_machine_with_many_keys_holds_only_a_few_of_a_relays_reservations(make_mesh):
    node = make_mesh(1, lambda i: ["--no-model", "--no-scrape"], name="relay").nodes[0]
    key = bytes.fromhex(node.client.request("GET", "/status")["key"])
    attackers = Reservers(node.listen, key)
    try:
        # the node offers to relay a moment after it starts: wait for its first reservation
        wait_for(lambda: attackers.ask(1) == 1, 60, "the node to relay")
        granted = 1 + attackers.ask(ATTACKERS - 1)
        print(f"\n{ATTACKERS} keys from one machine asked for a reservation: {granted} granted")
        assert granted == PER_PREFIX, granted
        attackers.leave()  # a holder goes: its slot is free for the next who asks
        wait_for(lambda: attackers.ask(1) == 1, 30, "the slot of a holder that left to be given again")
    finally:
        attackers.close()
