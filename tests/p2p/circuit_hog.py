"""A hostile peer (run in a topology's namespace): from one throwaway libp2p key, ask relay RELAY for N
circuits to DEST and never send a byte through them; print one JSON line — the status codes the relay
answered (100: OK) — and hold the circuits HOLD seconds. Usage: circuit_hog.py RELAY_ADDR RELAY_ID DEST_ID
N HOLD LISTEN_ADDR."""

from __future__ import annotations

import json
import sys
from collections import Counter

import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage, PeerId
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP
from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg
from multiaddr import Multiaddr

from mesh.node.p2p.transport import build_host
from mesh.wire.identity import Identity


async def main(relay_addr: str, relay: ID, dest: ID, n: int, hold: float, listen: str) -> None:
    host = build_host(Identity.generate(0))
    async with host.run([Multiaddr(listen)]):
        await host.connect(PeerInfo(relay, [Multiaddr(relay_addr)]))
        held, codes = [], Counter()
        for _ in range(n):
            try:
                with trio.fail_after(20):
                    s = await host.new_stream(relay, [HOP])
                    await write_delimited_msg(s, HopMessage(type=HopMessage.CONNECT, peer=PeerId(id=dest.to_bytes())))
                    resp = await read_delimited_msg(s, HopMessage)
                codes[str(resp.status)] += 1
                if resp.status == 100:
                    held.append(s)
                else:
                    await s.reset()
            except Exception as exc:  # noqa: BLE001 (a hostile client: whatever failed is counted by name)
                codes[type(exc).__name__] += 1
        print(json.dumps(dict(codes)), flush=True)
        await trio.sleep(hold)


if __name__ == "__main__":
    a = sys.argv[1:]
    trio.run(main, a[0], ID.from_base58(a[1]), ID.from_base58(a[2]), int(a[3]), float(a[4]), a[5])
