"""What a user reads from a ledger, as the CLI (`mesh ledger ... --json`) and the HTTP API (/ledger/...)
both show it: one shape, written once."""

from __future__ import annotations

from typing import Any

from .explain import explain
from .store import Ledger


def balance(led: Ledger, me: str) -> dict:
    totals = led.totals()
    return {"node": me, "balance": led.balance(), "earned": totals.get("earned", 0.0),
            "spent": 0.0 - totals.get("paid", 0.0)}  # 0.0 - x: no "-0.0" for a node that spent nothing


def peers(led: Ledger, now_ms: int) -> list[dict]:
    return [{"node": n, **s} for n, s in led.peer_stats(now_ms).items()]


def explained(led: Ledger, entry_id: int, me: str) -> dict[str, Any] | None:
    """One entry with its `explanation` in words (`mesh ledger explain`); None when there is no such entry."""
    entry = led.entry(entry_id)
    return None if entry is None else {**entry, "explanation": explain(entry, me)}
