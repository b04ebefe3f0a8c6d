"""One network prefix cannot hold a node's inbound libp2p slots. py-libp2p holds 512 inbound slots in all
from the TCP accept and 256 established inbound connections, with no share per address: 512 idle TCP
sockets from one machine, sending nothing, kept every newcomer out (this project's attack round on
connection limits, 2026-12-06). Now one /24 holds at most PER_PREFIX of them (mesh/node/p2p/inbound.py):
the rest are closed at the accept, and a newcomer from another prefix links at once."""

from __future__ import annotations

import socket

import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo
from multiaddr import Multiaddr

from mesh.node.p2p.addresses import parse, peer_id_of
from mesh.node.p2p.inbound import PER_PREFIX
from mesh.node.p2p.transport import _bound_connects, build_host
from mesh.node.p2p.triothread import TrioThread
from mesh.wire.identity import Identity

from .hostile import status

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]
SOCKETS = 600  # past py-libp2p's 512 inbound slots
FLOOD_FROM = "127.0.9.1"


def idle_sockets(port: int, n: int) -> list[socket.socket]:
    """`n` TCP connections from FLOOD_FROM that never send a byte."""
    held = []
    for _ in range(n):
        s = socket.socket()
        s.bind((FLOOD_FROM, 0))
        s.connect(("127.0.0.1", port))
        held.append(s)
    return held


async def newcomer(target: str, node_key: bytes) -> float:
    """Seconds a fresh host (from 127.0.0.1) takes to link to the node; raises when it cannot in 8 s."""
    host = build_host(Identity.generate(bits=0))
    _bound_connects(host, "127.0.0.1")
    async with host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        started = trio.current_time()
        with trio.fail_after(8):
            await host.connect(PeerInfo(peer_id_of(node_key), [parse(target).addr]))
        return trio.current_time() - started


def test_idle_sockets_from_one_prefix_do_not_keep_newcomers_out(make_mesh):
    node = make_mesh(1, lambda i: ["--no-model", "--no-scrape"], name="inbound-prefix").nodes[0]
    key = bytes.fromhex(status(node)["key"])
    thread = TrioThread("newcomer")
    thread.start()
    held = idle_sockets(int(parse(node.listen).addr.value_for_protocol("tcp")), SOCKETS)
    try:
        took = thread.run_blocking(newcomer, node.listen, key)  # (before: "failed to negotiate", 8 s)
        refused = status(node)["links_refused"].get("inbound-prefix-full", 0)
    finally:
        for s in held:
            s.close()
        thread.stop()
    print(f"\n{SOCKETS} idle sockets from {FLOOD_FROM}: {refused} refused at the accept; a newcomer from "
          f"127.0.0.1 linked in {took:.2f} s")
    assert took < 5.0
    assert refused >= SOCKETS - PER_PREFIX - 16  # (a few may still wait in the accept queue)
