"""What a worker trusted to run alone does unchecked, and steps won without the margin (mesh.core.jobrun:
_trusted; mesh.core.submission: _outvoted, _thin and a recheck that found no quorum). The attackers: a
trust builder that cheats once it runs alone and is caught by an audit it loses, two colluders that win
a step because the workers ran out before the margin was met or the other seats failed, and sybils that split a recheck so it
settles nothing. In memory, the time passed in."""

from __future__ import annotations

import random

import pytest

from mesh.core.dag import parse_job
from mesh.core.effects import Rechecked, Record, Send, Started
from mesh.core.jobrun import PROVEN, JobRun
from mesh.core.policy import Candidate
from mesh.core.submission import RECHECK_TRIES, Config, Submission

from .submitting import FAIL, NAMES, RIGHT, WRONG, drive, job

pytestmark = pytest.mark.timeout(30)
N = 10  # the adaptive replication threshold of these tests' jobs


def first_alone(streak: int, others: int = 30, seeds: int = 100) -> int:
    """Of `seeds` runs of one step among a worker `p` with this run and `others` with none, how many ran
    alone on `p`."""
    cands = [Candidate("p", 0.5, "10.1.0", streak)] + [Candidate(f"w{i}", 0.5, f"10.2.{i}") for i in range(others)]
    alone = 0
    for seed in range(seeds):
        run = JobRun("j", job(adaptive=N), random.Random(seed))
        sent = run.advance({"python": cands}, 0.0)
        alone += len(sent) == 1 and sent[0].node == "p"
    return alone


def test_a_proven_worker_takes_the_first_seat_and_one_only_trusted_is_drawn_like_anyone():
    assert first_alone(PROVEN * N) >= 88  # alone but for its audits (1 in 20 at this run)
    assert first_alone(N) <= 10  # trusted, not proven: first only when drawn so, 1 in 31


def test_a_worker_outvoted_has_what_it_ran_alone_rerun():
    """A trust builder ran j0 alone (wrongly, unseen); an audit-like step it loses is the first sign."""
    sub = Submission(Config(1, blacklist_s=600))
    lone = job(adaptive=N)
    seed = next(s for s in range(200) if len(JobRun("x", lone, random.Random(s)).advance(
        {"python": [Candidate("c1", 0.5, "10.0.0", PROVEN * N), Candidate("h1", 0.5, "10.0.4"),
                    Candidate("h2", 0.5, "10.0.5")]}, 0.0)) == 1)
    sub.submit("j0", lone, seed)
    effects, now = drive(sub, "j0", ("c1", "h1", "h2"), (), {"c1": WRONG}, 0.0, streaks={"c1": PROVEN * N})
    assert [e.node for e in effects if isinstance(e, Send)] == ["c1"] and sub.jobs["j0"].run.steps["a"].output == WRONG

    effects, now = drive(sub, "j1", ("c1", "h1", "h2"), ("h3", "h4"), {"c1": WRONG}, now + 1)
    assert sub.jobs["j1"].run.steps["a"].output == RIGHT
    (started,) = [e for e in effects if isinstance(e, Started) and e.recheck_of]
    assert started.recheck_of == ("j0", "a")
    drive(sub, started.job, ("h5", "h6", "h7"), (), {}, now + 1)
    assert sub.jobs["j0"].rechecks["a"]["verdict"] == "overturned" and sub.jobs["j0"].run.steps["a"].output == RIGHT


def test_an_honest_worker_outvoted_has_nothing_rerun_that_it_did_not_run_alone():
    sub = Submission(Config(1, blacklist_s=600))
    drive(sub, "j0", ("h1", "h2", "h3"), (), {}, 0.0)  # h1 vouched, with two others
    effects, _ = drive(sub, "j1", ("c1", "c2", "h1"), ("c3", "h4"), {"c1": WRONG, "c2": WRONG, "c3": WRONG}, 5.0)
    assert not [e for e in effects if isinstance(e, Started) and e.recheck_of == ("j0", "a")]


def thin_win(sub: Submission) -> Started:
    """Two colluders outvote one honest worker, and no other worker is left to meet the margin."""
    effects, _ = drive(sub, "j1", ("c1", "c2", "h1"), (), {"c1": WRONG, "c2": WRONG}, 0.0)
    step = sub.jobs["j1"].run.steps["a"]
    assert step.output == WRONG and step.tally.answers["h1"] != step.key
    (started,) = [e for e in effects if isinstance(e, Started) and e.recheck_of]
    assert started.recheck_of == ("j1", "a") and sub.jobs["j1"].rechecks["a"]["cause"] == "thin majority"
    assert sub.jobs[started.job].exclude == frozenset({"c1", "c2", "h1"})
    return started


def test_a_step_won_without_the_margin_is_rerun_by_others_and_the_pair_that_won_it_is_caught():
    sub = Submission(Config(1, blacklist_s=600))
    started = thin_win(sub)
    effects, now = drive(sub, started.job, NAMES, (), {"c1": WRONG, "c2": WRONG}, 5.0)
    assert not {e.node for e in effects if isinstance(e, Send)} & {"c1", "c2", "h1"}
    assert sub.jobs["j1"].rechecks["a"]["verdict"] == "overturned" and sub.jobs["j1"].run.steps["a"].output == RIGHT
    assert sub.blacklisted("c1", now) and sub.blacklisted("c2", now) and not sub.blacklisted("h1", now)


def test_a_step_two_colluders_won_with_the_other_seat_failed_is_rerun_by_others_and_they_are_caught():
    """large-10k: colluder pairs accepted with all four other seats timed out and none left to ask."""
    sub = Submission(Config(1, blacklist_s=600))
    effects, _ = drive(sub, "j1", ("c1", "c2", "h1"), (), {"c1": WRONG, "c2": WRONG, "h1": FAIL}, 0.0)
    assert sub.jobs["j1"].run.steps["a"].output == WRONG
    (started,) = [e for e in effects if isinstance(e, Started) and e.recheck_of]
    assert sub.jobs["j1"].rechecks["a"]["cause"] == "seats failed"
    assert sub.jobs[started.job].exclude == frozenset({"c1", "c2", "h1"})
    effects, now = drive(sub, started.job, NAMES, (), {"c1": WRONG, "c2": WRONG}, 5.0)
    assert sub.jobs["j1"].rechecks["a"]["verdict"] == "overturned"
    assert sub.blacklisted("c1", now) and sub.blacklisted("c2", now) and not sub.blacklisted("h1", now)

    sub = Submission(Config(1, blacklist_s=600))  # two honest workers and a seat that failed: confirmed
    effects, _ = drive(sub, "j2", ("h1", "h2", "c1"), (), {"c1": FAIL}, 0.0)
    (started,) = [e for e in effects if isinstance(e, Started) and e.recheck_of]
    effects, now = drive(sub, started.job, NAMES, (), {}, 5.0)
    assert sub.jobs["j2"].rechecks["a"]["verdict"] == "confirmed" and not sub.spot.banned


def test_a_step_won_with_the_margin_or_under_another_rule_is_not_rerun():
    sub = Submission(Config(1, blacklist_s=600))
    effects, _ = drive(sub, "j1", ("c1", "h1", "h2"), ("h3", "h4"), {"c1": WRONG}, 0.0)  # 4 to 1
    assert sub.jobs["j1"].run.steps["a"].output == RIGHT and not [e for e in effects if isinstance(e, Started)
                                                                   and e.recheck_of]
    sub = Submission(Config(1, blacklist_s=600))
    sub.submit("j2", parse_job({"redundancy": 3, "quorum": "2-of-3", "steps": [
        {"id": "a", "kind": "python", "params": {"code": "x"}}]}), 1)
    effects, _ = drive(sub, "j2", ("c1", "c2", "h1"), (), {"c1": WRONG, "c2": WRONG}, 0.0)
    assert not [e for e in effects if isinstance(e, Started) and e.recheck_of]  # 2-of-3 asked for no margin


def test_a_recheck_split_by_sybils_is_asked_again_of_others_then_let_stand():
    sub = Submission(Config(1, blacklist_s=600))
    started = thin_win(sub)
    asked: set[str] = {"c1", "c2", "h1"}
    now = 5.0
    for attempt in range(1, RECHECK_TRIES + 1):
        names = tuple(n for n in NAMES if n not in asked)[:3]
        effects, now = drive(sub, started.job, names, (), {n: i for i, n in enumerate(names)}, now + 1,
                             follow=False)
        assert {e.node for e in effects if isinstance(e, Send)} == set(names)  # none asked before
        asked |= set(names)
        again = [e for e in effects if isinstance(e, Started) and e.recheck_of == ("j1", "a")]
        if attempt < RECHECK_TRIES:
            (started,) = again
            assert sub.jobs[started.job].exclude == frozenset(asked) and sub.jobs["j1"].rechecks["a"]["tries"] == attempt + 1
            assert not [e for e in effects if isinstance(e, Rechecked)]
        else:
            assert not again and [e.verdict for e in effects if isinstance(e, Rechecked)] == ["inconclusive"]
    assert sub.jobs["j1"].run.steps["a"].output == WRONG  # no quorum anywhere: let stand, nobody convicted
    assert not [e for e in effects if isinstance(e, Record) for x in e.entries if x.kind == "disagreed"]


def test_a_lone_step_goes_to_a_proven_worker_not_already_running_one_of_ours():
    """Two proven workers, and one is still running our first lone step: the second lone step goes to the
    other, not to queue behind ours (large-10k: a submitter's lone steps piled onto its few proven workers,
    which then refused the rest). With both running one of ours, one of them is still drawn."""
    cands = {"python": [Candidate("p1", 0.5, "10.1.0", PROVEN * N), Candidate("p2", 0.5, "10.1.1", PROVEN * N)]
             + [Candidate(f"w{i}", 0.5, f"10.2.{i}") for i in range(8)]}
    for seed in range(30):
        sub = Submission(Config(seed))
        firsts = []
        for k in range(3):
            jid = f"j{k}"
            sub.submit(jid, job(adaptive=N), seed * 10 + k)
            sent = [e for e in sub.tick(jid, cands, float(k)) if isinstance(e, Send)]
            firsts.append(tuple(e.node for e in sent))
        alone = [f[0] for f in firsts if len(f) == 1]  # (an audit sends two: it says nothing here)
        if len(firsts[0]) == 1 and len(firsts[1]) == 1:
            assert firsts[0] != firsts[1], (seed, firsts)
        assert all(n in ("p1", "p2") for n in alone)
    marked = Submission(Config(1))
    marked.outstanding["p1"] = {("j", "a"): 99.0}
    view = marked._trusted(cands, 0.0)["python"]
    assert [c.node for c in view if c.engaged] == ["p1"] and len(view) == len(cands["python"])
