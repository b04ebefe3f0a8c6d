"""What a worker is owed, on disk (the journal's database): each step it answered ok for a payer, the
most it may be paid for it, and the answer it gave. A restarted worker still accepts the receipts it is
due and asks its payers for missing ones (`receipt-ask`); a request it already answered gets the same
answer back instead of a second run that might differ; a receipt booked twice is acknowledged, not
booked again."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable

from mesh.node.journal import Journal

MAX_OWED = 10_000  # steps remembered (oldest forgotten first)
KEEP_RESULT = 16 << 10  # an answer larger than this (JSON) is not kept: asked again, the step is refused
KEEP_PAID_S = 86400.0  # a paid step is remembered this long (a duplicate receipt is acknowledged, not booked)
KEEP_UNPAID_S = 7 * 86400.0  # an answer never paid (outvoted, late) is forgotten after this
ASK_AFTER_S = 30.0  # an unpaid step older than this is asked for when its payer comes back


class Owed:
    """`paid_before(payer)`: whether the payer ever paid this node (its ledger): a trim forgets such payers'
    unpaid steps last. Unpaid steps a trim forgets still count as the payer's debt (`debt`) until they would
    have expired (KEEP_UNPAID_S): forgotten, a non-payer's steps let it past --require-credit again and again."""

    def __init__(self, journal: Journal, paid_before: Callable[[str], bool] = lambda payer: False):
        self.journal = journal
        self.paid_before = paid_before
        self.unpaid: dict[tuple[str, str, str], float] = {}  # (payer, job, step) → most it may be paid
        # ages from the newest step answered when the clock reads later than it: a clock a week ahead at a
        # restart (a dead RTC battery) forgot every claim, and their receipts were then refused (red team G)
        newest = journal.rows("SELECT MAX(answered) FROM owed")[0][0]
        old = min(time.time(), newest if newest is not None else math.inf) - KEEP_UNPAID_S
        journal.write("DELETE FROM owed WHERE paid=0 AND answered<?", (old,))
        journal.write("DELETE FROM owed_forgotten WHERE answered<?", (old,))
        for payer, job, step, most in journal.rows("SELECT payer, job, step, most FROM owed WHERE paid=0 "
                                                   "ORDER BY answered"):
            self.unpaid[(payer, job, step)] = most
        # payer → what the unpaid steps a trim forgot may be paid, in all
        self.forgotten: dict[str, float] = dict(journal.rows("SELECT payer, most FROM owed_forgotten"))
        self._rows = journal.rows("SELECT COUNT(*) FROM owed")[0][0]

    def debt(self, payer: str) -> float:
        """What `payer` may owe this node: its unpaid steps, remembered or forgotten by a trim."""
        return sum(v for (p, _, _), v in self.unpaid.items() if p == payer) + self.forgotten.get(payer, 0.0)

    def answered(self, key: tuple[str, str, str], most: float, result: dict) -> None:
        text = json.dumps(result)
        if len(text) > KEEP_RESULT:
            text = ""
        self.unpaid[key] = most
        self.journal.write("INSERT OR REPLACE INTO owed (payer, job, step, most, answered, result, paid) "
                           "VALUES (?,?,?,?,?,?,0)", (*key, most, time.time(), text))
        self._rows += 1
        if self._rows > MAX_OWED:
            self._trim()

    def _trim(self) -> None:
        """Back under MAX_OWED: paid steps past KEEP_PAID_S first, then the oldest of the payer holding the
        most, payers that never paid this node before those that did. Oldest first over all, one stranger's
        10,100 tiny unpaid steps pushed an honest payer's answered step out, and its valid receipt was then
        refused (found by this project's attack round); by count alone, a hundred fresh keys of a hundred
        steps each did the same to an honest payer's 400 (found by the red team of 2026-12-07)."""
        now = time.time()
        with self.journal.batch():
            self.journal.write("DELETE FROM owed WHERE paid=1 AND answered<?", (now - KEEP_PAID_S,))
            keep = MAX_OWED - MAX_OWED // 10  # (a tenth of room: not a trim for every step answered past the cap)
            while (over := self.journal.rows("SELECT COUNT(*) FROM owed")[0][0] - keep) > 0:
                held = self.journal.rows("SELECT payer, COUNT(*) FROM owed GROUP BY payer")
                payer, n = min(held, key=lambda pn: (self.paid_before(pn[0]), -pn[1], pn[0]))
                gone = "SELECT rowid FROM owed WHERE payer=? ORDER BY answered LIMIT ?"
                args = (payer, max(1, min(over, n // 2)))
                (most, answered), = self.journal.rows(f"SELECT TOTAL(most), MAX(answered) FROM owed WHERE paid=0 AND "
                                                      f"rowid IN ({gone})", args)
                if most:  # still owed: it counts against the payer's credit line until it would have expired
                    self.journal.write("INSERT INTO owed_forgotten (payer, most, answered) VALUES (?,?,?) ON CONFLICT "
                                       "(payer) DO UPDATE SET most=most+excluded.most, answered=MAX(answered, "
                                       "excluded.answered)", (payer, most, answered))
                self.journal.write(f"DELETE FROM owed WHERE rowid IN ({gone})", args)
            # (one row a payer; past MAX_OWED payers, those forgotten longest ago go, as they would expire first)
            self.journal.write("DELETE FROM owed_forgotten WHERE payer IN (SELECT payer FROM owed_forgotten ORDER "
                               "BY answered DESC LIMIT -1 OFFSET ?)", (MAX_OWED,))
        keep = {(p, j, s) for p, j, s in self.journal.rows("SELECT payer, job, step FROM owed WHERE paid=0")}
        self.unpaid = {k: v for k, v in self.unpaid.items() if k in keep}
        self.forgotten = dict(self.journal.rows("SELECT payer, most FROM owed_forgotten"))
        self._rows = self.journal.rows("SELECT COUNT(*) FROM owed")[0][0]

    def earlier(self, key: tuple[str, str, str]) -> tuple[bool, dict | None]:
        """(answered before, the answer if it was kept) for a request from this payer for this step."""
        rows = self.journal.rows("SELECT result FROM owed WHERE payer=? AND job=? AND step=?", key)
        if not rows:
            return False, None
        return True, json.loads(rows[0][0]) if rows[0][0] else None

    def was_paid(self, key: tuple[str, str, str]) -> bool:
        return bool(self.journal.rows("SELECT 1 FROM owed WHERE payer=? AND job=? AND step=? AND paid=1", key))

    def paid(self, key: tuple[str, str, str]) -> None:
        self.unpaid.pop(key, None)
        self.journal.write("UPDATE owed SET paid=1 WHERE payer=? AND job=? AND step=?", key)

    def pay_forgotten(self, key: tuple[str, str, str], amount: float) -> bool:
        """Book a receipt for a step a trim forgot against what the trim kept of its payer's debt: a payer
        new here holds its steps like a stranger's, and a flood of strangers' steps made the worker forget
        them and refuse their valid receipts. False when that debt does not cover `amount` (then the
        receipt pays for nothing this node answered). The step is remembered as paid, so a resent copy is
        acknowledged, not booked twice; `unpay_forgotten` undoes this when the ledger did not take it."""
        payer = key[0]
        left = self.forgotten.get(payer, 0.0)
        if amount > left:
            return False
        self.forgotten[payer] = left - amount
        with self.journal.batch():
            self.journal.write("UPDATE owed_forgotten SET most=MAX(0, most-?) WHERE payer=?", (amount, payer))
            self.journal.write("INSERT OR REPLACE INTO owed (payer, job, step, most, answered, result, paid) "
                               "VALUES (?,?,?,?,?,'',1)", (*key, amount, time.time()))
        self._rows += 1
        return True

    def unpay_forgotten(self, key: tuple[str, str, str], amount: float) -> None:
        payer = key[0]
        self.forgotten[payer] = self.forgotten.get(payer, 0.0) + amount
        with self.journal.batch():
            self.journal.write("UPDATE owed_forgotten SET most=most+? WHERE payer=?", (amount, payer))
            self.journal.write("DELETE FROM owed WHERE payer=? AND job=? AND step=? AND paid=1", key)
        self._rows -= 1

    def to_ask(self, payer: str, now: float | None = None) -> dict[str, list[str]]:
        """Unpaid steps of `payer` answered more than ASK_AFTER_S ago, by job (for receipt-asks)."""
        now = time.time() if now is None else now
        rows = self.journal.rows("SELECT job, step FROM owed WHERE payer=? AND paid=0 AND answered<? "
                                 "ORDER BY answered LIMIT 1024", (payer, now - ASK_AFTER_S))
        out: dict[str, list[str]] = {}
        for job, step in rows:
            out.setdefault(job, []).append(step)
        return out
