"""Addresses from operators and peers are checked before anything is dialled (sans-I/O)."""

from __future__ import annotations

import pytest

from mesh.node.p2p.addresses import key_of, parse, peer_id_of
from mesh.wire.identity import Identity


def test_addresses_are_checked_before_any_dial():
    good = parse("127.0.0.1:4750")
    assert str(good.addr) == "/ip4/127.0.0.1/tcp/4750" and good.peer is None
    pid = peer_id_of(Identity.from_seed(b"k" * 32).public_key)
    assert parse(f"/ip4/1.2.3.4/tcp/5/p2p/{pid}").peer == pid
    assert parse(f"/ip4/1.2.3.4/tcp/5/p2p/{pid}/p2p-circuit/p2p/{pid}").relayed
    for bad in ["", "x", "1.2.3.4:0", "1.2.3.4:65536", "/ip4/1.2.3.4/udp/5", "/ip4/1.2.3.4/tcp/5/p2p/abc",
                "/ip4/1.2.3.4/tcp/5/ws", f"/ip4/1.2.3.4/tcp/5/p2p/{pid}/p2p-circuit", "/" + "a" * 400]:
        with pytest.raises(ValueError):
            parse(bad)


def test_peer_id_round_trips_the_node_key():
    key = Identity.from_seed(b"z" * 32).public_key
    assert key_of(peer_id_of(key)) == key
    with pytest.raises(ValueError):
        peer_id_of(b"short")
