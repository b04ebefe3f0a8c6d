"""Spot checks in the simulator against a worker that answers what it takes for a check right and real
steps wrong (simulations.adversaries.CheckAware). Against the old wire form of a check (job `spot-…`, step
`check`, one code template, right after a replica) it never fails one; against checks shaped as real work
it is caught, and no honest worker ever is."""

from __future__ import annotations

import random

import pytest

from mesh.core.spotcheck import python_challenge
from simulations.adversaries import CheckAware, Request
from simulations.run import simulate
from simulations.scenario import load

pytestmark = pytest.mark.timeout(120)
REAL = {"code": "step 0", "inputs": {}}


def req(job: str, step: str, params: dict, at: float) -> Request:
    return Request("sub", job, step, "python", params, at + 60.0, at)


def test_the_check_aware_cheater_sees_through_every_cue_of_the_old_wire_form():
    """What it would do to checks as they used to travel: answered right, every one; real steps wrong."""
    cheat = CheckAware(random.Random(1), good_steps=100)  # (no "unseen code" cue while it learns)
    old_code = {"code": "a, b, c = 5, 6, 7\noutput = {'sum': a + b, 'mod': (a * b) % c, 'digits': 2}",
                "inputs": {}}
    cheat.arrived(r := req("sub-1", "s0", REAL, 10.0))
    assert cheat.respond(r, 42, 10.0) != 42  # a real step: wrong
    cheat.arrived(r := req("spot-00ff", "check", old_code, 10.003))  # right after the replica, as checks rode
    assert cheat.respond(r, 7, 10.2) == 7
    assert cheat.cue("spot-1", "s0", REAL) and cheat.cue("sub-9", "check", REAL) and cheat.cue("sub-9", "s0", old_code)
    cheat.arrived(r := req("sub-2", "s0", REAL, 30.0))
    assert cheat.respond(r, 43, 30.0) != 43
    assert cheat.cues == {"job id prefix": 1}  # (the first cue that fired)


def test_it_also_spots_synthetic_code_but_not_a_replayed_step():
    cheat = CheckAware(random.Random(1), good_steps=1)
    cheat.arrived(r := req("sub-1", "s0", REAL, 0.0))
    assert cheat.respond(r, 42, 1.0) != 42  # learns the workload's code
    synthetic = python_challenge(random.Random(2), "s0", 60.0)
    assert cheat.cue("sub-7", "s0", synthetic.params) == "unseen code"
    assert cheat.cue("sub-8", "s0", REAL) == ""  # a replay of a real step looks real


def caught_run(steps: int, seed: int) -> tuple[dict, object]:
    s, text = load("check-aware")
    return simulate(s.replace(steps=steps), text, "t", seed)


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_a_check_aware_cheater_is_caught_by_checks_shaped_as_real_work():
    """Three short runs (3,000 steps, 6-10 simulated minutes each): half the checks now wait up to 30 min,
    so one run catches fewer (seed 2: 9 before, 2 now; seeds 3 and 4: 6 and 3 now)."""
    caught, banned_all, cheats_all = 0, 0, 0
    for seed in (2, 3, 4):
        r, sim = caught_run(3000, seed)
        cheats = [n for n in sim.world.nodes.values() if n.strategy.adversary]
        honest = [n.id for n in sim.world.nodes.values() if not n.strategy.adversary]
        banned = {nid for sub in sim.submitters for nid in sub.core.spot.banned}
        assert not banned.intersection(honest)  # no honest worker ever failed a check
        legacy = {"job id prefix", "step id", "code template"}
        assert not any(legacy.intersection(n.strategy.cues) for n in cheats)  # no cue of the old form is left
        assert r["wrong_accepted_rate"] == 0 and r["adversary_credit_share"] < 0.01, r
        caught, banned_all, cheats_all = caught + r["caught"], banned_all + len(banned), cheats_all + len(cheats)
    assert caught >= 5 and banned_all >= cheats_all // 4, (caught, banned_all, cheats_all)


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
@pytest.mark.parametrize("name", ["baseline", "churn"])
def test_honest_workers_never_fail_a_check_even_when_they_leave_mid_check(name):
    s, text = load(name)
    r, sim = simulate(s.replace(steps=1500), text, "t", 3)
    honest = {n.id for n in sim.world.nodes.values() if not n.strategy.adversary}
    banned = {nid for sub in sim.submitters for nid in sub.core.spot.banned}
    assert r["spot_checks_per_step"] > 0 and not banned.intersection(honest), r
