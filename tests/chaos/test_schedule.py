"""The chaos schedule is a pure function of its seed, and keeps its own rules (fast: no processes)."""

from __future__ import annotations

import pytest

from .schedule import ACTIONS, schedule, violations


def test_the_same_seed_gives_the_same_schedule():
    first = schedule(7, 4, 400)
    assert first, "a 400 s run has faults"
    for _ in range(20):
        assert schedule(7, 4, 400) == first


def test_another_seed_gives_another_schedule():
    assert schedule(7, 4, 400) != schedule(8, 4, 400)


@pytest.mark.parametrize("nodes,max_concurrent", [(2, 1), (4, 1), (5, 2), (6, 3)])
def test_the_rules_hold(nodes, max_concurrent):
    for seed in range(200):
        events = schedule(seed, nodes, 600, max_concurrent=max_concurrent)
        assert not violations(events, nodes, max_concurrent), (seed, violations(events, nodes, max_concurrent))
        assert all(e.at < 600 for e in events)


def test_every_kind_of_fault_comes_first_and_any_node_may_be_hit():
    events = schedule(1, 4, 2000)
    assert {e.action for e in events[:3]} == set(ACTIONS)
    assert {e.node for e in events if e.action == "kill9"} == {0, 1, 2, 3}  # submitters too


def test_faults_can_be_left_out():
    assert {e.action for e in schedule(3, 4, 600, actions=("kill9", "stop"))} == {"kill9", "stop"}


def test_violations_catch_a_broken_schedule():
    ok = schedule(1, 3, 200)
    overlapping = [ok[0], type(ok[0])(ok[0].at + 0.5, "stop", (ok[0].node + 1) % 3, 2.0)]
    assert violations(overlapping, 3)
    same_node = [ok[0], type(ok[0])(ok[0].at + 0.5, "stop", ok[0].node, 2.0)]
    assert any("already faulty" in v for v in violations(same_node, 3, max_concurrent=2))
    with pytest.raises(ValueError):
        schedule(1, 3, 100, max_concurrent=3)  # would allow every node down at once
