"""bench/sim_scale.py: the simulator's events/s at several network sizes, sized as `mesh simulate --sweep`
sizes them, and the spread between the fastest and the slowest."""

from __future__ import annotations

import argparse

import pytest

from bench.sim_scale import run, sizes_arg

pytestmark = pytest.mark.timeout(60)


def test_each_size_is_run_as_the_sweep_sizes_it_and_the_spread_is_fastest_over_slowest():
    res = run("baseline", [20, 200], 300, 1)
    assert res["events_20"] > 0 and res["events_200"] > 0 and res["wall_s_200"] > 0
    rates = (res["events_per_s_20"], res["events_per_s_200"])
    assert res["spread"] == round(max(rates) / min(rates), 2) >= 1.0


@pytest.mark.parametrize("text", ["", "1", "100,x", "100,,1"])
def test_a_bad_size_list_is_refused_with_a_reason(text):
    with pytest.raises(argparse.ArgumentTypeError):
        sizes_arg(text)
