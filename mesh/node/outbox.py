"""The submitter's receipt outbox, in the journal's database: every receipt this node signs stays here
until its worker acknowledges it (a signed `receipt-ack`), and is sent again with backoff — across
restarts of either side — until then. A receipt is held (state HELD) before its ledger batch is written
and released (SENDING) in the same transaction that journals the write's outcome, so a receipt goes out
only for a payment the ledger holds, and a batch written again after a crash signs the same bytes. With
group commit that release may sit in the journal's open transaction for a moment: a receipt is read for
sending (`due`, `asked`) only after the journal has committed, so what goes out is on disk."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

from mesh.node.flow import KeyedBuckets
from mesh.node.journal import Journal

log = logging.getLogger(__name__)

HELD, SENDING, ACKED = 0, 1, 2
DAMAGED = 3  # a row whose receipt does not decode: never sent (it stopped every later delivery), kept to look at
BACKOFF_MAX_S = 60.0  # between two sends of one unacknowledged receipt
KEEP_ACKED_S = 7 * 86400.0  # an acknowledged receipt is kept this long, to answer a worker that asks again
DUE_BATCH = 256  # receipts sent per round at most
# a receipt its worker asks for again (receipt-ask) is sent at most once in this long: answered every time, one
# ask of 64 steps sealed 64 receipts (3.7 ms of the node's CPU), and a worker paid for one job's 64 steps could
# ask 200 times a second (this project's second attack round of 2026-12-06). A worker asks when a link comes up
ASKED_AGAIN_S = 30.0
ASKED_KEPT = 8192  # receipts remembered as sent on asking (the oldest forgotten first)
# receipt-asks one peer may have read, burst then per second. A worker asks when its payer's link comes back, 32
# asks at most (16 jobs, 1,024 steps, 64 a message: Worker.on_peer_up); each ask read cost a signature, a schema,
# a journal commit and a query, and a peer could send 200 a second. Past this they are refused before their
# signatures (Node.screen), and the link that sent them is read slower.
ASK_RULE = (32.0, 1.0)


class Outbox:
    def __init__(self, journal: Journal):
        self.journal = journal
        self._asked: dict[tuple[str, str, str], float] = {}  # (peer, job, step) → when sent on asking (monotonic)
        self._askers = KeyedBuckets()  # per asking peer, held to ASK_RULE

    def held(self, record: str) -> dict[tuple[str, str, str], dict]:
        """Receipts already signed for ledger batch `record` (a batch written again: the same bytes)."""
        rows = self.journal.rows("SELECT peer, job, step, receipt FROM outbox WHERE record=?", (record,))
        return {(p, j, s): json.loads(r) for p, j, s, r in rows}

    def hold(self, record: str, receipts: Iterable[tuple[str, dict]]) -> None:
        """Receipts signed for batch `record`, kept before it is written: the caller commits the journal
        (with group commit, its next commit) before the ledger write."""
        receipts = list(receipts)
        if not receipts:
            return
        now = time.time()
        with self.journal.batch(defer=True):
            for peer, r in receipts:
                self.journal.write("INSERT OR IGNORE INTO outbox (peer, job, step, record, receipt, state, made) "
                                   "VALUES (?,?,?,?,?,?,?)", (peer, r["job"], r["step"], record, json.dumps(r),
                                                              HELD, now))

    def settle(self, record: str, ok: bool) -> None:
        """The batch was written: its receipts may go (once committed: see `due`). Call inside the journal
        batch that journals the outcome. (A write reported failed may still have landed: a timed-out answer.)"""
        if ok:
            self.journal.write("UPDATE outbox SET state=?, next_at=0 WHERE record=? AND state=?", (SENDING, record, HELD))
        # refused: they stay held, and the next start sends those the ledger holds after all (reconcile)

    def stranded(self, keep: set[str]) -> list[tuple[str, str, str]]:
        """Held receipts of batches not waiting to be written (records other than `keep`): their write's
        outcome was lost (the ledger answered after its caller gave up). (peer, job, step) each."""
        rows = self.journal.rows("SELECT peer, job, step, record FROM outbox WHERE state=?", (HELD,))
        return [(p, j, s) for p, j, s, rec in rows if rec not in keep]

    def release(self, peer: str, job: str, step: str, receipt: dict | None) -> None:
        """A stranded receipt: sent as the ledger holds it, or dropped when the ledger has no such payment."""
        if receipt is None:
            self.journal.write("DELETE FROM outbox WHERE peer=? AND job=? AND step=? AND state=?",
                               (peer, job, step, HELD))
        else:
            self.journal.write("UPDATE outbox SET state=?, receipt=?, next_at=0 WHERE peer=? AND job=? AND step=?",
                               (SENDING, json.dumps(receipt), peer, job, step))

    def due(self, now: float | None = None) -> list[tuple[str, dict]]:
        """Unacknowledged receipts whose next send is due, each pushed back by its backoff. Only releases
        on disk are read: the journal commits what is open first (a failed commit rolls it back)."""
        now = time.time() if now is None else now
        self.journal.commit()
        # (a next send further off than the longest backoff was set by a clock since set back: due now)
        rows = self.journal.rows("SELECT peer, job, step, receipt, tries FROM outbox WHERE state=? AND (next_at<=? "
                                 "OR next_at>?) ORDER BY next_at LIMIT ?", (SENDING, now, now + BACKOFF_MAX_S, DUE_BATCH))
        out: list[tuple[str, dict]] = []
        if not rows:
            return out
        with self.journal.batch(defer=True):  # (backoff only: lost in a kill, a receipt goes again sooner)
            for peer, job, step, text, tries in rows:
                receipt = _decoded(text)
                if receipt is None:
                    log.error("outbox: the receipt for %s/%s to %s does not decode: set aside", job, step, peer[:12])
                    self.journal.write("UPDATE outbox SET state=? WHERE peer=? AND job=? AND step=?",
                                       (DAMAGED, peer, job, step))
                    continue
                self.journal.write("UPDATE outbox SET tries=tries+1, next_at=? WHERE peer=? AND job=? AND step=?",
                                   (now + min(BACKOFF_MAX_S, 2.0 ** tries), peer, job, step))
                out.append((peer, receipt))
        return out

    def nudge(self, peer: str) -> None:
        """`peer` is reachable again: what it is owed goes at the next round, whatever its backoff."""
        self.journal.write("UPDATE outbox SET next_at=0 WHERE peer=? AND state=?", (peer, SENDING))

    def acked(self, peer: str, job: str, steps: list[str]) -> int:
        """`peer` booked these receipts: stop sending them. Only its own rows are touched."""
        before = self.journal.db.total_changes
        with self.journal.batch(defer=True):  # (nothing leaves on it: it may wait for the turn's commit)
            for step in steps:
                self.journal.write("UPDATE outbox SET state=? WHERE peer=? AND job=? AND step=? AND state=?",
                                   (ACKED, peer, job, step, SENDING))
        return self.journal.db.total_changes - before

    def answers(self, peer: str, now: float | None = None) -> bool:
        """Whether a receipt-ask of `peer`'s would be read now (ASK_RULE), spending nothing."""
        return self._askers.allows(peer, ASK_RULE, time.monotonic() if now is None else now)

    def take_ask(self, peer: str, now: float | None = None) -> bool:
        """Whether `peer` may have a receipt-ask answered now (ASK_RULE); spends its turn if so."""
        return self._askers.spend(peer, ASK_RULE, time.monotonic() if now is None else now)

    def asked(self, peer: str, job: str, steps: list[str], now: float | None = None,
              elsewhere: Callable[[], dict[str, dict]] | None = None) -> list[dict]:
        """Receipts `peer` asks for again (it lost our send or its own record of it): its own, released, each
        at most once in ASKED_AGAIN_S. `elsewhere`: the receipts of this job the ledger holds for `peer`, by
        step, asked once for those the outbox has none of (a journal lost, torn or restored without its WAL:
        the ledger's `paid` rows hold their receipts)."""
        now = time.monotonic() if now is None else now
        self.journal.commit()  # (as in `due`: a release still in the open transaction is not sent)
        steps = [s for s in dict.fromkeys(steps) if now - self._asked.get((peer, job, s), -ASKED_AGAIN_S) >= ASKED_AGAIN_S]
        marks = ",".join("?" * len(steps))
        rows = self.journal.rows(f"SELECT step, receipt FROM outbox WHERE peer=? AND job=? AND step IN ({marks}) "
                                 "AND state NOT IN (?,?)", (peer, job, *steps, HELD, DAMAGED)) if steps else []
        have = {step: r for step, text in rows if (r := _decoded(text)) is not None}
        if elsewhere is not None and any(s not in have for s in steps):
            have = {**elsewhere(), **have}
        out = []
        for step in steps:
            receipt = have.get(step)
            if receipt is not None:
                self._asked.pop((peer, job, step), None)
                self._asked[(peer, job, step)] = now  # (the newest last)
                out.append(receipt)
        while len(self._asked) > ASKED_KEPT:
            del self._asked[next(iter(self._asked))]
        return out

    def pending(self) -> int:
        """Receipts of written payments not yet acknowledged (`mesh status`)."""
        return self.journal.rows("SELECT COUNT(*) FROM outbox WHERE state=?", (SENDING,))[0][0]

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.journal.write("DELETE FROM outbox WHERE state=? AND made<?", (ACKED, now - KEEP_ACKED_S))


def _decoded(text: object) -> dict | None:
    """A stored receipt's JSON object, or None when the row is damaged."""
    try:
        value = json.loads(text) if isinstance(text, (str, bytes)) else None
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
