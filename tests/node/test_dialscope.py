"""The dial gate (mesh/node/dialscope.py): which scope an address is in, which scope a node lives in,
and that both transports refuse before a single byte leaves. The attack through a real node is in
tests/security/test_dial_scope.py."""

from __future__ import annotations

import asyncio
import socket

import pytest

from mesh.node.dialscope import AddressRefused, Gate, own_scope, scope
from mesh.node.flow import Limits
from mesh.node.gateway import TcpTransport
from mesh.wire.identity import Identity


@pytest.mark.parametrize("host, expected", [
    ("127.0.0.1", "loopback"), ("127.8.9.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
    ("0.0.0.0", "never"), ("::", "never"), ("224.0.0.1", "never"), ("255.255.255.255", "never"),
    ("240.0.0.1", "never"), ("ff02::1", "never"),
    ("10.1.2.3", "local"), ("192.168.1.1", "local"), ("172.16.0.1", "local"), ("169.254.1.1", "local"),
    ("100.64.0.1", "local"), ("fd00::2", "local"), ("fe80::1", "local"), ("198.18.0.10", "local"),
    ("8.8.8.8", "global"), ("2001:4860::8888", "global"), ("example.org", "name"),
])
def test_scope_of_an_address(host, expected):
    assert scope(host) == expected


def test_a_node_lives_in_the_widest_scope_its_owner_named():
    assert own_scope(["127.0.0.1:4750", "127.0.0.1:4751"]) == "loopback"  # a local mesh
    assert own_scope(["0.0.0.0:4750", "10.0.0.2:4750"]) == "local"  # all interfaces: a home machine
    assert own_scope(["127.0.0.1:4750", "/ip4/8.8.8.8/tcp/4750"]) == "global"  # bootstraps into the internet
    assert own_scope(["0.0.0.0:4750", "seed.example.org:4750"]) == "global"


@pytest.mark.parametrize("own, allowed, refused", [
    ("loopback", ["127.0.0.1:1", "10.0.0.1:1", "8.8.8.8:1"], ["0.0.0.0:1", "[::]:1"]),
    ("local", ["10.0.0.1:1", "/ip4/8.8.8.8/tcp/1/p2p-circuit/p2p/x", "a.example:1"],
     ["127.0.0.1:1", "/ip4/127.0.0.1/tcp/1", "[::ffff:127.0.0.1]:1", "0.0.0.0:1"]),
    ("global", ["8.8.8.8:1", "[2001:4860::8888]:1"], ["127.0.0.1:1", "192.168.1.1:1", "/ip4/10.0.0.1/tcp/1"]),
])
def test_the_gate_by_scope(own, allowed, refused):
    gate = Gate(own)
    for addr in allowed:
        gate.check(addr)
    for addr in refused:
        with pytest.raises(AddressRefused):
            gate.check(addr)
    assert sum(gate.refused.values()) == len(refused)


def test_the_owners_bootstrap_address_is_dialled_whatever_its_scope():
    gate = Gate.for_node("0.0.0.0:4750", "", ["127.0.0.1:4750", "/ip4/8.8.8.8/tcp/4750"])
    assert gate.own == "global"
    gate.check("127.0.0.1:4750")
    with pytest.raises(AddressRefused, match="addr-loopback"):  # the same host, another port: not named
        gate.check("127.0.0.1:4751")


def test_a_name_is_held_to_where_it_points_unless_the_owner_named_it():
    gate = Gate.for_node("0.0.0.0:4750", "", ["localhost:4750"])
    gate.check("localhost:4751")  # a name as such passes: where it points is checked once resolved
    gate.check_resolved("localhost:4750", "127.0.0.1")  # the owner's bootstrap: its own DNS
    with pytest.raises(AddressRefused, match="addr-loopback"):
        gate.check_resolved("localhost:4751", "127.0.0.1")
    with pytest.raises(AddressRefused, match="addr-local"):
        gate.check_resolved("/dns4/lan.example/tcp/4750", "192.168.1.9")
    gate.check_resolved("/dns4/peer.example/tcp/4750", "8.8.8.8")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])  # a name resolving to loopback counts as loopback
def test_the_tcp_transport_refuses_before_connecting(host):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        transport = TcpTransport(Gate("global"))
        with pytest.raises(AddressRefused):
            asyncio.run(transport.dial(f"{host}:{port}", None, Limits()))
        with pytest.raises(socket.timeout):
            server.accept()  # nothing connected
    finally:
        server.close()


def run_gated_libp2p(attempt) -> None:
    """A libp2p transport whose gate is global dials a loopback service through `attempt(transport,
    port)`: nothing may connect, and the refusal is counted once."""
    from mesh.node.p2p.transport import Libp2pTransport

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.5)
    port = server.getsockname()[1]
    gate = Gate("global")

    async def go():
        transport = Libp2pTransport(Identity.generate(), gate=gate, nat=False, discovery=False)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await transport.start(sock, lambda conn: None)
        try:
            await attempt(transport, port)
        finally:
            await transport.close()

    try:
        asyncio.run(go())
        with pytest.raises(socket.timeout):
            server.accept()  # nothing connected
        assert gate.refused == {"addr-loopback": 1}
    finally:
        server.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_every_libp2p_dial_passes_the_gate(host):
    """The swarm's own dials (the DHT's, hole punches) are gated too, not only the node's, and a name is
    held to the address it resolves to (libp2p would resolve it itself, to anywhere)."""
    from mesh.node.p2p.transport import DialFailed

    async def attempt(transport, port):
        with pytest.raises(DialFailed):  # as any unreachable address: the reason is counted
            await transport.dial(f"{host}:{port}", Identity.generate().public_key, Limits())

    run_gated_libp2p(attempt)


@pytest.mark.timeout(30)
def test_a_hole_punch_dial_passes_the_gate_too():
    """DCUtR's starting end dials the addresses the *other* end sent (its "observed addresses", up to 20)
    with the swarm's dial_addr_as_responder, which skips the dial path the gate wraps. A peer with a
    relayed link could name 127.0.0.1:<a local service> and have the node connect to it."""
    from multiaddr import Multiaddr

    from mesh.node.p2p.addresses import peer_id_of

    stranger = peer_id_of(Identity.generate().public_key)

    async def punch(transport, port):
        swarm = transport.host.get_network()
        with pytest.raises(Exception):  # noqa: B017 - refused like an unreachable address, whatever the class
            await swarm.dial_addr_as_responder(Multiaddr(f"/ip4/127.0.0.1/tcp/{port}"), stranger, None)

    async def attempt(transport, port):
        await transport.thread.call(punch, transport, port)

    run_gated_libp2p(attempt)
