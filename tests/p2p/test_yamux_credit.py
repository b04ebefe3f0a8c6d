"""What StrictYamux holds against a peer: bytes written past the credit its streams were granted, not bytes
buffered past a stream's target window. py-libp2p's window updates grant more than the target when a read
releases bytes, so an honest node serving a model to a reader behind on a loaded machine had 1,158,204
bytes in a 1 MiB window, and the link (and the fetch on it) was closed (found on this project's CI). The
stream and link here are py-libp2p's classes with the state a frame loop leaves, fed arrivals as its
frame loop feeds them (the buffer extended, then `recv_window` lowered)."""

from __future__ import annotations

import weakref

import pytest

from mesh.node.p2p.yamux import WINDOW_SLACK, StrictYamux, WindowExceeded, _StrictStream, _Unread

pytestmark = pytest.mark.timeout(10)

MIB = 1 << 20


@pytest.fixture
def link(monkeypatch) -> StrictYamux:
    """A StrictYamux link with one stream (id 1) granted a 1 MiB target, and a host of its own."""
    monkeypatch.setattr(StrictYamux, "host_unread", _Unread(256 * MIB))
    monkeypatch.setattr(StrictYamux, "host_links", weakref.WeakSet())
    conn = object.__new__(StrictYamux)
    conn.stream_buffers, conn.unread, conn.overdrawn, conn.peer_id = {1: bytearray()}, _Unread(32 * MIB), 0, "peer"
    conn.host_links.add(conn)
    stream = object.__new__(_StrictStream)
    stream.conn, stream.stream_id, stream.target_recv_window = conn, 1, MIB
    stream.recv_window = MIB
    conn.streams = {1: stream}
    return conn


def arrive(conn: StrictYamux, n: int) -> None:
    """n bytes of DATA on stream 1, as py-libp2p's frame loop takes them in."""
    stream = conn.streams[1]
    conn.stream_buffers[1].extend(b"x" * n)
    stream.recv_window -= n
    if stream.recv_window < 0:
        stream.recv_window = 0  # (py-libp2p logs the excess and goes on)


def test_bytes_within_the_credit_granted_pass_though_the_buffer_holds_more_than_the_target(link):
    stream = link.streams[1]
    arrive(link, MIB)  # the window filled, nothing read yet
    del link.stream_buffers[1][:64 << 10]  # the reader takes 64 KiB...
    stream.recv_window += 175_164  # ...and py-libp2p's update grants more than it released
    arrive(link, 175_164)  # the peer writes all it was granted: 1,158,204 buffered, as on CI
    assert len(link.stream_buffers[1]) == 1_158_204 > MIB + WINDOW_SLACK  # (refused, before)
    assert link.overdrawn == 0


def test_bytes_past_the_credit_granted_close_the_link_past_the_slack(link):
    arrive(link, MIB)
    arrive(link, WINDOW_SLACK)  # past the credit, but within the slack forgiven
    assert link.overdrawn == WINDOW_SLACK
    with pytest.raises(WindowExceeded, match="past the windows granted"):
        arrive(link, 1)
