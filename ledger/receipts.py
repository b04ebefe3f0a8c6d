"""Payment receipts: signed by the paying node for one (job, step, worker, amount). The receipt is what
makes a credit real and idempotent: the same receipt can be recorded once, and anyone can check it.

A receipt travels and is stored as its JSON object (peers, ledger rows and export files all hold that
form, and the signature covers its canonical encoding); `Receipt` is the typed form code works with.
`Receipt.from_json(...).to_json()` gives back the very same object, so nothing already signed, stored or
exported changes by being read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mesh.errors import MeshError
from mesh.wire.canonical import canonical
from mesh.wire.identity import Identity, node_id_of, verify

_TAG = b"homemesh/v1/receipt\x00"
_FIELDS = ("job", "step", "worker", "amount", "payer", "ts")
_TEXT = ("job", "step", "worker", "payer", "sig")
MAX_AMOUNT = 1e9


class BadReceipt(MeshError):
    """A receipt that is malformed or whose signature does not verify; the message says which."""


@dataclass(frozen=True)
class Receipt:
    job: str
    step: str
    worker: str  # node id of the worker paid
    amount: float  # credits; an int stays an int (the JSON number as signed is what the signature covers)
    payer: str  # hex Ed25519 public key of the paying node
    ts: int  # ms since the epoch, when it was signed
    sig: str  # hex Ed25519 signature over the tag and the canonical fields above

    @classmethod
    def sign(cls, payer: Identity, job: str, step: str, worker: str, amount: float, ts: int) -> Receipt:
        unsigned = cls(job, step, worker, amount, payer.public_key.hex(), ts, "")
        return cls(job, step, worker, amount, unsigned.payer, ts, payer.sign(unsigned.signed_bytes()).hex())

    @classmethod
    def from_json(cls, data: object) -> Receipt:
        """The receipt in `data` (as a peer, a ledger row or an export holds it), its shape checked;
        BadReceipt says what is wrong. The signature is checked by `problem()`."""
        if not isinstance(data, dict) or set(data) != set(_FIELDS) | {"sig"}:
            raise BadReceipt("receipt fields are wrong")
        if not all(isinstance(data[k], str) for k in _TEXT):
            raise BadReceipt("receipt field types are wrong")
        amount = data["amount"]
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not 0 <= amount < MAX_AMOUNT:
            raise BadReceipt("receipt amount is out of range")
        if not isinstance(data["ts"], int) or isinstance(data["ts"], bool):
            raise BadReceipt("receipt timestamp is not an integer")
        return cls(**data)

    def to_json(self) -> dict[str, Any]:
        return {"job": self.job, "step": self.step, "worker": self.worker, "amount": self.amount,
                "payer": self.payer, "ts": self.ts, "sig": self.sig}

    def signed_bytes(self) -> bytes:
        return _TAG + canonical({k: getattr(self, k) for k in _FIELDS})

    def problem(self) -> str:
        """Empty when the signature is the payer's over exactly these fields, else the reason."""
        try:
            payer, sig = bytes.fromhex(self.payer), bytes.fromhex(self.sig)
        except ValueError:
            return "receipt key or signature is not hex"
        try:
            signed = self.signed_bytes()
        except ValueError:  # a lone surrogate in a text field: no UTF-8, so nothing anyone could have signed
            return "receipt fields have no canonical form"
        if len(payer) != 32 or not verify(payer, sig, signed):
            return "receipt signature does not verify"
        return ""

    @property
    def payer_id(self) -> str:
        return node_id_of(bytes.fromhex(self.payer))


def verified(data: object) -> Receipt:
    """The receipt in `data` if it is well formed and its signature verifies; else BadReceipt."""
    receipt = Receipt.from_json(data)
    why = receipt.problem()
    if why:
        raise BadReceipt(why)
    return receipt


def make_receipt(payer: Identity, job: str, step: str, worker: str, amount: float, ts: int) -> dict[str, Any]:
    """A signed receipt in its JSON form (what goes on the wire and into the ledger)."""
    return Receipt.sign(payer, job, step, worker, amount, ts).to_json()


def check_receipt(r: object) -> str:
    """Empty string when `r` is a well-formed receipt with a valid signature, else the reason."""
    try:
        verified(r)
    except BadReceipt as exc:
        return str(exc)
    return ""


def payer_id(r: dict[str, Any]) -> str:
    return node_id_of(bytes.fromhex(r["payer"]))
