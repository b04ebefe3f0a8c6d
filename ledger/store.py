"""The ledger database. Entries are append-only; each carries the hash of the one before, so an edit
anywhere breaks `verify`. Every batch is one transaction: a crash leaves all of it or none. Balances and
reputations are derived from entries, never stored on their own."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.core.admission import Account, shortfall
from mesh.core.policy import Evidence, StepEvidence, next_streak
from mesh.errors import LedgerError
from mesh.wire.canonical import canonical_text

from .heads import GENESIS, HEAD_EVERY, Head, Signer, against_chain, check_heads, signed_by
from .receipts import BadReceipt, verified

KINDS = ("paid", "earned", "agreed", "disagreed", "no_show", "penalty", "spot_failed")
REPUTATION_KINDS = ("agreed", "disagreed", "no_show", "penalty", "spot_failed")
_HEAD = struct.Struct(">qqd")
_LENS = struct.Struct(">5I")
_KIND_BYTES = {k: k.encode() for k in KINDS}  # also what tells a known kind
WITNESS_SUFFIX = ".head"  # HOME/ledger.head: the newest head signed at a multiple of HEAD_EVERY (Ledger.witness)
_sha256 = hashlib.sha256

# Migrations, applied in order inside one transaction each; the version reached is kept in
# `schema_version`. Never edit a released step: append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE entries (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        kind TEXT NOT NULL,
        job TEXT NOT NULL,
        step TEXT NOT NULL,
        peer TEXT NOT NULL,
        amount REAL NOT NULL,
        detail TEXT NOT NULL,
        prev TEXT NOT NULL,
        hash TEXT NOT NULL,
        UNIQUE (kind, job, step, peer)
    );
    CREATE INDEX entries_peer ON entries (peer, kind);
    """,
    """
    CREATE TABLE heads (n INTEGER PRIMARY KEY, hash TEXT NOT NULL, sig TEXT NOT NULL);
    """,
    # entries_peer served one query, peers_seen's DISTINCT peer (the export command), which the UNIQUE
    # index covers as well; every insert paid for it (bench/README.md, 2026-12-04: 8% of raw insert
    # speed with one peer, 37% with 20 peers).
    """
    DROP INDEX IF EXISTS entries_peer;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass(frozen=True, init=False)
class Entry:
    """One ledger row before it is chained. `amount` is + for credits earned, − for credits paid.
    `detail` is stored as canonical JSON; a typed value in it (a Receipt, a reason) is stored as what its
    `to_json()` returns, so the stored bytes are those of the plain JSON it stands for."""

    kind: str
    job: str
    step: str
    peer: str  # node id of the other party: the worker paid or judged, or the payer
    amount: float = 0.0
    detail: Mapping[str, Any] | None = None

    def __init__(self, kind: str, job: str, step: str, peer: str, amount: float = 0.0,
                 detail: Mapping[str, Any] | None = None) -> None:
        # The generated frozen __init__ sets each field through object.__setattr__ (0.7 µs an entry);
        # one update of the instance dict is 0.4 µs. Still frozen: assigning a field raises.
        self.__dict__.update(kind=kind, job=job, step=step, peer=peer, amount=amount, detail=detail)


def detail_json(detail: Mapping[str, Any] | None) -> str:
    return canonical_text(detail if type(detail) is dict else dict(detail or {}))


def entry_hash(prev: str, row_id: int, ts: int, kind: str, job: str, step: str, peer: str, amount: float,
               detail: str) -> str:
    """SHA-256 over the previous hash and every column, each text length-prefixed (no two rows share an
    encoding) and the amount as the 8 bytes of its IEEE double: one fixed byte layout, cheap to build."""
    return _sha256(prev.encode() + _HEAD.pack(row_id, ts, amount)
                   + _entry_tail(kind.encode(), job, step, peer, detail.encode())).hexdigest()


def _entry_tail(kind: bytes, job: str, step: str, peer: str, detail: bytes) -> bytes:
    """The part of an entry's hashed bytes that does not depend on its place in the chain (lengths, then
    kind, job, step, peer, detail): built before the write transaction, once per entry."""
    j, s, p = job.encode(), step.encode(), peer.encode()
    return b"".join((_LENS.pack(len(kind), len(j), len(s), len(p), len(detail)), kind, j, s, p, detail))


class Ledger:
    """One node's ledger. Given `signer` (the node's key) and `node` (its id), a writable ledger signs
    its chain's head when opened, every HEAD_EVERY entries and with every write (ledger/heads.py)."""

    def __init__(self, path: Path, readonly: bool = False, signer: Signer | None = None, node: str = ""):
        self.path, self.signer, self.node = path, None if readonly else signer, node
        try:
            if readonly:
                if not path.exists():
                    raise LedgerError(f"no ledger at {path}")
                # (the path quoted: a home named 'hh#1' opened 'hh' instead, an empty file made in passing)
                self.db = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=ro", uri=True, timeout=10)
            else:
                self.db = sqlite3.connect(path, timeout=10, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                # a page overwritten in the middle opened and was written to without a word (found by this
                # project's attack round on restarts): what the node would add then sits on a damaged file
                check = self.db.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise LedgerError(f"ledger {path} is damaged ({check}): move it aside and restore it from a "
                                      f"backup or `mesh ledger export`; `mesh ledger verify` says what it holds")
                self._migrate()
                if self.signer is not None and not self.heads():
                    self._sign_head()  # where signing starts: what came before is vouched for from here
                if self.signer is not None:
                    self._check_witness()
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open ledger {path}: {exc}") from None

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = self.db.execute("SELECT version FROM schema_version").fetchone()
        have = row[0] if row else 0
        if have > SCHEMA_VERSION:
            raise LedgerError(f"{self.path} has ledger schema {have}, newer than this homemesh knows "
                              f"({SCHEMA_VERSION}): upgrade homemesh")
        for version in range(have + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[version - 1]
            statements = [s.strip() for s in script.split(";") if s.strip()]
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in statements:
                    self.db.execute(stmt)
                self.db.execute("DELETE FROM schema_version")
                self.db.execute("INSERT INTO schema_version VALUES (?)", (version,))
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.db.close()  # (nothing to sign: every write signed its head)

    # -- the witness: the newest head signed at a multiple of HEAD_EVERY, in a file beside the ledger --------
    @property
    def witness_path(self) -> Path:
        return self.path.with_name(self.path.stem + WITNESS_SUFFIX)

    def witness(self) -> Head | None:
        """The head the witness file names (None: no witness). A chain cut at one of its own signed heads
        (a ledger restored from an older copy) holds together, and its heads went with what was cut: the
        witness, written after each commit that signs a head at a multiple of HEAD_EVERY, still names the
        later one. Raises LedgerError when the file is there and not a head."""
        try:
            data = json.loads(self.witness_path.read_text())
            return Head(int(data["n"]), str(data["hash"]), str(data["sig"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise LedgerError(f"{self.witness_path} is not a ledger head ({type(exc).__name__}): move it aside "
                              "to go on without it") from None

    def _witness_problem(self, public_key: bytes | None, node: str) -> str:
        """'' when the witness is absent or this chain still holds the head it names, else what was lost."""
        head = self.witness()
        if head is None or (public_key is not None and not signed_by(head, node, public_key)):
            return "" if head is None else f"{self.witness_path.name} is not signed by this node's key"
        count, hashes = self.chain_at({head.n})
        why = against_chain(head, hashes, count)
        return (f"{why} ({self.witness_path.name} names the head signed at entry {head.n}: the ledger was cut short "
                f"or restored from an older copy)") if why else ""

    def _check_witness(self) -> None:
        """Refuse to write on after a cut: the node would sign the shorter chain's heads, and the loss
        would no longer show."""
        why = self._witness_problem(None, self.node)
        if why:
            raise LedgerError(f"ledger {self.path}: {why}. Restore the newer copy; or, to go on with this one and "
                              f"accept the loss, move {self.witness_path} aside")

    def _write_witness(self, head: Head) -> None:
        tmp = self.witness_path.with_name(self.witness_path.name + ".tmp")
        try:  # after the commit (synchronous=FULL): never ahead of what the ledger holds for good
            tmp.write_text(json.dumps({"n": head.n, "hash": head.hash, "sig": head.sig}))
            os.replace(tmp, self.witness_path)
        except OSError:
            tmp.unlink(missing_ok=True)  # (a full disk: the witness stays at an older head, which still holds)

    def _last(self) -> tuple[int, str]:
        row = self.db.execute("SELECT id, hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
        return row if row else (0, GENESIS)

    def _sign_head(self) -> None:
        n, h = self._last()
        head = Head.sign(self.signer, self.node, n, h)
        self.db.execute("INSERT OR REPLACE INTO heads VALUES (?,?,?)", (head.n, head.hash, head.sig))

    def chain_at(self, ids: set[int]) -> tuple[int, dict[int, str]]:
        """(entries in the chain, the hash of each entry in `ids` that exists): what held heads are
        checked against."""
        count = self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        hashes = {rid: h for rid, h in self.db.execute(
            f"SELECT id, hash FROM entries WHERE id IN ({','.join('?' * len(ids))})", sorted(ids))} if ids else {}
        return count, hashes

    def latest_head(self) -> Head | None:
        """The newest signed head (what the node gives its peers to keep), None when there is none."""
        try:
            row = self.db.execute("SELECT n, hash, sig FROM heads ORDER BY n DESC LIMIT 1").fetchone()
        except sqlite3.OperationalError:
            return None
        return Head(*row) if row else None

    def heads(self) -> list[Head]:
        """The signed heads, oldest first (none in a ledger from before they were signed)."""
        try:
            rows = self.db.execute("SELECT n, hash, sig FROM heads ORDER BY n").fetchall()
        except sqlite3.OperationalError:  # read-only, and never opened by a node that signs
            return []
        return [Head(*r) for r in rows]

    def append(self, entries: list[Entry], ts: int) -> int:
        """Append a batch atomically; entries already present (same kind, job, step, peer) are skipped,
        which makes recording a receipt twice a no-op. Returns the number added."""
        return self.append_many([(entries, ts)])[0]

    def append_many(self, batches: list[tuple[list[Entry], int]]) -> list[int]:
        """Several batches in one transaction (group commit): all of them or none. Returns the number
        added per batch."""
        return [n for n, _ in self.append_batches(batches)]

    def append_batches(self, batches: list[tuple[list[Entry], int]]) -> list[tuple[int, float]]:
        """As append_many, returning per batch (entries added, sum of their amounts): duplicates skipped
        as already recorded count for neither."""
        # Everything that does not depend on the chain's tail is built here, before the transaction: the
        # detail's canonical text and the tail of each entry's hashed bytes; inside it only the id, the
        # previous hash and one SHA-256 are left per row.
        prepared = []
        add, kinds = prepared.append, _KIND_BYTES
        for i, (entries, ts) in enumerate(batches):
            for e in entries:
                kind, job, step, peer = e.kind, e.job, e.step, e.peer
                try:
                    k = kinds[kind]
                except (KeyError, TypeError):
                    raise LedgerError(f"unknown entry kind {kind!r}") from None
                d = detail_json(e.detail)
                add((i, ts, kind, job, step, peer, float(e.amount) + 0.0, d,  # (+ 0.0: -0.0 → 0.0, as SQLite keeps it)
                     _entry_tail(k, job, step, peer, d.encode())))
        try:
            try:  # fast path: one executemany; a duplicate anywhere aborts it and the careful path runs
                added = self._append(prepared, len(batches), fast=True)
            except sqlite3.IntegrityError:
                added = self._append(prepared, len(batches), fast=False)
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger write failed: {exc}") from None
        return [(len(amounts), round(sum(amounts), 9)) for amounts in added]

    def _append(self, prepared: list[tuple], n_batches: int, fast: bool) -> list[list[float]]:
        """Chain and insert `prepared` in one transaction; the amounts added, per batch, in order."""
        cur, heads = self.db.cursor(), []
        cur.execute("BEGIN IMMEDIATE")
        try:
            row = cur.execute("SELECT id, hash FROM entries ORDER BY id DESC LIMIT 1").fetchone()
            last_id, prev = row if row else (0, GENESIS)
            prev_bytes, head, sha256 = prev.encode(), _HEAD.pack, _sha256
            rows, keys = [], set()
            added: list[list[float]] = [[] for _ in range(n_batches)]
            for batch, ts, kind, job, step, peer, amount, detail, tail in prepared:
                if not fast:  # (the fast path leaves duplicates to the UNIQUE index: one aborts it)
                    key = (kind, job, step, peer)
                    if key in keys or cur.execute(
                            "SELECT 1 FROM entries WHERE kind=? AND job=? AND step=? AND peer=?", key).fetchone():
                        continue  # already recorded: recording a receipt twice changes nothing
                    keys.add(key)
                last_id += 1
                h = sha256(prev_bytes + head(last_id, ts, amount) + tail).hexdigest()  # = entry_hash(prev, …)
                rows.append((last_id, ts, kind, job, step, peer, amount, detail, prev, h))
                added[batch].append(amount)
                prev, prev_bytes = h, h.encode()
            cur.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            if self.signer is not None and rows:
                # every 64th entry's head stays; the latest is signed in the same transaction as its entries,
                # replacing the previous latest (a crash or a killed node must not leave an unsigned tail)
                heads = [Head.sign(self.signer, self.node, r[0], r[9]) for r in rows
                         if r[0] % HEAD_EVERY == 0 or r is rows[-1]]
                cur.execute("DELETE FROM heads WHERE n % ? != 0 AND n != (SELECT MIN(n) FROM heads)", (HEAD_EVERY,))
                cur.executemany("INSERT OR REPLACE INTO heads VALUES (?,?,?)", [(h.n, h.hash, h.sig) for h in heads])
            cur.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                cur.execute("ROLLBACK")
            raise
        kept = [h for h in heads if h.n % HEAD_EVERY == 0]
        if kept:
            self._write_witness(kept[-1])
        return added

    def balance(self) -> float:
        (total,) = self.db.execute("SELECT COALESCE(SUM(amount), 0) FROM entries").fetchone()
        return round(total, 6)

    def totals(self) -> dict[str, float]:
        rows = self.db.execute("SELECT kind, SUM(amount), COUNT(*) FROM entries GROUP BY kind").fetchall()
        return {k: round(s, 6) for k, s, _ in rows if k in ("paid", "earned")}

    def accounts(self) -> dict[str, Account]:
        """Per peer: credits earned from it and paid to it (a worker's view of each submitter's balance)."""
        out: dict[str, Account] = {}
        for peer, kind, total in self.db.execute(
                "SELECT peer, kind, SUM(amount) FROM entries WHERE kind IN ('paid','earned') GROUP BY peer, kind"):
            out[peer] = out.get(peer, Account()).add(kind, round(total, 6))
        for peer, amount, measured in self.db.execute(  # receipts for less than their work merits (UNDERPAID)
                "SELECT peer, amount, m FROM (SELECT peer, amount, json_extract(detail, '$.measured') AS m FROM entries"
                " WHERE kind = 'earned') WHERE typeof(m) IN ('integer', 'real')"):
            acct = out[peer]
            out[peer] = Account(acct.earned, acct.paid, acct.short + shortfall(amount, measured))
        return out

    def evidence(self) -> tuple[dict[str, dict[str, int]], dict[str, Evidence], int]:
        """Per peer: raw counts of each reputation kind, the time-decayed evidence, and the newest
        entry's time (ms), all derived from the entries."""
        counts: dict[str, dict[str, int]] = {}
        evidence: dict[str, Evidence] = {}
        newest = 0
        for peer, kind, ts in self.db.execute(
                "SELECT peer, kind, ts FROM entries WHERE kind IN ('agreed','disagreed','no_show','penalty',"
                "'spot_failed') ORDER BY id"):
            counts.setdefault(peer, dict.fromkeys(REPUTATION_KINDS, 0))[kind] += 1
            evidence.setdefault(peer, Evidence()).add(kind, ts)
            newest = max(newest, ts)
        return counts, evidence, newest

    def streaks(self) -> dict[str, int]:
        """Per peer, its current run of validated results (agreeing in a step that at least two agreed
        on); any disagreement, no-show or penalty ends the run. Drives adaptive replication."""
        runs: dict[str, int] = {}
        for peer, kind, detail in self.db.execute(
                "SELECT peer, kind, detail FROM entries WHERE kind IN ('agreed','disagreed','no_show','penalty',"
                "'spot_failed') ORDER BY id"):
            runs[peer] = next_streak(runs.get(peer, 0), kind, StepEvidence.in_detail(json.loads(detail)), peer)
        return runs

    def peers_seen(self) -> set[str]:
        """Every node id any entry names: the peers this ledger has met."""
        return {peer for (peer,) in self.db.execute("SELECT DISTINCT peer FROM entries")}

    def peer_stats(self, now_ms: int | None = None) -> dict[str, dict]:
        """node id → agreed, disagreed, no_show, penalty counts and the time-decayed beta reputation as
        of `now_ms` (default: the newest entry), best first."""
        counts, evidence, newest = self.evidence()
        at = newest if now_ms is None else now_ms
        stats = {p: {**c, "reputation": round(evidence[p].score(at), 6)} for p, c in counts.items()}
        return dict(sorted(stats.items(), key=lambda kv: (-kv[1]["reputation"], kv[0])))

    def history(self, limit: int | None = 100) -> list[dict[str, Any]]:
        """Newest entries first (all of them when `limit` is None)."""
        rows = self.db.execute("SELECT id, ts, kind, job, step, peer, amount, detail FROM entries "
                               "ORDER BY id DESC LIMIT ?", (-1 if limit is None else limit,)).fetchall()
        return [_row(r) for r in rows]

    def entry(self, entry_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT id, ts, kind, job, step, peer, amount, detail FROM entries WHERE id = ?",
                              (entry_id,)).fetchone()
        return _row(row) if row else None

    def receipt(self, kind: str, job: str, step: str, peer: str) -> dict[str, Any] | None:
        """The receipt the (kind, job, step, peer) row holds; None when there is no such row (or receipt)."""
        row = self.db.execute("SELECT detail FROM entries WHERE kind=? AND job=? AND step=? AND peer=?",
                              (kind, job, step, peer)).fetchone()
        return json.loads(row[0]).get("receipt") if row else None

    def receipts(self, kind: str, job: str, peer: str) -> dict[str, dict[str, Any]]:
        """The receipts the `kind` rows of (`job`, `peer`) hold, by step: one query, however many steps."""
        rows = self.db.execute("SELECT step, detail FROM entries WHERE kind=? AND job=? AND peer=?",
                               (kind, job, peer)).fetchall()
        return {step: r for step, detail in rows if (r := json.loads(detail).get("receipt")) is not None}

    def verify(self, my_id: str, public_key: bytes | None = None) -> tuple[int, str]:
        """Walk the chain and the receipts (none booked twice); given the node's `public_key`, also hold
        the chain to its signed heads. Returns (entries checked, '') or (bad entry id, reason)."""
        heads = self.heads()
        at = {h.n for h in heads}
        hashes: dict[int, str] = {}
        booked: dict[tuple[str, str, str, str], int] = {}
        prev, expect_id, n = GENESIS, 1, 0
        for row in self.db.execute("SELECT id, ts, kind, job, step, peer, amount, detail, prev, hash "
                                   "FROM entries ORDER BY id"):
            rid, ts, kind, job, step, peer, amount, detail, rprev, rhash = row
            if rid != expect_id:
                return rid, f"entry {expect_id} is missing"
            if rprev != prev or (entry_hash(prev, rid, ts, kind, job, step, peer, amount, detail) != rhash and not (
                    amount == 0 and entry_hash(prev, rid, ts, kind, job, step, peer, -0.0, detail) == rhash)):
                # (a zero amount also as -0.0: rows appended before amounts were normalised were hashed so,
                # and SQLite reads the REAL -0.0 back as 0.0 — a credit of 0 paid is booked as -0.0)
                return rid, f"entry {rid} does not match its hash (edited)"
            bad = _check_money(kind, job, step, peer, amount, detail, my_id)
            if bad:
                return rid, f"entry {rid}: {bad}"
            if kind in ("paid", "earned"):
                r = json.loads(detail)["receipt"]
                key = (r["payer"], r["job"], r["step"], r["worker"])
                if key in booked:
                    return rid, f"entry {rid} books the receipt entry {booked[key]} already booked"
                booked[key] = rid
            if rid in at:
                hashes[rid] = rhash
            prev, expect_id, n = rhash, expect_id + 1, n + 1
        if public_key is None:
            return n, ""
        bad_id, why = check_heads(heads, hashes, n, my_id, public_key)
        if not why:
            why = self._witness_problem(public_key, my_id)
            bad_id = n
        return (bad_id, why) if why else (n, "")


def _row(r: tuple) -> dict[str, Any]:
    i, ts, k, j, s, p, a, d = r
    detail = json.loads(d)
    return {"id": i, "ts": ts, "kind": k, "job": j, "step": s, "peer": p, "counterparty": p, "amount": a,
            "receipt": detail.get("receipt"), "detail": detail}


def _check_money(kind: str, job: str, step: str, peer: str, amount: float, detail: str, my_id: str) -> str:
    if kind not in ("paid", "earned"):
        return ""
    try:
        raw = json.loads(detail)["receipt"]
    except (ValueError, KeyError, TypeError):
        return "credit entry without a receipt"
    try:
        r = verified(raw)
    except BadReceipt as exc:
        return str(exc)
    payer, worker = r.payer_id, r.worker
    expect = (payer == my_id and worker == peer) if kind == "paid" else (worker == my_id and payer == peer)
    if not expect or r.job != job or r.step != step:
        return "receipt is for another payment"
    if abs((-r.amount if kind == "paid" else r.amount) - amount) > 1e-9:
        return "amount differs from its receipt"
    return ""
