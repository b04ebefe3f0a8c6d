"""Replays across a restart of the receiving node: envelopes stamped before the node started are refused
by the floor, and those stamped ahead of its clock by the replay marks it keeps on disk."""

from __future__ import annotations

import pytest

from mesh.wire.messages import StepRequest

from ..conftest import wait_for
from .hostile import (
    HostilePeer,
    assert_ledger_clean,
    assert_serves,
    honest_ids,
    now_ms,
    rejected,
    status,
    wait_rejection,
)

pytestmark = pytest.mark.mesh


def restart(mesh, node) -> None:
    """Stop `node` and start it again on the same home (same key, same ledger, a new port)."""
    node.stop()
    node.start(bootstrap=[mesh.nodes[0].listen])
    node.wait_started(60)
    node.info = None  # its node.json is new: read the new ports
    wait_for(lambda: any(p["node"] == mesh.nodes[0].node_id and p["state"] == "up" and p["connected"]
                         for p in status(node)["peers"]), 30, "the restarted node to rejoin")


def replayed(node, peer: HostilePeer, frames: list[bytes], before: dict) -> str:
    """Send captured frames again; 'replay' when the node refused them all as replays, 'accepted' as soon
    as it answers one as if it were new."""
    for f in frames:
        peer.send_raw(f)
    return wait_for(lambda: ("replay" if rejected(node).get("replay", 0) >= before.get("replay", 0) + len(frames)
                             else "accepted" if peer.expect(lambda f: f["kind"] in ("hello", "result"), 0.2)
                             else None), 15, "the replays to be refused or answered")


@pytest.mark.timeout(90)
def test_replay_after_the_receiver_restarts(make_mesh):
    mesh = make_mesh(2, lambda i: ["--no-model"])
    node = mesh.nodes[1]
    key = bytes.fromhex(status(node)["key"])
    with HostilePeer(node.listen) as evil:
        evil.handshake(key)
        step = evil.send(evil.seal("step", key, StepRequest("j1", "s", "python", {"code": "output = 7"}, 10.0)))
        res = evil.expect(lambda f: f["kind"] == "result", 20)
        assert res and res["payload"]["ok"] and res["payload"]["output"] == 7, res  # it was genuinely accepted
    captured = [evil.sent[0], step]  # the hello and the step, as a wiretap would have them

    restart(mesh, node)
    before = rejected(node)
    with HostilePeer(node.listen, identity=evil.identity) as again:
        assert replayed(node, again, captured, before) == "replay", "a captured envelope was accepted after a restart"
        wait_rejection(node, "replay", before, again.label, at_least=2)
        assert log_mentions_floor(node, again.label)
    assert_ledger_clean(node, honest_ids(mesh), [evil])
    assert_serves(mesh)


def log_mentions_floor(node, label: str) -> bool:
    text = (node.home / "node.log").read_text()
    return any(label in ln and "replay" in ln and "before this node started" in ln for ln in text.splitlines())


@pytest.mark.timeout(90)
def test_future_stamped_envelope_replayed_after_restart(make_mesh):
    """A sender whose clock runs 60 s fast (within the ±120 s window): its envelopes captured just before
    the receiver restarts are stamped after the restart, so the floor does not catch them; the sequence
    numbers of such envelopes are kept on disk (mesh/node/replaystore.py) and catch them instead."""
    mesh = make_mesh(2, lambda i: ["--no-model"])
    node = mesh.nodes[1]
    key = bytes.fromhex(status(node)["key"])
    fast = now_ms() + 60_000
    with HostilePeer(node.listen) as sender:
        sender.send(sender.hello_frame(ts=fast))
        assert sender.expect(lambda f: f["kind"] == "hello", 10), "the fast-clock hello was not accepted"
        step = sender.send(sender.seal("step", key, StepRequest("j1", "s", "python", {"code": "output = 7"}, 10.0),
                                       ts=fast + 1))
        assert sender.expect(lambda f: f["kind"] == "result", 20)
    captured = [sender.sent[0], step]

    restart(mesh, node)
    before = rejected(node)
    with HostilePeer(node.listen, identity=sender.identity) as wiretap:
        assert replayed(node, wiretap, captured, before) == "replay", "a captured envelope was accepted after a restart"
