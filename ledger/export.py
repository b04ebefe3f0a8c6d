"""Earnings a node can prove to anyone: export its receipts, and check such a file offline. A receipt is
only as good as its payer: anyone can make a key and sign receipts with it, so an export says what its
node knows of each payer, and a check by another node counts only the receipts whose payers *it* knows
and trusts, reporting the rest (unknown payers: minted, perhaps; distrusted ones) apart.

Receipts prove that a worker id was paid, not that whoever shows them is that worker: anyone can copy an
export. So an export is signed as a whole with its node's own key, over an optional challenge the checker
chose (`--challenge`): a file that answers the checker's fresh challenge was made by the id's key holder,
for this check, and was not changed since."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh.errors import UserError
from mesh.userfiles import read_text
from mesh.wire.canonical import canonical
from mesh.wire.identity import Identity, node_id_of, verify

from .receipts import BadReceipt, verified
from .store import Ledger

FORMAT = "homemesh-receipts/2"
OLD_FORMAT = "homemesh-receipts/1"  # receipts only, no word on their payers: still checked
TRUST_MIN = 0.5  # a payer below neutral reputation (it lost more than it won) is not trusted
SIGNED_AS = b"homemesh receipts export\x00"  # what an export's signature is over starts so: no envelope or
# receipt signature can be shown as one
MAX_CHALLENGE = 256  # characters of a checker's challenge
# A payer's receipts are believed for at most this many times the credits it moved with the checking node
# (earned from it and paid to it, in the checker's ledger): a payer that paid a checker 0.5 credits once
# signed a receipt for 999,999 to a made-up worker, and it counted as trusted (found 2026-12-07)
VOUCH_FACTOR = 10.0


@dataclass(frozen=True)
class PayerView:
    """What one node knows of a payer: whether it ever met it (a signed record, or ledger entries), and
    its reputation there (None: met, but never judged: neutral). `met_only`: met, with no dealings in the
    ledger (no work either way, no payment, no penalty): a stranger that linked once is no payer to
    believe (one signed receipts for 999,999,000 credits and they counted as trusted, 2026-12-06)."""

    known: bool
    reputation: float | None = None
    met_only: bool = False
    limit: float | None = None  # credits its receipts are believed for in all (None: none, the node itself)

    @property
    def trusted(self) -> bool:
        return self.known and not self.met_only and (self.reputation is None or self.reputation >= TRUST_MIN)

    def to_json(self) -> dict[str, Any]:
        return {"known": self.known, "reputation": self.reputation, "trusted": self.trusted,
                "met_only": self.met_only, "limit": self.limit}


Judge = Callable[[str], PayerView]  # payer node id → what this node knows of it


def judge_with(led: Ledger, me: str, record_keys: Iterable[str], now_ms: int | None = None,
               met: Iterable[str] = ()) -> Judge:
    """Node `me`'s view of payers: itself, its ledger (every peer it has entries about, reputations, the
    credits it moved with each: a payer's limit), the keys of the signed records it holds (its peers.json)
    and the node ids in `met` (its peer table)."""
    dealt = led.peers_seen() | {me}
    seen = dealt | {node_id_of(bytes.fromhex(k)) for k in record_keys} | set(met)
    stats = led.peer_stats(int(time.time() * 1000) if now_ms is None else now_ms)
    moved = {p: a.earned + a.paid for p, a in led.accounts().items()}

    def view(payer: str) -> PayerView:
        limit = None if payer == me else round(VOUCH_FACTOR * moved.get(payer, 0.0), 6)
        return PayerView(payer in seen, stats[payer]["reputation"] if payer in stats else None,
                         payer in seen and payer not in dealt, limit)
    return view


def export_receipts(rows: list[dict[str, Any]], node: str, judge: Judge) -> dict[str, Any]:
    """The receipts of `rows` (Ledger.history) that paid `node`, exactly as they were signed and stored,
    each with what `node` knows of its payer; `total` counts only payers it trusts."""
    items, total, total_all, believed = [], 0.0, 0.0, Believed()
    for r in rows:
        raw = r["detail"].get("receipt") if r["kind"] == "earned" else None
        if raw is None:
            continue
        payer = node_id_of(bytes.fromhex(raw["payer"]))
        view = judge(payer)
        items.append({"receipt": raw, "payer": view.to_json()})
        total_all += raw["amount"]
        own = payer == node  # (never in a ledger a node wrote: it never pays itself)
        total += raw["amount"] if view.trusted and not own and believed.take(payer, view, raw["amount"]) else 0.0
    return {"format": FORMAT, "node": node, "receipts": items, "total": round(total, 6),
            "total_all": round(total_all, 6)}


@dataclass
class Believed:
    """Credits taken so far from each trusted payer's receipts, held to its view's limit (a receipt that
    would pass it is not taken, whole)."""

    taken: dict[str, float] = field(default_factory=dict)

    def take(self, payer: str, view: PayerView, amount: float) -> bool:
        after = self.taken.get(payer, 0.0) + amount
        if view.limit is not None and after > view.limit + 1e-9:
            return False
        self.taken[payer] = after
        return True


def check_challenge(text: str) -> str:
    """A checker's challenge as given on the command line, or UserError."""
    if not 1 <= len(text) <= MAX_CHALLENGE or not text.isprintable():
        raise UserError(f"a challenge is 1 to {MAX_CHALLENGE} printable characters (e.g. a random word the checker "
                        f"chose), got {len(text)} characters" + ("" if text.isprintable() else ", not all printable"))
    return text


def sign_export(data: dict[str, Any], identity: Identity, challenge: str, now_ms: int) -> dict[str, Any]:
    """`data` (export_receipts) with its node's key, the checker's `challenge` ('' for none), the time, and
    the node's signature over all of it."""
    body = {**data, "key": identity.public_key.hex(), "challenge": challenge, "signed_ms": now_ms}
    return {**body, "sig": identity.sign(_signed_bytes(body)).hex()}


def _signed_bytes(data: dict[str, Any]) -> bytes:
    """What an export's signature is over: everything in the file but the signature, canonical JSON."""
    return SIGNED_AS + canonical({k: v for k, v in data.items() if k != "sig"})


def _holder_problems(data: dict[str, Any], node: str, challenge: str | None) -> tuple[bool, list[str]]:
    """(whether the file is signed by `node`'s own key, what is wrong): a copy of another node's export,
    one changed after it was signed, or one made for another challenge than the checker's. The file's own
    challenge is its maker's to write: one that is no challenge `export` would sign is never echoed."""
    key, sig = data.get("key"), data.get("sig")
    if key is None and sig is None:
        return False, ([f"the file is not signed by its node, so it cannot answer the challenge {challenge!r}: "
                        "anyone holding a copy could show it"] if challenge is not None else [])
    try:
        key_bytes, sig_bytes = bytes.fromhex(key), bytes.fromhex(sig)  # type: ignore[arg-type]
        signed = _signed_bytes(data)
    except (TypeError, ValueError, RecursionError):
        return False, ["the file's key or signature is not hex, or the file has no canonical form: it is not as "
                       "its node signed it"]
    if node_id_of(key_bytes) != node:
        return False, [f"the file is signed with a key that is not node {node[:12]}'s: a copy shown by someone else"]
    if not verify(key_bytes, sig_bytes, signed):
        return False, ["the file's signature does not check: it was changed after its node signed it"]
    if not _a_challenge(data.get("challenge")):
        return True, [f"the file's challenge is not 0 to {MAX_CHALLENGE} printable characters: no export made it"]
    if challenge is not None and data.get("challenge") != challenge:
        return True, [f"the file answers the challenge {data.get('challenge')!r}, not {challenge!r}: made for "
                      "another check (a copy, or an old file)"]
    return True, []


def _a_challenge(value: object) -> bool:
    """Whether `value` is a challenge `export` signs: '' (none), or what check_challenge lets through."""
    return isinstance(value, str) and len(value) <= MAX_CHALLENGE and (value == "" or value.isprintable())


@dataclass
class Bucket:
    receipts: int = 0
    credits: float = 0.0
    payers: set[str] = field(default_factory=set)

    def add(self, payer: str, amount: float) -> None:
        self.receipts, self.credits = self.receipts + 1, self.credits + amount
        self.payers.add(payer)

    def to_json(self) -> dict[str, Any]:
        return {"receipts": self.receipts, "credits": round(self.credits, 6), "payers": sorted(self.payers)}


@dataclass
class Checked:
    """A checked export: valid receipts by what the checking node knows of their payers, and problems."""

    node: str
    trusted: Bucket = field(default_factory=Bucket)
    unknown: Bucket = field(default_factory=Bucket)  # payers the checking node never dealt with: minted, perhaps
    distrusted: Bucket = field(default_factory=Bucket)
    # from trusted payers, past VOUCH_FACTOR times the credits each moved with the checking node
    over_limit: Bucket = field(default_factory=Bucket)
    problems: list[str] = field(default_factory=list)  # the first MAX_LISTED, then one line counting the rest
    problems_total: int = 0
    signed: bool = False  # by the node's own key (its signature checks), so made by whoever holds that key
    challenge: str | None = None  # the challenge the file answers, when signed

    def problem(self, line: str) -> None:
        """One more problem: listed while fewer than MAX_LISTED are, then counted (a file of millions of bad
        items kept a line each, and the CLI joined them: 1.6 GB for a 16 MiB file)."""
        self.problems_total += 1
        if len(self.problems) < MAX_LISTED:
            self.problems.append(line)
        else:
            self.problems[MAX_LISTED:] = [f"... and {self.problems_total - MAX_LISTED:,} more problems"]

    @property
    def valid(self) -> int:
        return sum(b.receipts for b in self._buckets())

    def _buckets(self) -> tuple[Bucket, ...]:
        return self.trusted, self.unknown, self.distrusted, self.over_limit

    def to_json(self) -> dict[str, Any]:
        return {"ok": not self.problems, "node": self.node, "valid": self.valid,
                "total": round(self.trusted.credits, 6),
                "total_all": round(sum(b.credits for b in self._buckets()), 6),
                "trusted": self.trusted.to_json(), "unknown": self.unknown.to_json(),
                "distrusted": self.distrusted.to_json(), "over_limit": self.over_limit.to_json(),
                "problems": self.problems, "problems_total": self.problems_total, "signed": self.signed,
                "challenge": self.challenge}


def verify_receipts(path: Path, judge: Judge | None = None, challenge: str | None = None) -> Checked:
    """Check every receipt in an export (signature, payee, no (job, step) paid twice by one payer) and
    sort the valid ones by what `judge` (the checking node; None: a machine that knows nobody) knows of
    their payers. The file's own words about its payers are not taken: its node wrote them. The file as a
    whole must be signed by its node's key when it says so, and answer `challenge` when one is given."""
    data = _read(path)
    node = str(data.get("node"))
    out = Checked(node)
    out.signed, problems = _holder_problems(data, node, challenge)
    for line in problems:
        out.problem(line)
    if out.signed and _a_challenge(data.get("challenge")):
        out.challenge = data["challenge"]
    seen: set[tuple[str, str, str, str]] = set()
    believed = Believed()
    for i, item in enumerate(data["receipts"]):
        raw = item.get("receipt") if data["format"] == FORMAT and isinstance(item, dict) else item
        try:
            r = verified(raw)
        except BadReceipt as exc:
            out.problem(f"receipt {i + 1}: {exc}")
            continue
        key = (r.payer, r.job, r.step, r.worker)
        if r.worker != node:
            out.problem(f"receipt {i + 1}: receipt is for worker {r.worker[:12]}, not {node[:12]}")
            continue
        if r.payer_id == r.worker:  # a node never pays itself: its own word for its earnings, believed up to
            out.problem(f"receipt {i + 1}: signed by its own worker: a node never pays itself")  # 10x its real ones
            continue
        if key in seen:
            out.problem(f"receipt {i + 1}: the same (payer, job, step) appears twice")
            continue
        seen.add(key)
        view = judge(r.payer_id) if judge else PayerView(False)
        bucket = (out.unknown if not view.known or view.met_only else out.distrusted if not view.trusted
                  else out.trusted if believed.take(r.payer_id, view, float(r.amount)) else out.over_limit)
        bucket.add(r.payer_id, float(r.amount))
    return out


MAX_RECEIPTS_FILE = 256 << 20  # an export of half a million receipts; /dev/zero is refused long before memory runs out
MAX_LISTED = 100  # problems listed one by one; the rest are counted
# An export holds one receipt in ~440 bytes at its most compact: 3 objects and 12 commas. A file with an object or
# a list every 64 bytes, or a comma every 16, is no export: parsed, `{},` took 72 bytes of memory for 3 of file
# (a 256 MiB file ran out of 4 GiB); within these its values take a few times the file, as an export's do.
BYTES_PER_CONTAINER, BYTES_PER_VALUE = 64, 16


def _read(path: Path) -> dict[str, Any]:
    text = read_text(path, "receipts file", MAX_RECEIPTS_FILE)
    n = len(text)
    if (text.count("{") + text.count("[") > n // BYTES_PER_CONTAINER + 64
            or text.count(",") > n // BYTES_PER_VALUE + 64):
        raise UserError(f"{path} is not a homemesh receipts export: it packs more JSON values than an export "
                        "of its size holds")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise UserError(f"{path} is not JSON") from None
    if (not isinstance(data, dict) or data.get("format") not in (FORMAT, OLD_FORMAT)
            or not isinstance(data.get("receipts"), list)):
        raise UserError(f"{path} is not a homemesh receipts export ({FORMAT})")
    return data
