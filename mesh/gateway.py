"""The peer gateway: asyncio TCP connections carrying length-prefixed signed frames. All checking is
done by the sans-I/O `FrameDecoder` and `Receiver`; this module only moves bytes and reports events
(envelope received, connection lost) to its handler."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable, Protocol

from .envelope import Envelope, FrameDecoder, Receiver, Sealer
from .errors import Rejected

log = logging.getLogger("mesh.gateway")
DIAL_TIMEOUT = 3.0


class Handler(Protocol):
    def on_envelope(self, env: Envelope, conn: "Connection") -> None: ...
    def on_disconnect(self, conn: "Connection") -> None: ...


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str):
        self.reader, self.writer, self.label = reader, writer, label
        self.peer_key: bytes | None = None  # set once an envelope from it verified on this connection

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
                 frame_cap: int):
        self.sealer, self.receiver, self.handler = sealer, receiver, handler
        self.now_ms, self.frame_cap = now_ms, frame_cap
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[Connection] = set()
        self.tasks: set[asyncio.Task] = set()

    async def start(self, sock: socket.socket) -> None:
        self.server = await asyncio.start_server(self._accepted, sock=sock)

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        await self._serve(Connection(reader, writer, f"in:{peer[0]}:{peer[1]}" if peer else "in"))

    async def dial(self, host: str, port: int) -> Connection:
        """Open a connection and start serving it; raises OSError / TimeoutError when unreachable."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), DIAL_TIMEOUT)
        conn = Connection(reader, writer, f"out:{host}:{port}")
        task = asyncio.create_task(self._serve(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return conn

    def send(self, conn: Connection, kind: str, recipient: bytes, payload: object) -> None:
        conn.write(self.sealer.seal(kind, recipient, payload, self.now_ms()))

    async def _serve(self, conn: Connection) -> None:
        self.connections.add(conn)
        decoder = FrameDecoder(self.frame_cap)
        try:
            while True:
                data = await conn.reader.read(65536)
                if not data:
                    if decoder.pending:
                        self._reject(conn, Rejected("truncated-frame", f"{decoder.pending} bytes left at close"))
                    break
                try:
                    frames = decoder.feed(data)
                except Rejected as exc:  # framing is lost: nothing after this can be trusted to align
                    self._reject(conn, exc)
                    break
                for body in frames:
                    try:
                        env = self.receiver.receive(body, self.now_ms())
                    except Rejected as exc:
                        log.warning("rejected envelope on %s: %s", conn.label, exc)
                        continue
                    if conn.peer_key is None:
                        conn.peer_key = env.sender
                    elif conn.peer_key != env.sender:
                        self._reject(conn, Rejected("sender-changed", "second identity on one connection"))
                        return
                    self.handler.on_envelope(env, conn)
                if decoder.error:
                    self._reject(conn, decoder.error)
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self.connections.discard(conn)
            conn.close()
            self.handler.on_disconnect(conn)

    def _reject(self, conn: Connection, exc: Rejected) -> None:
        self.receiver.count(exc.reason)
        log.warning("dropping %s: %s", conn.label, exc)

    async def close(self) -> None:
        if self.server:
            self.server.close()
        for conn in list(self.connections):
            conn.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
