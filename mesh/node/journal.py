"""The submitter's journal (HOME/journal.db): every input of its submission core, written before the
core decides on it, so a node killed at any moment rebuilds the very same core by replaying them
(`mesh.core.submission.Submission.apply`) and resumes its unfinished jobs.

SQLite in WAL mode at synchronous=FULL, as the ledger: a commit survives the process being killed and a
power cut (330 µs an input here, against 29 µs at NORMAL, which a power cut could set back). A journal
cut short anyway (a write that failed) is still a consistent, earlier state: answers lost that way are
asked again, and the ledger's keys (kind, job, step, peer) keep a payment single.

Inputs belong to an *epoch*: one core's life. The journal starts a new epoch (a fresh core, the old
inputs deleted) only when the core is idle and the journal has grown past COMPACT_AT inputs, so a
restart never replays more than about that many. The same database holds the receipt outbox
(mesh.node.outbox) and the worker's owed steps (mesh.node.owed): one file, one transaction discipline.

Group commit (`group_commit`): the submitter's inputs are then written into one open transaction and
committed together (`commit`, by the submitter a few event-loop turns after the first), so a burst of
inputs costs one fsync, not one each. What those inputs cause must wait for that commit: the submitter
holds its effects until then (mesh.node.submitter). A write made outside a batch, or a batch not
deferred, commits the open group with it: whoever needs its row on disk before acting gets the earlier
inputs there too, never fewer."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mesh.core.policy import Candidate
from mesh.core.submission import Config, loggable
from mesh.errors import JournalError

log = logging.getLogger("mesh.node.journal")
JOURNAL_FILE = "journal.db"
COMPACT_AT = 20_000  # inputs in an epoch before the journal starts over (when the core is idle)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inputs (seq INTEGER PRIMARY KEY, now REAL NOT NULL, wall REAL NOT NULL,
                                   entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (ref TEXT PRIMARY KEY, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (peer TEXT NOT NULL, job TEXT NOT NULL, step TEXT NOT NULL,
                                   record TEXT NOT NULL, receipt TEXT NOT NULL, state INTEGER NOT NULL,
                                   tries INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL DEFAULT 0,
                                   made REAL NOT NULL, PRIMARY KEY (peer, job, step));
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_at);
CREATE TABLE IF NOT EXISTS owed (payer TEXT NOT NULL, job TEXT NOT NULL, step TEXT NOT NULL,
                                 most REAL NOT NULL, answered REAL NOT NULL, result TEXT NOT NULL,
                                 paid INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (payer, job, step));
CREATE INDEX IF NOT EXISTS owed_answered ON owed (answered);
CREATE TABLE IF NOT EXISTS owed_forgotten (payer TEXT PRIMARY KEY, most REAL NOT NULL, answered REAL NOT NULL);
"""


@dataclasses.dataclass(frozen=True)
class Replayed:
    """What a journal holds for its current epoch: the core's config and its inputs, in order."""

    config: Config
    entries: list[list]
    walls: list[float]  # time.time() when each input was journaled
    now: float  # the core's clock at the last input (continued across the restart, see Journal.clock_at)
    wall: float  # time.time() then


class Journal:
    def __init__(self, home: Path | None):
        """The journal in `home` (None: in memory, for tests of the parts that keep state in it)."""
        self.path = home / JOURNAL_FILE if home is not None else Path(":memory:")
        self.error = ""  # set by the first failed write: journaling stops (what is written stays a valid prefix)
        self._refs: set[str] = set()
        self._encoded: dict[Candidate, dict] = {}
        self._batch = 0
        self._opened: Callable[[], None] | None = None  # group commit: told when a deferred write leaves one open
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(SCHEMA)
            check = self.db.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.Error as exc:
            raise JournalError(self._unusable(exc)) from None
        if check != "ok":
            raise JournalError(self._unusable(check))
        self.epoch = int(self._meta("epoch") or 0)
        self.count = self.db.execute("SELECT COUNT(*) FROM inputs").fetchone()[0]

    def _unusable(self, why: object) -> str:
        return (f"the job journal {self.path} cannot be used ({why}): free disk space or make the home writable; "
                f"if it is damaged, move it aside (its unfinished jobs and unsent receipts are then given up) "
                f"and start the node again")

    def close(self) -> None:
        """Commit what is open (its effects never left: a restart replays the inputs and resumes)."""
        self.commit()
        self.db.close()

    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    # -- writing -----------------------------------------------------------------------------------
    def group_commit(self, opened: Callable[[], None]) -> None:
        """From now on appends and batch(defer=True) leave their transaction open; `opened()` is called
        when one does, and its caller must commit() soon and hold what those inputs cause until then."""
        self._opened = opened

    @property
    def pending(self) -> bool:
        """Rows written and not yet committed (a deferred group)."""
        return self.db.in_transaction and not self._batch

    def commit(self) -> bool:
        """Everything written so far, on disk in one transaction; False when the journal failed (then the
        open group is rolled back: what is on disk stays a valid prefix)."""
        if self.pending and not self.error:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._failed(exc)
        return not self.error

    def write(self, sql: str, args: tuple | list = ()) -> bool:
        """One statement, committed unless inside batch(); False (and journaling stopped) on failure. An
        open deferred group is committed with it."""
        if self.error:
            return False
        if self.pending:
            with self.batch():
                return self.write(sql, args)
        try:
            self.db.execute(sql, args)
        except sqlite3.Error as exc:
            self._failed(exc)
            return False
        return True

    def _failed(self, exc: sqlite3.Error) -> None:
        """Journaling stops; what was not committed is rolled back, so the file ends at a valid prefix."""
        self.error = f"the job journal {self.path} could not be written: {exc}"
        log.error("%s; new jobs are refused until the node is restarted with the disk fixed", self.error)
        if self.db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")

    @contextlib.contextmanager
    def batch(self, defer: bool = False) -> Iterator[None]:
        """Everything written inside commits together (or not at all). `defer` (with group_commit): left
        open for the next commit(), with the rest of the turn's inputs; else committed at the end, with
        any group open before it."""
        if self._batch or self.error:
            self._batch += 1
            try:
                yield
            finally:
                self._batch -= 1
            return
        self._batch = 1
        if not self.db.in_transaction:
            try:
                self.db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._failed(exc)
        try:
            yield
        finally:
            self._batch = 0
            if defer and self._opened is not None and self.db.in_transaction and not self.error:
                self._opened()
            else:
                self.commit()

    def start_epoch(self, config: Config) -> None:
        """A fresh core: its config kept, the previous epoch's inputs deleted."""
        with self.batch():
            self.write("DELETE FROM inputs")
            self.write("DELETE FROM candidates")
            self.write("INSERT OR REPLACE INTO meta VALUES ('epoch', ?)", (str(self.epoch + 1),))
            self.write("INSERT OR REPLACE INTO meta VALUES ('config', ?)", (json.dumps(dataclasses.asdict(config)),))
        if not self.error:
            self.epoch += 1
            self.count = 0
            self._refs.clear()

    def append(self, entry: list, now: float) -> None:
        """One core input, before the core acts on it (Submission's sink)."""
        if self.error:
            return
        try:
            encoded, fresh = self._encode(entry)
            text = json.dumps(encoded)
        except (TypeError, ValueError) as exc:  # a bug, not a disk fault: what follows would not replay
            self._failed(sqlite3.DataError(f"input {entry[0]} cannot be encoded: {exc}"))
            return
        row = (now, time.time(), text)
        deferred = self._opened is not None
        if fresh is None and not deferred:
            if self.write("INSERT INTO inputs (now, wall, entry) VALUES (?,?,?)", row):
                self.count += 1
            return
        with self.batch(defer=deferred):  # a tick naming candidates not stored yet: both rows in one commit
            if fresh is not None:
                self.write("INSERT OR IGNORE INTO candidates VALUES (?,?)", fresh)
            self.write("INSERT INTO inputs (now, wall, entry) VALUES (?,?,?)", row)
        if not self.error:
            if fresh is not None:
                self._refs.add(fresh[0])
            self.count += 1

    def _encode(self, entry: list) -> tuple[list, tuple[str, str] | None]:
        """The input as journaled, and the (ref, body) of the candidates it names when they are not
        stored yet (each distinct set is stored once; on a 6-node mesh 184 of 187 ticks over 50 r=3 jobs
        named a set not seen before, so that row shares the tick's commit)."""
        encoded = loggable(entry, self._candidate)
        fresh = None
        if entry[0] == "tick":
            body = json.dumps(encoded[2], sort_keys=True)
            ref = hashlib.sha256(body.encode()).hexdigest()[:24]
            if ref not in self._refs:
                fresh = (ref, body)
            encoded[2] = {"ref": ref}
        return encoded, fresh

    def _candidate(self, c: Candidate) -> dict:
        """asdict, remembered per distinct candidate (it was half the journal's cost: a tick names all)."""
        got = self._encoded.get(c)
        if got is None:
            if len(self._encoded) > 100_000:
                self._encoded.clear()
            got = self._encoded[c] = dataclasses.asdict(c)
        return got

    # -- reading back ------------------------------------------------------------------------------
    def replayed(self) -> Replayed | None:
        """The current epoch, decoded (None when there is none yet); JournalError when it is damaged."""
        raw = self._meta("config")
        if raw is None:
            return None
        try:
            config = Config.from_json(json.loads(raw))
            bodies = dict(self.db.execute("SELECT ref, body FROM candidates"))
            rows = self.db.execute("SELECT now, wall, entry FROM inputs ORDER BY seq").fetchall()
            entries = []
            for _, _, text in rows:
                entry = json.loads(text)
                if entry[0] == "tick":
                    entry[2] = json.loads(bodies[entry[2]["ref"]])
                entries.append(entry)
            now, wall = rows[-1][:2] if rows else (0.0, time.time())
            walls = [w for _, w, _ in rows]
        except (sqlite3.Error, ValueError, TypeError, KeyError, IndexError, RecursionError) as exc:
            raise JournalError(self._unusable(f"damaged: {type(exc).__name__}: {str(exc)[:300]}")) from None
        self._refs = set(bodies)
        return Replayed(config, entries, walls, now, wall)

    @staticmethod
    def clock_at(replayed: Replayed | None, monotonic: float) -> float:
        """The offset that makes the core's clock (time.monotonic() + offset) go on from where the journal
        stopped, counting the time the node was down (by the wall clock, never backwards)."""
        if replayed is None or not replayed.entries:
            return 0.0
        return replayed.now + max(0.0, time.time() - replayed.wall) - monotonic

    def rows(self, sql: str, args: tuple | list = ()) -> list[tuple[Any, ...]]:
        """A read for the outbox and the owed table (errors are the caller's: JournalError)."""
        try:
            return self.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"the job journal {self.path} cannot be read: {exc}") from None
