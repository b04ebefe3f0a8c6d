"""The steps peers asked of this node, newest kept, with when and how each ended: what the owner's
dashboard (GET /dashboard/data) shows of the node's own work — steps in the last hour and day, and why a
step earned nothing. In memory since the node started and bounded (the tally keeps the counts for good;
the ledger keeps what was paid)."""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

MAX_KEPT = 5000  # steps remembered, the oldest forgotten first
MAX_SHOWN = 100  # steps that earned nothing, listed newest first
WINDOWS_S = {"hour": 3600.0, "day": 86400.0}


@dataclass(frozen=True)
class Worked:
    at: float  # time.time() when it ended (or was refused)
    requester: str
    job: str
    step: str
    kind: str
    outcome: str  # ok | failed | refused
    why: str  # the error or refusal sent back ('' for ok)

    @property
    def key(self) -> tuple[str, str, str]:
        return self.requester, self.job, self.step


def reason(item: Worked, unpaid: bool) -> str:
    """Why a step earned nothing, in the dashboard's few words ('' when it did, or may yet)."""
    if item.outcome == "refused":
        return "refused by a limit"
    if item.outcome == "failed":
        said = item.why.lower()
        if "timed out" in said or "timeout" in said:
            return "timed out"
        return "cancelled" if said.startswith("cancelled") else "failed"
    return "not paid" if unpaid else ""


def said(item: Worked, why: str, now: float) -> str:
    """The step's story in a sentence, for a step no ledger entry explains (nothing was paid)."""
    where = f"{item.kind} step {item.step!r} of job {item.job} for {item.requester[:12]}"
    if why == "not paid":
        return (f"This node answered {where} {now - item.at:.0f} s ago and holds no receipt for it: a payer pays "
                "only the answers in the quorum it accepted, so an outvoted answer is never paid (the payer does "
                "not tell the worker), and one it has not settled yet is asked for again when it is linked.")
    if why == "refused by a limit":
        return f"This node refused {where}: {item.why}."
    return f"This node ran {where} and it failed: {item.why}."


class WorkLog:
    def __init__(self, keep: int = MAX_KEPT):
        self.items: deque[Worked] = deque(maxlen=keep)
        self.started = time.time()

    def add(self, key: tuple[str, str, str], kind: str, outcome: str, why: str = "") -> None:
        self.items.append(Worked(time.time(), *key, kind, outcome, why))

    def view(self, unpaid: Container[tuple[str, str, str]], now: float) -> dict[str, Any]:
        """Steps by outcome in each window, and those that earned nothing, newest first (`unpaid`: the
        keys of steps answered and not paid for, mesh.node.owed)."""
        windows = {name: Counter({"ok": 0, "failed": 0, "refused": 0}) for name in WINDOWS_S}
        unearned: list[dict[str, Any]] = []
        for item in reversed(self.items):
            for name, span in WINDOWS_S.items():
                if now - item.at <= span:
                    windows[name][item.outcome] += 1
            why = reason(item, item.key in unpaid)
            if why and len(unearned) < MAX_SHOWN:
                unearned.append({"ts": int(item.at * 1000), "peer": item.requester, "job": item.job,
                                 "step": item.step, "kind": item.kind, "reason": why, "error": item.why,
                                 "explanation": said(item, why, now)})
        return {"since": int(max(self.started, self.items[0].at if len(self.items) == self.items.maxlen else 0)
                             * 1000),
                "windows": {k: dict(v) for k, v in windows.items()}, "unearned": unearned}
