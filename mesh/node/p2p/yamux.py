"""py-libp2p's Yamux, held to its own flow control. py-libp2p 0.8.1 only logs a peer that writes past the
receive window a stream granted it and keeps the bytes: a stranger's fresh key wrote 768 MiB into a
node's identify stream, which the node never reads again, and its memory went 132 → 902 MiB in 4 s
(found by this project's attack round on the transport, 2026-12-06). Here a link whose peer writes more
than its streams' windows granted it (and a little slack) is closed, as go-yamux closes it; so is a link
holding more than MAX_UNREAD_LINK bytes nobody read (each new stream grants a fresh window), and when a
host's links together hold more than MAX_UNREAD_HOST, the biggest link of the network prefix holding most
is closed (by link, a machine keeping four links each just under an honest peer's had the honest one closed).
A DATA frame announcing more than any stream of the link could be owed is refused from its header, before its
body is read: py-libp2p reads a body whole, up to 16 MiB, for up to 60 s, before anything counts it.

Unread bytes are counted without touching py-libp2p's read paths: every arrival lowers a stream's
`recv_window` (the only thing that lowers it), so arrivals are counted there as an upper bound, and the
exact sum of the buffers is taken only when that bound passes a limit. An arrival that takes `recv_window`
below zero is the bytes past the credit granted (py-libp2p then sets it to zero); those are what is held
against the peer. (Not the bytes buffered against the stream's target window: py-libp2p grants more than
its target when a read releases bytes (the 'partial slack' of its window updates), and an honest node
serving a model, its reader behind on a loaded machine, had 1,158,204 bytes in a 1 MiB window: the link
closed, and the fetch with it.)"""

from __future__ import annotations

import logging
import weakref

import libp2p.stream_muxer.muxer_multistream as _muxer_multistream
import trio
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE, Yamux, YamuxStream

from mesh.node.peers import prefix_of_ip

WINDOW_SLACK = 64 << 10  # bytes past its windows forgiven a link (py-libp2p's own sender never needs it)
MAX_UNREAD_LINK = 32 << 20  # a stream the node reads grows its window to 16 MiB; two such, plus the rest
MAX_UNREAD_HOST = 256 << 20
log = logging.getLogger("mesh.node.p2p")


class WindowExceeded(trio.TooSlowError):
    """A peer sent more than the node let it (a window, or the unread bytes a link may hold). A TooSlowError
    because that is the one exception py-libp2p's frame loop lets out of its DATA branch and answers by
    closing the link (every other one there is logged and the loop goes on)."""


class _Unread:
    """Bytes received and not read yet, for one link or for a whole host: `bound` is at least the true
    figure (arrivals are added, reads are not taken off); `exact` is summed only when it passes `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit, self.bound = limit, 0

    def over(self, n: int, exact) -> bool:
        self.bound += n
        if self.bound <= self.limit:
            return False
        self.bound = exact()
        return self.bound > self.limit


class _StrictStream(YamuxStream):
    """A Yamux stream whose `recv_window` setter checks each arrival (set on py-libp2p's own streams as
    they are registered: `_Streams`). The value stays in the instance's dict, where py-libp2p put it."""

    @property
    def recv_window(self) -> int:
        return self.__dict__["recv_window"]

    @recv_window.setter
    def recv_window(self, value: int) -> None:
        before = self.__dict__.get("recv_window", value)
        self.__dict__["recv_window"] = value
        if value < before:  # bytes arrived on this stream, -value of them past its credit when negative
            self.conn.arrived(self, before - value, max(0, -value))


class _Streams(dict):
    """A link's streams: each one registered becomes a `_StrictStream`."""

    def __setitem__(self, key: int, stream: YamuxStream) -> None:
        if type(stream) is YamuxStream:
            stream.__class__ = _StrictStream
        super().__setitem__(key, stream)


class StrictYamux(Yamux):
    """Yamux that closes a link whose peer writes past its windows or hoards unread bytes. The links of the
    process share MAX_UNREAD_HOST (class attributes: the memory it guards is the process's; a node process
    runs one host)."""

    host_unread = _Unread(MAX_UNREAD_HOST)
    host_links: weakref.WeakSet = weakref.WeakSet()

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.streams = _Streams()
        self.unread = _Unread(MAX_UNREAD_LINK)
        self.overdrawn = 0  # bytes the peer wrote past the credit of its streams, all together
        self.host_links.add(self)

    async def _read_data_body(self, length: int) -> bytes:
        """A DATA frame's body, once its header's length is within what the link could be owed: the most
        credit any of its streams has, or a new stream's window, and the slack left (py-libp2p reads the body
        before it knows the stream; the setter above still judges the stream itself when it arrives)."""
        credit = max([DEFAULT_WINDOW_SIZE, *(st.recv_window for st in list(self.streams.values()))])
        if length > credit + max(0, WINDOW_SLACK - self.overdrawn):
            self._refuse(f"a DATA frame of {length} bytes announced where at most {credit} are owed")
        return await super()._read_data_body(length)

    @property
    def prefix(self) -> str:
        """The network prefix the link comes from (its relay's, for a relayed link; its own id when unknown)."""
        try:
            remote = self.secured_conn.get_remote_address()
        except (AttributeError, OSError):
            remote = None
        return prefix_of_ip(str(remote[0])) if remote else f"link {id(self)}"

    def buffered(self) -> int:
        return sum(len(b) for b in list(self.stream_buffers.values()))

    def arrived(self, stream: YamuxStream, n: int, past: int = 0) -> None:
        """`n` bytes came on `stream`, `past` of them beyond the credit it had (called from the frame loop,
        before py-libp2p's own window check)."""
        if past:
            self.overdrawn += past
            if self.overdrawn > WINDOW_SLACK:
                self._refuse(f"{self.overdrawn} bytes written past the windows granted (last on stream "
                             f"{stream.stream_id})")
        if self.unread.over(n, self.buffered):
            self._refuse(f"{self.unread.bound} bytes left unread on the link")
        if self.host_unread.over(n, self._host_buffered):
            links = list(self.host_links)
            held: dict[str, int] = {}
            for link in links:
                held[link.prefix] = held.get(link.prefix, 0) + link.unread.bound
            worst = max(held, key=held.__getitem__)  # (a prefix is one operator's, as placement counts them)
            hog = max((link for link in links if link.prefix == worst), key=lambda link: link.unread.bound)
            if hog is self:
                self._refuse(f"the most of {self.host_unread.bound} bytes unread on all links")
            log.warning("closing the link of %s: the most of %d bytes unread on all links", hog.peer_id,
                        self.host_unread.bound)
            hog.evict()

    def _refuse(self, why: str) -> None:
        log.warning("closing the link of %s: %s", self.peer_id, why)
        raise WindowExceeded(why)

    def _host_buffered(self) -> int:
        total = 0
        for link in list(self.host_links):
            link.unread.bound = link.buffered()
            total += link.unread.bound
        return total

    def evict(self) -> None:
        """Close this link from another's frame loop (its own nursery runs the close)."""
        self.unread.bound = 0
        if self._nursery is not None and not self.event_shutting_down.is_set():
            self.event_shutting_down.set()
            self._nursery.start_soon(self._cleanup_on_error)



def install() -> None:
    """Make py-libp2p build StrictYamux: its muxer negotiation constructs `Yamux` by name for the Yamux
    protocol, whatever class the host was given (py-libp2p 0.8.1, stream_muxer/muxer_multistream.py)."""
    _muxer_multistream.Yamux = StrictYamux
