"""Earnings a node can prove to anyone: export its receipts, and check such a file offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mesh.errors import UserError

from .receipts import BadReceipt, verified

FORMAT = "homemesh-receipts/1"


def export_receipts(rows: list[dict[str, Any]], node: str) -> dict[str, Any]:
    """The receipts of `rows` (Ledger.history) that paid `node`, exactly as they were signed and stored."""
    receipts = [r["detail"]["receipt"] for r in rows if r["kind"] == "earned" and "receipt" in r["detail"]]
    return {"format": FORMAT, "node": node, "receipts": receipts,
            "total": round(sum(r["amount"] for r in receipts), 6)}


def verify_receipts(path: Path) -> tuple[int, float, list[str]]:
    """Check every receipt in an export: signature, payee, no (job, step) paid twice by one payer.
    Returns (valid count, valid total, problems)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError:
        raise UserError(f"{path} is not JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("receipts"), list):
        raise UserError(f"{path} is not a homemesh receipts export ({FORMAT})")
    node = data.get("node")
    seen: set[tuple[str, str, str, str]] = set()
    problems: list[str] = []
    count, total = 0, 0.0
    for i, raw in enumerate(data["receipts"]):
        try:
            r = verified(raw)
        except BadReceipt as exc:
            problems.append(f"receipt {i + 1}: {exc}")
            continue
        key = (r.payer, r.job, r.step, r.worker)
        why = ""
        if r.worker != node:
            why = f"receipt is for worker {r.worker[:12]}, not {str(node)[:12]}"
        elif key in seen:
            why = "the same (payer, job, step) appears twice"
        if why:
            problems.append(f"receipt {i + 1}: {why}")
            continue
        seen.add(key)
        count, total = count + 1, total + r.amount
    return count, round(total, 6), problems
