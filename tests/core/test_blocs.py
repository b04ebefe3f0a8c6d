"""Blocs (mesh.core.submission: _blocs, _settle_blocs): workers outvoted together with one and the same
wrong answer. Honest workers err apart; colluders with a side channel agree on their wrong answer. The
attacker here is a group that cheats only where two of its members hold a step, so it is never alone in a
wrong answer and never fails a spot check (a check goes to one worker). In memory, the time passed in."""

from __future__ import annotations

import pytest

from mesh.core.dag import parse_job
from mesh.core.effects import Alarm, Finished, Record, Send, Started
from mesh.core.submission import Config, Submission
from mesh.wire.canonical import digest

from .submitting import NAMES, RIGHT, WRONG, drive, job, pool

pytestmark = pytest.mark.timeout(30)
def unanimous_wrong(sub: Submission) -> None:
    """j0: three colluders hold every seat and agree on WRONG: accepted, nobody dissenting."""
    effects, _ = drive(sub, "j0", ("c1", "c2", "c3"), (), {"c1": WRONG, "c2": WRONG, "c3": WRONG}, 0.0)
    assert Finished("j0", "done") in effects and sub.jobs["j0"].run.steps["a"].output == WRONG


def test_two_outvoted_with_one_wrong_answer_are_rechecked_then_banned_and_their_unanimous_step_reruns():
    sub = Submission(Config(1, blacklist_s=600))
    unanimous_wrong(sub)
    colluders = {"c1": WRONG, "c2": WRONG}
    effects, now = drive(sub, "j1", ("c1", "c2", "h1"), ("h2", "h3", "h4", "h5", "h6"), colluders, 10.0)
    step = sub.jobs["j1"].run.steps["a"]
    assert step.output == RIGHT and {"c1", "c2"} <= set(step.replicas)
    (started,) = [e for e in effects if isinstance(e, Started) and e.recheck_of]
    assert started.recheck_of == ("j1", "a") and sub.jobs["j1"].rechecks["a"]["cause"] == "bloc of 2"
    assert sub.jobs[started.job].exclude == frozenset(step.replicas)  # nobody with a part in either answer
    assert not sub.blacklisted("c1", now)  # not on the vote alone

    every = NAMES
    effects, now = drive(sub, started.job, every, (), colluders, now)
    sent = {e.node for e in effects if isinstance(e, Send) and e.job == started.job}
    assert sent and not sent & set(step.replicas)
    assert sub.jobs["j1"].rechecks["a"]["verdict"] == "confirmed"
    assert sub.blacklisted("c1", now) and sub.blacklisted("c2", now) and not sub.blacklisted("h1", now)
    rerun = [e for e in effects if isinstance(e, Started) and e.recheck_of == ("j0", "a")]
    assert len(rerun) == 1  # the step they held every seat of runs again

    effects, now = drive(sub, rerun[0].job, tuple(n for n in NAMES if n.startswith("h")), (), {}, now)
    assert sub.jobs["j0"].rechecks["a"]["verdict"] == "overturned"
    assert sub.jobs["j0"].run.steps["a"].output == RIGHT
    disagreed = {e.peer for r in effects if isinstance(r, Record) for e in r.entries if e.kind == "disagreed"}
    assert disagreed == {"c1", "c2", "c3"}


def test_two_honest_workers_outvoted_by_colluders_are_not_banned_and_the_recheck_overturns_the_step():
    """The slander the rule must not turn into a weapon: four colluders outvote two honest workers who
    agree on the right answer. The recheck, on workers with no part in it, finds them right."""
    sub = Submission(Config(1, blacklist_s=600))
    colluders = {c: WRONG for c in ("c1", "c2", "c3", "c4")}
    effects, now = drive(sub, "j1", ("c1", "c2", "h1"), ("c3", "c4", "h2"), colluders, 0.0)
    step = sub.jobs["j1"].run.steps["a"]
    assert step.output == WRONG and {"h1", "h2"} <= set(step.tally.answers)  # they won, two honest outvoted
    (started,) = [e for e in effects if isinstance(e, Started) and e.recheck_of]
    effects, now = drive(sub, started.job, NAMES, (), colluders, now)
    assert sub.jobs["j1"].rechecks["a"]["verdict"] == "overturned" and step.output == RIGHT
    assert not sub.blacklisted("h1", now) and not sub.blacklisted("h2", now)
    disagreed = {e.peer for r in effects if isinstance(r, Record) for e in r.entries if e.kind == "disagreed"}
    assert disagreed == {n for n in step.replicas if n.startswith("c")}


def test_outvoted_workers_that_err_apart_are_no_bloc_nor_are_those_of_a_step_compared_loosely():
    sub = Submission(Config(1, blacklist_s=600))
    effects, _ = drive(sub, "j1", ("c1", "c2", "h1"), ("h2", "h3", "h4", "h5", "h6"), {"c1": 1, "c2": 2}, 0.0)
    assert Finished("j1", "done") in effects and not [e for e in effects if isinstance(e, Started) and e.recheck_of]

    sub = Submission(Config(1, blacklist_s=600))
    sub.submit("j2", job("similar:0.5"), 2)
    effects, _ = drive(sub, "j2", ("c1", "c2", "h1"), ("h2", "h3", "h4", "h5", "h6"),
                       {"c1": "zebra zebra", "c2": "zebra zebra"}, 0.0, right="the answer is forty two")
    assert not [e for e in effects if isinstance(e, Started) and e.recheck_of]


def test_colluders_holding_every_seat_are_banned_once_a_check_replaying_their_step_is_rechecked_against_them():
    """The group that cheats only where it holds every seat: nobody dissents, so no bloc. Its wrong answer
    is a known answer now; replayed to an honest worker as a spot check, it comes back different, and the
    step is rerun on workers with no part in either answer. Overturned, the three are caught together."""
    sub = Submission(Config(1, spot_rate=1.0, blacklist_s=600))
    unanimous_wrong(sub)
    sub.submit("j1", parse_job({"redundancy": 1, "steps": [{"id": "a", "kind": "python", "params": {"code": "x"}}]}),
               2)
    effects = sub.tick("j1", pool("h1"), 40.0)
    (alarm,) = [e for e in effects if isinstance(e, Alarm)]
    (check,) = [e for e in sub.on_alarm(alarm.at) if isinstance(e, Send) and e.node == "h1" and e.check]
    assert check.check.source == ("j0", "a") and check.check.expected == WRONG
    effects = sub.on_result("h1", check.job, check.step, True, digest(RIGHT), RIGHT, {}, "", alarm.at + 1)
    (started,) = [e for e in effects if isinstance(e, Started)]
    assert started.recheck_of == ("j0", "a")
    effects, now = drive(sub, started.job, NAMES, (), {}, alarm.at + 2)
    assert sub.jobs["j0"].rechecks["a"]["verdict"] == "overturned"
    assert all(sub.blacklisted(c, now) for c in ("c1", "c2", "c3")) and not sub.blacklisted("h1", now)


def test_a_right_answer_several_agreed_on_is_not_overturned_by_one_recheck_that_sybils_won():
    """The slander a recheck opened: a sybil answers a check replaying an honest step wrong, the step is
    rerun on workers with no part in it, and sybils draw all of that recheck's seats. Overturned at once,
    the honest answer became wrong and the three who had agreed on it were caught as a bloc. An answer
    two or more agreed on now falls only when a second recheck, by yet other workers, gives the same new
    answer; here it finds the old one again."""
    sub = Submission(Config(1, spot_rate=1.0, blacklist_s=600))
    effects, _ = drive(sub, "j0", ("h1", "h2", "h3"), (), {}, 0.0)
    assert Finished("j0", "done") in effects and sub.jobs["j0"].run.steps["a"].output == RIGHT
    sub.submit("j1", parse_job({"redundancy": 1, "steps": [{"id": "a", "kind": "python", "params": {"code": "x"}}]}),
               2)
    effects = sub.tick("j1", pool("c1"), 40.0)
    (alarm,) = [e for e in effects if isinstance(e, Alarm)]
    (check,) = [e for e in sub.on_alarm(alarm.at) if isinstance(e, Send) and e.node == "c1" and e.check]
    assert check.check.source == ("j0", "a")
    effects = sub.on_result("c1", check.job, check.step, True, digest(WRONG), WRONG, {}, "", alarm.at + 1)
    (started,) = [e for e in effects if isinstance(e, Started)]
    sybils = {c: WRONG for c in ("c2", "c3", "c4")}
    effects, now = drive(sub, started.job, ("c2", "c3", "c4"), (), sybils, alarm.at + 2, follow=False)
    assert sub.jobs["j0"].run.steps["a"].output == RIGHT  # not on one recheck
    (again,) = [e for e in effects if isinstance(e, Started) and e.recheck_of == ("j0", "a")]
    assert {"h1", "h2", "h3", "c2", "c3", "c4"} <= sub.jobs[again.job].exclude  # none who answered either way
    effects, now = drive(sub, again.job, NAMES, (), sybils, now)
    sent = {e.node for e in effects if isinstance(e, Send) and e.job == again.job}
    assert sent and not sent & {"h1", "h2", "h3", "c2", "c3", "c4"}
    assert sub.jobs["j0"].rechecks["a"]["verdict"] == "confirmed" and sub.jobs["j0"].run.steps["a"].output == RIGHT
    assert not any(sub.blacklisted(h, now) for h in ("h1", "h2", "h3"))
    disagreed = {e.peer for r in effects if isinstance(r, Record) for e in r.entries if e.kind == "disagreed"}
    assert not disagreed & {"h1", "h2", "h3"}
