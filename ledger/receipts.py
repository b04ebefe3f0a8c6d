"""Payment receipts: signed by the paying node for one (job, step, worker, amount). The receipt is what
makes a credit real and idempotent: the same receipt can be recorded once, and anyone can check it."""

from __future__ import annotations

from mesh.wire.canonical import canonical
from mesh.wire.identity import Identity, node_id_of, verify

_TAG = b"homemesh/v1/receipt\x00"
_FIELDS = ("job", "step", "worker", "amount", "payer", "ts")


def _body(r: dict) -> bytes:
    return _TAG + canonical({k: r[k] for k in _FIELDS})


def make_receipt(payer: Identity, job: str, step: str, worker: str, amount: float, ts: int) -> dict:
    r = {"job": job, "step": step, "worker": worker, "amount": amount, "payer": payer.public_key.hex(), "ts": ts}
    r["sig"] = payer.sign(_body(r)).hex()
    return r


def check_receipt(r: object) -> str:
    """Empty string when `r` is a well-formed receipt with a valid signature, else the reason."""
    if not isinstance(r, dict) or set(r) != set(_FIELDS) | {"sig"}:
        return "receipt fields are wrong"
    if not all(isinstance(r[k], str) for k in ("job", "step", "worker", "payer", "sig")):
        return "receipt field types are wrong"
    if not isinstance(r["amount"], (int, float)) or isinstance(r["amount"], bool) or not 0 <= r["amount"] < 1e9:
        return "receipt amount is out of range"
    if not isinstance(r["ts"], int) or isinstance(r["ts"], bool):
        return "receipt timestamp is not an integer"
    try:
        payer, sig = bytes.fromhex(r["payer"]), bytes.fromhex(r["sig"])
    except ValueError:
        return "receipt key or signature is not hex"
    if len(payer) != 32 or not verify(payer, sig, _body(r)):
        return "receipt signature does not verify"
    return ""


def payer_id(r: dict) -> str:
    return node_id_of(bytes.fromhex(r["payer"]))
