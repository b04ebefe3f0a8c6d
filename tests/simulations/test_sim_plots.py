"""The simulator's plots and parameter sweeps: real small runs, PNG files and a CSV on disk."""

from __future__ import annotations

import csv

import pytest

from simulations.plots import plot_run
from simulations.run import simulate
from simulations.scenario import ScenarioError, load
from simulations.sweep import COLUMNS, POLICIES, cell_scenario, grid, run_sweep, with_fraction

pytestmark = pytest.mark.timeout(300)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    assert path.is_file(), f"{path} was not written"
    data = path.read_bytes()
    assert len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC), f"{path} is not a PNG"


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_plot_run_writes_two_pngs(tmp_path):
    s, text = load("malicious-20")
    result, sim = simulate(s.replace(steps=1500), text, "malicious-20", 1)
    assert sim.m.series, "the run recorded no snapshots"
    out = tmp_path / "plots" / "run"  # created by plot_run
    paths = plot_run(result, sim.m.series, out)
    assert sorted(p.name for p in paths) == ["replicas.png", "reputation.png"]
    for path in paths:
        assert path.parent == out
        assert_png(path)


def test_grid_applies_fraction_and_policy():
    s, _ = load("malicious-20")
    cells = grid(s, [0.0, 0.3], [2, 3], ["plain", "full"])
    assert len(cells) == 8
    labels, overrides, fraction = cells[1]
    assert labels == {"nodes": 100, "fraction": 0.3, "redundancy": 2, "policy": "plain"} and fraction == 0.3
    assert overrides == {**POLICIES["plain"], "jobs.redundancy": 2}
    one = with_fraction(s, 0.3)
    assert len(one.adversaries) == 1
    assert (one.adversaries[0].strategy, one.adversaries[0].rate, one.adversaries[0].fraction) == (
        s.adversaries[0].strategy, s.adversaries[0].rate, 0.3)
    assert s.adversaries[0].fraction == 0.2, "the original scenario was changed"
    assert with_fraction(s, 0.0).adversaries == []
    none = with_fraction(s.replace(adversaries=[]), 0.1).adversaries
    assert [(a.strategy, a.fraction, a.rate) for a in none] == [("random-wrong", 0.1, 1.0)]


def test_a_size_sweep_scales_the_load_with_the_network_and_keeps_the_scenarios_adversaries():
    s, _ = load("large-10k")
    cells = grid(s, None, [3], ["full"], [100, 100_000])
    assert [c[0] for c in cells] == [{"nodes": n, "fraction": 0.15, "redundancy": 3, "policy": "full"}
                                     for n in (100, 100_000)]
    small = cells[0][1]
    assert (small["network.nodes"], small["network.submitters"], small["network.prefixes"]) == (100, 1, 60)
    assert small["jobs.rate_per_s"] == pytest.approx(2.0) and cells[1][1]["jobs.rate_per_s"] == pytest.approx(2000)
    assert [len(cell_scenario(s, o, f).adversaries) for _, o, f in cells] == [2, 2]  # both of the scenario's
    with pytest.raises(ScenarioError):
        grid(s, None, [3], ["full"], [1])


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_run_sweep_writes_csv_and_plot(tmp_path):
    _, text = load("malicious-20")
    seen = []
    path, rows = run_sweep(text, "malicious-20", 7, [0.0, 0.2], [3], ["plain", "full"], 800, tmp_path / "sweep",
                           2, progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "sweep" / "sweep.csv"
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        written = list(reader)
    assert len(written) == len(rows) == 4
    keys = [(r["policy"], int(r["redundancy"]), float(r["fraction"])) for r in written]
    assert keys == [("full", 3, 0.0), ("full", 3, 0.2), ("plain", 3, 0.0), ("plain", 3, 0.2)]
    for row in written:
        assert int(row["steps"]) == 800
        assert 0.0 <= float(row["wrong_accepted_rate"]) <= 1.0
        assert row["trace_hash"]
        if row["policy"] == "plain":
            assert float(row["replicas_per_step"]) >= 2.9, row
            assert float(row["spot_checks_per_step"]) == 0.0, row
        if float(row["fraction"]) == 0.0:
            assert int(row["wrong_accepted"]) == 0 and float(row["adversary_credit_share"]) == 0.0, row
    assert_png(tmp_path / "sweep" / "wrong-vs-fraction.png")
    assert not (tmp_path / "sweep" / "vs-size.png").exists()  # one size: no size plot


@pytest.mark.mesh  # three small simulated networks
def test_a_size_sweep_writes_the_size_plot(tmp_path):
    _, text = load("baseline")
    path, rows = run_sweep(text, "baseline", 1, None, [3], ["full"], 300, tmp_path, 2, sizes=[20, 60, 200])
    assert [(r["nodes"], r["fraction"]) for r in rows] == [(20, 0.0), (60, 0.0), (200, 0.0)]
    assert all(300 <= r["steps"] <= 302 for r in rows)  # (the last job may have more than one step)
    assert all(r["wrong_accepted"] == 0 for r in rows)
    assert_png(tmp_path / "vs-size.png")
