"""Attestations: a worker's signed answer in a form anyone can check without the mesh. The submitter keeps
the header fields, signature and payload of each result envelope it accepted; `verify` rebuilds the
signed bytes from them (mesh.wire.envelope's one fixed encoding) and checks the Ed25519 signature, that the
payload is the one signed, and that the payload's digest is the digest of its output."""

from __future__ import annotations

import hashlib

from mesh.wire.canonical import canonical, digest
from mesh.wire.envelope import signed_bytes_of_hash
from mesh.wire.identity import node_id_of
from mesh.wire.identity import verify as verify_sig
from mesh.wire.messages import SignedAnswer
from mesh.wire.schema import dump


def attestation(a: SignedAnswer) -> dict:
    """A kept answer (mesh.wire.proof.signed_answer: its payload re-encodes to the bytes signed) in the
    form the API shows."""
    payload = dump(a.payload)
    return {
        "signature": a.sig,
        "signed": {"kind": a.kind, "net": a.net, "from": a.sender, "to": a.to, "seq": a.seq, "ts": a.ts,
                   "payload_sha256": hashlib.sha256(canonical(payload)).hexdigest()},
        "payload": payload,
    }


def verify(att: dict) -> str:
    """'' when the attestation holds; otherwise what is wrong with it."""
    try:
        s = att["signed"]
        sender, payload_sha = bytes.fromhex(s["from"]), bytes.fromhex(s["payload_sha256"])
        message = signed_bytes_of_hash(s["kind"], s["net"], sender, bytes.fromhex(s["to"]), int(s["seq"]),
                                       int(s["ts"]), payload_sha)
        sig = bytes.fromhex(att["signature"])
    except (KeyError, TypeError, ValueError) as exc:
        return f"malformed attestation ({type(exc).__name__}: {exc})"
    if not verify_sig(sender, sig, message):
        return "the signature does not verify"
    payload = att.get("payload")
    if not isinstance(payload, dict) or hashlib.sha256(canonical(payload)).digest() != payload_sha:
        return "the payload is not the one signed"
    if payload.get("ok") and digest(payload.get("output")) != payload.get("digest"):
        return "the payload's digest is not its output's"
    if "node" in att and att["node"] != node_id_of(sender):
        return "the signer is not the node named"
    return ""
