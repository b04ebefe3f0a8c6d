"""The owner's dashboard: its static page (mesh/http/dashboard/, served at /dashboard like the editor, under
the same headers) and GET /dashboard/data, what the page needs that no other route gives: steps run for
peers in the last hour and day, credits earned over time, and every step that earned nothing with why.
The page reads the rest from GET /status. Ledger reads run in a thread on a read-only connection."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI

from mesh.errors import LedgerError
from mesh.http.api_models import ERRORS
from mesh.http.common import ApiError, authorised
from mesh.http.facade import NodeFacade

PAGE_DIR = Path(__file__).parent / "dashboard"
MAX_UNEARNED = 100  # items listed, newest first
WINDOWS_MS = {"hour": 3_600_000, "day": 86_400_000}


def dashboard_routes(app: FastAPI, node: NodeFacade) -> None:
    @app.get("/dashboard/data", dependencies=[Depends(authorised)], responses=ERRORS,
             summary="The owner's dashboard: steps run for peers by hour and day, credits earned over time, "
                     "steps that earned nothing and why, and what steps use of the owner's limits")
    async def data() -> dict[str, Any]:
        now = int(time.time() * 1000)
        work = node.work()
        met = [p["node"] for p in node.status()["peers"]]
        try:
            led = await asyncio.to_thread(read_activity, node, met, now)
        except LedgerError as exc:
            raise ApiError(503, f"this node's ledger cannot be read: {exc}") from None
        windows = work.get("windows", {})
        steps = {name: {**windows.get(name, {}), "paid": led["earned"][name]["steps"],
                        "credits": led["earned"][name]["credits"]} for name in WINDOWS_MS}
        unearned = sorted([*work.get("unearned", []), *led["untrusted"]], key=lambda i: -i["ts"])[:MAX_UNEARNED]
        return {"node": node.node_id, "now": now, "since": work.get("since"), "steps": steps,
                "credits": led["series"], "unearned": unearned, "judged": led["judged"],
                "use": work.get("use", {})}


def read_activity(node: NodeFacade, met: list[str], now_ms: int) -> dict[str, Any]:
    """What the dashboard reads from the ledger, every query bounded (ledger.activity)."""
    from ledger import activity
    from ledger.export import judge_with
    from ledger.store import Ledger

    led = Ledger(node.ledger_path, readonly=True)
    try:
        return {"earned": {name: activity.earned_since(led, now_ms - span) for name, span in WINDOWS_MS.items()},
                "series": activity.earned_series(led),
                "judged": activity.judged_unpaid(led),
                "untrusted": activity.untrusted_earnings(led, judge_with(led, node.node_id, (), now_ms, met))}
    finally:
        led.close()
