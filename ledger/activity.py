"""What the owner's dashboard reads from a ledger: credits earned in a window and over time, the entries
where work earned nothing (peers outvoted, silent or caught by a spot check here) and the earnings whose
payer this node does not know or trust. Every query is bounded: a ledger grows without end."""

from __future__ import annotations

import json
from typing import Any

from .export import Judge
from .store import Ledger

MAX_POINTS = 200  # a chart needs no more; the series is bucketed down to this
MAX_ITEMS = 100  # entries listed, newest first
MAX_PAYERS = 500  # untrusted payers whose entries are looked up (SQLite caps a query's parameters)
UNEARNED = {"disagreed": "outvoted", "no_show": "no usable answer", "spot_failed": "failed a spot check"}


def earned_since(led: Ledger, since_ms: int) -> dict[str, float]:
    """Steps paid for (earned entries) since `since_ms`, and their credits."""
    n, total = led.db.execute("SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM entries WHERE kind='earned' AND ts>=?",
                              (since_ms,)).fetchone()
    return {"steps": n, "credits": round(total, 6)}


def earned_series(led: Ledger, points: int = MAX_POINTS) -> list[list[float]]:
    """[[time ms, credits earned up to then], ...], oldest first, at most `points`: entries are summed by
    equal spans of time, each point at the newest entry of its span."""
    first, last = led.db.execute("SELECT MIN(ts), MAX(ts) FROM entries WHERE kind='earned'").fetchone()
    if first is None:
        return []
    width = max(1, -(-(last - first + 1) // points))
    out, running = [], 0.0
    for at, total in led.db.execute(
            "SELECT MAX(ts), SUM(amount) FROM entries WHERE kind='earned' GROUP BY (ts - ?) / ? ORDER BY 1",
            (first, width)):
        running += total
        out.append([at, round(running, 6)])
    return out


def judged_unpaid(led: Ledger, limit: int = MAX_ITEMS) -> list[dict[str, Any]]:
    """The newest entries where a peer's work for this node earned nothing, each with its reason."""
    rows = led.db.execute("SELECT id, ts, kind, job, step, peer, detail FROM entries WHERE kind IN "
                          "('disagreed','no_show','spot_failed') ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [{"entry": i, "ts": ts, "kind": k, "job": j, "step": s, "peer": p, "reason": _reason(k, p, d)}
            for i, ts, k, j, s, p, d in rows]


def _reason(kind: str, peer: str, detail: str) -> str:
    """The few words for an entry: a no-show that ran out of time says so (the full text: ledger.explain)."""
    if kind == "no_show":
        d = json.loads(detail)
        failed = (d.get("why") or {}).get("failed") or {}
        said = str(failed.get(peer, d.get("reason", "")) if isinstance(failed, dict) else d.get("reason", ""))
        if "timeout" in said or "timed out" in said:
            return "timed out"
    return UNEARNED[kind]


def untrusted_earnings(led: Ledger, judge: Judge, limit: int = MAX_ITEMS) -> list[dict[str, Any]]:
    """The newest earned entries whose payer `judge` does not trust (unknown: perhaps a key minted to
    pay; distrusted: its reputation here is low): credits no other node need count (ledger.export)."""
    payers = [p for (p,) in led.db.execute("SELECT DISTINCT peer FROM entries WHERE kind='earned'")]
    bad = {p: ("paid by an unknown payer" if not v.known else "paid by a distrusted payer")
           for p in payers if not (v := judge(p)).trusted}
    named = list(bad)[:MAX_PAYERS]
    if not named:
        return []
    rows = led.db.execute(f"SELECT id, ts, job, step, peer, amount FROM entries WHERE kind='earned' AND peer IN "
                          f"({','.join('?' * len(named))}) ORDER BY id DESC LIMIT ?", (*named, limit)).fetchall()
    return [{"entry": i, "ts": ts, "kind": "earned", "job": j, "step": s, "peer": p, "amount": a, "reason": bad[p]}
            for i, ts, j, s, p, a in rows]
