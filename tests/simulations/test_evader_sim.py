"""Adversaries see what a real worker sees: the whole request (kind, deadline, arrival, relayed) and, by
the receipt or its absence, whether each answer was paid. The learning evader
(simulations.adversaries.Evader) uses both; in a whole run it is told its verdicts, learns, and still
gets next to no wrong answer accepted."""

from __future__ import annotations

import random

import pytest

from simulations.adversaries import Evader, Request, Strategy
from simulations.run import simulate
from simulations.scenario import AdversarySpec, load

pytestmark = pytest.mark.timeout(120)
CODE = {"code": "output = 1", "inputs": {}}


def ask(src: str, job: str, at: float, timeout: float = 120.0, kind: str = "python") -> Request:
    return Request(src, job, "s0", kind, CODE, at + timeout, at)


def test_the_evader_stops_cheating_on_requests_shaped_like_one_it_went_unpaid_for():
    ev = Evader(random.Random(1), rate=1.0, good_steps=2)
    assert [ev.respond(ask("a", f"a-{i}", i), 7, i) for i in range(2)] == [7, 7]  # its honest start
    first = ask("a", "a-3", 3.0)
    assert ev.respond(first, 7, 3.0) != 7
    ev.settled("a-3", "s0", True, 4.0)  # paid: not a check, as far as it can tell
    assert ev.respond(ask("a", "a-4", 5.0), 7, 5.0) != 7
    ev.settled("a-4", "s0", False, 6.0)  # unpaid: that shape is a check's
    assert ev.respond(ask("a", "a-5", 7.0), 7, 7.0) == 7 and ev.spared == 1
    assert ev.respond(ask("b", "b-1", 7.0), 7, 7.0) != 7  # another submitter: another shape
    assert ev.respond(ask("a", "a-6", 8.0, timeout=30.0), 7, 8.0) != 7  # another timeout too
    ev.settled("nobody", "s0", False, 9.0)  # a verdict on an honest answer teaches nothing
    assert len(ev.caught) == 1


class Recorder(Strategy):
    """Honest, keeping every request and verdict it is shown."""

    seen: list[Request] = []
    verdicts: list[bool] = []

    def arrived(self, req: Request) -> None:
        type(self).seen.append(req)

    def settled(self, job: str, step: str, paid: bool, now: float) -> None:
        type(self).verdicts.append(paid)


@pytest.mark.timeout(60)
def test_a_simulated_worker_is_shown_the_whole_request_and_its_verdicts():
    s, text = load("baseline")
    spec = AdversarySpec(strategy=f"{__name__}:Recorder", fraction=0.5, rate=1.0)
    s = s.replace(steps=300, adversaries=[spec], **{"network.nodes": 20})
    Recorder.seen, Recorder.verdicts = [], []
    simulate(s, text, "t", 1)
    assert Recorder.seen and all(r.kind == "python" and r.deadline > r.arrived and not r.relayed
                                 and r.src and "code" in r.params for r in Recorder.seen)
    # honest: paid, but for the few answers that came after their deadline (a busy 20-node network)
    assert len(Recorder.verdicts) > 0.8 * len(Recorder.seen) and sum(Recorder.verdicts) >= 0.9 * len(Recorder.verdicts)


@pytest.mark.mesh  # seconds of work: the full suite runs it, the fast one does not
def test_evaders_in_a_whole_run_learn_and_get_almost_nothing_wrong_accepted():
    """Before a wrong answer one submitter caught reran, with every submitter, what the worker had run
    alone (Submission.on_reported), this run accepted 48 wrong answers of 5,000."""
    s, text = load("evader-20")
    r, sim = simulate(s.replace(steps=5000), text, "t", 1)
    evaders = [n.strategy for n in sim.world.nodes.values() if isinstance(n.strategy, Evader)]
    assert evaders and sum(e.spared for e in evaders) > 0 and any(e.caught for e in evaders)
    assert r["wrong_accepted"] <= 2, r
