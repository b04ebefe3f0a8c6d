"""How many inbound libp2p connections one network prefix may hold at once, counted from the TCP accept
to the connection's end (handshake included). py-libp2p holds 512 inbound slots in all, each from the
accept, and 256 established inbound connections, with no share per address: 512 idle TCP sockets from
one machine, sending nothing, kept every newcomer out, and so did 256 connections under throwaway keys
(found by this project's attack round on connection limits, 2026-12-06). A prefix past PER_PREFIX is
closed at the accept, before any slot or handshake is spent on it."""

from __future__ import annotations

from collections import Counter

from libp2p.abc import IHost

from mesh.node.peers import prefix_of_ip

# A loopback mesh's nodes all connect from 127.0.0.1: 32 of them (the scale bench) hold 31 links each.
PER_PREFIX = 64


def gate_inbound(host: IHost, refused: Counter[str], per_prefix: int = PER_PREFIX) -> Counter[str]:
    """Hold each network prefix (/24, /48) to `per_prefix` inbound connections on `host`'s swarm; each
    refusal is counted in `refused` as "inbound-prefix-full". Returns the live count by prefix."""
    swarm = host.get_network()
    handle = swarm._handle_inbound_connection  # (looked up per connection by the listener: this replaces it)
    held: Counter[str] = Counter()

    async def gated(read_write_closer, maddr) -> None:
        remote = read_write_closer.get_remote_address()
        prefix = prefix_of_ip(remote[0]) if remote else ""
        if prefix and held[prefix] >= per_prefix:
            refused["inbound-prefix-full"] += 1
            await read_write_closer.close()
            return
        held[prefix] += 1
        try:
            await handle(read_write_closer, maddr)
        finally:
            held[prefix] -= 1
            if not held[prefix]:
                del held[prefix]

    swarm._handle_inbound_connection = gated
    return held
