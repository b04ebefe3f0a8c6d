"""Where a node dials a key, and where it counts that key as living (found by this project's red team,
2026-12-06).

A peer that moved is dialled where its record says it is now: the transport handed the record's address to py-libp2p, which only added it to the
addresses it held for that key (those it first met it at, and those the peer's identify claimed, kept
two hours) and dialled the first of them. A peer back on a new port was dialled at its old one, and a
hostile key chose through identify where the node dialled it, whatever its signed record said.

A key is proven at the address the node dialled it at, not at the one its hello names: a key that took
the node's stream on a link it had opened itself, and named a victim's address, had that address proven
(Node._proven), so dialled past the dial budget. Real libp2p hosts on loopback."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from multiaddr import Multiaddr

from mesh.node.dialbudget import DialBudget
from mesh.node.dialscope import first_hop
from mesh.node.lifecycle import Node
from mesh.node.p2p.addresses import parse, peer_id_of
from mesh.node.p2p.transport import Libp2pTransport
from mesh.wire.identity import Identity


def started(identity: Identity, host: str) -> tuple[Libp2pTransport, str]:
    """A transport listening on `host`, and its address as a record names it."""
    transport = Libp2pTransport(identity)
    transport.thread.start()
    (addr, *_) = transport.thread.run_blocking(transport._listen, Multiaddr(f"/ip4/{host}/tcp/0"))
    return transport, addr


def stopped(transport: Libp2pTransport) -> None:
    if transport.thread.running:
        transport.thread.run_blocking(transport._drain)
    transport.thread.stop()


@pytest.mark.timeout(60)
def test_a_peer_back_at_a_new_address_is_dialled_there():
    peer = Identity.generate()
    dialler, _ = started(Identity.generate(), "127.0.0.1")
    before = after = None
    try:
        before, old = started(peer, "127.0.0.3")
        conn = dialler.thread.run_blocking(dialler._dial, parse(old), peer_id_of(peer.public_key))
        conn.close()
        stopped(before)
        dialler.thread.run_blocking(dialler._drop_links, peer_id_of(peer.public_key))
        after, new = started(peer, "127.0.0.2")
        assert new != old
        conn = dialler.thread.run_blocking(dialler._dial, parse(new), peer_id_of(peer.public_key))
        assert conn.open
        conn.close()
    finally:
        for t in (before, after, dialler):
            if t is not None:
                stopped(t)


@pytest.mark.timeout(60)
def test_a_stream_on_a_link_the_peer_opened_proves_no_address_its_hello_names():
    node, stranger = Identity.generate(), Identity.generate()
    dialler, node_addr = started(node, "127.0.0.1")
    other = None
    try:
        other, other_addr = started(stranger, "127.0.0.3")
        # the stranger links to the node first; the node then dials it at the address its record names
        other.thread.run_blocking(other._dial, parse(node_addr), peer_id_of(node.public_key)).close()
        victim = f"/ip4/127.0.0.2/tcp/47600/p2p/{peer_id_of(stranger.public_key)}"
        conn = dialler.thread.run_blocking(dialler._dial, parse(victim), peer_id_of(stranger.public_key))
        assert conn.outbound and conn.dialled == ""  # it rode the stranger's own link: nothing was dialled
        assert conn.remote_ip == "127.0.0.3"
        budget = DialBudget()
        peer = SimpleNamespace(addr="127.0.0.2:47600", key=stranger.public_key)
        Node._proven(SimpleNamespace(gateway=SimpleNamespace(transport=SimpleNamespace(gate=SimpleNamespace(
            budget=budget)))), peer, conn)
        assert (first_hop(peer.addr), peer.key) not in budget.proven  # the victim's address stays on the budget
        assert "127.0.0.3" in budget.vouched  # the host the link came from is one where peers live
        conn.close()
        # a fresh dial proves the address dialled
        dialler.thread.run_blocking(dialler._drop_links, peer_id_of(stranger.public_key))
        conn = dialler.thread.run_blocking(dialler._dial, parse(other_addr), peer_id_of(stranger.public_key))
        assert conn.dialled == other_addr
        Node._proven(SimpleNamespace(gateway=SimpleNamespace(transport=SimpleNamespace(gate=SimpleNamespace(
            budget=budget)))), peer, conn)
        assert (first_hop(other_addr), peer.key) in budget.proven
        conn.close()
    finally:
        for t in (other, dialler):
            if t is not None:
                stopped(t)
