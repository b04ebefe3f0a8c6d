"""A `/homemesh/1` link driven from plain blocking code, with the same host, Noise and Yamux as a node:
for hostile-peer tests (which must speak the node's real transport to reach its checks) and benches."""

from __future__ import annotations

import queue

from multiaddr import Multiaddr

from mesh.node.p2p.addresses import parse, peer_id_of
from mesh.node.p2p.transport import _LINK_ERRORS, Libp2pTransport, StreamConnection
from mesh.wire.identity import Identity


class BlockingLink:
    """One stream to one node. `identity` is the key the Noise handshake proves (the attacker's own);
    `source`: the IPv4 address it listens on and connects from (another host's, in a network namespace)."""

    def __init__(self, addr: str, identity: Identity, timeout: float = 5.0, expect: bytes | None = None,
                 source: str = "127.0.0.1"):
        self.transport = Libp2pTransport(identity)
        self.transport.thread.start()
        self.timeout = timeout
        self.eof = False
        self._inbox: queue.Queue[bytes | ConnectionResetError] = queue.Queue()
        self._rest = b""
        try:
            self.transport.thread.run_blocking(self.transport._listen, Multiaddr(f"/ip4/{source}/tcp/0"))
            target = parse(addr)
            self.conn: StreamConnection = self.transport.thread.run_blocking(
                self.transport._dial, target, peer_id_of(expect) if expect else target.peer)
            self.transport.thread.spawn(self._reader)
        except BaseException:
            self.close()
            raise

    async def _reader(self) -> None:
        """Trio task: read the stream into the inbox until it ends. One read that is never cancelled: a
        yamux read cancelled by a short timeout (recv's, under load, every 5 ms) ended the link in CI with
        nothing sent to end it."""
        while True:
            try:
                data = await self.conn._read(65536)
            except (ConnectionResetError, *_LINK_ERRORS) as exc:
                self._inbox.put(exc if isinstance(exc, ConnectionResetError) else ConnectionResetError(str(exc)))
                return
            self._inbox.put(data)
            if not data:
                return

    def settimeout(self, seconds: float) -> None:
        self.timeout = seconds

    def sendall(self, data: bytes) -> None:
        if self.eof or not self.conn.open:
            raise BrokenPipeError("the link is closed")
        self.conn.write(data)

    def recv(self, n: int) -> bytes:
        """Up to n bytes; b'' at the end; TimeoutError when nothing came within the timeout;
        ConnectionResetError when the link was reset."""
        if not self._rest:
            if self.eof:
                return b""
            try:
                got = self._inbox.get(timeout=max(self.timeout, 0.0))
            except queue.Empty:
                raise TimeoutError("nothing received") from None
            if isinstance(got, ConnectionResetError):
                self.eof = True
                raise got
            if not got:
                self.eof = True
                return b""
            self._rest = got
        data, self._rest = self._rest[:n], self._rest[n:]
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
