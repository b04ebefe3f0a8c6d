"""The gateway's libp2p transport. One py-libp2p host (TCP + Noise + Yamux, nothing else: no plaintext,
no secio, no QUIC) keyed by the node's own Ed25519 key, so the peer a Noise handshake proves is the key
that must sign every envelope on that link. Each peer link is one `/homemesh/1` stream, handed to the
gateway as a `StreamConnection` whose bytes cross between trio and asyncio through `TrioThread`."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections import Counter

import libp2p.network.swarm as _swarm
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as new_noise_key
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF, StreamError
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
from libp2p.stream_muxer.yamux.yamux import Yamux
from multiaddr import Multiaddr

from mesh.node.flow import Limits
from mesh.node.gateway import DIAL_TIMEOUT, Accept, Connection
from mesh.node.p2p.addresses import Target, host_port, key_of, parse, peer_id_of
from mesh.node.p2p.triothread import TransportClosed, TrioThread
from mesh.wire.identity import Identity

log = logging.getLogger("mesh.node.p2p")
PROTOCOL = TProtocol("/homemesh/1")
MAX_STREAMS_PER_PEER = 4  # /homemesh/1 streams one peer may hold open here at once
CLOSE_GRACE_S = 1.0  # how long a closing link may spend sending what was queued (a `bye`)

# py-libp2p 0.8.1 waits a fixed 250 ms before every dial ("happy eyeballs"), even with one address:
# measured 255 ms per connect with it, ~8 ms without (notes/p2p.md).
_swarm._HAPPY_EYEBALLS_DELAY = 0


class DialFailed(ConnectionError):
    """No link to that address: unreachable, timed out, refused the handshake, or another key answered."""


def build_host(identity: Identity) -> IHost:
    """A libp2p host that speaks Noise and Yamux only (py-libp2p's default also accepts plaintext and
    secio, which let a dialer claim any public key: measured, notes/p2p.md)."""
    keys = create_new_key_pair(identity.seed())
    noise = NoiseTransport(keys, noise_privkey=new_noise_key().private_key)
    return new_host(key_pair=keys, sec_opt={TProtocol(NOISE): noise}, muxer_opt={TProtocol(YAMUX): Yamux},
                    enable_mDNS=False, enable_upnp=False)


class StreamConnection(Connection):
    """A `/homemesh/1` stream as a gateway connection. Reads are pulled from trio on demand (so a
    throttled peer's stream is not read); writes queue in order to one trio writer task."""

    def __init__(self, thread: TrioThread, stream: INetStream, label: str, limits: Limits, kind: str):
        super().__init__(label, limits)
        self.thread, self.stream, self.kind = thread, stream, kind
        self.authenticated = key_of(stream.muxed_conn.peer_id)
        self.peer_id: ID = stream.muxed_conn.peer_id
        self._send, self._queue = trio.open_memory_channel[bytes](math.inf)
        self.finished = trio.Event()  # set (in trio) when the stream is closed and the writer is done
        self._closing = False

    @property
    def open(self) -> bool:
        return not self._closing and self.thread.running

    async def read(self, n: int) -> bytes:
        return await self.thread.call(self._read, n)

    async def _read(self, n: int) -> bytes:
        try:
            return await self.stream.read(n)
        except StreamEOF:
            return b""
        except (StreamError, MuxedStreamError) as exc:
            raise ConnectionResetError(f"{self.label}: {exc}") from None

    def write(self, data: bytes) -> None:
        if self.open:
            self.thread.post(self._send.send_nowait, data)

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.thread.post(self._send.close)

    async def run_writer(self) -> None:
        """Trio task: send queued frames in order, then close the stream (also when the link broke)."""
        try:
            async for data in self._queue:
                await self.stream.write(data)
        except (StreamError, MuxedStreamError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._closing = True
            with trio.move_on_after(CLOSE_GRACE_S) as scope:
                scope.shield = True
                try:
                    await self.stream.close()
                except (StreamError, MuxedStreamError, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            self.finished.set()


class Libp2pTransport:
    kind = "libp2p"

    def __init__(self, identity: Identity, limits: Limits | None = None):
        self.identity = identity
        self.limits = limits or Limits()
        self.thread = TrioThread()
        self.host: IHost | None = None
        self.me = peer_id_of(identity.public_key)
        self.streams: Counter[ID] = Counter()
        self.refused: Counter[str] = Counter()
        self._accept: Accept | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = trio.Event()

    # -- asyncio side ----------------------------------------------------------------------------------
    async def start(self, sock: socket.socket, accept: Accept) -> list[str]:
        """Listen where `sock` was bound (the node binds early to fail fast; libp2p binds its own)."""
        host, port = sock.getsockname()[:2]
        sock.close()
        self._accept, self._loop = accept, asyncio.get_running_loop()
        self.thread.start()
        family = "ip6" if ":" in host else "ip4"
        return await self.thread.call(self._listen, Multiaddr(f"/{family}/{host}/tcp/{port}"))

    async def dial(self, addr: str, key: bytes | None, limits: Limits) -> Connection:
        target = parse(addr)  # ValueError for a bad address: the caller's to report
        expected = peer_id_of(key) if key else target.peer
        if key and target.peer is not None and target.peer != expected:
            raise DialFailed(f"{addr} names peer {target.peer}, not {expected}")
        try:
            return await self.thread.call(self._dial, target, expected)
        except TransportClosed:
            raise
        except trio.TooSlowError:
            raise DialFailed(f"{addr}: no answer in {DIAL_TIMEOUT:.0f} s") from None

    async def close(self) -> None:
        if self.thread.running:
            try:
                await asyncio.wait_for(self.thread.call(self._drain), CLOSE_GRACE_S * 2)
            except (asyncio.TimeoutError, TransportClosed):
                pass
        await asyncio.to_thread(self.thread.stop)

    def connection_kind(self, peer: ID) -> str:
        return "relayed" if self._relayed(peer) else "direct"

    # -- trio side -------------------------------------------------------------------------------------
    async def _listen(self, addr: Multiaddr) -> list[str]:
        return await self.thread.nursery.start(self._serve, addr)

    async def _serve(self, addr: Multiaddr, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.host = build_host(self.identity)
        async with self.host.run([addr]):
            self.host.set_stream_handler(PROTOCOL, self._on_stream)
            task_status.started([str(a) for a in self.host.get_addrs()])
            await self._stopped.wait()

    async def _on_stream(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        try:
            key_of(peer)
        except ValueError:
            self.refused["not-ed25519"] += 1
            await stream.reset()
            return
        if self.streams[peer] >= MAX_STREAMS_PER_PEER:
            self.refused["too-many-streams"] += 1
            await stream.reset()
            return
        conn = self._wrap(stream, "in")
        self._handover(conn)
        await conn.finished.wait()  # the stream lives as long as this handler

    def _wrap(self, stream: INetStream, direction: str) -> StreamConnection:
        peer = stream.muxed_conn.peer_id
        kind = self.connection_kind(peer)
        conn = StreamConnection(self.thread, stream, f"{direction}:{str(peer)[-8:]}:{kind}", self.limits, kind)
        self.streams[peer] += 1
        self.thread.nursery.start_soon(self._write_then_forget, conn)
        return conn

    async def _write_then_forget(self, conn: StreamConnection) -> None:
        try:
            await conn.run_writer()
        finally:
            self.streams[conn.peer_id] -= 1
            if self.streams[conn.peer_id] <= 0:
                del self.streams[conn.peer_id]

    def _handover(self, conn: StreamConnection) -> None:
        if self._loop is None or self._accept is None:  # a client-only host (tests, benches) serves nothing
            conn.close()
            return
        try:
            self._loop.call_soon_threadsafe(self._accept, conn)
        except RuntimeError:  # the node's loop is gone: nobody will serve this stream
            conn.close()

    async def _dial(self, target: Target, expected: ID | None) -> StreamConnection:
        with trio.fail_after(DIAL_TIMEOUT):
            try:
                if expected is None:
                    expected = await self._dial_unknown(target)
                elif not self.host.get_network().get_connections(expected):
                    await self.host.connect(PeerInfo(expected, [target.addr]))
                stream = await self.host.new_stream(expected, [PROTOCOL])
            except (OSError, ValueError) as exc:
                raise DialFailed(f"{target}: {exc}") from None
            except Exception as exc:  # py-libp2p wraps every failure in its own, unrelated classes
                raise DialFailed(f"{target}: {type(exc).__name__}: {exc}") from None
        return self._wrap(stream, "out")

    async def _dial_unknown(self, target: Target) -> ID:
        """Dial an address whose peer id we do not know (`--bootstrap HOST:PORT`): Noise still proves
        who answered, and that id is then the only key its envelopes may carry."""
        host, port = host_port(target)
        addr = target.addr
        if str(addr).startswith("/dns"):
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            ip = infos[0][4][0]
            addr = Multiaddr(f"/ip{6 if ':' in ip else 4}/{ip}/tcp/{port}")
        swarm = self.host.get_network()
        tcp = swarm.transport_manager.transport_for_dialing(addr)
        raw = await tcp.dial(addr)
        try:
            secure = await swarm.upgrader.security_multistream.secure_outbound(raw, None)
            peer = secure.get_remote_peer()
            key_of(peer)
            muxed = await swarm.upgrader.upgrade_connection(secure, peer)
        except BaseException:
            await raw.close()
            raise
        await swarm.add_conn(muxed, direction="outbound")
        return peer

    def _relayed(self, peer: ID) -> bool:
        if self.host is None:
            return False
        for conn in self.host.get_network().get_connections(peer):
            if any("/p2p-circuit" in str(a) for a in conn.get_transport_addresses()):
                return True
        return False

    async def _drain(self) -> None:
        """Let closing links send what they queued, then stop the host."""
        with trio.move_on_after(CLOSE_GRACE_S):
            while self.streams:
                await trio.sleep(0.02)
        self._stopped.set()
