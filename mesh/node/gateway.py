"""The peer gateway: asyncio TCP connections carrying length-prefixed signed frames. Checking is done by
the sans-I/O `FrameDecoder`, `Receiver` and `TokenBucket`; this module moves bytes, enforces the
connection limits (handshake, slow frames, idleness, rates, counts) and reports events to its handler."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Callable, Protocol

from mesh.errors import Rejected
from mesh.node.flow import Limits, TokenBucket
from mesh.wire.envelope import Envelope, FrameDecoder, Receiver, Sealer

log = logging.getLogger("mesh.node.gateway")
DIAL_TIMEOUT = 3.0


class Handler(Protocol):
    def on_envelope(self, env: Envelope, conn: "Connection") -> None: ...
    def on_disconnect(self, conn: "Connection") -> None: ...
    def on_abuse(self, conn: "Connection", reason: str) -> None: ...


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str, limits: Limits):
        self.reader, self.writer, self.label = reader, writer, label
        self.peer_key: bytes | None = None  # set once an envelope from it verified on this connection
        now = time.monotonic()
        self.msgs = TokenBucket(limits.msg_rate, limits.msg_burst, now)
        self.bytes = TokenBucket(limits.byte_rate, limits.byte_burst, now)
        self.rejections = 0

    @property
    def open(self) -> bool:
        return not self.writer.is_closing()

    def write(self, data: bytes) -> None:
        if self.open:
            self.writer.write(data)

    def close(self) -> None:
        if self.open:
            self.writer.close()


class Gateway:
    def __init__(self, sealer: Sealer, receiver: Receiver, handler: Handler, now_ms: Callable[[], int],
                 frame_cap: int, limits: Limits | None = None):
        self.sealer, self.receiver, self.handler = sealer, receiver, handler
        self.now_ms, self.frame_cap = now_ms, frame_cap
        self.limits = limits or Limits()
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task] = set()

    async def start(self, sock: socket.socket) -> None:
        self.server = await asyncio.start_server(self._accepted, sock=sock)

    @property
    def unverified(self) -> int:
        return sum(c.peer_key is None for c in self.connections)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = Connection(reader, writer, f"in:{peer[0]}:{peer[1]}" if peer else "in", self.limits)
        if len(self.connections) >= self.limits.max_connections or self.unverified >= self.limits.max_unverified:
            self.receiver.count("too-many-connections")
            log.warning("refusing %s: too-many-connections", conn.label)
            conn.close()
            return
        await self._serve(conn)

    async def dial(self, host: str, port: int) -> Connection:
        """Open a connection and start serving it; raises OSError / TimeoutError when unreachable."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), DIAL_TIMEOUT)
        conn = Connection(reader, writer, f"out:{host}:{port}", self.limits)
        task = asyncio.create_task(self._serve(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return conn

    def send(self, conn: Connection, kind: str, recipient: bytes, payload: object) -> None:
        conn.write(self.sealer.seal(kind, recipient, payload, self.now_ms()))

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
            options.append((started + lim.handshake_s, "handshake-timeout"))
        options.append((time.monotonic() + lim.idle_s, "idle"))
        return min(options)

    async def _read_loop(self, conn: Connection) -> None:
        decoder = FrameDecoder(self.frame_cap)
        started = frame_began = time.monotonic()
        while True:
            deadline, reason = self._deadline(conn, decoder, started, frame_began)
            try:
                data = await asyncio.wait_for(conn.reader.read(65536), max(0.0, deadline - time.monotonic()))
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
        try:
            env = self.receiver.receive(body, self.now_ms())
        except Rejected as exc:
            log.warning("rejected envelope on %s: %s", conn.label, exc)
            conn.rejections += 1
            if conn.rejections >= self.limits.max_rejections:
                raise Rejected("too-many-rejections", f"{conn.rejections} on {conn.label}") from None
            return
        if conn.peer_key is None:
            conn.peer_key = env.sender
        elif conn.peer_key != env.sender:
            raise Rejected("sender-changed", "second identity on one connection")
        self.handler.on_envelope(env, conn)

    def _reject(self, conn: Connection, exc: Rejected) -> None:
        self.receiver.count(exc.reason)
        log.warning("dropping %s: %s", conn.label, exc)
        if conn.peer_key is not None and exc.reason not in ("idle", "truncated-frame"):
            self.handler.on_abuse(conn, exc.reason)

    async def close(self) -> None:
        if self.server:
            self.server.close()
        for conn in list(self.connections):
            conn.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
