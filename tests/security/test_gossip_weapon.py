"""Gossip cannot be turned into a weapon (issue 19 item 4). A hostile peer with one valid key plays
three attacks on a real node over its real transport:

1. records of fresh keys that all name a host of the attacker's choosing (a victim service): the node
   must not become a connection cannon (measured before: 32 hellos, 14,000 connections in 40 s);
2. records of peers that complete the handshake and then say nothing: the node's own outgoing links
   must not take the slots of inbound connections (before: 80 records locked a node's inbound side);
3. thousands of records: the table, the CPU and the API must stay bounded (before: 10,100 records
   filled the table and froze the API for 1.2 s).

Each test prints what it measured (`pytest -s`), and asserts bounds on dials, CPU and memory."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from mesh.wire.identity import Identity
from mesh.wire.messages import HeadAsk
from mesh.wire.records import make_record

from ..conftest import wait_for
from .hostile import NETWORK, HostilePeer, SilentPeers, cpu_seconds, now_ms, rss_mb, status

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]
NODE = ["--no-model", "--no-scrape"]


class Victim:
    """TCP services on 127.0.0.1 (`ports` of them) that count the connections they accept."""

    def __init__(self, ports: int = 4):
        self.socks = [socket.create_server(("127.0.0.1", 0), backlog=128) for _ in range(ports)]
        self.ports = [s.getsockname()[1] for s in self.socks]
        self.accepted = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        for s in self.socks:
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        while not self.stopping.is_set():
            for key, _ in sel.select(0.1):
                try:
                    conn, _ = key.fileobj.accept()
                except OSError:
                    continue
                self.accepted += 1
                conn.close()
        sel.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


def records_at(addrs: list[str], n: int) -> list:
    """`n` validly signed records of fresh keys, naming `addrs` in turn."""
    return [make_record(Identity.generate(), NETWORK, addrs[i % len(addrs)], ["python"], [], False, now_ms())
            for i in range(n)]


def test_gossiped_records_naming_a_victim_cannot_make_the_node_a_connection_cannon(make_mesh):
    node = make_mesh(1, lambda i: NODE, name="cannon").nodes[0]
    victim = Victim()
    try:
        addrs = [a for p in victim.ports for a in (f"127.0.0.1:{p}", f"/ip4/127.0.0.1/tcp/{p}")]
        cpu0, rss0, t0 = cpu_seconds(node.proc.pid), rss_mb(node.proc.pid), time.monotonic()
        with HostilePeer(node.listen) as evil:
            node_key = bytes.fromhex(evil.handshake()["from"])
            for _ in range(32):  # 32 hellos, 8 records each (what a hello carries)
                evil.send(evil.hello_frame(node_key, records_at(addrs, 8)))
            watch = 30.0
            while time.monotonic() - t0 < watch:
                evil.expect(lambda f: False, 1.0)  # keep the link (read its hellos) while the node dials
        cpu, rss = cpu_seconds(node.proc.pid) - cpu0, rss_mb(node.proc.pid) - rss0
        refused = status(node)["dials_refused"]
        print(f"\n256 records naming {len(victim.ports)} victim ports: {victim.accepted} connections in "
              f"{watch:.0f} s; node CPU {cpu:.1f} s, RSS {rss:+.1f} MB; refused {refused}")
        assert victim.accepted <= 3 * len(victim.ports) + 8, victim.accepted
        assert cpu < 10.0, cpu
        assert rss < 60.0, rss
    finally:
        victim.close()


def test_links_the_node_opened_itself_never_take_the_inbound_slots(make_mesh):
    node = make_mesh(1, lambda i: NODE, name="lockout").nodes[0]
    silent = SilentPeers(80)
    try:
        with HostilePeer(node.listen) as evil:
            node_key = bytes.fromhex(evil.handshake()["from"])
            recs = silent.records()
            for i in range(0, len(recs), 8):
                evil.send(evil.hello_frame(node_key, recs[i:i + 8]))
            wait_for(lambda: silent.streams >= 64, 60, "the node to link to the silent peers")
            print(f"\nthe node opened {silent.streams} streams to 80 silent peers")
            # While its own links to them wait for a hello, a stranger connecting in is still served.
            for _ in range(3):
                with HostilePeer(node.listen) as newcomer:
                    assert newcomer.handshake(node_key, timeout=10)["from"] == node_key.hex()
            rejected = status(node)["rejected"]
            assert not rejected.get("too-many-connections"), rejected
            # And a peer that never answers on the link the node opened is dropped (20 s: the handshake
            # limit of an authenticated link) and not dialled again at once: it backs off like a peer
            # whose connect failed.
            wait_for(lambda: sum(what == "closed" for _, _, what in silent.events) >= 20, 60,
                     "the node to drop links that never said hello")
            time.sleep(12)
            gaps = silent.redials()
            print(f"{len(gaps)} silent links dropped; redialled within 10 s: "
                  f"{sum(g < 10 for g in gaps)}, the soonest after {min(gaps):.1f} s")
            assert all(g >= 10 for g in gaps), sorted(gaps)[:10]
    finally:
        silent.close()


def why_dropped(node) -> list[str]:
    """The node's log lines about links it dropped or envelopes it refused."""
    text = (node.home / "node.log").read_text(errors="replace")
    return [ln for ln in text.splitlines() if any(w in ln for w in ("dropping", "rejected", "penalised", "silent"))][-10:]


def replies(evil: HostilePeer) -> int:
    """The head-asks the node has answered this attacker."""
    return sum(f["kind"] == "head-held" and f["to"] == evil.key.hex() for f in evil.received)


def test_thousands_of_records_neither_fill_the_table_nor_freeze_the_node(make_mesh):
    node = make_mesh(1, lambda i: NODE, name="flood").nodes[0]
    pid = node.proc.pid
    latencies: list[float] = []
    stop = threading.Event()

    def probe() -> None:  # the API's loop, asked ten times a second through the flood
        while not stop.is_set():
            t = time.monotonic()
            node.client.request("GET", "/health", timeout=30)
            latencies.append(time.monotonic() - t)
            stop.wait(0.1)

    records = records_at([f"127.0.0.1:{p}" for p in range(20000, 20100)], 10_100)
    cpu0, rss0 = cpu_seconds(pid), rss_mb(pid)
    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        with HostilePeer(node.listen, timeout=30) as evil:
            node_key = bytes.fromhex(evil.handshake()["from"])
            t0 = time.monotonic()
            answered = 0
            for n, i in enumerate(range(0, len(records), 8)):  # 150 hellos a second: under the link's rate
                # Every 20th hello is followed by a head-ask (the node answers each), and the next hello
                # waits for its answer: never more than 20 frames ahead of what the node has read, so a
                # loaded machine slows the flood instead of filling buffers the node never read.
                ask = n % 20 == 19
                try:
                    evil.send(evil.hello_frame(node_key, records[i:i + 8]))
                    if ask:
                        evil.send(evil.seal("head-ask", node_key, HeadAsk(f"pace{n}")))
                except BrokenPipeError:
                    pytest.fail(f"the link closed after {n} hellos; the node's log says: {why_dropped(node)}")
                if ask:
                    answered += 1
                    got = evil.expect(lambda f, want=answered: replies(evil) >= want, 30)
                    assert got is not None, f"the node stopped answering after {n + 1} hellos"
                while time.monotonic() < t0 + n / 150:
                    evil.expect(lambda f: False, 0.005)
            assert not evil.eof, "the node dropped the link: the flood did not reach the table"
            sent = time.monotonic() - t0
            time.sleep(5)  # what it does with them after
    finally:
        stop.set()
        prober.join(35)
    peers = len(status(node)["peers"])
    cpu, rss = cpu_seconds(pid) - cpu0, rss_mb(pid) - rss0
    print(f"\n10,100 records sent in {sent:.1f} s: the table holds {peers} peers; node CPU {cpu:.1f} s, "
          f"RSS {rss:+.1f} MB; API latency max {max(latencies) * 1000:.0f} ms over {len(latencies)} probes")
    assert peers <= 300, peers
    # A frozen loop (every record's signature checked on it) made every probe slow. One probe in ~115 that
    # took 1.6 s, with the node at 2.3 s of CPU in all, was the machine (a clean-clone CI run, the other
    # test worker busy), not the node: a freeze is many slow probes, or one very long one.
    slow = sorted(latencies)[-3:]
    assert slow[0] < 0.5, f"three probes or more over 0.5 s: {[round(x, 2) for x in slow]}"
    assert max(latencies) < 5.0, max(latencies)
    assert cpu < 15.0, cpu
    assert rss < 60.0, rss
