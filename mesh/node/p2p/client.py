"""A `/homemesh/1` link driven from plain blocking code, with the same host, Noise and Yamux as a node:
for hostile-peer tests (which must speak the node's real transport to reach its checks) and benches."""

from __future__ import annotations

import trio
from multiaddr import Multiaddr

from mesh.node.p2p.addresses import parse, peer_id_of
from mesh.node.p2p.transport import Libp2pTransport, StreamConnection
from mesh.wire.identity import Identity


class BlockingLink:
    """One stream to one node. `identity` is the key the Noise handshake proves (the attacker's own)."""

    def __init__(self, addr: str, identity: Identity, timeout: float = 5.0, expect: bytes | None = None):
        self.transport = Libp2pTransport(identity)
        self.transport.thread.start()
        self.timeout = timeout
        self.eof = False
        try:
            self.transport.thread.run_blocking(self.transport._listen, Multiaddr("/ip4/127.0.0.1/tcp/0"))
            target = parse(addr)
            self.conn: StreamConnection = self.transport.thread.run_blocking(
                self.transport._dial, target, peer_id_of(expect) if expect else target.peer)
        except BaseException:
            self.close()
            raise

    def settimeout(self, seconds: float) -> None:
        self.timeout = seconds

    def sendall(self, data: bytes) -> None:
        if self.eof or not self.conn.open:
            raise BrokenPipeError("the link is closed")
        self.conn.write(data)

    def recv(self, n: int) -> bytes:
        """Up to n bytes; b'' at the end; TimeoutError when nothing came within the timeout."""
        async def read() -> bytes | None:
            with trio.move_on_after(self.timeout):
                return await self.conn._read(n)
            return None

        data = self.transport.thread.run_blocking(read)
        if data is None:
            raise TimeoutError("nothing received")
        if not data:
            self.eof = True
        return data

    def shutdown(self, how: int = 1) -> None:
        """End what we send (the node reads EOF); we can still read its answers."""
        self.conn.close()

    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
        if self.transport.thread.running:
            try:
                self.transport.thread.run_blocking(self.transport._drain)
            except Exception:  # the thread may already be stopping; closing must not fail a test
                pass
        self.transport.thread.stop()
