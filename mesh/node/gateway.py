"""The peer gateway: connections carrying length-prefixed signed frames, over libp2p (`mesh.node.p2p`:
Noise-encrypted, the peer's key proven by the handshake) or plain TCP (`TcpTransport`, loopback tests
and benches). Checking is done by the sans-I/O `FrameDecoder`, `Receiver` and `TokenBucket`; this module
moves bytes, enforces the connection limits (handshake, slow frames, idleness, rates, counts, the
envelope's sender being the transport's authenticated peer) and reports events to its handler."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Callable, Protocol

from mesh.errors import Rejected
from mesh.node.dialscope import Gate, scope
from mesh.node.flow import Limits, TokenBucket
from mesh.wire.envelope import Envelope, FrameDecoder, Receiver, Refused, Sealer, WrongSender

log = logging.getLogger("mesh.node.gateway")
DIAL_TIMEOUT = 3.0
# bytes written to one link and not yet taken by it: a peer that asks and never reads (model parts at 32 MiB/s
# into an unread link held 1 GB in the node) is dropped past this; an honest one has a few frames in flight
MAX_BACKLOG = 16 << 20


class Handler(Protocol):
    def on_envelope(self, env: Envelope, conn: "Connection") -> None: ...
    def on_disconnect(self, conn: "Connection") -> None: ...
    def on_abuse(self, conn: "Connection", reason: str) -> None: ...


class Connection:
    """One link to a peer as the gateway sees it: a byte pipe plus the limits it is held to."""

    kind = "direct"  # direct | relayed | hole-punched
    authenticated: bytes | None = None  # the peer key the transport's handshake proved; None on plain TCP
    remote_ip = ""  # the address the other end really connects from (through a relay: the relay's)
    silent = False  # closed for showing no valid envelope in time: its peer's handshake failed
    # the address this end dialled to make the link, as given ('' when it came in, or rode a link already
    # there): where a key that answers on it is proven to live (Node._proven), not where its record says
    dialled = ""

    def __init__(self, label: str, limits: Limits):
        self.label = label
        self.peer_key: bytes | None = None  # set once an envelope from it verified on this connection
        now = time.monotonic()
        self.msgs = TokenBucket(limits.msg_rate, limits.msg_burst, now)
        self.bytes = TokenBucket(limits.byte_rate, limits.byte_burst, now)
        self.rejections = 0

    @property
    def outbound(self) -> bool:
        """Whether this end opened the link (labels are "out:…" or "in:…")."""
        return self.label.startswith("out")

    @property
    def open(self) -> bool:
        raise NotImplementedError

    async def read(self, n: int) -> bytes:
        """Up to n bytes; b'' at the end of the stream."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    @property
    def backlog(self) -> int:
        """Bytes written here that the peer has not taken yet (queued in this process)."""
        return 0

    def deliver(self, frame: bytes) -> bool:
        """Write `frame` unless the peer has left MAX_BACKLOG bytes unread: then the link is dropped
        (False), since what it would queue next only grows this node's memory."""
        if self.backlog > MAX_BACKLOG:
            log.warning("%s: %d bytes unread by the peer: link dropped", self.label, self.backlog)
            self.drop()
            return False
        self.write(frame)
        return True

    def close(self) -> None:
        raise NotImplementedError

    def drop(self) -> None:
        """End the link at once, without sending what is queued (its peer has gone silent)."""
        self.close()


class TcpConnection(Connection):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str, limits: Limits):
        super().__init__(label, limits)
        self.reader, self.writer = reader, writer
        peer = writer.get_extra_info("peername")
        self.remote_ip = str(peer[0]) if peer else ""

    @property
    def open(self) -> bool:
        return not self.writer.is_closing()

    async def read(self, n: int) -> bytes:
        return await self.reader.read(n)

    def write(self, data: bytes) -> None:
        if self.open:
            self.writer.write(data)

    @property
    def backlog(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    def close(self) -> None:
        if self.open:
            self.writer.close()

    def drop(self) -> None:
        self.writer.transport.abort()


Accept = Callable[[Connection], None]


class Transport(Protocol):
    """What the gateway needs of a transport: listen, dial (by address, with the key expected there
    when known), stop. `kind` names it in status ('libp2p' or 'tcp'); every dial passes `gate`."""

    kind: str
    gate: Gate

    async def start(self, sock: socket.socket, accept: Accept) -> list[str]: ...
    async def dial(self, addr: str, key: bytes | None, limits: Limits) -> Connection: ...
    async def close(self) -> None: ...


class TcpTransport:
    """Plain asyncio TCP, in the clear: for loopback tests, benches and the simulator's peers."""

    kind = "tcp"

    def __init__(self, gate: Gate | None = None) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.limits = Limits()
        self.gate = gate or Gate()  # which addresses peers may have us dial

    async def start(self, sock: socket.socket, accept: Accept) -> list[str]:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")
            accept(TcpConnection(reader, writer, f"in:{peer[0]}:{peer[1]}" if peer else "in", self.limits))

        self.server = await asyncio.start_server(accepted, sock=sock)
        host, port = sock.getsockname()[:2]
        return [f"{host}:{port}"]

    async def dial(self, addr: str, key: bytes | None, limits: Limits) -> Connection:
        self.gate.check(addr)
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        if scope(host) == "name":  # resolve once, check where it points, and dial that, not the name again
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, int(port), type=socket.SOCK_STREAM), DIAL_TIMEOUT)
            host = infos[0][4][0]
            self.gate.check_resolved(addr, host)
        who = key or b""
        self.gate.admit(addr, who, time.monotonic())  # proven only by a hello on the link (the node's to tell)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), DIAL_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            self.gate.dialled(addr, who, False, time.monotonic())
            raise
        conn = TcpConnection(reader, writer, f"out:{addr}", limits)
        conn.dialled = addr
        return conn

    async def close(self) -> None:
        if self.server:
            self.server.close()


class Gateway:
    def __init__(self, sealer: Sealer, receiver: Receiver, handler: Handler, now_ms: Callable[[], int],
                 frame_cap: int, limits: Limits | None = None, transport: Transport | None = None,
                 screen: Callable[[bytes, str, object], str] | None = None):
        self.sealer, self.receiver, self.handler = sealer, receiver, handler
        # (key, kind, payload) → why a frame of a link proven to be `key`'s is refused unread, '' to read it
        self.screen = screen
        self.now_ms, self.frame_cap = now_ms, frame_cap
        self.limits = limits or Limits()
        self.transport: Transport = transport or TcpTransport()
        if isinstance(self.transport, TcpTransport):
            self.transport.limits = self.limits
        self.addresses: list[str] = []
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task] = set()

    async def start(self, sock: socket.socket) -> None:
        self.addresses = await self.transport.start(sock, self._accepted)

    @property
    def unverified(self) -> int:
        """Inbound connections that have not shown a valid envelope yet. Links this node opened are not
        counted: 80 gossiped records of peers that answer the handshake and then say nothing took all 64
        slots with the node's own dials, and every stranger connecting in was refused."""
        return sum(c.peer_key is None and not c.outbound for c in self.connections)

    def _accepted(self, conn: Connection) -> None:
        if len(self.connections) >= self.limits.max_connections or self.unverified >= self.limits.max_unverified:
            self.receiver.count("too-many-connections")
            log.warning("refusing %s: too-many-connections", conn.label)
            conn.close()
            return
        self._own(self._serve(conn))

    def _own(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def dial(self, addr: str, key: bytes | None = None) -> Connection:
        """Open a connection and start serving it; raises OSError / TimeoutError / ValueError when
        the address is bad or unreachable, or (libp2p) another key answers there."""
        conn = await self.transport.dial(addr, key, self.limits)
        self.connections.add(conn)  # counted at once, so two quick sends do not dial twice
        self._own(self._serve(conn))
        return conn

    def send(self, conn: Connection, kind: str, recipient: bytes, payload: object) -> None:
        conn.deliver(self.sealer.seal(kind, recipient, payload, self.now_ms()))

    async def _serve(self, conn: Connection) -> None:
        self.connections.add(conn)
        try:
            await self._read_loop(conn)
        except Rejected as exc:
            self._reject(conn, exc)
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections.discard(conn)
            conn.close()
            self.handler.on_disconnect(conn)

    def _deadline(self, conn: Connection, decoder: FrameDecoder, started: float, frame_began: float) -> tuple[float, str]:
        lim = self.limits
        options = [(frame_began + lim.frame_s, "slow-frame")] if decoder.pending else []
        if conn.peer_key is None:
            allowed = lim.handshake_authenticated_s if conn.authenticated else lim.handshake_s
            options.append((started + allowed, "handshake-timeout"))
        options.append((time.monotonic() + lim.idle_s, "idle"))
        return min(options)

    async def _read_loop(self, conn: Connection) -> None:
        decoder = FrameDecoder(self.frame_cap)
        started = frame_began = time.monotonic()
        while True:
            deadline, reason = self._deadline(conn, decoder, started, frame_began)
            try:
                data = await asyncio.wait_for(conn.read(65536), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise Rejected(reason, f"on {conn.label}") from None
            if not data:
                if decoder.pending:
                    raise Rejected("truncated-frame", f"{decoder.pending} bytes left at close")
                return
            await self._throttle(conn, conn.bytes.take(len(data), time.monotonic()))
            had_partial = decoder.pending
            frames = decoder.feed(data)  # raises Rejected('frame-too-large'): framing is lost
            if frames or not had_partial:
                frame_began = time.monotonic()
            if frames:
                await self._throttle(conn, conn.msgs.take(len(frames), time.monotonic()))
            for body in frames:
                self._deliver(conn, body)
            if decoder.error:
                raise decoder.error

    async def _throttle(self, conn: Connection, wait: float) -> None:
        """Slow a peer over its rate (we stop reading, so its TCP window fills); drop it when what it has
        already sent would take more than `max_debt_s` to work off at its rate."""
        if wait <= 0:
            return
        if wait > self.limits.max_debt_s:
            raise Rejected("rate-limit", f"{conn.label} keeps sending over its rate")
        await asyncio.sleep(wait)

    def _deliver(self, conn: Connection, body: bytes) -> None:
        # The link's one sender is checked inside the receiver, before it remembers anything of the
        # frame's: checked after, each link let a second, throw-away key into the replay memory.
        key = conn.authenticated or conn.peer_key
        screen = None
        if self.screen is not None and key is not None:
            def screen(kind: str, payload: object, key: bytes = key) -> str:
                return self.screen(key, kind, payload)
        try:
            env = self.receiver.receive(body, self.now_ms(), key, screen)
        except Refused:
            # counted by the receiver, not logged (a flood would fill the log) nor held against the link as a
            # broken rule; charged to its rate, so the link is read slower (and the transport's work with it)
            conn.msgs.take(self.limits.refused_cost, time.monotonic())
            return
        except WrongSender as exc:
            if conn.authenticated is not None:
                # Signed by a key other than the one the encrypted link proved: a relayed or stolen
                # envelope. The link's owner is the one breaking the rules.
                conn.peer_key = conn.peer_key or conn.authenticated
                raise Rejected("sender-not-peer", f"{exc.detail} on a link authenticated as another key") from None
            raise Rejected("sender-changed", "second identity on one connection") from None
        except Rejected as exc:
            log.warning("rejected envelope on %s: %s", conn.label, exc)
            conn.rejections += 1
            if conn.rejections >= self.limits.max_rejections:
                raise Rejected("too-many-rejections", f"{conn.rejections} on {conn.label}") from None
            return
        if conn.peer_key is None:
            conn.peer_key = env.sender
        self.handler.on_envelope(env, conn)

    def _reject(self, conn: Connection, exc: Rejected) -> None:
        self.receiver.count(exc.reason)
        conn.silent = exc.reason == "handshake-timeout"
        log.warning("dropping %s: %s", conn.label, exc)
        if conn.peer_key is not None and exc.reason not in ("idle", "truncated-frame"):
            self.handler.on_abuse(conn, exc.reason)

    async def close(self) -> None:
        for conn in list(self.connections):
            conn.close()  # a libp2p link first sends what is queued (a `bye`), then closes its stream
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.transport.close()
