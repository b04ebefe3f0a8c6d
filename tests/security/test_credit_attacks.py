"""Attacks on what a worker is paid and owed, by this project's red team of 2026-12-07 (who had not read the
other tests): a spot check's pay, and the worker's owed table (mesh/node/owed.py) under --require-credit."""

from __future__ import annotations

import pytest

from mesh.core.admission import Account, credit_refusal
from mesh.core.effects import Record, Send
from mesh.core.jobrun import UNVERIFIED_CPUS
from mesh.core.pricing import MIN_CHARGE
from mesh.core.submission import Config, Submission
from mesh.node.journal import Journal
from mesh.node.owed import MAX_OWED, Owed
from mesh.wire.canonical import digest

from ..core.submitting import job, pool

pytestmark = pytest.mark.timeout(120)


def _paid(sub: Submission, checks: list[Send], waited: float, now: float) -> list[tuple[str, float]]:
    """Each check answered right `waited` s after it went out, claiming 16 CPUs busy all that time."""
    paid = []
    for c in checks:
        work = {"cpu_s": 16 * waited, "seconds": waited}
        for r in sub.on_result(c.node, c.job, c.step, True, digest(c.check.expected), c.check.expected, work, "",
                               now + waited):
            if isinstance(r, Record):
                paid += [(e.peer, -e.amount) for e in r.entries if e.kind == "paid"]
    return paid


def test_a_spot_check_answered_at_once_is_paid_one_cpu_for_its_wait_not_sixteen():
    """A check's answer is a lone one: nothing measured against its claim. It was bounded by STEP_CPUS (16) x
    the time it took, where a lone step is held to UNVERIFIED_CPUS (1): a worker answering at once and
    claiming 16 CPUs was paid 1.0 for 0.1 s."""
    sub = Submission(Config(seed=3, spot_rate=1.0, check_spread_s=1.0, check_tail_s=0.0))
    sub.submit("j1", job(), 1)
    assert [e for e in sub.tick("j1", pool("h1", "h2", "h3"), 100.0) if isinstance(e, Send) and e.check is None]
    checks = [e for e in sub.on_alarm(102.0) if isinstance(e, Send) and e.check is not None]
    assert checks, "no spot check sent"
    paid = _paid(sub, checks, 0.1, 102.0)
    assert paid and all(amount <= max(MIN_CHARGE, 0.1 * UNVERIFIED_CPUS) + 1e-9 for _, amount in paid), paid


def test_a_check_replaying_a_real_step_answered_in_a_quarter_of_its_time_is_not_paid_four_times_it():
    """The step took every worker 1 CPU-second over 2 s; its check, answered in 0.3 s with 16 CPUs claimed,
    was paid 4.0 (the check's cap of 4x the step's worth)."""
    sub = Submission(Config(seed=5, spot_rate=0.0, check_spread_s=1.0, check_tail_s=0.0))
    sub.submit("j1", job(), 1)
    for s in [e for e in sub.tick("j1", pool("h1", "h2", "h3"), 100.0) if isinstance(e, Send) and e.check is None]:
        sub.on_result(s.node, s.job, s.step, True, digest(42), 42, {"cpu_s": 1.0, "seconds": 2.0}, "", 102.0)
    sub.tick("j1", pool("h1", "h2", "h3"), 103.0)
    assert sub.jobs["j1"].run.steps["a"].status == "done"
    sub.spot.rate = 1.0  # from now on every placement may be checked
    sub.submit("j2", job(), 2)
    sub.tick("j2", pool("h4", "h5", "h6"), 103.0)
    checks = [e for e in sub.on_alarm(105.0) if isinstance(e, Send) and e.check is not None and e.check.source]
    assert checks, "no replayed check"
    paid = _paid(sub, checks, 0.3, 105.0)
    assert paid and all(amount <= 0.3 * UNVERIFIED_CPUS + 1e-9 for _, amount in paid), paid


def test_a_non_payer_gets_no_work_past_the_credit_line_once_its_debt_is_trimmed(tmp_path):
    """A submitter that never pays asks for tiny steps until its unpaid work reaches the line; past MAX_OWED the
    table forgets the oldest unpaid steps of the payer holding the most (itself): its debt shrank and it got
    work again, past the line without end (12,000 steps on a line of 100). Forgotten debt counts now."""
    owed = Owed(Journal(tmp_path))
    payer = "5" * 64
    line = MAX_OWED * MIN_CHARGE + MIN_CHARGE / 2  # 100.005 credits
    answered = 0
    with owed.journal.batch(defer=True):
        for i in range(MAX_OWED + 2000):
            if credit_refusal(Account(), owed.debt(payer), line):
                break
            owed.answered((payer, "job", f"s{i}"), MIN_CHARGE, {"ok": True})  # answered ok, never paid
            answered += 1
    owed.journal.commit()
    assert answered * MIN_CHARGE <= line + MIN_CHARGE + 1e-9, (answered, len(owed.unpaid))
    assert Owed(owed.journal).debt(payer) == pytest.approx(answered * MIN_CHARGE)  # (kept across a restart)


def test_fresh_keys_filling_the_owed_table_do_not_push_out_a_known_payers_unpaid_steps(tmp_path):
    """A hundred fresh keys of 100 tiny steps each fill the table while an honest payer that paid this node
    before (its laptop asleep, its receipts to come) holds 400 answered steps: by count alone the trim cut
    the honest payer's oldest half, and its valid receipts were then refused."""
    honest = "a" * 64
    owed = Owed(Journal(tmp_path), lambda payer: payer == honest)
    with owed.journal.batch(defer=True):
        for i in range(400):
            owed.answered((honest, "job", f"p{i}"), 2.0, {"ok": True})
        for s in range(MAX_OWED // 100):
            for i in range(100):
                owed.answered((f"{s:064x}", "spam", f"s{i}"), 0.01, {"ok": True})
    owed.journal.commit()
    assert sum((honest, "job", f"p{i}") in owed.unpaid for i in range(400)) == 400
