"""The second red-team round of 2026-12-06 (hostile peers against a real node, hostile job parameters and
owners' mistakes), each attack written before its fix and failing on the code before it:

- '²' is a digit to str.isdigit() and not to int(): a peer record with such a port raised ValueError out of
  the record check, before its signature, and a hello carrying one ended its link with a traceback,
  uncounted; a json_schema pattern "a{²}" raised out of a peer's step request, which was never answered.
- a model manifest was sent for every `model-ask` of it, outside the serving budget: one peer pulled
  1,987 manifests of the default model (63 MiB) in 11.5 s and held the node's loop at 61% of a core.
- a `receipt-ask` of 64 steps was answered with 64 freshly sealed receipts every time: a paid worker
  asking again and again had a node send 26,066 receipts in 12 s, a whole core of its CPU.
- a step's seed had no bound: written out in decimal for each candidate token's noise, 4,300 digits made
  each 1,000 times dearer on the worker's model runner.
- a `testimony-ask` was answered every time: naming 256 workers the node knows, 3.4 ms and 41 KB each.
- a size of 400 digits (--max-memory, node.toml) was a float's infinity and an OverflowError."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from ledger.receipts import make_receipt
from mesh.cli.local import LocalNode
from mesh.core.dag import check_request, pattern_size
from mesh.core.policy import Reputations
from mesh.errors import ConfigError, JobError
from mesh.node import testimony
from mesh.node.journal import Journal
from mesh.node.modelshare import MANIFEST_RULE
from mesh.node.outbox import ASKED_AGAIN_S, Outbox
from mesh.node.owner import Owner, OwnerLimits
from mesh.wire.canonical import digest
from mesh.wire.envelope import ANYONE
from mesh.wire.identity import Identity
from mesh.wire.messages import (
    Hello,
    ModelAsk,
    ReceiptAck,
    ReceiptAsk,
    StepRequest,
    StepResult,
    TestimonyAsk,
    Work,
)
from mesh.wire.records import check_record, make_record, record_bytes

from .hostile import NETWORK, HostilePeer, asked_of, now_ms, rejected, serving_tiny_model

SUPERSCRIPT_TWO = "\u00b2"  # str.isdigit() says yes, int() says no
ARABIC_NINE = "\u0669"  # a decimal digit int() reads: still a count, and counted


# -- unicode digits ---------------------------------------------------------------------------------------
def signed_record_at(peer: HostilePeer, addr: str):
    """The attacker's own record, at `addr`, signed as it would sign it."""
    rec = dataclasses.replace(peer.record(), addr=addr)
    rec.sig = peer.identity.sign(record_bytes(NETWORK, rec)).hex()
    return rec


@pytest.mark.timeout(30)
def test_a_record_whose_port_is_a_superscript_digit_is_refused_not_raised():
    peer = HostilePeer("127.0.0.1:1", connect=False)
    rec = signed_record_at(peer, f"127.0.0.1:{SUPERSCRIPT_TWO}")
    assert check_record(rec, NETWORK, now_ms()) == "bad-record"
    rec = signed_record_at(peer, f"127.0.0.1:{ARABIC_NINE * 2}")  # int() reads it, logs would not
    assert check_record(rec, NETWORK, now_ms()) == "bad-record"


@pytest.mark.timeout(30)
def test_a_pattern_repeat_count_in_superscript_digits_does_not_raise_out_of_a_step_request():
    for pattern in (f"a{{{SUPERSCRIPT_TWO}}}", f"a{{1,{SUPERSCRIPT_TWO}}}", f"(a){{{SUPERSCRIPT_TWO},}}"):
        check_request("llm", {"prompt": "x", "json_schema": {"type": "string", "pattern": pattern}})
    # a count in other decimal digits is still a count: llama.cpp's converter reads it with int() too
    with pytest.raises(JobError, match="repeats too much"):
        check_request("llm", {"prompt": "x", "json_schema": {"type": "string", "pattern": f"a{{{ARABIC_NINE * 9}}}"}})
    assert pattern_size(f"a{{{ARABIC_NINE}}}") == 9


@pytest.fixture(scope="module")
def tiny_node(tmp_path_factory):
    """One node serving a tiny model (llm steps, model sharing) on its default transport, stopped after."""
    yield from serving_tiny_model(tmp_path_factory.mktemp("tiny-node"), 4)


@pytest.mark.mesh
@pytest.mark.timeout(240)
def test_unicode_digits_from_a_peer_are_refused_with_a_reason_not_a_traceback(tiny_node):
    node, sha = tiny_node
    log = node.home / "node.log"
    # a stranger's step whose schema pattern counts in '²': answered (failed, with the reason), no traceback
    asker = HostilePeer(node.listen)
    node_key = bytes.fromhex(asker.handshake()["from"])
    pattern = f"^a{{{SUPERSCRIPT_TWO}}}$"
    for i in range(3):
        asker.send(asker.seal("step", node_key, StepRequest(f"sup{i}", "s", "llm", {
            "prompt": "x", "model": sha, "json_schema": {"type": "string", "pattern": pattern}}, 30)))
    answers = {}
    while len(answers) < 3:
        got = asker.expect(lambda f: f["kind"] == "result" and f["payload"]["job"] not in answers, 30)
        assert got is not None, f"only {len(answers)} of 3 step requests were answered"
        answers[got["payload"]["job"]] = got["payload"]
    assert all(not a["ok"] and "grammar" in a["error"] for a in answers.values()), answers
    asker.close()
    # a hello whose own record names a port in '²': refused as bad-record, counted, its link closed
    before = rejected(node)
    greeter = HostilePeer(node.listen)
    greeter.send(greeter.seal("hello", ANYONE, Hello(signed_record_at(greeter, f"127.0.0.1:{SUPERSCRIPT_TWO}"), [])))
    assert greeter.closed_by_node(15), "the node kept the link of a hello it could not take"
    deadline = time.monotonic() + 15
    while rejected(node).get("bad-record", 0) <= before.get("bad-record", 0):
        assert time.monotonic() < deadline, f"the refused hello was not counted: {rejected(node)}"
        time.sleep(0.2)
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "task failed" not in text, text[-3000:]


# -- model manifests asked for again and again ----------------------------------------------------------
def manifests(peer: HostilePeer, sha: str, seconds: float) -> int:
    """How many manifests of `sha` the node sends `peer` within `seconds` (read, as a fetcher would)."""
    peer.expect(lambda f: False, seconds)
    got = sum(f["kind"] == "model-manifest" and f["payload"]["sha"] == sha for f in peer.received)
    peer.received.clear()
    return got


@pytest.mark.mesh
@pytest.mark.timeout(240)
def test_a_peer_asking_for_a_manifest_again_and_again_is_sent_a_few(tiny_node):
    """Each ask (100 bytes) was answered with the whole manifest, outside the serving budget: one peer pulled
    1,987 manifests of the default model (63 MiB) in 11.5 s and held the node's loop at 61% of a core."""
    node, sha = tiny_node
    flooder = HostilePeer(node.listen)
    node_key = bytes.fromhex(flooder.handshake()["from"])
    flooder.received.clear()
    for _ in range(60):
        flooder.send(flooder.seal("model-ask", node_key, ModelAsk(sha, -1)))
    got = manifests(flooder, sha, 4.0)
    print(f"60 manifest asks within a second: {got} manifests sent")
    assert 1 <= got <= MANIFEST_RULE[0] + 1, f"{got} manifests sent for 60 asks"
    # another peer fetching the model is not held back by the flooder's asks
    fetcher = HostilePeer(node.listen)
    fetcher.handshake()
    fetcher.send(fetcher.seal("model-ask", node_key, ModelAsk(sha, -1)))
    manifest = fetcher.expect(lambda f: f["kind"] == "model-manifest", 15)
    assert manifest is not None and len(manifest["payload"]["parts"]) == 4 and not manifest["payload"]["error"]
    flooder.close()
    fetcher.close()


# -- an owner's mistakes ----------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_a_sighup_on_a_node_toml_with_an_endless_size_changes_nothing_and_says_why(tmp_path: Path):
    """SIGHUP re-reads node.toml (Owner.reload): a ConfigError is logged and nothing changes; an OverflowError
    went past that handler into the event loop's."""
    (tmp_path / "node.toml").write_text('max_memory = "1%s"\n' % ("0" * 320))
    owner = Owner(tmp_path, {}, OwnerLimits(), None)
    with pytest.raises(ConfigError, match="max_memory"):
        owner.reload()
    assert owner.limits == OwnerLimits()


# -- a seed of thousands of digits ------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_a_step_seed_is_held_to_64_bits():
    """A seed is written out in decimal for each candidate token's noise: 4,300 digits made each 1,000 times
    dearer, on the worker's model runner, for a submitter paying by the token."""
    for kind, extra in (("llm", {}), ("score", {"claim": "a", "token_ids": [1]})):
        for seed in (10 ** 4299, 1 << 63, -(1 << 63) - 1):
            with pytest.raises(JobError, match="seed must be an integer of 64 bits"):
                check_request(kind, {"prompt": "x", "temperature": 1.0, "seed": seed, **extra})
        for seed in ((1 << 63) - 1, -(1 << 63), 0):
            check_request(kind, {"prompt": "x", "temperature": 1.0, "seed": seed, **extra})


# -- receipts asked for again and again -------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_a_worker_asking_for_its_receipts_again_and_again_is_sent_each_once_in_a_while():
    """A receipt-ask names up to 64 steps of one job, and each was answered with a freshly sealed receipt
    envelope: a worker paid for 64 steps of one job, asking 200 times a second (its link's rate), had the
    node seal 12,800 receipts a second (0.74 s of CPU, before the transport's own work)."""
    payer, worker, other = Identity.generate(), Identity.generate(), Identity.generate()
    outbox = Outbox(Journal(None))
    steps = [f"s{i}" for i in range(64)]
    outbox.hold("batch", [(worker.node_id, make_receipt(payer, "job", s, worker.node_id, 0.5, now_ms())) for s in steps])
    outbox.settle("batch", True)
    assert len(outbox.asked(worker.node_id, "job", steps, now=100.0)) == 64  # lost, asked for: sent again
    assert outbox.asked(worker.node_id, "job", steps, now=101.0) == []  # and not on every ask after
    assert outbox.asked(worker.node_id, "job", steps + steps, now=110.0) == []
    assert outbox.asked(other.node_id, "job", steps, now=110.0) == []  # (only ever the asker's own)
    assert len(outbox.asked(worker.node_id, "job", steps, now=100.0 + ASKED_AGAIN_S)) == 64


@pytest.mark.mesh
@pytest.mark.timeout(240)
def test_a_paid_worker_flooding_receipt_asks_gets_each_receipt_once(tmp_path: Path):
    """Against a real submitter: the attacker is the only python worker, answers a job's 64 steps, is paid,
    acknowledges every receipt, then asks for all 64 again, 20 times: it got 1,280 receipts back."""
    node = LocalNode(tmp_path / "payer", ["--no-model", "--no-scrape"])
    node.start([])
    try:
        node.wait_started(120)
        worker = HostilePeer(node.listen)
        rec = make_record(worker.identity, NETWORK, worker.advertise, ["python"], [], True, now_ms())
        worker.send(worker.seal("hello", ANYONE, Hello(rec, [])))
        hello = worker.expect(lambda f: f["kind"] == "hello", 15)
        assert hello is not None, "the payer did not answer the worker's hello"
        node_key = bytes.fromhex(hello["from"])
        steps = [{"id": f"s{i}", "kind": "python", "params": {"code": f"output = {i}"}} for i in range(64)]
        job_id = node.client.request("POST", "/jobs", {"job": {"name": "fan", "steps": steps}, "redundancy": 1})["job_id"]
        answered: set[str] = set()
        deadline = time.monotonic() + 90
        while len(answered) < 64:
            assert time.monotonic() < deadline, f"only {len(answered)} of 64 steps were asked of the worker"
            ask = worker.expect(lambda f: f["kind"] == "step" and f["payload"]["step"] not in answered, 5)
            if ask is None:
                continue
            p = ask["payload"]
            output = int(p["params"]["code"].split("= ")[1])
            worker.send(worker.seal("result", node_key, StepResult(
                p["job"], p["step"], True, output, digest(output), "python:bwrap", Work(cpu_s=0.01, seconds=0.05),
                asked=asked_of(ask))))
            answered.add(p["step"])

        def receipts() -> set[str]:
            return {f["payload"]["receipt"]["step"] for f in worker.received
                    if f["kind"] == "receipt" and f["payload"]["receipt"]["job"] == job_id}
        deadline = time.monotonic() + 60
        while len(receipts()) < 64:
            assert time.monotonic() < deadline, f"{len(receipts())} of 64 receipts came"
            worker.expect(lambda f: False, 0.5)
        ids = sorted(answered)
        worker.send(worker.seal("receipt-ack", node_key, ReceiptAck(job_id, ids)))
        worker.expect(lambda f: False, 3.0)  # (the payer stops resending)
        worker.received.clear()
        for _ in range(20):
            worker.send(worker.seal("receipt-ask", node_key, ReceiptAsk(job_id, ids)))
        worker.expect(lambda f: False, 6.0)
        again = sum(f["kind"] == "receipt" for f in worker.received)
        print(f"20 receipt-asks of 64 steps each: {again} receipts sent again")
        assert 64 <= again <= 2 * 64, f"{again} receipts sent again for 20 asks of 64"
        worker.close()
    finally:
        node.stop()


# -- testimony asked for again and again ------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_testimony_asks_of_one_peer_are_answered_a_few_a_second():
    """An ask naming 256 workers this node knows cost it 3.4 ms and a 41 KB answer, every time."""
    counted: list[str] = []
    book = testimony.Testimonies("me" * 32, Reputations(), counted.append)
    ask = TestimonyAsk(["ab" * 32])
    answers = [book.answer("asker", ask, now_ms(), now=10.0) for _ in range(20)]
    assert sum(a is not None for a in answers) == testimony.ANSWER_RULE[0]
    assert counted == ["testimony-rate"] * (20 - int(testimony.ANSWER_RULE[0]))
    assert book.answer("another", ask, now_ms(), now=10.0) is not None  # (each asker its own)
    assert book.answer("asker", ask, now_ms(), now=11.0) is not None  # a round a second is still answered


@pytest.mark.mesh
@pytest.mark.timeout(240)
def test_a_peer_flooding_testimony_asks_is_answered_a_few(tiny_node):
    node, _ = tiny_node
    asker = HostilePeer(node.listen)
    node_key = bytes.fromhex(asker.handshake()["from"])
    asker.received.clear()
    for _ in range(40):
        asker.send(asker.seal("testimony-ask", node_key, TestimonyAsk([asker.node_id])))
    asker.expect(lambda f: False, 3.0)
    told = sum(f["kind"] == "testimony" for f in asker.received)
    print(f"40 testimony-asks within a second: {told} answers")
    assert 1 <= told <= testimony.ANSWER_RULE[0] + 4, f"{told} answers to 40 asks"
    asker.close()
