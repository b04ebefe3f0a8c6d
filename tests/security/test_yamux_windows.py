"""A stranger cannot park memory in a node's Yamux buffers. py-libp2p 0.8.1 keeps whatever a peer writes past
a stream's receive window ("peer exceeded receive window" is only logged): a fresh libp2p key (no id-work)
opened `/ipfs/id/1.0.0`, read the node's answer (the node then half-closes and never reads that stream
again), and wrote 768 MiB of DATA frames past the window into it: the node's RSS went 132 → 902 MiB in 4 s
and stayed there while the link was held (found by this project's attack round on the transport,
2026-12-06). Now such a link is closed once it is past its window (mesh/node/p2p/yamux.py), and so is one
holding too much unread over many streams.

The attacker here is one process with the node's real transport (Noise + Yamux hosts of its own keys),
writing Yamux frames by hand on the stream it opened."""

from __future__ import annotations

import struct

import pytest
import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.network.connection.exceptions import RawConnError
from libp2p.peer.peerinfo import PeerInfo
from libp2p.stream_muxer.exceptions import MuxedStreamError
from libp2p.stream_muxer.yamux.yamux import TYPE_DATA, YAMUX_HEADER_FORMAT
from multiaddr import Multiaddr

from mesh.node.p2p.addresses import parse, peer_id_of
from mesh.node.p2p.transport import build_host
from mesh.node.p2p.triothread import TrioThread
from mesh.node.p2p.yamux import MAX_UNREAD_LINK
from mesh.wire.identity import Identity

from ..conftest import wait_for
from .hostile import rss_mb, status

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]
NODE = ["--no-model", "--no-scrape"]
CHUNK = 60_000
FLOOD = 256 << 20  # bytes the attacker tries to park
GROWTH_MB = 64  # what the node's RSS may grow by meanwhile (the old code: +FLOOD)


async def flood(target: str, node_key: bytes, streams: int, per_stream: int, report: dict) -> None:
    """Open `streams` identify streams to the node, read each answer, then write `per_stream` bytes of DATA
    frames into each past its window; count what was written before the node closed the link."""
    host = build_host(Identity.generate(bits=0))  # libp2p keys need no id-work
    peer = peer_id_of(node_key)
    async with host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        await host.connect(PeerInfo(peer, [parse(target).addr]))
        opened = []
        with trio.fail_after(60):
            for _ in range(streams):
                s = await host.new_stream(peer, ["/ipfs/id/1.0.0"])
                await s.read(65536)
                opened.append(s)
        payload = b"\0" * CHUNK
        report["sent"] = 0
        try:
            with trio.fail_after(60):
                for _ in range(0, per_stream, CHUNK):
                    for s in opened:
                        ms = s.muxed_stream
                        await ms.conn._write_frame(struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_DATA, 0, ms.stream_id,
                                                               CHUNK) + payload)
                        report["sent"] += CHUNK
                    if ms.conn.event_shutting_down.is_set():
                        break
                await trio.sleep(2)  # the link held: what the node keeps of it now is what counts
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, RawConnError, MuxedStreamError,
                ConnectionClosedError) as exc:  # the node closed the link under us: how it should end
            report["ended"] = type(exc).__name__
        report["closed"] = "ended" in report or opened[0].muxed_stream.conn.event_shutting_down.is_set()


def attack(node, streams: int, per_stream: int) -> tuple[dict, float]:
    """Run the flood from its own trio thread; the node's RSS growth (MiB) at the end of it."""
    thread = TrioThread("yamux-flood")
    thread.start()
    report: dict = {}
    rss0 = rss_mb(node.proc.pid)
    try:
        thread.run_blocking(flood, node.listen, bytes.fromhex(status(node)["key"]), streams, per_stream, report)
    finally:
        thread.stop()
    return report, rss_mb(node.proc.pid) - rss0


def test_a_peer_writing_past_a_stream_window_loses_its_link(make_mesh):
    node = make_mesh(1, lambda i: NODE, name="yamux-window").nodes[0]
    report, grew = attack(node, 1, FLOOD)
    print(f"\none identify stream: {report['sent'] >> 20} MiB written of {FLOOD >> 20}, link closed "
          f"{report['closed']} ({report.get('ended')}), node RSS {grew:+.1f} MiB")
    assert report["closed"], "the node kept a link whose peer wrote past its window"
    assert grew < GROWTH_MB, f"the node's RSS grew {grew:.0f} MiB"
    wait_for(lambda: status(node)["key"], 10, "the node still answers")


def test_a_peer_filling_many_stream_windows_loses_its_link(make_mesh):
    """Within every window (256 KiB each at least; 234 KiB written into each), but over 250 streams (py-libp2p
    opens 256 at most on one link): the link's unread bytes are capped at MAX_UNREAD_LINK."""
    node = make_mesh(1, lambda i: NODE, name="yamux-streams").nodes[0]
    streams, each = 250, 4 * CHUNK
    assert streams * each > 1.5 * MAX_UNREAD_LINK
    report, grew = attack(node, streams, each)
    print(f"\n{streams} identify streams: {report['sent'] >> 20} MiB written, link closed {report['closed']}, "
          f"node RSS {grew:+.1f} MiB")
    assert report["closed"], f"the node kept a link holding {report['sent'] >> 20} MiB unread"
    assert grew < GROWTH_MB, f"the node's RSS grew {grew:.0f} MiB"
