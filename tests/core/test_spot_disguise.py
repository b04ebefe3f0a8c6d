"""Spot checks look like real work and never punish the honest (issue 19, item 5): on the wire a check is
shaped as a replica (job id, step id, params, timeout), replays an accepted step when one is known, goes
out at a random moment rather than with a replica, takes one of its worker's slots within the limit, and
busy, an error or a timeout is no answer: never judged, never blacklisted. The core alone, in memory."""

from __future__ import annotations

import dataclasses
import random
import re
import uuid

import pytest

from mesh.core.dag import parse_job
from mesh.core.effects import Alarm, Judged, Record, Send
from mesh.core.policy import Candidate
from mesh.core.submission import PER_WORKER, Config, Submission, new_job_id
from mesh.node.submitter import request
from mesh.wire.canonical import canonical, digest

pytestmark = pytest.mark.timeout(30)
UUID_HEX20 = re.compile(r"^[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{3}$")  # uuid4().hex[:20]
WORKERS = ("w0", "w1", "w2", "w3")


def job(code: str = "output = 6 * 7", r: int = 3, timeout: float = 40) -> object:
    return parse_job({"redundancy": r, "timeout": timeout, "steps": [
        {"id": "prep", "kind": "python", "params": {"code": code}}]})


def pool(*names: str) -> dict[str, list[Candidate]]:
    return {"python": [Candidate(n, 0.5, f"10.0.{i}") for i, n in enumerate(names)]}


def of(effects: list, kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


def answer(sub: Submission, send: Send, output: object, now: float) -> list:
    return sub.on_result(send.node, send.job, send.step, True, digest(output), output, {}, "", now)


def run_job(sub: Submission, job_id: str, now: float, code: str = "output = 6 * 7") -> list:
    """One r=3 job, every replica answered right; returns every effect (alarms of planned checks too)."""
    sub.submit(job_id, job(code), 1)
    effects = sub.tick(job_id, pool(*WORKERS), now)
    for s in of(effects, Send):
        effects += answer(sub, s, 42, now + 0.5)
    effects += sub.tick(job_id, pool(*WORKERS), now + 0.5)
    return effects


def fire(sub: Submission, alarms: list[Alarm]) -> list[Send]:
    """The core's alarms, in time order: the checks they sent."""
    return [s for a in sorted(alarms, key=lambda a: a.at) for s in of(sub.on_alarm(a.at), Send)]


def test_a_check_on_the_wire_is_shaped_as_a_real_replica():
    """Same job id format as a real job (the node's: uuid4's first 20 hex digits), a real step's id, the
    replayed step's params and timeout; no `spot-` prefix, no `check` step id, nothing else on the wire."""
    sub = Submission(Config(1, spot_rate=1.0, check_tail_s=0))
    real_id = new_job_id(uuid.uuid4().int)  # as the node's submitter makes them
    assert UUID_HEX20.match(real_id) and UUID_HEX20.match(uuid.uuid4().hex[:20])
    effects = run_job(sub, real_id, 0.0)
    replica = of(effects, Send)[0]
    assert sub.jobs[real_id].run.status == "done" and sub.spot.known["python"]  # an undisputed answer: known
    first = fire(sub, of(effects, Alarm))  # planned before anything was known: synthetic, still real-shaped
    assert first and all(c.check.source is None and c.step == "prep" for c in first)

    effects = run_job(sub, new_job_id(uuid.uuid4().int), 50.0, code="output = 7 * 6")
    checks = fire(sub, of(effects, Alarm))
    assert checks and all(c.check is not None for c in checks)
    for check in checks:
        ch = check.check
        assert ch.source == (real_id, "prep")
        wire, real = request(check, check.deadline - ch.timeout), request(replica, 0.0)
        assert UUID_HEX20.match(wire.job) and wire.job not in (real_id, "j") and not wire.job.startswith("spot")
        assert (wire.step, wire.kind, wire.params, wire.timeout) == (real.step, real.kind, real.params, real.timeout)
        sent = canonical(dataclasses.asdict(wire))
        assert b"spot" not in sent and b'"check"' not in sent
        assert b"42" not in canonical(wire.params)  # the known answer never leaves the submitter


def test_checks_and_rechecks_get_job_ids_as_real_jobs_do():
    rng = random.Random(5)
    ids = {new_job_id(rng.getrandbits(128)) for _ in range(2000)}
    assert len(ids) == 2000 and all(UUID_HEX20.match(i) for i in ids)
    assert {i[12] for i in ids} == {"4"} and {i[16] for i in ids} == set("89ab")  # uuid4's fixed digits


def test_checks_go_out_at_random_moments_never_with_a_replica_and_the_same_seed_gives_the_same_ones():
    def trace(seed: int) -> list[tuple[str, float]]:
        sub = Submission(Config(seed, spot_rate=1.0, check_spread_s=20.0, check_tail_s=0))
        got = []
        for i in range(30):
            effects = run_job(sub, f"j{i}", 100.0 * i)
            assert all(s.check is None for s in of(effects, Send))  # nothing rides with a replica
            got += [(a.at - 100.0 * i, c.job) for a in of(effects, Alarm) for c in fire(sub, [a])]
        return got

    got = trace(1)
    delays = [d for d, _ in got]
    assert len(delays) == 90 and 0 <= min(delays) < 2.0 and 18.0 < max(delays) <= 20.0
    assert sum(d < 0.05 for d in delays) <= 1  # "right after a replica" is the exception, not the rule
    assert trace(1) == got and trace(2) != got


def planned_delays(seed: int, jobs: int = 60, **config: float) -> list[float]:
    """How long after its placement each planned check waits, over `jobs` r=3 jobs far apart."""
    sub = Submission(Config(seed, spot_rate=1.0, **config))
    got = []
    for i in range(jobs):
        now, before = 10_000.0 * i, set(sub.spot.planned)
        effects = run_job(sub, f"j{i}", now)
        assert all(s.check is None for s in of(effects, Send))
        got += sorted(due - now for c, (_, _, due) in sub.spot.planned.items() if c not in before)
    return got


def test_half_the_checks_wait_long_so_no_quiet_gap_tells_a_real_step_from_a_check():
    """All within 30 s of a placement, a request after a longer silence from its submitter was never a
    check, and the red team's quiet loner cheated only on those. Half the checks now wait log-uniformly
    up to check_tail_s, so a silence of a minute, five or fifteen before a request proves nothing."""
    old = planned_delays(1, check_spread_s=20.0, check_tail_s=0)
    assert len(old) == 180 and max(old) <= 20.0
    new = planned_delays(1, check_spread_s=20.0)  # the default tail, 1800 s
    assert len(new) == 180 and max(new) <= 1800.0
    late = [d for d in new if d > 20.0]
    assert 0.35 < len(late) / len(new) < 0.65
    for gap in (60.0, 300.0, 900.0):  # every scale of silence gets its share (log-uniform)
        assert sum(d > gap for d in new) >= 5, gap
    assert planned_delays(1, check_spread_s=20.0, check_tail_s=1800.0) == new
    assert planned_delays(2, check_spread_s=20.0) != new


def test_a_config_from_a_log_written_before_the_long_waits_replays_without_them():
    """A journal or core log written before check_tail_s existed planned every check within the spread:
    read back, its checks are drawn as they were, so a replay decides as the run did."""
    d = dataclasses.asdict(Config(7, spot_rate=0.5))
    assert Config.from_json(d) == Config(7, spot_rate=0.5)
    del d["check_tail_s"]
    assert Config.from_json(d).check_tail_s == 0


def test_a_check_takes_one_of_its_workers_slots_and_never_goes_past_the_limit():
    """Replicas and checks together never exceed what the worker takes from one peer (more would be
    answered busy); a due check waits in the worker's queue for a free slot like a replica."""
    sub = Submission(Config(3, spot_rate=1.0, check_spread_s=5.0))
    rng = random.Random(4)
    alarms: list[Alarm] = []
    out: list[Send] = []
    r1 = parse_job({"redundancy": 1, "timeout": 30, "steps": [{"id": "a", "kind": "python",
                                                               "params": {"code": "output = 1"}}]})
    now = 0.0
    for i in range(40):
        now += 0.3
        sub.submit(f"j{i}", r1, i)
        effects = sub.tick(f"j{i}", pool("w0"), now)
        alarms += of(effects, Alarm)
        out += of(effects, Send)
        for a in [a for a in alarms if a.at <= now]:
            alarms.remove(a)
            out += of(sub.on_alarm(now), Send)
        if out and rng.random() < 0.6:
            s = out.pop(rng.randrange(len(out)))
            out += of(answer(sub, s, s.check.expected if s.check else 1, now), Send)
        assert len(sub.outstanding.get("w0", {})) <= PER_WORKER
        assert len(out) <= PER_WORKER  # requests the worker holds right now
    assert any(s.check for s in out) or sub.spot.out or any(j in sub.spot.planned for j, _ in sub.queued["w0"])


@pytest.mark.parametrize("error", ["busy: too many steps in flight", "refused: limit reached",
                                   "the step failed without saying why"])
def test_busy_or_an_error_is_no_answer_and_never_blacklists(error):
    sub = Submission(Config(1, spot_rate=1.0, check_tail_s=0))
    effects = run_job(sub, "j0", 0.0)
    (check, *_) = fire(sub, of(effects, Alarm))
    got = sub.on_result(check.node, check.job, check.step, False, "", None, {}, error, 60.0)
    assert of(got, Judged) == [] and of(got, Record) == []
    assert not sub.blacklisted(check.node, 60.0) and sub.spot.out.get(check.job) is None
    assert (check.job, check.step) not in sub.outstanding.get(check.node, {})  # its slot is free


def test_a_timeout_or_a_lost_worker_is_no_answer_and_only_a_wrong_output_is_cheating():
    sub = Submission(Config(1, spot_rate=1.0, check_tail_s=0))
    checks = fire(sub, of(run_job(sub, "j0", 0.0), Alarm))
    assert len(checks) == 3
    late, lost, liar = checks
    assert of(sub.on_alarm(late.deadline), Judged) == [] and not sub.blacklisted(late.node, late.deadline)
    sub.on_node_lost(lost.node, "connection lost", 10.0)
    assert lost.job not in sub.spot.out and not sub.blacklisted(lost.node, 10.0)
    assert of(answer(sub, late, late.check.expected, late.deadline + 1), Judged) == []  # too late: not judged
    effects = answer(sub, liar, ["wrong"], 11.0)
    assert of(effects, Judged) == [Judged(liar.node, False, digest(["wrong"]), liar.job)]
    assert sub.blacklisted(liar.node, 11.0)
    assert {n for n in WORKERS if sub.blacklisted(n, 11.0)} == {liar.node}


def test_only_an_undisputed_answer_becomes_known():
    sub = Submission(Config(1, spot_rate=0.0, check_tail_s=0))
    sub.submit("j", job(), 1)
    sends = of(sub.tick("j", pool(*WORKERS), 0.0), Send)
    for s, out in zip(sends, (42, 42, 41), strict=True):
        answer(sub, s, out, 1.0)
    for _ in range(3):
        for s in of(sub.tick("j", pool(*WORKERS), 1.0), Send):
            answer(sub, s, 42, 1.5)
    assert sub.jobs["j"].run.status == "done" and sub.spot.known == {}  # 41 dissented: not replayed
    run_job(sub, "k", 5.0)
    (known,) = sub.spot.known["python"]
    assert known.source == ("k", "prep") and known.expected == 42 and len(known.seen) == 3
    assert known.prefixes and all(p.startswith("10.0.") for p in known.prefixes)


def test_a_passed_check_is_paid_as_a_replica_is_and_a_failed_one_is_not():
    """An unpaid request would tell a worker afterwards which answers were checks: a passed one is paid
    from the worker's own figures at its card, capped by the step's limits, as the replica it replays."""
    from mesh.core.pricing import RateCard

    sub = Submission(Config(1, spot_rate=1.0, check_tail_s=0))
    card = RateCard(cpu_s=2.0)
    sub.submit("j0", job(timeout=40), 1)
    candidates = {"python": [Candidate(n, 0.5, f"10.0.{i}", rates=card) for i, n in enumerate(WORKERS)]}
    effects = sub.tick("j0", candidates, 0.0)
    for s in of(effects, Send):
        effects += sub.on_result(s.node, s.job, s.step, True, digest(42), 42, {"cpu_s": 0.25}, "", 0.5)
    effects += sub.tick("j0", candidates, 0.5)
    replica_paid = {e.amount for r in of(effects, Record) for e in r.entries if e.kind == "paid"}
    honest, liar, *_ = fire(sub, of(effects, Alarm))
    right = honest.check.expected
    got = sub.on_result(honest.node, honest.job, honest.step, True, digest(right), right, {"cpu_s": 0.25}, "", 60.0)
    (paid,) = [e for r in of(got, Record) for e in r.entries]
    assert (paid.kind, paid.job, paid.step, paid.peer) == ("paid", honest.job, "prep", honest.node)
    assert {paid.amount} == replica_paid == {-0.5}  # 0.25 CPU-seconds at 2 a CPU-second, both
    greedy = sub.on_result(liar.node, liar.job, liar.step, True, digest([43]), [43], {"cpu_s": 1e9}, "", 61.0)
    assert not [e for r in of(greedy, Record) for e in r.entries if e.kind == "paid"]


def settle_on(sub: Submission, job_id: str, workers: tuple[str, ...], output: object, now: float) -> list:
    """One r=3 job on `workers`, every replica answering `output`, and the checks planned with it
    answered right; returns the checks' and the settling effects."""
    sub.submit(job_id, job(), 1)
    effects = sub.tick(job_id, pool(*workers), now)
    for s in of(effects, Send):
        answer(sub, s, output, now + 0.1)
    out = []
    for c in fire(sub, of(effects, Alarm)):
        out += answer(sub, c, c.check.expected, c.deadline - 1)
    return out + sub.tick(job_id, pool(*workers), now + 100)


def test_an_honest_worker_checked_against_a_unanimous_wrong_answer_is_vindicated_by_a_recheck():
    """Three colluders agree on 666 (nobody dissents): it is accepted and becomes a known answer. A check
    replaying it to an honest worker comes back 42. That worker is not convicted on the colluders' word:
    the step is rerun on workers who had no part in either answer, the recheck overturns 666, the
    colluders are booked as having agreed on a wrong answer and the honest worker is paid for its check."""
    sub = Submission(Config(1, spot_rate=1.0, blacklist_s=60, check_tail_s=0))
    settle_on(sub, "j0", ("c1", "c2", "c3"), 666, 0.0)
    assert sub.jobs["j0"].run.steps["prep"].output == 666
    sub.submit("j1", job(), 1)
    effects = sub.tick("j1", pool("h1", "h2", "h3"), 200.0)
    checks = fire(sub, of(effects, Alarm))
    assert checks and all(c.check.source == ("j0", "prep") and c.check.expected == 666 for c in checks)
    disputed = answer(sub, checks[0], 42, checks[0].deadline - 1)
    assert of(disputed, Judged) == [] and not sub.blacklisted(checks[0].node, checks[0].deadline)
    assert not [e for r in of(disputed, Record) for e in r.entries if e.kind == "spot_failed"]
    (started,) = [e for e in disputed if type(e).__name__ == "Started"]
    assert started.recheck_of == ("j0", "prep")
    everyone = pool("c1", "c2", "c3", "h1", "h2", "h3", "h4", "h5")
    sends = of(sub.tick(started.job, everyone, 300.0), Send)
    assert sends and {s.node for s in sends} <= {"h1", "h2", "h3", "h4", "h5"} - {checks[0].node}  # no part in either
    for s in sends:
        answer(sub, s, 42, 301.0)
    effects = sub.tick(started.job, everyone, 302.0)
    asked = {s.node for s in sends}
    (again,) = [e for e in effects if type(e).__name__ == "Started"]  # three agreed on 666: asked of others once more
    assert again.recheck_of == ("j0", "prep") and sub.jobs["j0"].run.steps["prep"].output == 666
    everyone = pool("c1", "c2", "c3", "h1", "h2", "h3", "h4", "h5", "h6", "h7", "h8", "h9")
    sends = of(sub.tick(again.job, everyone, 303.0), Send)
    assert sends and not {s.node for s in sends} & (asked | {"c1", "c2", "c3"})
    for s in sends:
        answer(sub, s, 42, 304.0)
    effects = sub.tick(again.job, everyone, 305.0)
    assert sub.jobs["j0"].rechecks["prep"]["verdict"] == "overturned"
    assert of(effects, Judged) == [Judged(checks[0].node, True, digest(42), checks[0].job)]
    booked = [(e.kind, e.peer) for r in of(effects, Record) for e in r.entries]
    assert {("disagreed", c) for c in ("c1", "c2", "c3")} <= set(booked)
    assert ("paid", checks[0].node) in booked


def test_a_liar_disputing_a_right_known_answer_is_convicted_once_the_recheck_confirms_it():
    sub = Submission(Config(1, spot_rate=1.0, blacklist_s=60, check_tail_s=0))
    settle_on(sub, "j0", ("h1", "h2", "h3"), 42, 0.0)
    sub.submit("j1", job(), 1)
    checks = fire(sub, of(sub.tick("j1", pool("liar", "h4", "h5"), 200.0), Alarm))
    lie = next(c for c in checks if c.node == "liar")
    disputed = answer(sub, lie, 666, lie.deadline - 1)
    assert of(disputed, Judged) == []
    (started,) = [e for e in disputed if type(e).__name__ == "Started"]
    everyone = pool("liar", "h1", "h2", "h3", "h4", "h5", "h6", "h7")
    sends = of(sub.tick(started.job, everyone, 300.0), Send)
    assert {s.node for s in sends} <= {"h4", "h5", "h6", "h7"}
    for s in sends:
        answer(sub, s, 42, 301.0)
    effects = sub.tick(started.job, everyone, 302.0)
    assert sub.jobs["j0"].rechecks["prep"]["verdict"] == "confirmed"
    assert of(effects, Judged) == [Judged("liar", False, digest(666), lie.job)]
    assert sub.blacklisted("liar", 303.0)
    assert ("spot_failed", "liar") in [(e.kind, e.peer) for r in of(effects, Record) for e in r.entries]


def test_a_recheck_on_a_mesh_of_only_those_with_a_part_says_so():
    """On a small mesh every worker may have answered the disputed step or checked it: the recheck can
    ask nobody. It said "the mesh offers 0", which read as a mesh without workers (attack round, 2026-12-06)."""
    sub = Submission(Config(1, spot_rate=1.0, blacklist_s=60, check_tail_s=0))
    settle_on(sub, "j0", ("c1", "c2", "c3"), 666, 0.0)
    sub.submit("j1", job(), 1)
    checks = fire(sub, of(sub.tick("j1", pool("h1", "h2", "h3"), 200.0), Alarm))
    (started,) = [e for e in answer(sub, checks[0], 42, checks[0].deadline - 1) if type(e).__name__ == "Started"]
    sub.tick(started.job, pool("c1", "c2", "c3", checks[0].node), 300.0)
    run = sub.jobs[started.job].run
    (error,) = [r.error for r in run.steps.values() if r.status == "failed"]
    assert error.endswith("other than the submitter and the 4 with a part in the answers it rechecks, "
                          "the mesh offers 0"), error
