"""Attacks on StrictYamux (mesh/node/p2p/yamux.py) by this project's red team of 2026-12-07: the real class
over an in-memory secured connection whose read(n) behaves as py-libp2p's SecureSession.read (it gathers n bytes, message by
message, before it returns)."""

from __future__ import annotations

import math
import struct

import pytest
import trio
from libp2p.peer.id import ID

from mesh.node.p2p.yamux import MAX_UNREAD_HOST, WINDOW_SLACK, StrictYamux

HDR = "!BBHII"
DATA, SYN = 0, 1
NOISE_MSG = 65519  # plaintext bytes in one Noise message


class Conn:
    def __init__(self, rx: trio.MemoryReceiveChannel, addr: str = "192.0.2.1"):
        self.rx, self.buf, self.taken, self.closed = rx, bytearray(), 0, False
        self.is_initiator = False
        self.addr = addr

    def get_remote_address(self) -> tuple[str, int]:
        return self.addr, 4001

    async def read(self, n: int | None = None) -> bytes:
        out = bytearray()
        while len(out) < n:
            if not self.buf:
                try:
                    self.buf += await self.rx.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return bytes(out)
            take = self.buf[:n - len(out)]
            del self.buf[:len(take)]
            out += take
            self.taken += len(take)
        return bytes(out)

    async def write(self, data: bytes) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


async def _attack(frame_len: int, body: int) -> tuple[bool, int, int]:
    tx, rx = trio.open_memory_channel(math.inf)
    conn = Conn(rx)
    mux = StrictYamux(conn, ID(b"hostile-peer"), is_initiator=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mux.start)
        await trio.sleep(0.05)
        await tx.send(struct.pack(HDR, 0, DATA, SYN, 1, frame_len))
        for at in range(0, body, NOISE_MSG):
            await tx.send(b"x" * min(NOISE_MSG, body - at))
        await trio.sleep(0.5)
        closed = mux.event_shutting_down.is_set()
        bound = mux.unread.bound
        nursery.cancel_scope.cancel()
    return closed, conn.taken, bound


@pytest.mark.timeout(60)
def test_control_a_whole_frame_past_the_window_closes_the_link():
    """(Control: the harness sees StrictYamux work.) A 1 MiB DATA frame, sent whole, on a fresh stream whose
    window is 256 KiB: the link is closed once the frame is in."""
    closed, taken, _ = trio.run(_attack, 1 << 20, 1 << 20)
    assert closed


@pytest.mark.timeout(60)
def test_a_frame_announcing_more_than_the_window_is_refused_before_its_body_is_buffered():
    """A hostile peer opens a stream with a DATA frame whose header announces 16 MiB (the most py-libp2p
    allows) and sends 4 MiB of it -- 16 times the 256 KiB window, 64 times WINDOW_SLACK -- then keeps
    the rest back. The header alone says the frame is past the credit (go-yamux refuses it there), but the
    frame loop read the body first, for up to 60 s (py-libp2p's DATA read timeout), holding it in memory
    uncounted by MAX_UNREAD_LINK/MAX_UNREAD_HOST: 16 MiB a link, 64 links a /24 prefix (inbound.PER_PREFIX)
    = 1 GiB, four times MAX_UNREAD_HOST."""
    closed, taken, bound = trio.run(_attack, 16 << 20, 4 << 20)
    assert closed, (f"link still open after the peer wrote {taken:,} bytes on a stream granted 262,144 (+"
                    f"{WINDOW_SLACK:,} slack); unread counted: {bound:,}; host budget {MAX_UNREAD_HOST:,}")


async def _link(name: bytes, addr: str):
    tx, rx = trio.open_memory_channel(math.inf)
    conn = Conn(rx, addr)
    return tx, conn, StrictYamux(conn, ID(name), is_initiator=False)


async def _fill(tx, streams: list[int], first_id: int = 1) -> None:
    """Open len(streams) streams, each with one SYN DATA frame of that many bytes (within its window)."""
    for i, n in enumerate(streams):
        await tx.send(struct.pack(HDR, 0, DATA, SYN, first_id + 2 * i, n) + b"y" * n)


@pytest.mark.timeout(60)
def test_links_just_under_the_honest_one_get_the_honest_link_closed(monkeypatch):
    """The host budget (scaled: MAX_UNREAD_HOST 256 MiB -> 4 MiB, same logic) is passed; StrictYamux closes
    'the link holding most'. An honest peer's link holds 1 MiB the node has not read yet, every byte within
    the windows granted (4 streams x 256 KiB). A hostile machine opens 4 links (one /24 may hold 64) and
    keeps each just under the honest one (4 links of 0.99 MiB, also within its windows). The honest link was the
    one closed -- the attacker picked its victim by size: with 16 links of 15.9 MiB, any model transfer whose
    reader lags (16 MiB windows) was cut, each time it was retried. Now the prefix holding most loses a link."""
    from mesh.node.p2p import yamux as strict

    monkeypatch.setattr(StrictYamux, "host_unread", strict._Unread(4 << 20))
    monkeypatch.setattr(StrictYamux, "host_links", strict.weakref.WeakSet())
    window = 256 << 10

    async def go():
        async with trio.open_nursery() as nursery:
            htx, _, honest = await _link(b"honest", "198.51.100.7")
            nursery.start_soon(honest.start)
            hostile = []
            for i in range(4):
                hostile.append(await _link(b"hostile-%d" % i, f"203.0.113.{10 + i}"))  # (one /24)
                nursery.start_soon(hostile[-1][2].start)
            await trio.sleep(0.05)
            await _fill(htx, [window] * 4)
            await trio.sleep(0.1)
            for tx, _, _ in hostile:
                await _fill(tx, [window] * 3 + [window - 10_000])
                await trio.sleep(0.1)
            await trio.sleep(0.3)
            out = (honest.event_shutting_down.is_set(), [m.event_shutting_down.is_set() for _, _, m in hostile],
                   honest.buffered(), [m.buffered() for _, _, m in hostile])
            nursery.cancel_scope.cancel()
        return out

    honest_closed, hostile_closed, hb, xb = trio.run(go)
    assert not honest_closed, (f"honest link closed (it held {4 * window:,} bytes, all within its windows; now {hb:,}); hostile "
                               f"links closed: {hostile_closed}, holding {xb}")
