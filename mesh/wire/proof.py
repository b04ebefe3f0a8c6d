"""Outvote proofs: a wrong answer shown with the signatures that make it one. The submitter that outvoted a
worker bundles the worker's signed `result` envelope with the signed results that agreed on the accepted
answer (`outvoted`); any node checks the bundle alone — every signature, one step, one submitter, one
answer against another — and hands on only who answered what (`Outvote`, weighed by mesh.core.trust).
Whoever sends it, nothing in it is taken on the sender's word.

The signed bytes are rebuilt from the payload's canonical form, so a submitter keeps only results whose
payload re-encodes to the bytes their worker signed (`canonical_payload`; checked on arrival)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from mesh.errors import Rejected
from mesh.wire.canonical import canonical, digest
from mesh.wire.envelope import Envelope, signed_bytes_of_hash
from mesh.wire.identity import node_id_of
from mesh.wire.identity import verify as verify_sig
from mesh.wire.messages import MAX_MAJORITY, Outvoted, SignedAnswer
from mesh.wire.schema import dump

MAX_PROOF_OUTPUT = 64 * 1024  # bytes of one answer's canonical payload in a proof: bigger ones are not bundled


@dataclass(frozen=True)
class Outvote:
    """A wrong answer proven by signed answers: `accused` answered `job`/`step` for `submitter` unlike every
    node of `majority`, which agreed on the answer accepted. `stamp`: ms of the accused's answer."""

    accused: str
    submitter: str
    job: str
    step: str
    majority: tuple[str, ...]
    stamp: int


def canonical_payload(env: Envelope) -> bool:
    """Whether `env`'s typed payload re-encodes to the bytes its sender signed (a JSON 1 where a float is
    due, or a field left to its default, would not): only such answers can be shown to others. An output
    nested so deep that it re-encodes only at the receiver's shallower stack counts as not."""
    try:
        return hashlib.sha256(canonical(dump(env.payload))).digest() == env.payload_sha256
    except RecursionError:
        return False


def signed_answer(env: Envelope) -> SignedAnswer:
    """A received result envelope, as kept for proofs (and the x_homemesh attestations)."""
    return SignedAnswer(env.kind, env.network, env.sender.hex(), env.recipient.hex(), env.seq, env.ts_ms,
                        env.sig.hex(), env.payload)


def outvoted(accused: SignedAnswer, majority: Sequence[SignedAnswer]) -> Outvoted | None:
    """The proof against `accused`, with at most MAX_MAJORITY outvoting answers; None when fewer than two,
    or when an answer is too big to pass around."""
    shown = list(majority)[:MAX_MAJORITY]
    try:
        if len(shown) < 2 or any(len(canonical(dump(a.payload))) > MAX_PROOF_OUTPUT for a in (accused, *shown)):
            return None
    except RecursionError:  # re-encoded once on arrival (canonical_payload), but at another stack depth
        return None
    return Outvoted(accused, shown)


def check_outvoted(proof: Outvoted, network: str) -> Outvote:
    """The Outvote a proof shows, or Rejected('bad-proof', why): `shown`, then `verify_signed`."""
    o = shown(proof, network)
    verify_signed(proof)
    return o


def shown(proof: Outvoted, network: str) -> Outvote:
    """What a proof claims, once its answers hold together — one step's, to one submitter, on `network`,
    from distinct signers, the accused's answer unlike the majority's — or Rejected('bad-proof', why).
    Signatures are not checked yet: a node first asks whether it would trust the majority at all, so a
    proof signed by ids it does not trust costs it no Ed25519 verification (see verify_signed)."""
    answers = (proof.accused, *proof.majority)
    first = proof.accused
    for a in answers:
        if a.kind != "result" or a.net != network:
            raise Rejected("bad-proof", "every answer must be a result on this network")
        if a.to != first.to or a.payload.job != first.payload.job or a.payload.step != first.payload.step:
            raise Rejected("bad-proof", "the answers are not to one submitter's one step")
        if not a.payload.ok:
            raise Rejected("bad-proof", "an error is not an answer")
        if not a.payload.asked or a.payload.asked != first.payload.asked:
            raise Rejected("bad-proof", "the answers are not to one request (each names what it was asked)")
    try:  # ids from the decoded keys: hex spelt in capitals is the same key, and must count as the same signer
        ids = [node_id_of(bytes.fromhex(k)) for k in (*(a.sender for a in answers), first.to)]
    except ValueError:
        raise Rejected("bad-proof", "a key is not hex") from None
    signers, submitter = ids[:-1], ids[-1]
    if len(set(signers)) != len(signers) or submitter in signers:
        raise Rejected("bad-proof", "each answer must be another node's, none the submitter's")
    right = proof.majority[0].payload.digest
    if any(a.payload.digest != right for a in proof.majority) or first.payload.digest == right:
        raise Rejected("bad-proof", "the majority must agree on one answer and the accused give another")
    return Outvote(signers[0], submitter, first.payload.job, first.payload.step, tuple(sorted(signers[1:])), first.ts)


def verify_signed(proof: Outvoted) -> None:
    """Every answer of the proof is as its sender signed it, or Rejected('bad-proof', why)."""
    for a in (proof.accused, *proof.majority):
        why = _unsigned(a)
        if why:
            raise Rejected("bad-proof", why)


def _unsigned(a: SignedAnswer) -> str:
    """'' when `a` is as its sender signed it; otherwise what is wrong."""
    try:
        sender, recipient, sig = bytes.fromhex(a.sender), bytes.fromhex(a.to), bytes.fromhex(a.sig)
        if len(sender) != 32 or len(recipient) != 32 or len(sig) != 64 or not 0 <= a.seq < 2**64 \
                or not 0 <= a.ts < 2**64:
            return "malformed answer header"
        message = signed_bytes_of_hash(a.kind, a.net, sender, recipient, a.seq, a.ts,
                                       hashlib.sha256(canonical(dump(a.payload))).digest())
    except (ValueError, TypeError, RecursionError) as exc:
        return f"malformed answer ({type(exc).__name__})"
    if not verify_sig(sender, sig, message):
        return "a signature does not verify"
    try:
        same = digest(a.payload.output) == a.payload.digest
    except (ValueError, RecursionError):
        return "an answer's output has no canonical form"
    if not same:
        return "an answer's digest is not its output's"
    return ""
