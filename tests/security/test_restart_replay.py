"""Replays across a restart of the receiving node: envelopes stamped before the node started are refused
by the floor, and those stamped ahead of its clock by the replay marks it keeps on disk. The real-node
tests are marked mesh; the replay store's own (its file across restarts, kills and damage) are fast."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from mesh.node import replaystore
from mesh.node.replaystore import ReplayStore
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

WINDOW = 120_000
NOW = 1_800_000_000_000
ALICE, BOB = b"\xaa" * 32, b"\xbb" * 32


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


@pytest.mark.mesh
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


@pytest.mark.mesh
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


# -- the replay store on its own ---------------------------------------------------------------------------

def restarted(path: Path, now: int = NOW) -> dict[bytes, int]:
    return ReplayStore(path, WINDOW).load(now)


def test_marks_survive_a_kill_without_close_or_fsync(tmp_path):
    """Once remember() returns, the mark is in the kernel: a node killed -9 right after (no close, no
    fsync yet, no event loop turn) still has it when it starts again."""
    store = ReplayStore(tmp_path / "replay.json", WINDOW)
    store.load(NOW)
    store.remember(ALICE, 7, NOW + 60_000, NOW)
    store.remember(BOB, 3, NOW + 30_000, NOW)
    store.remember(ALICE, 9, NOW + 60_001, NOW)
    assert restarted(tmp_path / "replay.json") == {ALICE: 9, BOB: 3}  # read by another store, as after a restart


def test_remember_is_an_append_and_fsync_comes_later_off_the_loop(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(replaystore.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "replay.json"
    store = ReplayStore(path, WINDOW, sync_s=0.05)

    async def run() -> tuple[int, int]:
        store.load(NOW)
        start = len(synced)
        size = path.stat().st_size
        for seq in range(1, 101):
            store.remember(ALICE, seq, NOW + 1000 + seq, NOW)
        assert len(synced) == start  # no fsync on the loop per envelope
        assert path.stat().st_size > size  # but every mark is already written
        await asyncio.sleep(0.3)
        return start, len(synced)

    start, after = asyncio.run(run())
    assert after == start + 1  # one fsync for the hundred marks
    store.close()
    assert restarted(path) == {ALICE: 100}


def test_close_fsyncs_what_is_pending(tmp_path, monkeypatch):
    store = ReplayStore(tmp_path / "replay.json", WINDOW, sync_s=60)
    store.load(NOW)

    async def remember() -> None:
        store.remember(ALICE, 1, NOW + 1, NOW)

    asyncio.run(remember())  # its fsync is scheduled a minute out, on a loop that is gone
    synced: list[int] = []
    monkeypatch.setattr(replaystore.os, "fsync", lambda fd: synced.append(fd))
    store.close()
    assert synced  # fsynced at close


def test_compaction_keeps_the_live_marks_and_drops_stale_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(replaystore, "COMPACT_MIN_LINES", 10)
    path = tmp_path / "replay.json"
    store = ReplayStore(path, WINDOW)
    store.load(NOW)
    store.remember(BOB, 5, NOW - WINDOW + 10, NOW)  # about to leave the window
    for seq in range(1, 30):
        store.remember(ALICE, seq, NOW + seq, NOW + 20)
    lines = path.read_text().splitlines()
    assert len(lines) < 10 and json.loads(lines[0]).keys() == {ALICE.hex()}  # BOB's mark was compacted away
    assert not (tmp_path / "replay.json.tmp").exists()
    store.close()
    assert restarted(path) == {ALICE: 29}


def test_old_marks_are_forgotten_at_load_and_the_file_starts_small(tmp_path):
    path = tmp_path / "replay.json"
    store = ReplayStore(path, WINDOW)
    store.load(NOW)
    store.remember(ALICE, 1, NOW + 1, NOW)
    store.remember(BOB, 2, NOW + 2, NOW)
    store.close()
    later = ReplayStore(path, WINDOW)
    assert later.load(NOW + 2 + WINDOW) == {BOB: 2}  # ALICE's mark is out of the window: stale anyway
    later.close()
    assert len(path.read_text().splitlines()) == 1


def test_the_single_object_file_of_older_nodes_is_read(tmp_path):
    path = tmp_path / "replay.json"
    path.write_text(json.dumps({ALICE.hex(): [4, NOW + 5], BOB.hex(): [6, NOW + 6]}))
    assert restarted(path) == {ALICE: 4, BOB: 6}


def test_a_torn_or_damaged_file_costs_only_its_bad_lines(tmp_path):
    path = tmp_path / "replay.json"
    good = json.dumps({ALICE.hex(): [4, NOW + 5]})
    path.write_bytes(good.encode() + b"\n\xff\xfe not json\n" + b'{"' + BOB.hex().encode() + b'": [6, ')  # killed mid-line
    assert restarted(path) == {ALICE: 4}
    path.write_text('{"short": [1, 2]}\n[1, 2]\n{"' + ALICE.hex() + '": [true, 5]}\n')
    assert restarted(path) == {}


def test_a_lower_sequence_never_replaces_a_higher_one(tmp_path):
    path = tmp_path / "replay.json"
    path.write_text(json.dumps({ALICE.hex(): [9, NOW + 5]}) + "\n" + json.dumps({ALICE.hex(): [3, NOW + 6]}) + "\n")
    assert restarted(path) == {ALICE: 9}


def test_files_are_private(tmp_path):
    store = ReplayStore(tmp_path / "replay.json", WINDOW)
    store.load(NOW)
    store.remember(ALICE, 1, NOW + 1, NOW)
    store.close()
    assert (tmp_path / "replay.json").stat().st_mode & 0o077 == 0
