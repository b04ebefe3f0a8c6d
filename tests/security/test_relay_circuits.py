"""A node's circuit relay (mesh.node.p2p.nat.GatedRelay) against peers that abuse py-libp2p's relay, over
real libp2p hosts on loopback, each peer linking from its own address (127.0.x.y: its own /24). Found by
this project's red team (2026-12-06, /tmp/attack_relay):

- py-libp2p keeps open circuits keyed by peer id, and a circuit that ends closes whatever is stored under
  its destination's id: the newest circuit to that peer. A stranger's CONNECT to D, closed after an honest
  peer's circuit to D opened, killed the honest circuit (StreamReset, 3 runs of 3);
- RESERVE took its optional `peer` field as the holder: one key reserved in the names of 4 bystanders on a
  victim's /24, and the victim then got RESOURCE_LIMIT_EXCEEDED for its own slot."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
from libp2p.relay.circuit_v2.protocol_buffer import StatusCode
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from mesh.node.p2p.nat import Nat
from mesh.node.p2p.transport import _bound_connects, build_host
from mesh.wire.identity import Identity

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]

ECHO = "/test/echo/1"
OK = StatusCode.OK.value


async def _peer(stack: AsyncExitStack, source: str, relay: bool = False):
    """A running host linking from `source` (its own port, picked by the kernel), with the node's NAT
    services; the relay also offers to relay."""
    host = build_host(Identity.generate(bits=0))
    _bound_connects(host, source)
    await stack.enter_async_context(host.run([Multiaddr(f"/ip4/{source}/tcp/0")]))
    nat = Nat(host, relay=relay)
    await stack.enter_async_context(background_trio_service(nat.relay))
    if relay:
        nat.offer_relay()
    return host, nat


def _listen_addr(host) -> Multiaddr:
    addr = next(a for a in host.get_addrs() if "/tcp/" in str(a) and not str(a).endswith("/tcp/0"))
    return Multiaddr(str(addr).split("/p2p/")[0])


async def _poll(check, timeout: float, what: str) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.05)


async def _echo(stream) -> None:
    try:
        while data := await stream.read(1024):
            await stream.write(data)
    except Exception:  # noqa: BLE001 - the circuit went away
        pass


async def _alive(stream) -> str:
    """'alive' when a ping comes back over `stream` within 3 s, else how it failed."""
    try:
        with trio.fail_after(3):
            await stream.write(b"ping")
            return "alive" if await stream.read(4) == b"ping" else "garbled"
    except Exception as exc:  # noqa: BLE001
        return f"dead ({type(exc).__name__})"


async def _hop(host, relay_id, msg: HopMessage):
    stream = await host.new_stream(relay_id, [HOP])
    await write_delimited_msg(stream, msg)
    with trio.fail_after(20):
        resp = await read_delimited_msg(stream, HopMessage)
    return resp.status, stream


def test_a_strangers_circuit_that_closes_does_not_tear_down_an_honest_circuit_to_the_same_peer():
    seen: dict = {}  # (checked after every host stopped: an assertion inside would come out of their nurseries)

    async def main():
        async with AsyncExitStack() as stack:
            relay, rnat = await _peer(stack, "127.0.0.1", relay=True)
            rid, raddr = relay.get_id(), _listen_addr(relay)
            (dest, dnat), (honest, hnat), (stranger, _) = [
                await _peer(stack, ip) for ip in ("127.0.1.1", "127.0.2.1", "127.0.3.1")]
            nursery = await stack.enter_async_context(trio.open_nursery())  # (the reservation's refresher)
            dest.set_stream_handler(ECHO, _echo)
            for h in (dest, honest, stranger):
                await h.connect(PeerInfo(rid, [raddr]))
            circuit = await dnat.reserve(rid, raddr, nursery)
            assert circuit, "the relay refused the destination a reservation"

            # the stranger opens a raw circuit to D first (its bytes are no Noise handshake: D drops it)
            status, raw = await _hop(stranger, rid, HopMessage(type=HopMessage.CONNECT,
                                                               peer=CircuitPeerId(id=dest.get_id().to_bytes())))
            assert status == OK, status
            stranger_key = (rnat.relay.prefix(stranger.get_id()), dest.get_id().to_bytes())
            await _poll(lambda: rnat.relay.open_circuits[stranger_key] == 1, 10, "the stranger's circuit")

            # then the honest peer dials D through the relay and talks to it
            await hnat.circuit.dial(Multiaddr(circuit))
            talk = await honest.new_stream(dest.get_id(), [ECHO])
            assert await _alive(talk) == "alive"
            honest_key = (rnat.relay.prefix(honest.get_id()), dest.get_id().to_bytes())
            assert rnat.relay.open_circuits[honest_key] == 1

            await raw.write(b"\x00\x20" + b"x" * 32)  # junk, and the stranger ends its circuit
            await raw.close()
            await _poll(lambda: stranger_key not in rnat.relay.open_circuits, 20,
                        "the relay to end the stranger's circuit (and release its count)")
            seen["honest"] = []
            for _ in range(3):  # the honest circuit carries on (before: StreamReset at once)
                seen["honest"].append(await _alive(talk))
                await trio.sleep(1.0)
            seen["honest counted"] = rnat.relay.open_circuits[honest_key]

            await honest.get_network().close_peer(dest.get_id())  # the honest peer hangs up: its count goes
            with trio.move_on_after(20):
                await _poll(lambda: not rnat.relay.open_circuits, 20, "every circuit's count to be released")
            seen["left counted"] = dict(rnat.relay.open_circuits)
            nursery.cancel_scope.cancel()

    trio.run(main)
    print(f"\nthe honest circuit, once a second after the stranger's closed: {seen['honest']}")
    assert seen["honest"] == ["alive"] * 3, f"the honest circuit after the stranger's closed: {seen['honest']}"
    assert seen["honest counted"] == 1 and seen["left counted"] == {}, seen


def test_a_reservation_goes_to_the_peer_that_asks_never_to_one_it_names():
    async def main():
        async with AsyncExitStack() as stack:
            relay, rnat = await _peer(stack, "127.0.0.1", relay=True)
            rid, raddr = relay.get_id(), _listen_addr(relay)
            attacker, _ = await _peer(stack, "127.0.3.1")
            bystanders = [(await _peer(stack, f"127.0.5.{i}"))[0] for i in range(1, 5)]  # the victim's /24
            victim, _ = await _peer(stack, "127.0.5.9")
            for h in (attacker, *bystanders, victim):
                await h.connect(PeerInfo(rid, [raddr]))
            ghosts = [(await _peer(stack, "127.0.3.2"))[0].get_id() for _ in range(2)]  # never linked to the relay

            held = rnat.relay.resource_manager._reservations
            for named in [b.get_id() for b in bystanders] + ghosts:
                await _hop(attacker, rid, HopMessage(type=HopMessage.RESERVE,
                                                     peer=CircuitPeerId(id=named.to_bytes())))
            seen["others"] = len([p for p in held if p != attacker.get_id()])
            seen["victim"], _ = await _hop(victim, rid, HopMessage(type=HopMessage.RESERVE))
            seen["holders"] = set(held) - {attacker.get_id(), victim.get_id()}

    seen: dict = {}
    trio.run(main)
    print(f"\none key asked for {4 + 2} reservations in others' names: {seen['others']} granted; "
          f"the victim's own: {StatusCode(seen['victim']).name}")
    assert not seen["others"], f"one key holds {seen['others']} reservations in others' names"
    assert seen["victim"] == OK, f"the victim's own reservation: {StatusCode(seen['victim']).name}"
    assert not seen["holders"], seen


def test_a_relay_linked_stranger_cannot_make_a_node_dial_many_addresses_of_its_choosing():
    """Found by this project's red team (2026-12-06): the stock DCUtR answer dials every address of a
    CONNECT (up to 4 KiB of them), and every address the peer store holds for the peer, in three rounds,
    for every CONNECT: a 2.5 KB CONNECT made a node open 63 TCP connections to the attacker's choice at
    once. A punch now dials the first PUNCH_ADDRS addresses of its CONNECT only, and a peer gets
    PUNCH_SESSIONS answered in PUNCH_WINDOW_S, one at a time."""
    from libp2p.relay.circuit_v2.dcutr import PROTOCOL_ID as DCUTR
    from libp2p.relay.circuit_v2.pb.dcutr_pb2 import HolePunch

    PUNCH_ADDRS, PUNCH_SESSIONS = 4, 3  # (mesh.node.p2p.nat's, stated here: the old code has none)

    seen: dict = {"dialled": set(), "connects": 0}

    async def main():
        async with AsyncExitStack() as stack:
            listener = trio.socket.socket()  # every 127.x address on one free port: counts what is dialled
            await listener.bind(("0.0.0.0", 0))
            listener.listen(512)
            stack.callback(listener.close)
            port = listener.getsockname()[1]

            relay, _ = await _peer(stack, "127.0.0.1", relay=True)
            rid, raddr = relay.get_id(), _listen_addr(relay)
            (node, nnat), (stranger, snat) = [await _peer(stack, ip) for ip in ("127.0.1.1", "127.0.3.1")]
            await stack.enter_async_context(background_trio_service(nnat.dcutr))
            nursery = await stack.enter_async_context(trio.open_nursery())

            async def count() -> None:
                while True:
                    conn, _ = await listener.accept()
                    seen["connects"] += 1
                    seen["dialled"].add(conn.getsockname()[0])
                    conn.close()
            nursery.start_soon(count)

            for h in (node, stranger):
                await h.connect(PeerInfo(rid, [raddr]))
            circuit = await nnat.reserve(rid, raddr, nursery)
            assert circuit, "the relay refused the node a reservation"
            await snat.circuit.dial(Multiaddr(circuit))  # the stranger's only link to the node: relayed
            # what the node's peer store holds for the stranger (the stock punch dials these as well)
            node.get_peerstore().add_addrs(stranger.get_id(), [Multiaddr(f"/ip4/127.0.8.{i}/tcp/{port}")
                                                               for i in range(1, 21)], 600)
            connect = HolePunch(type=HolePunch.CONNECT)
            connect.ObsAddrs.extend(Multiaddr(f"/ip4/127.0.7.{i}/tcp/{port}").to_bytes() for i in range(1, 201))
            answered = 0
            for _ in range(PUNCH_SESSIONS + 2):
                try:
                    stream = await stranger.new_stream(node.get_id(), [DCUTR])
                    await write_delimited_msg(stream, connect)
                    with trio.fail_after(5):
                        await read_delimited_msg(stream, HolePunch)
                    await write_delimited_msg(stream, HolePunch(type=HolePunch.SYNC))
                    answered += 1
                except Exception:  # noqa: BLE001 - refused (reset)
                    pass
                await trio.sleep(0.2)
            await trio.sleep(3.0)  # (a round of dials: what the node dialled by now is what is counted)
            seen["answered"] = answered
            nursery.cancel_scope.cancel()

    trio.run(main)
    dialled = seen["dialled"]
    print(f"\n{PUNCH_SESSIONS + 2} CONNECTs of 200 addresses: {seen['answered']} answered; the node opened "
          f"{seen['connects']} connections to {len(dialled)} addresses of the stranger's choosing "
          f"({len([a for a in dialled if a.startswith('127.0.8.')])} from its peer store)")
    assert len(dialled) <= PUNCH_ADDRS, f"the node dialled {len(dialled)} addresses a stranger named"
    assert not any(a.startswith("127.0.8.") for a in dialled), "the node dialled its peer store's addresses"
    assert seen["answered"] <= PUNCH_SESSIONS, seen["answered"]


def test_one_prefix_renewing_a_reservation_as_fast_as_it_can_gets_few_signatures():
    """Found by this project's red team (2026-12-06): each RESERVE is answered with a freshly signed voucher,
    and one key renewing over 100 streams at once got 9,400 in 20.7 s, 53% of the relay's core. A network
    prefix gets RESERVE_RATE a second (RESERVE_BURST at once); the rest are reset unanswered."""
    RATE, BURST = 1.0, 8  # (mesh.node.p2p.nat's RESERVE_RATE and RESERVE_BURST, stated: the old code has none)
    seen: dict = {}

    async def main():
        async with AsyncExitStack() as stack:
            relay, rnat = await _peer(stack, "127.0.0.1", relay=True)
            rid, raddr = relay.get_id(), _listen_addr(relay)
            asker, _ = await _peer(stack, "127.0.3.1")
            other, _ = await _peer(stack, "127.0.4.1")
            for h in (asker, other):
                await h.connect(PeerInfo(rid, [raddr]))
            began, ok = trio.current_time(), 0
            for _ in range(60):
                try:
                    status, _ = await _hop(asker, rid, HopMessage(type=HopMessage.RESERVE))
                    ok += status == OK
                except Exception:  # noqa: BLE001 - reset unanswered
                    pass
            seen["ok"], seen["took"] = ok, trio.current_time() - began
            seen["other"], _ = await _hop(other, rid, HopMessage(type=HopMessage.RESERVE))  # another prefix: its own

    trio.run(main)
    print(f"\n60 RESERVEs from one prefix in {seen['took']:.2f} s: {seen['ok']} answered with a voucher")
    assert seen["ok"] <= BURST + RATE * seen["took"] + 1, seen
    assert seen["other"] == OK, seen
