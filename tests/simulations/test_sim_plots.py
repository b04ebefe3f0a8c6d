"""The simulator's plots and parameter sweeps: real small runs, PNG files and a CSV on disk."""

from __future__ import annotations

import csv

import pytest

from simulations.plots import plot_run
from simulations.run import simulate
from simulations.scenario import load
from simulations.sweep import COLUMNS, POLICIES, grid, run_sweep, with_fraction

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
    labels, overrides = cells[1]
    assert labels == {"fraction": 0.3, "redundancy": 2, "policy": "plain"}
    assert overrides == {**POLICIES["plain"], "jobs.redundancy": 2}
    one = with_fraction(s, 0.3)
    assert len(one.adversaries) == 1
    assert (one.adversaries[0].strategy, one.adversaries[0].rate, one.adversaries[0].fraction) == (
        s.adversaries[0].strategy, s.adversaries[0].rate, 0.3)
    assert s.adversaries[0].fraction == 0.2, "the original scenario was changed"
    assert with_fraction(s, 0.0).adversaries == []
    none = with_fraction(s.replace(adversaries=[]), 0.1).adversaries
    assert [(a.strategy, a.fraction, a.rate) for a in none] == [("random-wrong", 0.1, 1.0)]


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
