"""Outvote proofs (mesh.wire.proof), driven in memory like the envelopes: honest workers seal their answers
to one submitter, whose Receiver decodes them into signed envelopes; the submitter bundles a wrong answer
with the answers that outvoted it, and any node checks the bundle alone. The attacker holds a valid key of
its own and edits, re-signs or re-assembles honest answers to frame a worker."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable

import pytest

from mesh.errors import Rejected
from mesh.wire.canonical import canonical, digest
from mesh.wire.envelope import Envelope, FrameDecoder, Receiver, Sealer, signed_bytes_of_hash
from mesh.wire.identity import Identity
from mesh.wire.messages import MAX_MAJORITY, Outvoted, SignedAnswer, StepResult, Work, asked_digest
from mesh.wire.proof import (
    MAX_PROOF_OUTPUT,
    Outvote,
    canonical_payload,
    check_outvoted,
    outvoted,
    shown,
    signed_answer,
    verify_signed,
)
from mesh.wire.schema import dump, parse

pytestmark = pytest.mark.timeout(60)

NET = "homemesh-test"
T0 = 1_700_000_000_000  # ms
RIGHT = {"answer": 42, "items": ["a", "b"]}
WRONG = {"answer": 41, "items": ["a", "b"]}


def ident(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


SUBMITTER, OTHER_SUBMITTER = ident(40), ident(41)
W1, W2, W3, W4 = ident(42), ident(43), ident(44), ident(45)
MALLORY = ident(46)


# -- helpers ----------------------------------------------------------------------------------------------

def one_body(frame: bytes) -> bytes:
    dec = FrameDecoder()
    (body,) = dec.feed(frame)
    assert dec.pending == 0
    return body


ASKED = asked_digest("python", {"code": "output = 42"})


def result(output: object = RIGHT, *, job: str = "job1", step: str = "a", ok: bool = True,
           asked: str = ASKED) -> StepResult:
    """A worker's answer as it seals it: the digest is its output's (an error has neither), `asked` the
    request it answered."""
    return StepResult(job, step, ok, output if ok else None, digest(output) if ok else "", "python:sha256-0f1e",
                      Work(cpu_s=0.25, peak_mb=12.0, seconds=0.5, stdout="done\n"), "" if ok else "boom", asked)


class Link:
    """Workers' sealers and the submitters' receivers on one clock (each envelope one ms after the last)."""

    def __init__(self) -> None:
        self.now = T0
        self.sealers: dict[tuple[bytes, str], Sealer] = {}
        self.receivers: dict[tuple[bytes, str], Receiver] = {}

    def envelope(self, worker: Identity, payload: StepResult, *, to: Identity = SUBMITTER,
                 net: str = NET) -> Envelope:
        """`worker` seals `payload` as a `result` to `to`, whose Receiver decodes it."""
        self.now += 1
        sealer = self.sealers.setdefault((worker.public_key, net), Sealer(worker, net))
        receiver = self.receivers.setdefault((to.public_key, net), Receiver(to.public_key, net))
        return receiver.receive(one_body(sealer.seal("result", to.public_key, payload, self.now)), self.now)

    def answer(self, worker: Identity, output: object = RIGHT, *, job: str = "job1", step: str = "a",
               ok: bool = True, to: Identity = SUBMITTER, net: str = NET, asked: str = ASKED) -> SignedAnswer:
        return signed_answer(self.envelope(worker, result(output, job=job, step=step, ok=ok, asked=asked), to=to,
                                           net=net))

    def honest(self) -> tuple[SignedAnswer, list[SignedAnswer]]:
        """W1 answered wrong; W2, W3 and W4 agreed on the accepted answer."""
        return self.answer(W1, WRONG), [self.answer(w) for w in (W2, W3, W4)]


def signed(signer: Identity, payload: StepResult, *, kind: str = "result", net: str = NET,
           sender: Identity | None = None, to: Identity = SUBMITTER, seq: int = 1, ts: int = T0) -> SignedAnswer:
    """An answer whose signature is `signer`'s over exactly these header fields (the sender claimed may be
    another's key)."""
    sender_key = (sender or signer).public_key
    payload_sha256 = hashlib.sha256(canonical(dump(payload))).digest()
    sig = signer.sign(signed_bytes_of_hash(kind, net, sender_key, to.public_key, seq, ts, payload_sha256))
    return SignedAnswer(kind, net, sender_key.hex(), to.public_key.hex(), seq, ts, sig.hex(), payload)


def flipped(hex_text: str) -> str:
    raw = bytearray(bytes.fromhex(hex_text))
    raw[0] ^= 0x01
    return raw.hex()


def with_payload(a: SignedAnswer, **changes) -> SignedAnswer:
    return dataclasses.replace(a, payload=dataclasses.replace(a.payload, **changes))


def bad_proof(check: Callable[[], object]) -> str:
    with pytest.raises(Rejected) as info:
        check()
    assert info.value.reason == "bad-proof"
    return info.value.detail


@pytest.fixture
def link() -> Link:
    return Link()


# -- honest proofs ----------------------------------------------------------------------------------------

def test_an_honest_proof_names_who_answered_what(link):
    accused, majority = link.honest()
    assert accused.sender == W1.public_key.hex() and accused.to == SUBMITTER.public_key.hex()
    assert accused.kind == "result" and accused.net == NET and accused.ts == T0 + 1
    proof = outvoted(accused, majority)
    assert proof is not None and proof.accused == accused and proof.majority == majority
    o = check_outvoted(proof, NET)
    assert o == Outvote(W1.node_id, SUBMITTER.node_id, "job1", "a",
                        tuple(sorted([W2.node_id, W3.node_id, W4.node_id])), T0 + 1)
    assert list(o.majority) == sorted(o.majority) and len(o.majority) == 3


def test_a_proof_survives_a_json_round_trip_and_a_relay_by_anyone(link):
    accused, majority = link.honest()
    proof = outvoted(accused, majority)
    expected = check_outvoted(proof, NET)
    again = parse(Outvoted, json.loads(json.dumps(dump(proof))), "outvoted")
    assert again == proof
    assert check_outvoted(again, NET) == expected
    # passed on by the attacker in its own signed envelope: nothing in it is taken on the relayer's word
    relayed = Receiver(W4.public_key, NET).receive(
        one_body(Sealer(MALLORY, NET).seal("outvoted", W4.public_key, proof, T0 + 10)), T0 + 10)
    assert relayed.kind == "outvoted" and relayed.sender == MALLORY.public_key
    assert check_outvoted(relayed.payload, NET) == expected


def test_honest_answers_to_different_requests_under_one_step_id_frame_no_one(link):
    """A hostile submitter asks W1 one step id with `output = 7` and W2, W3 `output = 8`: each answers
    honestly and signs. Their answers name different requests (`asked`), so they make no proof against W1;
    an answer naming no request makes none either."""
    seven, eight = asked_digest("python", {"code": "output = 7"}), asked_digest("python", {"code": "output = 8"})
    framed = Outvoted(link.answer(W1, 7, asked=seven), [link.answer(w, 8, asked=eight) for w in (W2, W3)])
    assert "not to one request" in bad_proof(lambda: check_outvoted(framed, NET))
    unnamed = Outvoted(link.answer(W1, 7, asked=""), [link.answer(w, 8, asked="") for w in (W2, W3)])
    assert "not to one request" in bad_proof(lambda: check_outvoted(unnamed, NET))
    honest = Outvoted(link.answer(W1, 7, asked=eight), [link.answer(w, 8, asked=eight) for w in (W2, W3)])
    assert check_outvoted(honest, NET).accused == W1.node_id


def test_a_hand_signed_answer_checks_like_a_sealed_one(link):
    """The `signed` helper the attacker cases use signs exactly what a Sealer signs."""
    accused, majority = link.honest()
    again = signed(W1, accused.payload, seq=accused.seq, ts=accused.ts)
    assert again == accused
    assert check_outvoted(Outvoted(again, majority), NET).accused == W1.node_id


def test_only_the_network_the_answers_were_signed_on_accepts_them(link):
    accused = link.answer(W1, WRONG, net="other-mesh")
    majority = [link.answer(w, net="other-mesh") for w in (W2, W3)]
    proof = Outvoted(accused, majority)
    assert check_outvoted(proof, "other-mesh").majority == tuple(sorted([W2.node_id, W3.node_id]))
    assert "network" in bad_proof(lambda: check_outvoted(proof, NET))


# -- the attacker's proofs ----------------------------------------------------------------------------------

def tampered_output(m: Link) -> Outvoted:
    accused, majority = m.honest()
    return Outvoted(with_payload(accused, output={"answer": 40, "items": ["a", "b"]}), majority)


def redigested(m: Link) -> Outvoted:
    """The accused's answer made self-consistent (a new output with its digest) but no longer as signed."""
    accused, majority = m.honest()
    other = {"answer": 7}
    return Outvoted(with_payload(accused, output=other, digest=digest(other)), majority)


def majority_sig_flipped(m: Link) -> Outvoted:
    accused, majority = m.honest()
    return Outvoted(accused, [majority[0], dataclasses.replace(majority[1], sig=flipped(majority[1].sig))])


def majority_resigned_by_attacker(m: Link) -> Outvoted:
    accused, majority = m.honest()
    a = majority[1]
    forged = signed(MALLORY, a.payload, sender=W3, seq=a.seq, ts=a.ts)
    assert forged.sender == a.sender and forged.sig != a.sig
    return Outvoted(accused, [majority[0], forged])


def same_worker_twice(m: Link) -> Outvoted:
    accused, majority = m.honest()
    return Outvoted(accused, [majority[0], m.answer(W2)])  # two genuine answers of W2's


def accused_in_majority(m: Link) -> Outvoted:
    accused, majority = m.honest()
    return Outvoted(accused, [majority[0], m.answer(W1)])  # W1 also signed the right answer


def submitter_in_majority(m: Link) -> Outvoted:
    accused, majority = m.honest()
    return Outvoted(accused, [majority[0], m.answer(SUBMITTER)])  # a result it sealed to itself


def majority_disagrees(m: Link) -> Outvoted:
    return Outvoted(m.answer(W1, WRONG), [m.answer(W2), m.answer(W3, {"answer": 43})])


def accused_agrees(m: Link) -> Outvoted:
    return Outvoted(m.answer(W1), [m.answer(W2), m.answer(W3)])


def two_submitters(m: Link) -> Outvoted:
    return Outvoted(m.answer(W1, WRONG), [m.answer(W2), m.answer(W3, to=OTHER_SUBMITTER)])


def two_jobs(m: Link) -> Outvoted:
    return Outvoted(m.answer(W1, WRONG), [m.answer(W2), m.answer(W3, job="job2")])


def two_steps(m: Link) -> Outvoted:
    return Outvoted(m.answer(W1, WRONG, step="b"), [m.answer(W2), m.answer(W3)])


def not_a_result(m: Link) -> Outvoted:
    """Validly signed by W1, but as a `progress` message, not an answer."""
    return Outvoted(signed(W1, result(WRONG), kind="progress"), [m.answer(W2), m.answer(W3)])


def another_network(m: Link) -> Outvoted:
    return Outvoted(m.answer(W1, WRONG), [m.answer(W2), m.answer(W3, net="other-mesh")])


def an_error(m: Link) -> Outvoted:
    return Outvoted(m.answer(W1, ok=False), [m.answer(W2), m.answer(W3)])


def error_in_majority(m: Link) -> Outvoted:
    accused, majority = m.honest()
    return Outvoted(accused, [majority[0], m.answer(W3, ok=False), m.answer(W4, ok=False)])


def sender_not_hex(m: Link) -> Outvoted:
    accused, majority = m.honest()
    return Outvoted(accused, [majority[0], dataclasses.replace(majority[1], sender="zz" * 32)])


def sig_not_hex(m: Link) -> Outvoted:
    accused, majority = m.honest()
    return Outvoted(dataclasses.replace(accused, sig="g" + accused.sig[1:]), majority)


def sender_too_short(m: Link) -> Outvoted:
    accused, majority = m.honest()
    return Outvoted(accused, [majority[0], dataclasses.replace(majority[1], sender=majority[1].sender[:62])])


SIGNATURE, SIGNERS = "a signature does not verify", "each answer must be another node's, none the submitter's"
AGREE, ONE_STEP = "the majority must agree on one answer and the accused give another", \
    "the answers are not to one submitter's one step"
NETWORK, ERROR = "every answer must be a result on this network", "an error is not an answer"
ATTACKS = [(tampered_output, SIGNATURE), (redigested, SIGNATURE), (majority_sig_flipped, SIGNATURE),
           (majority_resigned_by_attacker, SIGNATURE), (same_worker_twice, SIGNERS), (accused_in_majority, SIGNERS),
           (submitter_in_majority, SIGNERS), (majority_disagrees, AGREE), (accused_agrees, AGREE),
           (two_submitters, ONE_STEP), (two_jobs, ONE_STEP), (two_steps, ONE_STEP), (not_a_result, NETWORK),
           (another_network, NETWORK), (an_error, ERROR), (error_in_majority, ERROR)]


@pytest.mark.parametrize("attack, why", ATTACKS, ids=[f.__name__ for f, _ in ATTACKS])
def test_a_proof_that_does_not_hold_together_is_refused(link, attack, why):
    proof = attack(link)
    assert bad_proof(lambda: check_outvoted(proof, NET)) == why


def upper_case_twice(m: Link) -> Outvoted:
    """W2's two genuine answers, its key spelled once in upper case: the same key to bytes.fromhex."""
    accused, majority = m.honest()
    again = m.answer(W2)
    return Outvoted(accused, [majority[0], dataclasses.replace(again, sender=again.sender.upper())])


def upper_case_submitter(m: Link) -> Outvoted:
    """The submitter's own answer in the majority, its key spelled in upper case: the submitter and one
    accomplice outvote an honest worker."""
    accused, majority = m.honest()
    own = m.answer(SUBMITTER)
    return Outvoted(accused, [majority[0], dataclasses.replace(own, sender=own.sender.upper())])


MALFORMED = [sender_not_hex, sig_not_hex, sender_too_short, upper_case_twice, upper_case_submitter]


@pytest.mark.parametrize("attack", MALFORMED, ids=lambda f: f.__name__)
def test_keys_and_signatures_spelt_any_way_but_lower_case_hex_are_refused_as_malformed(link, attack):
    """Found by this file: keys were compared as hex strings, and bytes.fromhex takes capitals, so the
    submitter's own answer, its key in upper case, passed as another signer's (the submitter and one
    accomplice could frame an honest worker). A signed answer's keys and signature are now exactly
    lower-case hex of their lengths, and signers are told apart by node id."""
    with pytest.raises(Rejected) as info:
        attack(link)
    assert info.value.reason == "bad-schema"


def test_signers_are_told_apart_by_their_key_not_its_spelling(link):
    """Past the schema (a SignedAnswer built without its checks), shown() still compares node ids."""
    accused, majority = link.honest()
    own = link.answer(SUBMITTER)
    twin = object.__new__(SignedAnswer)
    for f in dataclasses.fields(SignedAnswer):
        object.__setattr__(twin, f.name, getattr(own, f.name))
    object.__setattr__(twin, "sender", own.sender.upper())
    proof = object.__new__(Outvoted)
    object.__setattr__(proof, "accused", accused)
    object.__setattr__(proof, "majority", [majority[0], twin])
    assert bad_proof(lambda: check_outvoted(proof, NET)) == SIGNERS


# -- sizes -------------------------------------------------------------------------------------------------

def test_a_proof_holds_two_to_max_majority_outvoting_answers(link):
    accused, majority = link.honest()
    for n in (0, 1, MAX_MAJORITY + 1):
        answers = (majority * 3)[:n]
        with pytest.raises(Rejected) as info:
            Outvoted(accused, answers)
        assert info.value.reason == "bad-schema"
        obj = json.loads(json.dumps({"accused": dump(accused), "majority": dump(answers)}))
        with pytest.raises(Rejected) as info:
            parse(Outvoted, obj, "outvoted")
        assert info.value.reason == "bad-schema"
    assert len(Outvoted(accused, majority[:2]).majority) == 2
    assert len(Outvoted(accused, (majority * 3)[:MAX_MAJORITY]).majority) == MAX_MAJORITY


def test_a_receiver_refuses_an_outvoted_envelope_with_too_many_answers(link):
    accused, majority = link.honest()
    body = {"accused": dump(accused), "majority": dump((majority * 3)[:MAX_MAJORITY + 1])}
    frame = Sealer(MALLORY, NET).seal_encoded("outvoted", W4.public_key, canonical(body), T0 + 10)
    bob = Receiver(W4.public_key, NET)
    with pytest.raises(Rejected) as info:
        bob.receive(one_body(frame), T0 + 10)
    assert info.value.reason == "bad-schema" and bob.rejected["bad-schema"] == 1


def test_outvoted_keeps_at_most_max_majority_answers_and_needs_two(link):
    accused = link.answer(W1, WRONG)
    many = [link.answer(ident(60 + i)) for i in range(MAX_MAJORITY + 2)]
    proof = outvoted(accused, many)
    assert proof is not None and proof.majority == many[:MAX_MAJORITY]
    assert len(check_outvoted(proof, NET).majority) == MAX_MAJORITY
    assert outvoted(accused, many[:1]) is None
    assert outvoted(accused, []) is None
    assert outvoted(accused, iter(many[:2])) == Outvoted(accused, many[:2])  # any sequence


def test_outvoted_leaves_out_answers_too_big_to_pass_around(link):
    base = len(canonical(dump(result(""))))  # the output "" is 2 bytes of it; "x" * n is n + 2
    at_limit, over = "x" * (MAX_PROOF_OUTPUT - base), "x" * (MAX_PROOF_OUTPUT - base + 1)
    assert len(canonical(dump(result(at_limit)))) == MAX_PROOF_OUTPUT
    majority = [link.answer(W2), link.answer(W3)]
    fits = outvoted(link.answer(W1, at_limit), majority)
    assert fits is not None and check_outvoted(fits, NET).accused == W1.node_id
    assert outvoted(link.answer(W1, over), majority) is None
    assert outvoted(link.answer(W1, WRONG), [link.answer(W2, over), link.answer(W3, over)]) is None
    assert outvoted(link.answer(W1, over), [link.answer(W2), link.answer(W3), link.answer(W4)]) is None


# -- the order of the checks: what a proof claims before any signature ---------------------------------

def test_shown_does_not_verify_signatures_verify_signed_does(link):
    """A node first asks whether it trusts the majority at all (shown, then the core), and only then pays
    for Ed25519: a bad signature passes `shown` and fails `verify_signed`."""
    accused, majority = link.honest()
    honest = Outvoted(accused, majority)
    forged = majority_sig_flipped(link)
    claimed = shown(forged, NET)
    assert claimed.accused == W1.node_id and claimed.majority == tuple(sorted([W2.node_id, W3.node_id]))
    assert "signature" in bad_proof(lambda: verify_signed(forged))
    assert verify_signed(honest) is None
    assert "signature" in bad_proof(lambda: check_outvoted(forged, NET))
    # the tampered output too: its claim holds together, its signature does not
    assert shown(tampered_output(link), NET).accused == W1.node_id
    bad_proof(lambda: verify_signed(tampered_output(link)))


def test_verify_signed_checks_the_digest_against_the_output():
    """Workers that sign an answer whose digest is not its output's prove nothing with it: the claim holds
    together (the majority agrees on one digest), the signatures verify, the digest does not."""
    liar = dataclasses.replace(result(RIGHT), digest=digest({"answer": 0}))
    proof = Outvoted(signed(W1, result(WRONG)), [signed(W2, liar), signed(W3, liar)])
    assert shown(proof, NET).majority == tuple(sorted([W2.node_id, W3.node_id]))
    assert "digest" in bad_proof(lambda: verify_signed(proof))
    assert "digest" in bad_proof(lambda: check_outvoted(proof, NET))


# -- canonical payloads ------------------------------------------------------------------------------------

def int_cpu(d: dict) -> None:
    d["work"]["cpu_s"] = 1  # a JSON 1 where Work has a float


def no_error_field(d: dict) -> None:
    del d["error"]  # left to its default


def no_token_ids_field(d: dict) -> None:
    del d["work"]["token_ids"]  # [] by default


@pytest.mark.parametrize("change", [int_cpu, no_error_field, no_token_ids_field], ids=lambda f: f.__name__)
def test_an_answer_that_does_not_re_encode_to_what_was_signed_is_not_canonical(link, change):
    payload = dataclasses.replace(result(RIGHT), work=Work(cpu_s=1.0, stdout="done\n"))
    raw = dump(payload)
    change(raw)
    encoded = canonical(raw)
    assert encoded != Sealer.encode(payload)
    link.now += 1
    frame = Sealer(W2, NET).seal_encoded("result", SUBMITTER.public_key, encoded, link.now)
    env = Receiver(SUBMITTER.public_key, NET).receive(one_body(frame), link.now)  # decodes fine
    assert env.payload == payload and env.payload_sha256 == hashlib.sha256(encoded).digest()
    assert canonical_payload(env) is False
    honest = link.envelope(W3, payload)
    assert canonical_payload(honest) is True
    # which is why the submitter keeps only canonical ones: its proof would not check
    proof = Outvoted(link.answer(W1, WRONG), [signed_answer(env), signed_answer(honest)])
    assert "signature" in bad_proof(lambda: check_outvoted(proof, NET))


def test_work_takes_whole_numbers_as_the_floats_a_receiver_parses():
    w = Work(cpu_s=1, peak_mb=2, seconds=3)
    assert type(w.cpu_s) is float and w.cpu_s == 1.0
    assert type(w.peak_mb) is float and type(w.seconds) is float
    assert canonical(dump(w)) == canonical(dump(Work(cpu_s=1.0, peak_mb=2.0, seconds=3.0)))
    assert b'"cpu_s":1.0' in canonical(dump(w))
    parsed = parse(Work, json.loads(canonical(dump(w))))
    assert parsed == w and canonical(dump(parsed)) == canonical(dump(w))


def test_signed_answer_keeps_the_envelope_as_signed(link):
    env = link.envelope(W2, result(RIGHT))
    a = signed_answer(env)
    assert (a.kind, a.net, a.sender, a.to, a.seq, a.ts, a.sig) == (
        "result", NET, W2.public_key.hex(), SUBMITTER.public_key.hex(), env.seq, env.ts_ms, env.sig.hex())
    assert a.payload is env.payload and len(env.sig) == 64
    assert hashlib.sha256(canonical(dump(a.payload))).digest() == env.payload_sha256



def test_an_output_nested_past_the_recursion_limit_is_refused_not_raised(link):
    """A hostile output nested just deeper than a re-encoding at another stack depth can take: the checks
    say so (bad-proof; canonical_payload False) instead of raising RecursionError into the node's loop."""
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    accused, majority = link.honest()
    proof = Outvoted(with_payload(accused, output=deep), majority)
    shown(proof, NET)  # what it claims holds together; only re-encoding it fails
    assert bad_proof(lambda: verify_signed(proof)) == "malformed answer (RecursionError)"
    env = link.envelope(W1, result())
    deep_env = dataclasses.replace(env, payload=dataclasses.replace(env.payload, output=deep))
    assert canonical_payload(env) and not canonical_payload(deep_env)
    assert outvoted(with_payload(accused, output=deep), majority) is None
