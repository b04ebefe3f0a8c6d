"""The steps a worker ran for peers as its dashboard shows them (mesh/node/worklog.py): counted by
outcome in the last hour and day, and each one that earned nothing with why; bounded in memory."""

from __future__ import annotations

import time

import pytest

from mesh.node.worklog import MAX_SHOWN, Worked, WorkLog

pytestmark = pytest.mark.timeout(30)
PEER = "e" * 64


def test_why_each_step_earned_nothing():
    log = WorkLog()
    log.add((PEER, "j", "paid"), "python", "ok")
    log.add((PEER, "j", "unpaid"), "python", "ok")
    log.add((PEER, "j", "busy"), "python", "refused", "busy: too many steps in flight")
    log.add((PEER, "j", "slow"), "python", "failed", "python step timed out after 3 s")
    log.add((PEER, "j", "gone"), "llm", "failed", "cancelled: its submitter no longer needs it")
    log.add((PEER, "j", "boom"), "python", "failed", "ValueError: <b>no</b>")
    got = log.view({(PEER, "j", "unpaid")}, time.time())
    assert [(i["step"], i["reason"]) for i in got["unearned"]] == [
        ("boom", "failed"), ("gone", "cancelled"), ("slow", "timed out"), ("busy", "refused by a limit"),
        ("unpaid", "not paid")]
    said = {i["step"]: i["explanation"] for i in got["unearned"]}
    assert said["busy"] == f"This node refused python step 'busy' of job j for {PEER[:12]}: busy: too many steps in flight."
    assert said["boom"].endswith("and it failed: ValueError: <b>no</b>.")
    assert "holds no receipt for it" in said["unpaid"]
    assert got["windows"]["hour"] == {"ok": 2, "failed": 3, "refused": 1}


def test_windows_count_by_age():
    log, now = WorkLog(), time.time()
    for age, outcome in ((10, "ok"), (2 * 3600, "ok"), (2 * 3600, "failed"), (2 * 86400, "refused")):
        log.items.append(Worked(now - age, PEER, "j", f"s{age}{outcome}", "python", outcome, "x"))
    got = log.view(set(), now)["windows"]
    assert got == {"hour": {"ok": 1, "failed": 0, "refused": 0}, "day": {"ok": 2, "failed": 1, "refused": 0}}


def test_bounded_and_says_since_when():
    log = WorkLog(keep=3)
    started = log.started
    assert log.view(set(), time.time())["since"] == int(started * 1000)
    for i in range(5):
        log.items.append(Worked(started + i, PEER, "j", str(i), "python", "failed", "no"))
    got = log.view(set(), started + 10)
    assert len(log.items) == 3 and got["since"] == int((started + 2) * 1000)  # the oldest kept
    many = WorkLog()
    for i in range(MAX_SHOWN + 20):
        many.add((PEER, "j", str(i)), "python", "refused", "busy")
    assert len(many.view(set(), time.time())["unearned"]) == MAX_SHOWN
