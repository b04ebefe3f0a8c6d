"""The floor below which a node refuses envelopes as older than its start (their replay memory died with
the last run), as the wall clock moves under it (`mesh.node.lifecycle.start_floor`)."""

from __future__ import annotations

from mesh.node.lifecycle import CLOCK_STEP_MS, start_floor

T0 = 1_800_000_000_000


def test_a_clock_set_back_since_the_start_moves_the_floor_back_with_it():
    # started with the clock an hour ahead; 90 s later NTP set it back by the hour
    assert start_floor(T0 + 3_600_000, T0 + 90_000, 90.0) == T0


def test_a_clock_that_keeps_time_or_jumps_ahead_leaves_the_floor_alone():
    assert start_floor(T0, T0 + 90_000, 90.0) == T0
    assert start_floor(T0, T0 + 90_000 + 3_600_000, 90.0) == T0  # (a jump ahead moves every stamp ahead too)
    assert start_floor(T0, T0 + 90_000 - CLOCK_STEP_MS + 1, 90.0) == T0  # drift under CLOCK_STEP_MS: no step
