"""Two ids of one operator carrying their own traffic through a mesh node's relay: B holds a reservation
on RELAY, A dials B through it and writes MB mebibytes on a stream of a protocol that is not homemesh's.
Prints one JSON line: the bytes B received and how the stream ended. Usage: relay_pipe.py RELAY_ADDR MB"""

from __future__ import annotations

import json
import sys

import trio
from libp2p.peer.peerinfo import PeerInfo
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from mesh.node.p2p.addresses import parse
from mesh.node.p2p.nat import Nat
from mesh.node.p2p.transport import build_host
from mesh.wire.identity import Identity

PIPE = "/pipe/1"  # any protocol of theirs: the relay only sees bytes


async def main(relay_addr: str, mib: int) -> None:
    relay = parse(relay_addr)
    b_host, a_host = build_host(Identity.generate(0)), build_host(Identity.generate(0))
    got, ended = 0, "eof"
    done = trio.Event()

    async def sink(stream) -> None:
        nonlocal got, ended
        try:
            while data := await stream.read(65536):
                got += len(data)
        except Exception as exc:  # noqa: BLE001 (how the relay ended it is what is reported)
            ended = type(exc).__name__
        done.set()

    async with b_host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]), a_host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        b_nat, a_nat = Nat(b_host, relay=False), Nat(a_host, relay=False)
        b_host.set_stream_handler(PIPE, sink)
        async with background_trio_service(b_nat.relay), background_trio_service(a_nat.relay), \
                trio.open_nursery() as nursery:
            base = Multiaddr(str(relay.addr).split("/p2p/")[0])
            await b_host.connect(PeerInfo(relay.peer, [base]))
            circuit = await b_nat.reserve(relay.peer, base, nursery)
            assert circuit, "the relay refused B a reservation"
            await a_host.connect(PeerInfo(relay.peer, [base]))
            await a_nat.circuit.dial(Multiaddr(circuit))
            stream = await a_host.new_stream(b_host.get_id(), [PIPE])
            chunk = b"x" * 65536
            try:
                with trio.move_on_after(120):
                    for _ in range(mib * 16):
                        await stream.write(chunk)
                    await stream.close()
            except Exception:  # noqa: BLE001 (the relay cut the circuit: B says how much came)
                pass
            with trio.move_on_after(20):
                await done.wait()
            print(json.dumps({"received": got, "ended": ended}), flush=True)
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]))
