"""A step that sleeps holds its worker's slot for nothing (found by this project's red team, 2026-12-05): it
used no CPU, so it was paid the minimum charge, 0.01, for 60 s of a slot that paying work could not use. A
python step is now paid at least a quarter of its wall time past a second, in CPU-seconds (mesh.core.pricing.SLOT_SHARE),
its wall time held to the submitter's wait for the answer. Over real connections: two nodes, one step."""

from __future__ import annotations

import time

import pytest

from mesh.core.pricing import SLOT_GRACE_S, SLOT_SHARE
from mesh.wire.records import DEFAULT_RATES

from ..conftest import cli_json, write_job

SLEEP_S = 4.0


@pytest.mark.mesh
@pytest.mark.timeout(240)
def test_a_step_that_sleeps_pays_rent_for_the_slot_it_held(make_mesh, tmp_path):
    mesh = make_mesh(2, lambda i: ["--no-model"])
    sub, worker = mesh.nodes
    job = write_job(tmp_path / "sleep.json", [{"id": "nap", "kind": "python", "params": {
        "code": f"import time\ntime.sleep({SLEEP_S})\noutput = 1"}}], redundancy=1, timeout=60)
    began = time.monotonic()
    rep = cli_json("submit", job, "--home", str(sub.home), "--wait")
    took = time.monotonic() - began
    assert rep["status"] == "done", rep
    (mine,) = rep["steps"]["nap"]["replicas"]
    assert mine["node"] == worker.node_id and mine["work"]["cpu_s"] < 1.0, mine  # it slept
    assert SLEEP_S <= mine["work"]["seconds"] <= took, (took, mine)
    print(f"slept {SLEEP_S} s on {mine['work']['cpu_s']} CPU-s: paid {mine['credit']} for {mine['work']['seconds']} s held")
    # paid for the slot: a quarter of the time it held it past the grace, never more than the submitter waited
    assert SLOT_SHARE * (SLEEP_S - SLOT_GRACE_S) * DEFAULT_RATES.cpu_s <= mine["credit"] <= \
        SLOT_SHARE * took * DEFAULT_RATES.cpu_s, mine
