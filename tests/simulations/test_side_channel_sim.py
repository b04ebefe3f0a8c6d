"""Colluders with a side channel, in whole simulated networks: each member tells the group every request
it gets, and the group answers one wrong answer wherever enough members hold a step (never alone, so no
spot check catches one). mesh.core.submission catches them by what they do together: outvoted with one
and the same wrong answer (a bloc), or agreeing on an answer a recheck by others overturned."""

from __future__ import annotations

import pytest

from simulations.adversaries import Request, SideChannel, WholeTable
from simulations.run import simulate
from simulations.scenario import load

pytestmark = pytest.mark.timeout(300)


def run(name: str, steps: int, seed: int) -> dict:
    s, text = load(name)
    r, _ = simulate(s.replace(steps=steps), text, "t", seed)
    return r


def test_members_cheat_only_where_enough_of_them_hold_the_step():
    import random

    for cls, hold in ((SideChannel, 2), (WholeTable, 3)):
        channel: dict = {}
        members = [cls(random.Random(1), 1.0, "ring") for _ in range(3)]
        for m in members:
            m.channel = channel
        req = Request("sub", "j1", "a", "python")
        answers = []
        for m in members:
            m.arrived(req)
            answers.append(m.respond(req, 42, 0.0))
        assert answers[:hold - 1] == [42] * (hold - 1) and answers[hold - 1] != 42


@pytest.mark.mesh  # seconds of work: the full suite runs it, the fast one does not
def test_colluders_outvoted_together_are_caught_and_get_no_wrong_answer_through():
    """side-channel-20, 8,000 steps: before blocs were caught, seeds 1 and 2 accepted 18 and 5 wrong
    answers (2.4e-3, 6e-4) and the group earned 8% and 4% of the credits; now at most one, and under 5%.
    (Seeds 1-8 with simulated workers answering busy: 0, 0, 2, 0, 0, 0, 0, 1 wrong; with answers several
    agreed on needing two rechecks to fall as well: 0, 1, 0, 0, 0, 0, 0, 0. Seed 2's one is a trio of the
    group that held every seat of a step at 56 s, which no check replayed to anyone else.)"""
    for seed in (1, 2):
        r = run("side-channel-20", 8000, seed)
        assert r["wrong_accepted"] <= 1, r
        assert r["adversary_credit_share"] < 0.05, r
        assert r["wrong_at_settle_rate"] >= r["wrong_accepted_rate"]


@pytest.mark.mesh  # 3 s on its own: out of the fast suite (`-m "not mesh"`), in the full one
def test_a_job_the_core_lets_go_in_the_call_that_judges_its_recheck_is_no_crash(monkeypatch):
    """The core forgets the oldest finished job once it is not being rechecked, in the very call that
    gives the verdict (Rechecked, then Forgotten); the simulator read the job back from the core for the
    verdict and died with a KeyError (large-10k, 200,000 steps, when blocs made rechecks common). Keeping
    one finished job makes every verdict such a call."""
    import simulations.driver as driver

    made = driver.make_core
    monkeypatch.setattr(driver, "make_core", lambda policy, seed, keep, *a, **kw: made(policy, seed, 1, *a, **kw))
    r = run("side-channel-20", 1500, 1)
    assert r["rechecks"] > 0 and r["steps"] == 1500, r


@pytest.mark.mesh  # seconds of work: the full suite runs it, the fast one does not
def test_a_table_the_group_held_whole_is_replayed_to_someone_else_and_overturned():
    """side-channel-all-20, 15,000 steps: the group cheats only where three members hold every seat of a
    step, so nobody dissents and only a spot check that replays the step to an honest worker shows it.
    Replayed from the last 32 accepted steps alone, most steps never were: seeds 1, 2 and 3 kept 5, 3
    and 5 wrong answers and the group earned 23%, 13% and 17% of the credits (ids 20%). Each accepted
    step is now replayed once before any is replayed again (mesh.core.spotcheck.SpotChecker.unchecked):
    1, 1 and 2 wrong, 15%, 10% and 9%. Since half the checks wait up to 30 min (Config.check_tail_s, which
    took the quiet loners from 75 to 34 wrong), a table is replayed later: 2, 1 and 4 wrong, 23%, 14%
    and 11% — a trade the README's table states."""
    results = [run("side-channel-all-20", 15000, seed) for seed in (1, 2)]
    assert sum(r["wrong_accepted"] for r in results) <= 3, results
    assert all(r["adversary_credit_share"] < 0.25 and r["rechecks"] > 0 for r in results), results
