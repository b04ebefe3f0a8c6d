"""Guards in front of the node's HTTP API. The API spends credits and listens on loopback, so the two ways
in from outside are a web page (DNS rebinding: evil.example resolves to 127.0.0.1, and the browser sends
Host: evil.example) and local processes holding connections open. HostGuard refuses any Host that does
not name this API over loopback; GuardedH11 drops a connection whose request does not arrive in time and
caps how many connections are open, evicting the one that has waited longest for its request."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable

import h11
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from mesh.http.common import error_body

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 10.0  # from when a connection waits for a request until its head and body are in
MAX_CONNECTIONS = 256  # open API connections; past it, the one waiting longest for its request is dropped
STUCK_BYTES = 1 << 20  # answers a connection leaves unread past which it goes before any other busy one
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def allowed_hosts(port: int, bind_host: str = "127.0.0.1") -> frozenset[str]:
    """The Host values that name this API: a loopback name with the port (bare only on port 80, where
    clients leave the port out)."""
    bound = f"[{bind_host}]" if ":" in bind_host else bind_host
    names = {n.lower() for n in (*LOOPBACK_NAMES, bound)}
    return frozenset({f"{n}:{port}" for n in names} | (names if port == 80 else set()))


class HostGuard:
    """Pure ASGI: answer 421 to a request whose Host header (exactly one) is not in `hosts`, before any
    route, the token check or the body is looked at."""

    def __init__(self, app, hosts: Iterable[str], body: Callable[[str, int, str], dict] = error_body):
        self.app, self.hosts, self.body = app, frozenset(h.lower() for h in hosts), body

    def refusal(self, scope) -> str:
        """Why this request is refused ('' when its Host is right)."""
        got = [v for k, v in scope.get("headers") or () if k.lower() == b"host"]
        if len(got) != 1:
            return "send exactly one Host header naming this node's API (e.g. 127.0.0.1:PORT)"
        host = got[0].decode("latin-1").strip().lower()
        if host in self.hosts:
            return ""
        return f"Host {host[:100]!r} is not this node's API; use {min(self.hosts)}"

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        why = self.refusal(scope)
        if not why:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        return await JSONResponse(self.body(scope.get("path", ""), 421, why), 421)(scope, receive, send)


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request and a cap on open connections. uvicorn
    only times out idle keep-alive connections: a client that trickles a request head (slowloris), never
    sends a byte, or never finishes its body would hold its connection forever."""

    read_timeout = READ_TIMEOUT_S
    max_connections = MAX_CONNECTIONS
    token = ""  # the API's bearer token (a subclass per server sets it: see `for_token`)

    @classmethod
    def for_token(cls, token: str) -> type["GuardedH11"]:
        """This protocol for a server whose owner shows `token`: connections that showed it go last."""
        return type("OwnedH11", (cls,), {"token": token})

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = None
        self.waiting_since: float | None = None  # monotonic time since when the client owes us a request
        self.busy_since: float | None = None  # monotonic time since when we owe it an answer (a stream, a wait)
        self.paused_since: float | None = None  # since when its client has read too little for us to write more
        self.owner = False  # a request on it carried the API token

    def pause_writing(self) -> None:  # (asyncio: the socket's buffer is over uvicorn's high-water mark)
        super().pause_writing()
        if self.paused_since is None:
            self.paused_since = time.monotonic()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.paused_since = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._track()
        if sum(not c.transport.is_closing() for c in self.connections) > self.max_connections:
            self._evict()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def handle_events(self) -> None:  # after every read, and when the next pipelined request starts
        super().handle_events()
        self._track()
        if not self.owner and self.token and getattr(self, "scope", None):
            shown = [v for k, v in self.scope.get("headers", ()) if k.lower() == b"authorization"]
            self.owner = any(hmac.compare_digest(v, f"Bearer {self.token}".encode()) for v in shown)

    def _track(self) -> None:
        """Run the deadline while the client owes a request (its head, or the rest of its body)."""
        owes = self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing()
        if owes and self.deadline is None:
            self.waiting_since, self.busy_since = time.monotonic(), None
            self.deadline = self.loop.call_later(self.read_timeout, self._timed_out)
        elif not owes:
            self._disarm()
            if self.busy_since is None:
                self.busy_since = time.monotonic()

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        self.deadline = self.waiting_since = None

    def _timed_out(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            log.info("dropping API connection from %s: no complete request within %g s", self.client,
                     self.read_timeout)
            self.transport.close()

    def _evict(self) -> None:
        """Drop the connection that has waited longest for its request; else, of those busy (an event stream, a
        ?wait=, answers being written), one whose client reads too little (over STUCK_BYTES unsent, or writing
        paused by flow control), then any, those that never showed the API token before the owner's; of each,
        the one busy longest. So neither idle connections nor 256 held streams can lock the owner's CLI out
        (with every other busy, the new connection itself was dropped: the CLI's /health too). A local process
        with no token asking for a static file 100 times down each connection and reading nothing made its
        connections busy for good, and the owner's stream went first (red team, 2026-12-06); held under 1 MiB
        unsent by uvicorn's flow control (200 requests down each), they still did (red team, 2026-12-07)."""
        others = [c for c in self.connections if c is not self and not c.transport.is_closing()]
        waiting = [c for c in others if getattr(c, "waiting_since", None) is not None]
        busy = [c for c in others if getattr(c, "busy_since", None) is not None]

        def standing(c) -> tuple[bool, bool, float]:  # (showed the token, reads its answers, busy since): least goes
            stuck = getattr(c, "paused_since", None) is not None or c.transport.get_write_buffer_size() > STUCK_BYTES
            return getattr(c, "owner", False), not stuck, c.busy_since

        victim = (min(waiting, key=lambda c: c.waiting_since) if waiting
                  else min(busy, key=standing) if busy else self)
        log.info("dropping API connection from %s: over %d connections", victim.client, self.max_connections)
        victim._disarm()
        victim.transport.close()
