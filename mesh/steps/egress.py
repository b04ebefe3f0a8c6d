"""The scraper's only way out: a small HTTP proxy on 127.0.0.1 that Chromium (and the plain fetch) must
use for every request — documents, redirects, sub-resources, websockets. For each one it resolves the
host, judges the address (mesh.steps.ssrf) and connects to that very address, so nothing reaches loopback,
private or metadata addresses unless allow-listed; and even then, never a port the node's own processes
listen on (mesh.steps.ownports), when the node gives the proxy those. HTTPS goes through CONNECT; plain HTTP requests are
forwarded one per connection. Refusals are counted and kept (the newest 256) for the step results.
The scraper gives each step a proxy of its own and shuts it when the step ends, so nothing the step's
pages left running (a beacon, a worker, a half-open tunnel) has a way out afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from urllib.parse import urlsplit

from mesh.errors import StepFailed
from mesh.steps.ssrf import Allow, IPAddress, Refused, resolve, why_refused

log = logging.getLogger("mesh.steps.egress")
HEAD_LIMIT = 64 * 1024
IDLE_S = 120.0
# bytes one step's proxy carries, both ways, all connections: a page pulled 5.8 GB through a worker in a 20 s
# step, unpaid (a scrape is paid per page; this project's red team, 2026-12-06)
MAX_BYTES = 256 << 20


class EgressProxy:
    def __init__(self, allow: Allow, own_ports: Callable[[], frozenset[int]] = frozenset):
        self.allow = allow
        # the ports this node's processes listen on (mesh.steps.ownports.OwnPorts), looked up per request:
        # never reached, even where the operator allows the address (a Scraper made alone has none)
        self.own_ports = own_ports
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.is_shut = False
        self.refused: deque[str] = deque(maxlen=256)
        self.open: set[asyncio.StreamWriter] = set()  # client sides of the connections being served
        self.carried = 0  # bytes piped, both ways
        self.over = ""  # why the proxy was shut for carrying too much ('' while it has not)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    def shut(self) -> None:
        """Refuse every new connection and cut every open tunnel, but keep the port: whatever still
        points at it (a closing browser context) meets a closed door, not some later listener."""
        self.is_shut = True
        for writer in list(self.open):
            writer.transport.abort()

    async def close(self) -> None:
        """Stop listening and cut every open tunnel (their handlers then end on their own)."""
        self.shut()
        if self.server is not None:
            self.server.close()
        for _ in range(100):
            if not self.open:
                break
            await asyncio.sleep(0.01)
        if self.server is not None:
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_shut:
            writer.transport.abort()
            return
        self.open.add(writer)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
            pass
        finally:
            self.open.discard(writer)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_S)
        if len(head) > HEAD_LIMIT:
            return
        line, _, rest = head.partition(b"\r\n")
        try:
            method, target, version = line.decode("latin-1").split(" ")
        except ValueError:
            return
        if method == "CONNECT":
            host, _, port_s = target.rpartition(":")
            target_url = f"https://{target}"
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                await self._reply(writer, 400, "absolute http:// URL expected")
                return
            host, port_s = parts.hostname, str(parts.port or 80)
            target_url = target
        try:
            ip = await asyncio.to_thread(self._judge, host.strip("[]"), int(port_s))
        except (Refused, StepFailed, ValueError) as exc:
            self.refused.append(f"{target_url[:300]}: {exc}")
            log.info("egress refused %s: %s", target_url[:200], exc)
            await self._reply(writer, 403, str(exc))
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(str(ip), int(port_s)), 30)
        except (OSError, asyncio.TimeoutError) as exc:
            await self._reply(writer, 502, f"cannot connect to {host}: {exc}")
            return
        if self.is_shut:  # shut while connecting: the tunnel must not start
            up_writer.transport.abort()
            return
        self.open.add(up_writer)
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                await writer.drain()
            else:
                parts = urlsplit(target)
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                headers = [h for h in rest.split(b"\r\n") if h and not h.lower().startswith(
                    (b"proxy-connection:", b"connection:", b"keep-alive:"))]
                up_writer.write(f"{method} {path} {version}\r\n".encode("latin-1") + b"\r\n".join(
                    headers + [b"Connection: close"]) + b"\r\n\r\n")
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self.open.discard(up_writer)
            up_writer.close()

    def _judge(self, host: str, port: int) -> IPAddress:
        """The address to connect to, or Refused. An address only the operator's allow-list lets through
        (loopback, the LAN) is this machine or near it, so a port this node's own processes listen on is
        refused there: its API, its peer port, its Thespian ports (which unpickle what arrives), and the
        other nodes' of this machine (ownports.enrol). Any such
        address counts (0.0.0.0, ::ffff:127.0.0.1, the machine's LAN address reach them too)."""
        ip = resolve(host, port, self.allow)
        if why_refused(ip) and port in self.own_ports():
            raise Refused(f"refused: port {port} on {ip} is this node's own port, or another homemesh node's of "
                          "this machine (an API, peer or actor port), never reached by a scrape, whatever "
                          "--scrape-allow allows")
        return ip

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError, OSError):
            while data := await asyncio.wait_for(src.read(65536), IDLE_S):
                self.carried += len(data)
                if self.carried > MAX_BYTES:
                    if not self.over:
                        self.over = f"the page and what it loaded passed {MAX_BYTES >> 20} MiB"
                        self.refused.append(self.over)
                        log.info("egress shut: %s", self.over)
                    self.shut()
                    return
                dst.write(data)
                await dst.drain()
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, status: int, text: str) -> None:
        body = text.encode()
        writer.write(f"HTTP/1.1 {status} Refused\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                     f"Connection: close\r\nX-Homemesh-Egress: refused\r\n\r\n".encode() + body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
