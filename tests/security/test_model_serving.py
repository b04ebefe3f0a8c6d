"""A peer that asks a model-serving node for parts and never reads them (found by this project's attack
round on model sharing). Each part the node sent went into the link's unbounded outgoing queue, at the
node's whole serving rate: 143 → 997 MiB in 25 s on a real node, kept after the attacker left. Now the
node sends a peer no part while it has more than SERVE_BACKLOG bytes of its own unread, and drops any
link left MAX_BACKLOG bytes behind."""

from __future__ import annotations

import time

import psutil
import pytest
import trio

from mesh.cli.local import LocalNode
from mesh.node.p2p.client import BlockingLink
from mesh.steps.models import default_model_sha
from mesh.wire.messages import ModelAsk

from .hostile import HostilePeer, status

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(240)]


class UnreadLink(BlockingLink):
    """The attacker's link: reads the node's hello, then stops reading (`paused`), so what the node sends
    stays on the node's side."""

    paused = False

    async def _reader(self) -> None:
        while self.paused is False or self.paused is None:
            data = await self.conn._read(65536)
            self._inbox.put(data)
            if not data or self.paused:
                break
        while True:
            await trio.sleep(3600)


def test_a_peer_asking_for_model_parts_and_reading_none_does_not_grow_the_node(tmp_path):
    sha = default_model_sha()
    assert sha, "the default model package is installed by make setup"
    node = LocalNode(tmp_path / "server", ["--threads", "1"])
    node.start([])
    try:
        node.wait_started(120)
        deadline = time.monotonic() + 120
        while sha not in str(status(node)):  # its model loaded and served
            assert time.monotonic() < deadline, "the node never served its model"
            time.sleep(0.5)
        attacker = HostilePeer(node.listen, connect=False)
        attacker.sock = UnreadLink(node.listen, attacker.identity, 5.0)
        node_key = bytes.fromhex(attacker.handshake()["from"])
        attacker.send(attacker.seal("model-ask", node_key, ModelAsk(sha, -1)))
        manifest = attacker.expect(lambda f: f["kind"] == "model-manifest", 60)
        assert manifest is not None and not manifest["payload"]["error"]
        parts = len(manifest["payload"]["parts"])
        attacker.sock.paused = True  # from here on, nothing the node sends is read
        proc = psutil.Process(node.proc.pid)
        before = proc.memory_info().rss
        asked, peak, t0 = 0, before, time.monotonic()
        while time.monotonic() - t0 < 15:  # at the serving rate of 32 MiB/s: ~480 MiB had piled up before
            try:
                for _ in range(8):
                    attacker.send(attacker.seal("model-ask", node_key, ModelAsk(sha, asked % parts)))
                    asked += 1
            except BrokenPipeError:
                break  # the node dropped the link: also a bound
            time.sleep(0.1)
            peak = max(peak, proc.memory_info().rss)
        grew = (peak - before) / 2**20
        print(f"node RSS grew {grew:.1f} MiB in {time.monotonic() - t0:.1f} s, {asked} part asks unread")
        assert grew < 120, f"the node grew {grew:.0f} MiB while a peer read none of {asked} parts it asked for"
        # and it still serves others
        honest = HostilePeer(node.listen)
        honest.handshake()
        honest.send(honest.seal("model-ask", node_key, ModelAsk(sha, 0)))
        assert honest.expect(lambda f: f["kind"] == "model-part", 30) is not None
        honest.close()
        attacker.close()
    finally:
        node.stop()
