"""Ledger speed: hash-chained appends per second against raw sqlite3 batched inserts of rows of the same
size (same WAL and sync settings, same run), then balance and history query times at N entries.

    python -m bench.ledger_bench [--rows 200000] [--big 1000000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from bench.abab import abab, pin
from bench.report import emit
from ledger.store import MIGRATIONS, Entry, Ledger

BATCH = 100


def entries(n: int, start: int = 0) -> list[Entry]:
    return [Entry("agreed", f"job{(start + i) // 10:012d}", f"s{(start + i) % 10}", "ab" * 32, 0.0,
                  {"why": {"rule": "majority", "accepted": "cd" * 32}}) for i in range(n)]


def raw_sqlite(path: Path, rows: int, ledger_schema: bool = False) -> float:
    """Plain inserts of the same rows: into a bare table, or (`ledger_schema`) into the ledger's own
    tables and indexes, which tells the indexes' share from the hashing and encoding's."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    if ledger_schema:  # the schema a new ledger has: every migration
        for stmt in (s.strip() for m in MIGRATIONS for s in m.split(";")):
            if stmt:
                db.execute(stmt)
    else:
        db.execute("CREATE TABLE entries (id INTEGER PRIMARY KEY, ts INTEGER, kind TEXT, job TEXT, step TEXT, "
                   "peer TEXT, amount REAL, detail TEXT, prev TEXT, hash TEXT)")
    detail = json.dumps({"why": {"rule": "majority", "accepted": "cd" * 32}})
    t0 = time.perf_counter()
    for b in range(0, rows, BATCH):
        db.execute("BEGIN")
        db.executemany("INSERT INTO entries VALUES (NULL,?,?,?,?,?,?,?,?,?)",
                       [(1, "agreed", f"job{(b + i) // 10:012d}", f"s{(b + i) % 10}", "ab" * 32, 0.0, detail,
                         "0" * 64, "1" * 64) for i in range(BATCH)])
        db.execute("COMMIT")
    dt = time.perf_counter() - t0
    db.close()
    return rows / dt


def chained(path: Path, rows: int) -> float:
    led = Ledger(path)
    t0 = time.perf_counter()
    for b in range(0, rows, BATCH):
        led.append(entries(BATCH, b), 1)
    dt = time.perf_counter() - t0
    n, why = led.verify("me")
    assert not why and n == rows, why
    led.close()
    return rows / dt


def queries(path: Path, rows: int) -> dict:
    led = Ledger(path)
    have = led.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    for b in range(have, rows, 1000):
        led.append(entries(min(1000, rows - b), b), 1)
    out = {}
    t0 = time.perf_counter()
    led.balance()
    out["balance_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    led.history(100)
    out["history100_s"] = time.perf_counter() - t0
    led.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--pairs", type=int, default=5, help="baseline/subject runs, alternating (at least 5)")
    ap.add_argument("--cpus", default="0", help="CPU set both sides run on (default 0)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cpus = pin(args.cpus)
    with tempfile.TemporaryDirectory() as d:
        fresh = iter(range(10**9))  # every run on a new file: none appends to a table another filled
        db = lambda kind: Path(d) / f"{kind}{next(fresh)}.db"  # noqa: E731
        # the ledger does these inserts and more: faster than them means they were slowed by something else
        r = abab("ledger_vs_sqlite", lambda: raw_sqlite(db("raw"), args.rows), lambda: chained(db("chain"), args.rows),
                 args.pairs, plausible=(0.0, 1.02))
        same = abab("ledger_vs_same_schema", lambda: raw_sqlite(db("same"), args.rows, ledger_schema=True),
                    lambda: chained(db("chain"), args.rows), args.pairs, plausible=(0.0, 1.02))
        q = queries(Path(d) / "big.db", args.big)
    med = statistics.median
    res = {"raw_sqlite_rows_per_s": round(med(b for b, _ in r.pairs)),
           "ledger_rows_per_s": round(med(s for _, s in r.pairs)), **r.fields(),
           "sqlite_ledger_schema_rows_per_s": round(med(b for b, _ in same.pairs)), **same.fields(),
           f"balance_s_at_{args.big}": round(q["balance_s"], 4),
           f"history100_s_at_{args.big}": round(q["history100_s"], 4), "cpus": cpus}
    emit(res, args.json)


if __name__ == "__main__":
    main()
