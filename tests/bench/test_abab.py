"""bench/abab.py: the method every ratio is measured by — pairs alternate, the median and its spread are
reported, an implausible median is flagged, and the CPU set is really pinned."""

from __future__ import annotations

import os

import pytest

from bench.abab import Ratio, abab, pin

pytestmark = pytest.mark.timeout(30)


def test_pairs_alternate_baseline_first_and_the_median_ratio_is_reported_with_its_spread():
    order: list[str] = []
    base = iter([100.0, 50.0, 100.0, 100.0, 100.0])  # the second baseline run was slowed by a neighbour
    subj = iter([80.0, 90.0, 85.0, 70.0, 90.0])

    def baseline() -> float:
        order.append("A")
        return next(base)

    def subject() -> float:
        order.append("B")
        return next(subj)

    r = abab("x_vs_y", baseline, subject, 5, plausible=(0.0, 1.02))
    assert order == ["A", "B"] * 5
    assert r.fields() == {"x_vs_y": 0.85, "x_vs_y_min": 0.7, "x_vs_y_max": 1.8, "x_vs_y_pairs": 5}
    assert r.flag == ""  # one pair out of range does not move the median


def test_a_median_outside_the_plausible_range_is_flagged_not_reported_as_a_win():
    r = Ratio("mesh_vs_direct", ((50.0, 88.0), (50.0, 90.0), (100.0, 95.0), (50.0, 91.0), (52.0, 90.0)), (0.0, 1.02))
    assert r.median > 1.02 and "implausible" in r.flag and r.fields()["mesh_vs_direct_flag"] == r.flag


def test_fewer_than_five_pairs_are_refused():
    with pytest.raises(SystemExit, match="at least 5"):
        abab("x", lambda: 1.0, lambda: 1.0, 4)


def test_pin_sets_the_affinity_and_refuses_a_cpu_the_process_may_not_use():
    before = os.sched_getaffinity(0)
    try:
        first = min(before)
        assert pin(str(first)) == [first] and os.sched_getaffinity(0) == {first}
        with pytest.raises(SystemExit, match="may run on CPUs"):
            pin(str(max(before) + 1000))
        with pytest.raises(SystemExit, match="CPU numbers"):
            pin("zero")
    finally:
        os.sched_setaffinity(0, before)
