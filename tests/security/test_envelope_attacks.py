"""A hostile peer on a real node's peer port sends envelopes that must be refused: each refusal is counted
under its reason in `status['rejected']` and logged (naming the attacker's connection), nothing it sent
reaches the ledger (beyond penalties against its own key), the ledger verifies, and the mesh keeps
serving. All attacks share one 4-node mesh: node0 submits, nodes 1-3 work."""

from __future__ import annotations

import pickle
import random
import time
from pathlib import Path

import pytest

from ledger.receipts import make_receipt
from mesh.wire.canonical import digest
from mesh.wire.envelope import ANYONE
from mesh.wire.identity import Identity
from mesh.wire.messages import Bye, Hello, PeerRecord, ReceiptMsg, StepRequest, StepResult
from mesh.wire.records import make_record

from ..conftest import wait_for
from .hostile import (
    HEADER,
    NETWORK,
    HostilePeer,
    assert_ledger_clean,
    assert_serves,
    frame,
    honest_ids,
    ledger_count,
    ledger_rows,
    log_lines,
    now_ms,
    peer_ids,
    penalties,
    rejected,
    status,
    submit,
    tamper_signature,
    wait_job,
    wait_rejection,
)

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(60)]

STEP = StepRequest("job0", "s", "python", {"code": "output = 1"}, 10.0)


def key_of(node) -> bytes:
    return bytes.fromhex(status(node)["key"])


def after(mesh, node, *attackers, entries: int | None = None) -> None:
    """The attacked node's ledger holds nothing from the attackers but penalties and verifies (and, given
    `entries`, still holds exactly that many: the attack wrote nothing at all); every node still serves
    (a job at r=3 from node0 needs all three workers)."""
    if entries is not None:
        assert ledger_count(node.home) == entries, "the attack wrote to the ledger"
    assert_ledger_clean(node, honest_ids(mesh), list(attackers))
    assert_serves(mesh)


def test_bad_signature(mesh4):
    node = mesh4.nodes[1]
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.send(tamper_signature(evil.hello_frame()))
        wait_rejection(node, "bad-signature", before, evil.label)
        assert evil.node_id not in peer_ids(node), "a hello with a broken signature introduced its sender"
    # a known peer's forged step: refused before anything runs
    before = rejected(node)
    with HostilePeer(node.listen) as evil2:
        evil2.handshake(key_of(node))
        evil2.send(tamper_signature(evil2.seal("step", key_of(node), STEP)))
        wait_rejection(node, "bad-signature", before, evil2.label)
        assert evil2.expect(lambda f: f["kind"] == "result", 1.0) is None, "a forged step was run"
    after(mesh4, node, evil, evil2, entries=entries)


def test_replayed_envelope(mesh4):
    node = mesh4.nodes[1]
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.handshake(key_of(node))
        hello = evil.sent[0]
        result = evil.send(evil.seal("result", key_of(node), StepResult("nojob", "s", True, 1, digest(1), "x", {})))
        # accepted as an envelope, then refused by the submitter
        wait_rejection(node, "unexpected-result", before, evil.node_id[:12])
        evil.send_raw(hello)  # the same bytes again, on the same connection
        wait_rejection(node, "replay", before, evil.label)
        evil.send_raw(result)
        wait_rejection(node, "replay", before, evil.label, at_least=2)
        assert rejected(node).get("unexpected-result", 0) == before.get("unexpected-result", 0) + 1
    # and on a new connection: the node remembers the sender's sequence numbers, not the connection's
    before = rejected(node)
    with HostilePeer(node.listen, identity=evil.identity) as again:
        again.send_raw(hello)
        wait_rejection(node, "replay", before, again.label)
        assert again.expect(lambda f: f["kind"] == "hello", 0.5) is None, "a replayed hello was answered"
    after(mesh4, node, evil, entries=entries)


@pytest.mark.parametrize("reason,offset_ms", [("stale", -200_000), ("future", +200_000)])
def test_timestamp_outside_the_window(mesh4, reason, offset_ms):
    node = mesh4.nodes[2]
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        ts = now_ms() + offset_ms
        evil.send(evil.seal("hello", ANYONE, Hello(evil.record(ts=now_ms())), ts=ts))
        wait_rejection(node, reason, before, evil.label)
        assert evil.node_id not in peer_ids(node)
    after(mesh4, node, evil, entries=entries)


def test_wrong_recipient(mesh4):
    node, other = mesh4.nodes[1], mesh4.nodes[2]
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.send(evil.hello_frame(recipient=key_of(other)))  # meant for node2, delivered to node1
        evil.send(evil.seal("step", key_of(other), STEP))
        wait_rejection(node, "wrong-recipient", before, evil.label, at_least=2)
        assert evil.node_id not in peer_ids(node)
    after(mesh4, node, evil, entries=entries)


def test_wrong_network(mesh4):
    node = mesh4.nodes[1]
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen, network="evil-net") as evil:
        evil.send(evil.hello_frame())  # correctly signed, for another network
        wait_rejection(node, "wrong-network", before, evil.label)
        assert evil.node_id not in peer_ids(node)
    after(mesh4, node, evil, entries=entries)


def test_frame_over_the_cap_drops_the_connection(mesh4):
    node = mesh4.nodes[1]
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.send_raw(HEADER.pack(64 << 20) + b"{" * 1000)  # declares 64 MiB
        assert evil.closed_by_node(5), "the node kept a connection that declared a frame over its cap"
        wait_rejection(node, "frame-too-large", before, evil.label)
    after(mesh4, node, evil, entries=entries)


def test_truncated_frame(mesh4):
    node = mesh4.nodes[1]
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        body = evil.hello_frame()[HEADER.size:]
        evil.send_raw(HEADER.pack(len(body)) + body[: len(body) // 2])
        evil.sock.shutdown(1)  # EOF mid-frame
        assert evil.closed_by_node(5)
        wait_rejection(node, "truncated-frame", before, evil.label)
        assert evil.node_id not in peer_ids(node)
    after(mesh4, node, evil, entries=entries)


def test_random_bytes(mesh4):
    node = mesh4.nodes[3]
    rng = random.Random(1234)
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        for _ in range(5):
            evil.send_raw(frame(rng.randbytes(rng.randrange(1, 2000))))
        evil.send_raw(frame(b"[1, 2, 3]"))  # JSON, but not an envelope
        evil.send_raw(frame(b""))
        wait_for(lambda: sum(rejected(node).get(r, 0) - before.get(r, 0) for r in ("bad-json", "bad-envelope")) >= 7,
                 10, "7 garbage frames counted")
        assert log_lines(node, "bad-json", evil.label) and log_lines(node, "bad-envelope", evil.label)
    after(mesh4, node, evil, entries=entries)


def test_valid_json_wrong_schema(mesh4):
    node = mesh4.nodes[1]
    me = key_of(node)
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.handshake(me)
        step = {"job": "j", "step": "s", "kind": "python", "params": {"code": "output = 1"}}  # no timeout
        evil.send(evil.seal_raw("step", me, step))
        evil.send(evil.seal_raw("step", me, {**step, "timeout": "soon"}))  # wrong type
        evil.send(evil.seal_raw("step", me, {**step, "timeout": 1.0, "run_as": "root"}))  # unknown field
        evil.send(evil.seal_raw("hello", me, {"record": "me", "peers": []}))
        wait_rejection(node, "bad-schema", before, evil.label, at_least=4)
        assert evil.expect(lambda f: f["kind"] == "result", 1.0) is None, "a malformed step was run"
    after(mesh4, node, evil, entries=entries)


def test_unknown_kind(mesh4):
    node = mesh4.nodes[1]
    me = key_of(node)
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.handshake(me)
        evil.send(evil.seal_raw("exec", me, {"cmd": "touch /tmp/x"}))
        evil.send(evil.seal_raw("__class__", me, {}))
        wait_rejection(node, "unknown-kind", before, evil.label, at_least=2)
    after(mesh4, node, evil, entries=entries)


class _Touch:
    """Unpickling this creates `path`: proof that something called pickle.loads on it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').close()",))


def test_pickle_payload_is_never_unpickled(mesh4, tmp_path):
    node = mesh4.nodes[1]
    probe, marker = tmp_path / "probe", tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Touch(probe)))
    assert probe.exists(), "the payload is live: unpickling it does create its file"
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
            evil.send_raw(frame(pickle.dumps(_Touch(marker), protocol=protocol)))
        wait_rejection(node, "bad-json", before, evil.label, at_least=3)
    assert not marker.exists(), "the node unpickled a peer's frame"
    after(mesh4, node, evil, entries=entries)
    assert not marker.exists()


def test_result_for_a_step_never_given(mesh4):
    submitter = mesh4.nodes[0]
    me = key_of(submitter)
    before = rejected(submitter)
    with HostilePeer(submitter.listen) as evil:
        evil.handshake(me)
        evil.send(evil.seal("result", me, StepResult("no-such-job", "s", True, 42, digest(42), "x", {"cpu_s": 1e6})))
        wait_rejection(submitter, "unexpected-result", before, evil.node_id[:12])

        # a real job is running: a result for its real step from a node that was not asked is refused too
        slow = {"name": "nap", "steps": [{"id": "nap", "kind": "python",
                                           "params": {"code": "import time\ntime.sleep(2)\noutput = 'rested'"}}]}
        job_id = submit(submitter, slow, 3)
        wait_for(lambda: len(submitter.client.request("GET", f"/jobs/{job_id}")["steps"]["nap"]["replicas"]) == 3,
                 10, "3 replicas dispatched")
        before = rejected(submitter)
        evil.send(evil.seal("result", me, StepResult(job_id, "nap", True, "pwned", digest("pwned"), "x", {})))
        wait_rejection(submitter, "unexpected-result", before, evil.node_id[:12])
        rep = wait_job(submitter, job_id)
    assert rep["status"] == "done" and rep["steps"]["nap"]["output"] == "rested", rep
    assert evil.node_id not in {r["node"] for r in rep["steps"]["nap"]["replicas"]}
    after(mesh4, submitter, evil)


def test_forged_peer_records_in_gossip(mesh4):
    node, victim = mesh4.nodes[1], mesh4.nodes[2]
    me = key_of(node)
    with HostilePeer(node.listen) as evil:
        reply = evil.handshake(me)
        # 1. a record for another key, "signed" by me: its signature does not verify for that key
        other = Identity.generate()
        forged = make_record(evil.identity, NETWORK, "127.0.0.1:9", ["python"], [], True, now_ms())
        forged.key, forged.work = other.public_key.hex(), other.work  # its work done: only the signature fails
        # 2. an honest node's real record (from the node's own gossip) moved to my address
        real = next(r for r in reply["payload"]["peers"] if r["key"] == key_of(victim).hex())
        moved = PeerRecord(**{**real, "addr": evil.advertise, "issued": real["issued"] + 1})
        entries, before = ledger_count(node.home), rejected(node)
        evil.send(evil.seal("hello", me, Hello(evil.record(), [forged, moved])))
        wait_rejection(node, "bad-record", before, evil.label, at_least=2)
        # 3. a hello whose own record is someone else's
        before = rejected(node)
        evil.send(evil.seal("hello", me, Hello(make_record(other, NETWORK, evil.advertise, [], [], False, now_ms()))))
        wait_rejection(node, "bad-record", before, evil.label)
    st = status(node)
    assert other.node_id not in {p["node"] for p in st["peers"]}
    assert next(p for p in st["peers"] if p["node"] == victim.node_id)["address"] == victim.listen
    after(mesh4, node, evil, entries=entries)


def test_envelopes_before_hello_are_unknown_peer(mesh4):
    node = mesh4.nodes[3]
    me = key_of(node)
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.send(evil.seal("step", me, STEP))
        evil.send(evil.seal("bye", me, Bye("x")))
        wait_rejection(node, "unknown-peer", before, evil.label, at_least=2)
        assert evil.expect(lambda f: f["kind"] == "result", 1.0) is None, "a stranger's step was run"
    after(mesh4, node, evil, entries=entries)


def test_second_identity_on_one_connection(mesh4):
    node = mesh4.nodes[1]
    me = key_of(node)
    before = rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.handshake(me)
        sybil = HostilePeer(node.listen, connect=False)  # a second key writing into the same link
        evil.send_raw(sybil.hello_frame())
        assert evil.closed_by_node(5)
        # the link's Noise handshake proved evil's key: an envelope signed by any other key is refused
        wait_rejection(node, "sender-not-peer", before, evil.label)
    assert sybil.identity.node_id not in peer_ids(node)
    wait_for(lambda: penalties(node.home).get(evil.node_id, 0) >= 1, 10, "a penalty for the first key")
    after(mesh4, node, evil, sybil.identity)


def test_unsolicited_receipt_earns_nothing(mesh4):
    """A peer 'pays' a worker for steps it never ran: the worker must not book it (else any peer could
    write rows of its choosing into any ledger, megabytes at a time)."""
    node = mesh4.nodes[2]
    me = key_of(node)
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.handshake(me)
        for i in range(3):
            r = make_receipt(evil.identity, f"never-{i}", "x" * 1000, node.node_id, 1e6, now_ms())
            evil.send(evil.seal("receipt", me, ReceiptMsg(r)))
        wait_rejection(node, "bad-receipt", before, evil.node_id[:12], at_least=3)
    assert not [r for r in ledger_rows(node.home) if r["kind"] == "earned" and r["peer"] == evil.node_id]
    after(mesh4, node, evil, entries=entries)  # and the submitter's genuine receipts are still booked


def test_many_invalid_envelopes_drop_the_peer_and_cost_it_reputation(mesh4):
    node = mesh4.nodes[1]
    me = key_of(node)
    before = rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.handshake(me)
        for _ in range(19):
            evil.send(tamper_signature(evil.seal("step", me, STEP)))
        wait_rejection(node, "bad-signature", before, evil.label, at_least=19)
        assert not evil.closed_by_node(0.3), "dropped before the limit"
        evil.send(tamper_signature(evil.seal("step", me, STEP)))  # the 20th
        assert evil.closed_by_node(5), "a peer past max_rejections kept its connection"
        wait_rejection(node, "too-many-rejections", before, evil.label)
    wait_for(lambda: penalties(node.home).get(evil.node_id, 0) >= 1, 10, "a penalty entry for the abuser")
    assert log_lines(node, "too-many-rejections", f"peer {evil.node_id[:12]} penalised")
    rep = wait_for(lambda: next((p["reputation"] for p in status(node)["peers"] if p["node"] == evil.node_id), None),
                   10, "the abuser in the peer list")
    assert rep < 0.5, "a penalised peer still has the neutral reputation"
    after(mesh4, node, evil)


def test_log_lines_name_the_reason_not_the_payload(mesh4):
    """What an attacker sends is not echoed into the operator's log wholesale (no log injection)."""
    node = mesh4.nodes[3]
    entries, before = ledger_count(node.home), rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.send(evil.seal_raw("exec\nFAKE WARNING mesh.node.lifecycle all good" + "A" * 5000, ANYONE, {}))
        wait_rejection(node, "unknown-kind", before, evil.label)
    lines = (node.home / "node.log").read_text().splitlines()
    assert not [ln for ln in lines if ln.startswith("FAKE")], "a peer forged a line of the node's log"
    assert not [ln for ln in lines if "A" * 100 in ln], "a peer's bytes were copied into the log wholesale"
    after(mesh4, node, evil, entries=entries)


def test_a_key_breaking_the_rules_again_and_again_is_booked_one_penalty_a_minute(mesh4):
    """Found by this project's attack round on workers: every link dropped for abuse booked a penalty row
    in the append-only ledger, and one key reconnecting to break the rules again wrote 41 rows in 32 s.
    A peer is booked one penalty a minute now; its links are dropped all the same."""
    node = mesh4.nodes[3]
    me = key_of(node)
    before = rejected(node)
    evil = HostilePeer(node.listen, connect=False)  # one key, five links
    for _ in range(5):
        with HostilePeer(node.listen, identity=evil.identity) as link:
            link.handshake(me)
            link.send_raw(HostilePeer(node.listen, connect=False).hello_frame())  # another key's frame
            assert link.closed_by_node(5)
    wait_rejection(node, "sender-not-peer", before, at_least=5)
    wait_for(lambda: penalties(node.home).get(evil.node_id, 0) >= 1, 10, "a penalty for the key")
    deadline = time.monotonic() + 3.0  # (the five were booked within a second before)
    while time.monotonic() < deadline:
        assert penalties(node.home).get(evil.node_id) == 1, penalties(node.home)
        time.sleep(0.2)


def test_hellos_to_anyone_on_one_link_are_answered_once(mesh4):
    """Found by this project's red team (2026-12-06): every hello addressed to anyone was answered with the
    node's whole signed hello (its record and 8 peers') and logged ("peer … up at"), on a link already
    answered: one key wrote 1,926 log lines at 50 hellos a second, turning the log's rotation over in about
    an hour. A link's first hello is answered; the rest of that link's hellos are taken, not answered."""
    node = mesh4.nodes[2]
    with HostilePeer(node.listen) as evil:
        evil.handshake()
        for _ in range(30):
            evil.send(evil.hello_frame(ANYONE))
            time.sleep(0.02)
        evil.expect(lambda f: False, 2.0)  # read what the node sends for 2 s
        answers = [f for f in evil.received if f["kind"] == "hello" and f["to"] == evil.key.hex()]
        # the first answered, and the node's own heartbeat hellos (one every few seconds): 32 on the old code
        assert len(answers) <= 3, [f["ts"] for f in answers]
        assert not evil.closed_by_node(0.2)  # a peer's hello is no fault
    ups = [ln for ln in (node.home / "node.log").read_text().splitlines()
           if f"peer {evil.node_id[:12]} up at" in ln]
    assert len(ups) == 1, ups
