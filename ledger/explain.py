"""Every number in the ledger, said in words: who agreed, which digests, which rule, how the credit
was measured, and whether the receipt behind it checks."""

from __future__ import annotations

from typing import Any

from .receipts import BadReceipt, Receipt


def _short(node: str) -> str:
    return node[:12]


def _receipt_check(raw: object) -> str:
    """Who signed the receipt and whether the signature holds, in words."""
    try:
        receipt = Receipt.from_json(raw)
    except BadReceipt as exc:
        return f" The receipt is INVALID ({exc})."
    bad = receipt.problem()
    try:
        signer = _short(receipt.payer_id)
    except ValueError:
        signer = "an unreadable key"
    return f" The receipt is signed by {signer}: " + ("signature valid." if not bad else f"INVALID ({bad}).")


def _quorum(why: dict[str, Any]) -> str:
    agreeing = ", ".join(_short(n) for n in why.get("agreeing", [])) or "nobody"
    text = (f"rule {why.get('rule')} at redundancy {why.get('redundancy')} needs {why.get('needed')} agreeing "
            f"answers; {len(why.get('agreeing', []))} agreed on digest {str(why.get('accepted'))[:16]} ({agreeing})")
    others = {n: d for n, d in why.get("answers", {}).items() if d != why.get("accepted")}
    if others:
        text += "; dissent: " + ", ".join(f"{_short(n)} said {d[:16]}" for n, d in others.items())
    if why.get("failed"):
        text += "; no answer from: " + ", ".join(f"{_short(n)} ({r})" for n, r in why["failed"].items())
    return text


def explain(entry: dict[str, Any], me: str) -> str:
    """One entry (as `Ledger.history` returns it) explained for the node `me`."""
    kind, d = entry["kind"], entry.get("detail") or {}
    where = f"step {entry['step']!r} of job {entry['job']}"
    peer = _short(entry["peer"])
    why = d.get("why", {})
    receipt = d.get("receipt")
    check = "" if receipt is None else _receipt_check(receipt)
    if kind == "paid" and "spot_check" in d:
        return (f"Entry {entry['id']}: you paid {-entry['amount']:g} credits to {peer} for a spot check sent as "
                f"{where} (a job of its own): it gave the known answer. Credit: {d['spot_check']}.{check}")
    if kind == "paid" and "cancelled" in d:
        return (f"Entry {entry['id']}: you paid {-entry['amount']:g} credits to {peer} for {where}: it answered "
                f"before you cancelled the job, so its work was paid with no quorum judging it. Credit: "
                f"{d['cancelled']}.{check}")
    if kind == "paid":
        return (f"Entry {entry['id']}: you paid {-entry['amount']:g} credits to {peer} for {where}, because its "
                f"answer was in the accepted quorum: {_quorum(why)}. Credit per agreeing worker: "
                f"{why.get('credit_basis', 'measured work')}.{check}")
    if kind == "earned":
        return (f"Entry {entry['id']}: {peer} paid you {entry['amount']:g} credits for {where}: your answer was in "
                f"the quorum it accepted, and it sent a signed receipt for (job, step, you, amount).{check}")
    if kind == "agreed":
        return f"Entry {entry['id']}: {peer} gains reputation for {where}: its answer agreed. {_quorum(why)}."
    if kind == "disagreed":
        theirs = why.get("answers", {}).get(entry["peer"], "?")
        return (f"Entry {entry['id']}: {peer} loses reputation for {where}: it answered {theirs[:16]} but the "
                f"accepted answer was {str(why.get('accepted'))[:16]}. {_quorum(why)}.")
    if kind == "no_show":
        reason = why.get("failed", {}).get(entry["peer"], d.get("reason", "no answer"))
        return f"Entry {entry['id']}: {peer} loses reputation for {where}: it gave no usable answer ({reason})."
    if kind == "spot_failed":
        return (f"Entry {entry['id']}: {peer} loses a lot of reputation and is blacklisted: asked a question whose "
                f"answer was known (digest {str(d.get('expected', '?'))[:16]}), it answered "
                f"{str(d.get('got', '?'))[:16]}.")
    if kind == "penalty":
        return (f"Entry {entry['id']}: {peer} loses reputation: its connection broke the peer protocol's rules "
                f"({d.get('reason', '?')}) and was dropped.")
    return f"Entry {entry['id']}: {kind}"
