"""What a node relays for others is held to an hourly budget (--relay-budget; a quarter of it for one
network prefix). Circuits were held each to 256 MiB and an hour with no running total, so two ids of one
operator, one holding a reservation and the other dialling it, could carry any traffic of theirs through
a node that offered to relay for the mesh (on the README's open list since the p2p attack round)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.cli.local import LocalNode
from mesh.node.p2p.nat import RelayBudget

from ..conftest import wait_for

MIB = 1 << 20


def test_a_prefix_gets_a_quarter_of_the_hour_and_the_hour_refills_it():
    budget = RelayBudget(8 * MIB, now=0.0)
    assert budget.open("203.0.113", 0.0)
    assert budget.spend("203.0.113", 2 * MIB, 0.0)
    assert not budget.spend("203.0.113", 1, 0.0)  # its quarter spent
    assert not budget.open("203.0.113", 0.0) and budget.refused == 1
    assert budget.spend("198.51.100", 2 * MIB, 1.0)  # another network's quarter is its own
    assert budget.open("203.0.113", 1800.0)  # half an hour refills half its quarter
    for i in range(4):
        budget.spend(f"192.0.{i}", 2 * MIB, 1800.0)
    assert not budget.open("192.0.9", 1800.0)  # and all of them together the whole


@pytest.mark.mesh
@pytest.mark.timeout(180)
def test_two_ids_piping_their_own_traffic_through_a_relay_are_cut_at_the_budget(tmp_path: Path):
    node = LocalNode(tmp_path / "relay", ["--no-model", "--relay-budget", "8MB"])
    node.start([])
    try:
        node.wait_started(60)
        addr = node.client.request("GET", "/status")["addresses"][0]
        wait_for(lambda: node.client.request("GET", "/status").get("reachability") == "public", 60,
                 "the node to offer relaying")
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, str(Path(__file__).with_name("relay_pipe.py")), addr, "24"],
                             capture_output=True, text=True, timeout=150, cwd=str(Path(__file__).resolve().parents[2]))
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"relayed {got['received']:,} bytes of 24 MiB piped ({got['ended']}) in {time.monotonic() - t0:.1f} s")
        assert got["received"] <= 8 * MIB // 4 + MIB, got  # a prefix's quarter, and what was in flight
        assert got["received"] > 0, got  # (the pipe worked until the budget)
    finally:
        node.stop()
