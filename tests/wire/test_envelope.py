"""Signed envelopes and frames, driven entirely in memory (h11 style): an honest sender (`Sealer`), one
receiving node (`Receiver`) and an attacker that holds its own perfectly valid key. No sockets, no clock:
every call gets an explicit `now_ms`."""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
import struct
import sys
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh import PROTOCOL_VERSION
from mesh.errors import Rejected
from mesh.wire.canonical import canonical
from mesh.wire.envelope import (
    ANYONE,
    DEFAULT_FRAME_CAP,
    DEFAULT_WINDOW_MS,
    REORDER_KEEP,
    Envelope,
    FrameDecoder,
    Receiver,
    Sealer,
    WrongSender,
    signed_bytes,
)
from mesh.wire.identity import Identity, verify
from mesh.wire.messages import (
    KINDS,
    MODEL_PART,
    Bye,
    Cancel,
    HeadAsk,
    HeadHeld,
    Hello,
    LedgerHead,
    ModelAsk,
    ModelManifest,
    ModelPart,
    Outvoted,
    PeerRecord,
    Progress,
    ReceiptAck,
    ReceiptAsk,
    ReceiptMsg,
    SignedAnswer,
    StepRequest,
    StepResult,
    TestimonyAsk,
    TestimonyItem,
    TestimonyTell,
    Work,
)
from mesh.wire.records import make_record
from mesh.wire.schema import parse

pytestmark = pytest.mark.timeout(60)

NET = "homemesh-test"
T0 = 1_700_000_000_000  # ms


# -- helpers ----------------------------------------------------------------------------------------------

def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


ALICE, BOB, MALLORY, CAROL = ident(1), ident(2), ident(3), ident(4)


def hello() -> Hello:
    return Hello(record=make_record(ALICE, NET, "127.0.0.1:7001", ["python", "llm"], ["a" * 64], True, T0),
                 peers=[make_record(CAROL, NET, "127.0.0.1:7004", ["python"], [], True, T0)])


def step_req() -> StepRequest:
    return StepRequest(job="job1", step="a", kind="python", params={"code": "output = 1", "inputs": {}},
                       timeout=30.0)


def one_body(frame: bytes) -> bytes:
    dec = FrameDecoder()
    (body,) = dec.feed(frame)
    assert dec.pending == 0
    return body


def frame_of(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def edit(frame_or_body: bytes, **changes) -> bytes:
    """Decode a body (or a frame), change top-level fields, re-encode canonically (signature untouched)."""
    body = frame_or_body
    if len(body) >= 4 and struct.unpack(">I", body[:4])[0] == len(body) - 4:
        body = body[4:]
    obj = json.loads(body)
    obj.update(changes)
    return canonical(obj)


def forge(signer: Identity, kind: str, payload, *, to: bytes, seq: int, ts: int, net: str = NET,
          v=PROTOCOL_VERSION, sender: bytes | None = None, sign_kind: str | None = None) -> bytes:
    """A body with a *valid* signature by `signer` over whatever it is given (for checks after the
    signature, e.g. schema), unless `sender`/`sign_kind` deliberately differ from what is signed."""
    sender = sender if sender is not None else signer.public_key
    sig = signer.sign(signed_bytes(sign_kind or kind, net, sender, to, seq, ts, payload))
    return canonical({"v": v, "kind": kind, "net": net, "from": sender.hex(), "to": to.hex(), "seq": seq,
                      "ts": ts, "payload": payload, "sig": sig.hex()})


def rejected(receiver: Receiver, body: bytes, now_ms: int = T0) -> str:
    with pytest.raises(Rejected) as info:
        receiver.receive(body, now_ms)
    return info.value.reason


@pytest.fixture
def alice() -> Sealer:
    return Sealer(ALICE, NET)


@pytest.fixture
def mallory() -> Sealer:
    return Sealer(MALLORY, NET)


@pytest.fixture
def bob() -> Receiver:
    return Receiver(BOB.public_key, NET)


# -- honest traffic ---------------------------------------------------------------------------------------

def test_honest_hello_is_accepted_with_typed_payload(alice, bob):
    env = bob.receive(one_body(alice.seal("hello", BOB.public_key, hello(), T0)), T0)
    assert isinstance(env, Envelope)
    assert env.kind == "hello" and env.network == NET
    assert env.sender == ALICE.public_key and env.sender_id == ALICE.node_id
    assert env.recipient == BOB.public_key
    assert env.ts_ms == T0
    assert isinstance(env.payload, Hello)
    assert env.payload == hello()
    assert isinstance(env.payload.record, PeerRecord) and isinstance(env.payload.peers[0], PeerRecord)
    assert bob.rejected == Counter()
    assert bob.highest_seq[ALICE.public_key] == env.seq


def test_honest_step_request_is_accepted_with_typed_payload(alice, bob):
    env = bob.receive(one_body(alice.seal("step", BOB.public_key, step_req(), T0)), T0)
    assert isinstance(env.payload, StepRequest)
    assert env.payload == step_req()
    assert env.payload.params == {"code": "output = 1", "inputs": {}}


@pytest.mark.parametrize("kind,payload,why", [
    ("model-ask", {"sha": "f" * 64, "part": 8192}, "part from -1"),
    ("model-ask", {"sha": "F" * 64, "part": 0}, "SHA-256"),
    ("model-manifest", {"sha": "f" * 64, "size": 10, "parts": ["0" * 64, "1" * 64]}, "one SHA-256 per part"),
    ("model-manifest", {"sha": "f" * 64, "size": 8193 * MODEL_PART, "parts": []}, "one SHA-256 per part"),
    ("model-manifest", {"sha": "f" * 64, "size": 0, "parts": []}, "one SHA-256 per part"),
    ("model-part", {"sha": "f" * 64, "part": 0, "data": "A" * (MODEL_PART * 2)}, "at most"),
])
def test_model_messages_out_of_bounds_are_refused(alice, bob, kind, payload, why):
    """A peer's model messages are checked for size and shape before anything reads them: a manifest of
    more parts than its size needs (or over 4 GiB), a part larger than a part, a part number past the end."""
    with pytest.raises(Rejected, match=why):
        parse(KINDS[kind], payload, kind)


@pytest.mark.parametrize("kind,payload", [
    ("step", {"job": "j", "step": "a", "kind": "python", "params": {}, "timeout": 10 ** 400}),
    ("result", {"job": "j", "step": "a", "ok": True, "output": 1, "digest": "0" * 64, "identity": "python:bwrap",
                "work": {"cpu_s": 10 ** 400}}),
    ("result", {"job": "j", "step": "a", "ok": True, "output": 1, "digest": "0" * 64, "identity": "python:bwrap",
                "work": {"tokens": 10 ** 400}}),
])
def test_a_signed_number_too_large_for_a_float_is_bad_schema_not_a_crash(alice, bob, kind, payload):
    """JSON holds integers of any size; one where the schema wants a float (or bounds a number as one)
    raised OverflowError out of the receiver instead of Rejected (found by a credit attack, 2026-12-05)."""
    body = forge(ALICE, kind, payload, to=BOB.public_key, seq=T0, ts=T0)
    assert rejected(bob, body) == "bad-schema"


def test_every_kind_round_trips(alice, bob):
    payloads = {
        "hello": hello(),
        "step": step_req(),
        "result": StepResult("job1", "a", True, {"x": [1, 2.5, "s", None]}, "d" * 64, "python:bwrap",
                             Work(cpu_s=0.1, token_ids=[5, 7])),
        "receipt": ReceiptMsg({"job": "j", "amount": 1.5}),
        "bye": Bye("shutting down"),
        "cancel": Cancel("job1", ["a", "b"]),
        "receipt-ack": ReceiptAck("job1", ["a"]),
        "receipt-ask": ReceiptAsk("job1", ["a", "b"]),
        "progress": Progress("job1", "a", 8, "Once upon a"),
        "head": LedgerHead(128, "a" * 64, "b" * 128),
        "head-ask": HeadAsk("n1"),
        "head-held": HeadHeld("n1", [LedgerHead(64, "c" * 64, "d" * 128)]),
        "testimony-ask": TestimonyAsk(["e" * 64]),
        "testimony": TestimonyTell([TestimonyItem("e" * 64, 3.0, 0.5, 2, 1000, 0, 2000)]),
        "model-ask": ModelAsk("f" * 64, -1),
        "model-manifest": ModelManifest("f" * 64, MODEL_PART + 1, ["0" * 64, "1" * 64]),
        "model-part": ModelPart("f" * 64, 1, "AAEC"),
    }
    answer = SignedAnswer("result", "net", "a" * 64, "b" * 64, 7, T0, "c" * 128, payloads["result"])
    payloads["outvoted"] = Outvoted(answer, [answer, answer])  # well-formed: what it proves is checked elsewhere
    assert set(payloads) == set(KINDS)
    for i, (kind, payload) in enumerate(payloads.items()):
        env = bob.receive(one_body(alice.seal(kind, BOB.public_key, payload, T0 + i)), T0 + i)
        assert env.kind == kind
        assert type(env.payload) is KINDS[kind]
        assert env.payload == payload
    assert not bob.rejected


@settings(max_examples=200, deadline=None)
@given(net=st.text(max_size=40), kind=st.sampled_from(sorted(KINDS)), seq_ms=st.integers(0, 2**40),
       payload=st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=20), st.integers(), st.floats(1e-9, 1e9)),
                               max_size=4))
def test_a_sealed_body_is_the_canonical_json_of_its_envelope(net, kind, seq_ms, payload):
    # the sealer writes the envelope object out by hand (faster than encoding a dict): byte for byte what
    # canonical() gives for it, whatever the network id (quotes, backslashes, non-ASCII) and kind
    body = one_body(Sealer(ALICE, net).seal_encoded(kind, BOB.public_key, canonical(payload), seq_ms))
    obj = json.loads(body)
    assert canonical(obj) == body
    assert (obj["net"], obj["kind"], obj["payload"], obj["ts"], obj["v"]) == (net, kind, payload, seq_ms, PROTOCOL_VERSION)
    msg = signed_bytes(kind, net, ALICE.public_key, BOB.public_key, obj["seq"], seq_ms, payload)
    assert verify(ALICE.public_key, bytes.fromhex(obj["sig"]), msg)


def test_int_timeout_is_parsed_as_float(bob):
    payload = {"job": "j", "step": "a", "kind": "python", "params": {}, "timeout": 5}
    env = bob.receive(forge(ALICE, "step", payload, to=BOB.public_key, seq=1, ts=T0), T0)
    assert env.payload.timeout == 5.0 and isinstance(env.payload.timeout, float)


# -- signatures -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("byte_index", [0, 1, 31, 32, 63])
def test_flipped_signature_byte_is_bad_signature(alice, bob, byte_index):
    body = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    sig = bytearray.fromhex(json.loads(body)["sig"])
    sig[byte_index] ^= 0x01
    assert rejected(bob, edit(body, sig=sig.hex())) == "bad-signature"
    assert bob.rejected == Counter({"bad-signature": 1})
    assert ALICE.public_key not in bob.highest_seq


@pytest.mark.parametrize("sig", ["", "00", "zz" * 64, "ab" * 63, 12345, None])
def test_malformed_signature_is_bad_signature(alice, bob, sig):
    body = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    assert rejected(bob, edit(body, sig=sig)) == "bad-signature"


def test_payload_changed_after_signing_is_bad_signature(alice, bob):
    body = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    payload = json.loads(body)["payload"]
    payload["record"]["addr"] = "6.6.6.6:666"
    assert rejected(bob, edit(body, payload=payload)) == "bad-signature"

    body = one_body(alice.seal("step", BOB.public_key, step_req(), T0 + 1))
    payload = json.loads(body)["payload"]
    payload["params"]["code"] = "import os; os.system('rm -rf ~')"
    assert rejected(bob, edit(body, payload=payload), T0 + 1) == "bad-signature"
    assert bob.rejected == Counter({"bad-signature": 2})


@pytest.mark.parametrize("field,delta", [("seq", 1), ("ts", 1), ("ts", -1)])
def test_seq_and_timestamp_are_signed(alice, bob, field, delta):
    body = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    obj = json.loads(body)
    assert rejected(bob, edit(body, **{field: obj[field] + delta})) == "bad-signature"


def test_readdressed_envelope_is_bad_signature(alice):
    """`to` is signed: a frame for bob cannot be replayed to carol by rewriting the recipient."""
    carol = Receiver(CAROL.public_key, NET)
    body = one_body(alice.seal("step", BOB.public_key, step_req(), T0))
    assert rejected(carol, edit(body, to=CAROL.public_key.hex())) == "bad-signature"


def test_signature_for_step_does_not_verify_as_result(alice, bob):
    body = one_body(alice.seal("step", BOB.public_key, step_req(), T0))
    obj = json.loads(body)
    sig = bytes.fromhex(obj["sig"])
    args = (NET, ALICE.public_key, BOB.public_key, obj["seq"], obj["ts"], obj["payload"])
    assert verify(ALICE.public_key, sig, signed_bytes("step", *args))
    assert not verify(ALICE.public_key, sig, signed_bytes("result", *args))
    assert rejected(bob, edit(body, kind="result")) == "bad-signature"
    # ...and a hello's signature is no good as a bye either, even with a payload both kinds could carry.
    body = forge(ALICE, "bye", {"reason": ""}, to=BOB.public_key, seq=5, ts=T0, sign_kind="hello")
    assert rejected(bob, body) == "bad-signature"


def test_attacker_resigning_honest_payload_is_only_accepted_as_the_attacker(alice, mallory, bob):
    honest = one_body(alice.seal("step", BOB.public_key, step_req(), T0))
    stolen = parse(StepRequest, json.loads(honest)["payload"])
    env = bob.receive(one_body(mallory.seal("step", BOB.public_key, stolen, T0)), T0)
    assert env.payload == step_req()
    assert env.sender == MALLORY.public_key != ALICE.public_key
    assert env.sender_id == MALLORY.node_id != ALICE.node_id
    # the honest envelope is still accepted, as alice's (mallory's use of the payload does not burn it)
    assert bob.receive(honest, T0).sender == ALICE.public_key


def test_attacker_cannot_claim_another_sender(alice, mallory, bob):
    # mallory's own signature with alice's key in "from"
    forged = forge(MALLORY, "step", json.loads(one_body(alice.seal("step", BOB.public_key, step_req(), T0)))["payload"],
                   to=BOB.public_key, seq=T0 * 1000 + 7, ts=T0, sender=ALICE.public_key)
    assert rejected(bob, forged) == "bad-signature"
    # alice's signature with mallory's key in "from"
    honest = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    assert rejected(bob, edit(honest, **{"from": MALLORY.public_key.hex()})) == "bad-signature"
    assert bob.rejected == Counter({"bad-signature": 2})
    assert bob.highest_seq == {}


# -- replay and time --------------------------------------------------------------------------------------

def test_replay_of_same_frame(alice, bob):
    body = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    bob.receive(body, T0)
    assert rejected(bob, body) == "replay"
    assert rejected(bob, body, T0 + 1000) == "replay"
    assert bob.rejected == Counter({"replay": 2})


def test_frames_of_one_sender_on_two_links_may_arrive_out_of_order_but_each_once(alice, bob):
    """A relayed link and the hole-punched one replacing it, or two links dialled at once: a frame sent
    on one may arrive after a later one sent on the other. Each is taken once; none twice."""
    frames = [one_body(alice.seal("hello", BOB.public_key, hello(), T0 + i)) for i in range(6)]
    for i in (0, 2, 5, 1, 4, 3):
        bob.receive(frames[i], T0 + 6)
    assert not bob.rejected
    for body in frames:
        assert rejected(bob, body, T0 + 6) == "replay"
    assert bob.rejected == Counter({"replay": 6})


def test_a_seq_below_the_reorder_window_is_replay(alice, bob):
    """Only the last REORDER_KEEP seqs are remembered: anything older than all of them is refused, seen
    or not (a frame captured long ago and never delivered cannot be slipped in later)."""
    early = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    late = [one_body(alice.seal("hello", BOB.public_key, hello(), T0 + 1 + i)) for i in range(REORDER_KEEP + 1)]
    assert json.loads(early)["seq"] < json.loads(late[0])["seq"]
    for body in late:
        bob.receive(body, T0 + 100)
    assert rejected(bob, early, T0 + 100) == "replay"
    assert rejected(bob, late[0], T0 + 100) == "replay"  # let go of by the window: below its floor


def test_replay_state_is_per_sender(alice, mallory, bob):
    bob.receive(one_body(alice.seal("hello", BOB.public_key, hello(), T0 + 10)), T0 + 10)
    # mallory's lower seq is fine: it is mallory's own counter
    bob.receive(one_body(mallory.seal("hello", BOB.public_key, hello(), T0)), T0 + 10)
    assert not bob.rejected


def test_replay_memory_is_bounded_and_a_forgotten_peers_frames_stay_replays(alice, bob, monkeypatch):
    """Every fresh key a peer makes costs the receiver a replay window: past MAX_SENDERS the peer least
    recently heard is forgotten, and anything stamped up to its newest frame is refused from any sender
    not in memory, so forgetting opens no replay."""
    from mesh.wire import envelope

    monkeypatch.setattr(envelope, "MAX_SENDERS", 5)
    captured = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    bob.receive(captured, T0)
    bob.promote(ALICE.public_key, T0)
    for i in range(10):  # ten peers, each with a key of its own, one frame each
        key = Identity.generate()
        bob.receive(one_body(Sealer(key, NET).seal("hello", BOB.public_key, hello(), T0 + 1 + i)), T0 + 20)
        bob.promote(key.public_key, T0 + 20)
    assert len(bob._seen) == 5 and len(bob.highest_seq) == 5
    assert rejected(bob, captured, T0 + 20) == "replay"  # alice forgotten: her old frame is still refused
    bob.receive(one_body(alice.seal("hello", BOB.public_key, hello(), T0 + 30)), T0 + 30)  # her new ones are not


def test_throwaway_keys_stamped_ahead_push_out_no_peer_and_lock_out_no_newcomer(alice, bob, monkeypatch):
    """The attack: thousands of fresh keys (free to make), one frame each, stamped near the window's far
    end. They fill only the strangers' pool: the peer bob took stays in memory (its next frame is taken),
    a newcomer's first frame is taken, and forgetting strangers raised nothing."""
    from mesh.wire import envelope

    monkeypatch.setattr(envelope, "MAX_STRANGERS", 50)
    bob.receive(one_body(alice.seal("hello", BOB.public_key, hello(), T0)), T0)
    bob.promote(ALICE.public_key, T0)
    for _ in range(200):
        key = Identity.generate()
        bob.receive(one_body(Sealer(key, NET).seal("bye", BOB.public_key, Bye(), T0 + 115_000)), T0 + 1_000)
    assert len(bob._strangers) == 50 and ALICE.public_key in bob._seen and bob.forgotten_ts == 0
    bob.receive(one_body(alice.seal("bye", BOB.public_key, Bye(), T0 + 2_000)), T0 + 2_000)
    newcomer = Sealer(MALLORY, NET)
    bob.receive(one_body(newcomer.seal("hello", BOB.public_key, hello(), T0 + 2_000)), T0 + 2_000)
    assert not bob.rejected


def test_a_forgotten_peers_stamps_ahead_of_the_clock_close_the_door_only_until_it_was_forgotten(bob, monkeypatch):
    from mesh.wire import envelope

    monkeypatch.setattr(envelope, "MAX_SENDERS", 2)
    for _ in range(3):  # three peers whose clocks run 115 s ahead; the first is forgotten at T0
        key = Identity.generate()
        bob.receive(one_body(Sealer(key, NET).seal("bye", BOB.public_key, Bye(), T0 + 115_000)), T0)
        bob.promote(key.public_key, T0)
    assert bob.forgotten_ts == T0
    bob.receive(one_body(Sealer(MALLORY, NET).seal("hello", BOB.public_key, hello(), T0 + 1)), T0 + 1)
    assert not bob.rejected


def test_a_second_key_on_a_link_is_refused_before_anything_of_it_is_remembered(alice, mallory, bob):
    bob.receive(one_body(alice.seal("bye", BOB.public_key, Bye(), T0)), T0, expect=ALICE.public_key)
    with pytest.raises(WrongSender):
        bob.receive(one_body(mallory.seal("bye", BOB.public_key, Bye(), T0)), T0, expect=ALICE.public_key)
    assert MALLORY.public_key not in bob.highest_seq and MALLORY.public_key not in bob._strangers
    assert not bob.rejected  # the caller drops the link and counts why


def test_a_step_request_and_its_answers_name_a_job_and_a_step_of_at_most_64_characters():
    ok = step_req()
    parse(StepRequest, dataclasses.asdict(ok), "step")
    for job, step in (("j" * 65, "a"), ("job1", "s" * 65), ("", "a"), ("job1", ""), ("J" * 450_000, "S" * 450_000)):
        with pytest.raises(Rejected) as info:
            parse(StepRequest, {**dataclasses.asdict(ok), "job": job, "step": step}, "step")
        assert info.value.reason == "bad-schema"
        with pytest.raises(Rejected):
            Progress(job, step, 1, "x")
        with pytest.raises(Rejected):
            StepResult(job, step, True, 1, "d", "i", Work())


def test_seq_is_derived_from_clock_and_keeps_rising(alice):
    s1 = json.loads(one_body(alice.seal("bye", BOB.public_key, Bye(), T0)))["seq"]
    s2 = json.loads(one_body(alice.seal("bye", BOB.public_key, Bye(), T0)))["seq"]
    s3 = json.loads(one_body(alice.seal("bye", BOB.public_key, Bye(), T0 - 50_000)))["seq"]  # clock stepped back
    assert s1 == T0 * 1000
    assert s2 == s1 + 1
    assert s3 == s2 + 1


def test_restart_with_later_clock_is_accepted_and_old_frames_stay_replays(bob):
    before = Sealer(ALICE, NET)
    captured = [one_body(before.seal("hello", BOB.public_key, hello(), T0)) for _ in range(3)]
    for body in captured:
        bob.receive(body, T0)

    after = Sealer(ALICE, NET)  # a restart: same key, no saved counter
    env = bob.receive(one_body(after.seal("hello", BOB.public_key, hello(), T0 + 1)), T0 + 1)
    assert env.sender == ALICE.public_key
    for body in captured:
        assert rejected(bob, body, T0 + 1) == "replay"
    assert bob.rejected == Counter({"replay": 3})


def test_restart_within_the_same_millisecond_is_a_replay(bob):
    """Documents the derivation: a fresh Sealer only escapes the replay window if its clock moved."""
    bob.receive(one_body(Sealer(ALICE, NET).seal("hello", BOB.public_key, hello(), T0)), T0)
    assert rejected(bob, one_body(Sealer(ALICE, NET).seal("hello", BOB.public_key, hello(), T0))) == "replay"


def test_a_sender_whose_clock_ran_an_hour_ahead_is_heard_again_after_it_is_set_back_and_restarts(bob):
    """Red team G: a node started with its clock an hour ahead (a dual-boot PC's local-time RTC) numbered its
    envelopes from that clock; set back, it kept numbering an hour ahead and its peers took those numbers,
    so after its next restart (numbering from the right clock) every peer refused it as a replay until the
    hour had passed. Now the sealer continues from its clock once it is more than a window behind its last
    number, and a receiver refuses a number more than a window ahead of its envelope's stamp."""
    hour = 3_600_000
    ahead = Sealer(ALICE, NET)
    assert rejected(bob, one_body(ahead.seal("hello", BOB.public_key, hello(), T0 + hour)), T0) == "future"
    for i in range(REORDER_KEEP + 8):  # set back: heard, and more than the reorder window of it
        bob.receive(one_body(ahead.seal("hello", BOB.public_key, hello(), T0 + i)), T0 + i)
    restarted = Sealer(ALICE, NET)
    env = bob.receive(one_body(restarted.seal("hello", BOB.public_key, hello(), T0 + 5_000)), T0 + 5_000)
    assert env.sender == ALICE.public_key


def test_a_sequence_number_far_ahead_of_its_stamp_is_refused_and_remembered_nowhere(bob):
    """The attack behind it: a key's own envelope numbered a day ahead of its (current) stamp would lift the
    receiver's floor for that key by a day; refused, it leaves the floor where it was."""
    far = (T0 + 86_400_000) * 1000
    body = forge(ALICE, "hello", dataclasses.asdict(hello()), to=BOB.public_key, seq=far, ts=T0)
    assert rejected(bob, body) == "seq-ahead"
    near = forge(ALICE, "hello", dataclasses.asdict(hello()), to=BOB.public_key,
                 seq=(T0 + DEFAULT_WINDOW_MS) * 1000, ts=T0)
    assert bob.receive(near, T0).seq == (T0 + DEFAULT_WINDOW_MS) * 1000  # (a window ahead is still taken)
    assert bob.receive(one_body(Sealer(ALICE, NET).seal("hello", BOB.public_key, hello(), T0 + DEFAULT_WINDOW_MS + 1)),
                       T0 + DEFAULT_WINDOW_MS + 1).sender == ALICE.public_key


def test_stale_and_future_timestamps(alice, bob):
    w = DEFAULT_WINDOW_MS
    assert w == 120_000
    stale = one_body(alice.seal("hello", BOB.public_key, hello(), T0 - w - 1))
    assert rejected(bob, stale, T0) == "stale"
    future = one_body(alice.seal("hello", BOB.public_key, hello(), T0 + w + 1))
    assert rejected(bob, future, T0) == "future"
    assert bob.rejected == Counter({"stale": 1, "future": 1})
    # the very same frames are fine at a clock they fit
    assert bob.receive(stale, T0 - w).ts_ms == T0 - w - 1
    assert bob.receive(future, T0 + w).ts_ms == T0 + w + 1


@pytest.mark.parametrize("offset", [-DEFAULT_WINDOW_MS, 0, DEFAULT_WINDOW_MS])
def test_window_edges_are_inclusive(offset):
    bob = Receiver(BOB.public_key, NET)
    body = one_body(Sealer(ALICE, NET).seal("hello", BOB.public_key, hello(), T0 + offset))
    assert bob.receive(body, T0).ts_ms == T0 + offset


def test_custom_window():
    bob = Receiver(BOB.public_key, NET, window_ms=1000)
    sealer = Sealer(ALICE, NET)
    assert rejected(bob, one_body(sealer.seal("hello", BOB.public_key, hello(), T0 - 1001))) == "stale"
    assert rejected(bob, one_body(sealer.seal("hello", BOB.public_key, hello(), T0 + 1001))) == "future"
    bob.receive(one_body(sealer.seal("hello", BOB.public_key, hello(), T0 + 1000)), T0)


# -- addressing, network, kind, version -------------------------------------------------------------------

def test_wrong_recipient(alice, bob):
    body = one_body(alice.seal("step", CAROL.public_key, step_req(), T0))
    assert rejected(bob, body) == "wrong-recipient"
    assert bob.rejected == Counter({"wrong-recipient": 1})


@pytest.mark.parametrize("kind,payload", [
    ("step", step_req()),
    ("result", StepResult("j", "a", True, 1, "d", "i", Work())),
    ("receipt", ReceiptMsg({})),
    ("bye", Bye()),
])
def test_only_hello_may_be_addressed_to_anyone(alice, bob, kind, payload):
    assert rejected(bob, one_body(alice.seal(kind, ANYONE, payload, T0))) == "wrong-recipient"
    env = bob.receive(one_body(alice.seal("hello", ANYONE, hello(), T0 + 1)), T0 + 1)
    assert env.recipient == ANYONE and env.kind == "hello"


def test_wrong_network(bob):
    other = Sealer(ALICE, "someone-elses-mesh")
    assert rejected(bob, one_body(other.seal("hello", BOB.public_key, hello(), T0))) == "wrong-network"
    assert bob.rejected == Counter({"wrong-network": 1})


def test_network_is_signed(alice):
    """Relabelling the network does not move an envelope between meshes."""
    other = Receiver(BOB.public_key, "other-mesh")
    body = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    assert rejected(other, edit(body, net="other-mesh")) == "bad-signature"


@pytest.mark.parametrize("kind", ["evil", "", "Hello", "__class__", ["hello"], 1, None])
def test_unknown_kind(bob, kind):
    body = canonical({"v": PROTOCOL_VERSION, "kind": kind, "net": NET, "from": ALICE.public_key.hex(),
                      "to": BOB.public_key.hex(), "seq": 1, "ts": T0, "payload": {}, "sig": "00" * 64})
    assert rejected(bob, body) == "unknown-kind"
    assert bob.rejected == Counter({"unknown-kind": 1})


def test_unknown_kind_with_valid_signature(bob):
    assert rejected(bob, forge(ALICE, "shell", {"cmd": "id"}, to=BOB.public_key, seq=1, ts=T0)) == "unknown-kind"


@pytest.mark.parametrize("v", [0, PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1, str(PROTOCOL_VERSION), None, [PROTOCOL_VERSION], 1.5])
def test_bad_version(alice, bob, v):
    body = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    assert rejected(bob, edit(body, v=v)) == "bad-version"
    assert bob.rejected == Counter({"bad-version": 1})


@pytest.mark.parametrize("changes", [
    {"extra": 1},
    {"seq": -1}, {"seq": True}, {"seq": "1"}, {"seq": 2**63}, {"seq": 1.5},
    {"ts": None}, {"ts": False},
    {"from": "ab"}, {"from": "zz" * 32}, {"to": 7},
])
def test_bad_envelope_fields(alice, bob, changes):
    body = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    assert rejected(bob, edit(body, **changes)) == "bad-envelope"


def test_missing_envelope_field(alice, bob):
    obj = json.loads(one_body(alice.seal("hello", BOB.public_key, hello(), T0)))
    del obj["sig"]
    assert rejected(bob, canonical(obj)) == "bad-envelope"
    assert rejected(bob, b"[1, 2, 3]") == "bad-envelope"
    assert rejected(bob, b'"hello"') == "bad-envelope"


# -- garbage ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    b"", b"not json", b"{", b"{'v': 1}", b"\xff\xfe\x00garbage", b"\x80\x04\x95",
    random.Random(7).randbytes(64), random.Random(8).randbytes(4096),
])
def test_random_bytes_and_non_json_are_bad_json(bob, body):
    assert rejected(bob, body) == "bad-json"
    assert bob.rejected == Counter({"bad-json": 1})


_detonated: list[str] = []


def _detonate(tag: str) -> str:  # what a malicious pickle would run
    _detonated.append(tag)
    return tag


class _Bomb:
    def __reduce__(self):
        return (_detonate, ("unpickled!",))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_is_rejected_without_being_unpickled(bob, monkeypatch, protocol):
    tripwire = []
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: tripwire.append("loads"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: tripwire.append("load"))
    bomb = pickle.dumps({"v": 1, "kind": "hello", "payload": _Bomb()}, protocol=protocol)
    _detonated.clear()
    assert rejected(bob, bomb) in ("bad-json", "bad-envelope")
    assert rejected(bob, one_body(frame_of(bomb))) in ("bad-json", "bad-envelope")
    assert _detonated == [] and tripwire == []


def test_pickle_inside_a_payload_stays_an_inert_string(bob):
    blob = pickle.dumps(_Bomb()).decode("latin-1")
    payload = {"job": "j", "step": "a", "ok": True, "output": blob, "digest": "d", "identity": "i",
               "work": {"stdout": blob[:2000]}}
    _detonated.clear()
    env = bob.receive(forge(ALICE, "result", payload, to=BOB.public_key, seq=1, ts=T0), T0)
    assert env.payload.output == blob and isinstance(env.payload.output, str)
    assert env.payload.work.stdout == blob[:2000]
    assert _detonated == []


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=512))
def test_arbitrary_bytes_only_ever_raise_rejected(body):
    bob = Receiver(BOB.public_key, NET)
    with pytest.raises(Rejected):
        bob.receive(body, T0)
    assert sum(bob.rejected.values()) == 1


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_non_finite_numbers_are_rejected_not_crashing(bob, value):
    """json.loads accepts NaN/Infinity/1e999, which have no canonical form: the receiver must answer
    with Rejected, not let a ValueError escape to the gateway."""
    body = (b'{"from":"%s","kind":"result","net":"%s","payload":{"digest":"d","identity":"i","job":"j",'
            b'"ok":true,"output":%s,"step":"a","work":{}},"seq":1,"sig":"%s","to":"%s","ts":%d,"v":%d}'
            % (ALICE.public_key.hex().encode(), NET.encode(), value.encode(), b"00" * 64,
               BOB.public_key.hex().encode(), T0, PROTOCOL_VERSION))
    assert rejected(bob, body) in ("bad-json", "bad-schema", "bad-signature")
    assert sum(bob.rejected.values()) == 1


def test_deeply_nested_json_is_rejected_not_crashing(bob):
    """Nesting deep enough to exhaust the recursion limit, in the body or only in the payload (where
    decoding may just succeed and canonical re-encoding for the signature check then fails)."""
    limit = sys.getrecursionlimit()
    assert rejected(bob, b"[" * (limit * 20) + b"]" * (limit * 20)) == "bad-json"
    head = (b'{"from":"%s","kind":"bye","net":"%s","seq":1,"sig":"%s","to":"%s","ts":%d,"v":%d,"payload":{"reason":'
            % (ALICE.public_key.hex().encode(), NET.encode(), b"00" * 64, BOB.public_key.hex().encode(), T0,
               PROTOCOL_VERSION))
    for depth in range(limit - 120, limit + 30):
        body = head + b"[" * depth + b"]" * depth + b"}}"
        assert rejected(bob, body) in ("bad-json", "bad-schema", "bad-signature")


# -- schema -----------------------------------------------------------------------------------------------

def _record_dict(**changes):
    d = dataclasses.asdict(make_record(ALICE, NET, "h:1", ["python"], [], True, T0))
    d.update(changes)
    return d


def _hello_dict(**changes):
    d = {"record": _record_dict(), "peers": []}
    d.update(changes)
    return d


def _step_dict(**changes):
    d = {"job": "j", "step": "a", "kind": "python", "params": {"code": "x"}, "timeout": 3.0}
    d.update(changes)
    return d


@pytest.mark.parametrize("kind,payload", [
    ("hello", {"peers": []}),  # missing field
    ("hello", _hello_dict(admin=True)),  # extra field
    ("hello", _hello_dict(record=_record_dict(kinds="python"))),  # wrong type: str for list
    ("hello", _hello_dict(record=_record_dict(kinds=["python", 3]))),  # wrong item type
    ("hello", _hello_dict(record=_record_dict(sandbox=1))),  # int where bool
    ("hello", _hello_dict(record=_record_dict(addr=None))),
    ("hello", _hello_dict(peers=[{"key": "k"}])),  # nested missing field
    ("hello", _hello_dict(peers=[_record_dict(x=1)])),  # nested extra field
    ("hello", _hello_dict(record=_record_dict(kinds=["x"] * 5000))),  # list too long
    ("hello", ["not", "an", "object"]),
    ("step", _step_dict(timeout=True)),  # bool where a number is expected
    ("step", _step_dict(timeout="3")),
    ("step", _step_dict(params=["code"])),
    ("result", {"job": "j", "step": "a", "ok": 1, "output": 1, "digest": "d", "identity": "i", "work": {}}),
    ("bye", {"reason": 5}),
    ("receipt", {}),
])
def test_valid_json_with_wrong_schema_is_bad_schema(bob, kind, payload):
    body = forge(ALICE, kind, payload, to=BOB.public_key, seq=10, ts=T0)
    assert rejected(bob, body) == "bad-schema"
    assert bob.rejected == Counter({"bad-schema": 1})
    assert ALICE.public_key not in bob.highest_seq  # a rejected envelope does not advance the counter


def test_parse_refuses_bool_for_int():
    from dataclasses import dataclass

    @dataclass
    class Counted:
        n: int

    assert parse(Counted, {"n": 3}).n == 3
    for bad in (True, False, 3.0, "3", None):
        with pytest.raises(Rejected) as info:
            parse(Counted, {"n": bad})
        assert info.value.reason == "bad-schema"
        assert "n" in info.value.detail


# -- framing ----------------------------------------------------------------------------------------------

def test_header_over_cap_is_refused_before_the_body_arrives():
    dec = FrameDecoder(cap=1024)
    with pytest.raises(Rejected) as info:
        dec.feed(struct.pack(">I", 1025))  # header alone, no body bytes at all
    assert info.value.reason == "frame-too-large"
    assert "1025" in info.value.detail


def test_default_cap_refuses_a_huge_declared_length():
    dec = FrameDecoder()
    assert dec.cap == DEFAULT_FRAME_CAP
    with pytest.raises(Rejected) as info:
        dec.feed(struct.pack(">I", DEFAULT_FRAME_CAP + 1) + b"x" * 10)
    assert info.value.reason == "frame-too-large"
    with pytest.raises(Rejected):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_frame_exactly_at_cap_is_accepted_and_partial_header_waits():
    dec = FrameDecoder(cap=10)
    assert dec.feed(b"\x00\x00\x00") == [] and dec.pending == 3
    assert dec.feed(b"\x0a" + b"0123456789") == [b"0123456789"]
    assert dec.pending == 0
    assert dec.feed(struct.pack(">I", 0)) == [b""]


def _stream(alice: Sealer) -> tuple[bytes, list[bytes]]:
    frames = [alice.seal("hello", BOB.public_key, hello(), T0),
              alice.seal("step", BOB.public_key, step_req(), T0),
              alice.seal("bye", BOB.public_key, Bye("x" * 300), T0)]
    return b"".join(frames), [f[4:] for f in frames]


def test_frames_split_at_every_byte_boundary_decode_identically(alice):
    stream, expected = _stream(alice)
    for i in range(len(stream) + 1):
        dec = FrameDecoder()
        got = dec.feed(stream[:i]) + dec.feed(stream[i:])
        assert got == expected, f"split at {i}"
        assert dec.pending == 0
    dec = FrameDecoder()
    got = [body for b in stream for body in dec.feed(bytes([b]))]
    assert got == expected


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2000), max_size=12))
def test_frames_split_anywhere_decode_identically(cuts):
    stream, expected = _stream(Sealer(ALICE, NET))
    points = sorted({c % (len(stream) + 1) for c in cuts})
    dec, got, prev = FrameDecoder(), [], 0
    for p in points + [len(stream)]:
        got += dec.feed(stream[prev:p])
        prev = p
    assert got == expected and dec.pending == 0
    bob = Receiver(BOB.public_key, NET)
    assert [bob.receive(b, T0).kind for b in got] == ["hello", "step", "bye"]


def test_truncated_frame_leaves_pending_bytes(alice):
    frame = alice.seal("hello", BOB.public_key, hello(), T0)
    dec = FrameDecoder()
    assert dec.feed(frame[:-1]) == []
    assert dec.pending == len(frame) - 1


# -- tamper property --------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_single_byte_change_is_rejected_or_harmless(data):
    """Flip any byte of an honest body: either it is rejected, or (e.g. upper-case hex) it decodes to
    exactly the envelope that was signed."""
    body = one_body(Sealer(ALICE, NET).seal("step", BOB.public_key, step_req(), T0))
    honest = Receiver(BOB.public_key, NET).receive(body, T0)
    i = data.draw(st.integers(0, len(body) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = body[:i] + bytes([body[i] ^ mask]) + body[i + 1:]
    bob = Receiver(BOB.public_key, NET)
    try:
        env = bob.receive(tampered, T0)
    except Rejected:
        assert sum(bob.rejected.values()) == 1
        return
    assert env == honest


# -- counters ---------------------------------------------------------------------------------------------

def test_rejections_are_counted_by_reason(alice, mallory, bob):
    good = one_body(alice.seal("hello", BOB.public_key, hello(), T0))
    bob.receive(good, T0)
    sends = [
        good,  # replay
        good,  # replay
        b"junk",  # bad-json
        edit(good, v=9),  # bad-version
        edit(good, net="x"),  # wrong-network
        one_body(mallory.seal("bye", CAROL.public_key, Bye(), T0)),  # wrong-recipient
        edit(one_body(alice.seal("hello", BOB.public_key, hello(), T0 + 1)), sig="00" * 64),  # bad-signature
        one_body(alice.seal("hello", BOB.public_key, hello(), T0 - 10**6)),  # stale
    ]
    for body in sends:
        with pytest.raises(Rejected):
            bob.receive(body, T0)
    bob.receive(one_body(mallory.seal("hello", BOB.public_key, hello(), T0)), T0)
    assert bob.rejected == Counter({"replay": 2, "bad-json": 1, "bad-version": 1, "wrong-network": 1,
                                    "wrong-recipient": 1, "bad-signature": 1, "stale": 1})
    bob.count("frame-too-large")  # the gateway reports framing errors through the same counter
    assert bob.rejected["frame-too-large"] == 1


@pytest.mark.parametrize("field, value", [("error", "e" * 2001), ("identity", "i" * 201), ("digest", "d" * 65)])
def test_a_results_texts_that_reach_reports_are_bounded(bob, field, value):
    """What a worker says beside its output (its error, the code or model it names) is shown in job
    reports: past its bound the whole result is refused."""
    payload = {"job": "j", "step": "a", "ok": False, "output": None, "digest": "", "identity": "", "work": {},
               field: value}
    with pytest.raises(Rejected) as exc:
        bob.receive(forge(ALICE, "result", payload, to=BOB.public_key, seq=1, ts=T0), T0)
    assert exc.value.reason == "bad-schema"


def test_a_hello_carrying_more_peer_records_than_a_node_sends_is_refused_before_they_are_parsed(alice, bob):
    """A node's hello carries 8 records; one of 1,400, each schema-parsed before anything looked at its
    sender, cost its receiver 88 ms a frame against 1.3 ms to seal (this project's attack round, 2026-12-06).
    A hello may carry 16 now; the 17th is refused at the list's length, not after parsing 17 records."""
    rec = hello().peers[0]
    fine = Hello(hello().record, [rec] * 16)
    assert bob.receive(one_body(alice.seal("hello", BOB.public_key, fine, T0)), T0).payload == fine
    with pytest.raises(Rejected, match="peers is not a list of at most 16"):
        bob.receive(one_body(alice.seal("hello", BOB.public_key, Hello(hello().record, [rec] * 1400), T0 + 1)), T0 + 1)
