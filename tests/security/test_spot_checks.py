"""Spot checks against a worker that plays the attacker over real connections (issue 19, item 5): a node
run with `--fault check-aware` answers right what it takes for a check (job id `spot-…`, step `check`, the
old code template, a request right after another from the same submitter) and every real step wrong. As
checks used to travel it answered every one right and was never caught; shaped as real work now, it is.
And honest workers that answer "busy" are never blacklisted for it."""

from __future__ import annotations

import json
import random

import pytest

from mesh.core.dag import parse_job
from mesh.core.effects import Alarm, Send
from mesh.core.policy import Candidate
from mesh.core.submission import Config, Submission
from mesh.node.submitter import request
from mesh.node.worker import check_cue
from mesh.wire.canonical import digest
from mesh.wire.messages import StepRequest

from ..conftest import cli_json, wait_for, write_job
from .hostile import ledger_rows, status

OLD_CHECK = StepRequest("spot-0123456789abcdef", "check", "python",
                        {"code": "a, b, c = 1, 2, 3\noutput = {'sum': a + b, 'mod': (a * b) % c, 'digits': 1}",
                         "inputs": {}}, 60.0)


@pytest.mark.timeout(30)
def test_the_attackers_cues_fire_on_the_old_form_of_a_check_and_not_on_the_new():
    assert check_cue(OLD_CHECK, None) == "job id prefix"
    assert check_cue(StepRequest("0123", "check", "python", OLD_CHECK.params, 60.0), None) == "step id"
    assert check_cue(StepRequest("0123", "a", "python", OLD_CHECK.params, 60.0), None) == "code template"
    assert check_cue(StepRequest("0123", "a", "python", {"code": "output = 1"}, 60.0), 0.01) == "right after a replica"
    sub = Submission(Config(1, spot_rate=1.0))
    job = parse_job({"redundancy": 2, "timeout": 20, "steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = 6 * 7"}}]})
    checks: list[Send] = []
    for i in range(6):
        sub.submit(f"j{i}", job, i)
        effects = sub.tick(f"j{i}", {"python": [Candidate(n, 0.5, n) for n in ("w1", "w2", "w3")]}, 30.0 * i)
        for s in [e for e in effects if isinstance(e, Send)]:
            sub.on_result(s.node, s.job, s.step, True, digest(42), 42, {}, "", 30.0 * i + 1)
        sub.tick(f"j{i}", {"python": [Candidate(n, 0.5, n) for n in ("w1", "w2", "w3")]}, 30.0 * i + 1)
        for a in sorted((e for e in effects if isinstance(e, Alarm)), key=lambda a: a.at):
            checks += [s for s in sub.on_alarm(a.at) if isinstance(s, Send)]
    assert len(checks) >= 6
    assert all(check_cue(request(c, c.deadline - 20.0), None) == "" for c in checks)


JOBS = 60  # at most (11 runs here, 4 of them with both CPUs busy: caught after 2 to 15 jobs)


def ledger_peers(node) -> dict[str, dict]:
    return {p["node"]: p for p in cli_json("ledger", "peers", "--home", str(node.home))}


@pytest.mark.mesh
@pytest.mark.timeout(300)
def test_a_worker_that_answers_only_checks_right_is_caught_over_real_connections(make_mesh, tmp_path):
    # seven workers: a check that replays an accepted step and gets a different answer is a dispute, rerun
    # on workers with no part in either answer (the step's three and the cheater): three are left for it
    mesh = make_mesh(8, lambda i: ["--no-model"] + (["--spot-rate", "1.0"] if i == 0 else [])
                     + (["--fault", "check-aware"] if i == 7 else []))
    sub, cheat = mesh.nodes[0], mesh.nodes[7]

    def caught() -> list[dict]:
        return [r for r in ledger_rows(sub.home) if r["kind"] == "spot_failed"]

    # Jobs until it is caught: its checks go out at random moments up to 6 s after it is placed, and a check
    # that happens to come right after one of its replicas, or dies of a timeout on a loaded machine, is
    # dodged (no answer is no proof); an outvoted worker is then placed, and so checked, less often.
    rng = random.Random(19)
    for i in range(JOBS):
        n = rng.randrange(1000, 100000)
        job = write_job(tmp_path / f"j{i}.json", [{"id": "total", "kind": "python",
                                                   "params": {"code": f"output = sum(range({n}))"}}],
                        redundancy=3, timeout=6)
        rep = cli_json("submit", job, "--home", str(sub.home), "--wait")
        assert rep["status"] == "done" and rep["steps"]["total"]["output"] == sum(range(n)), rep
        if caught():
            break
    try:
        rows = wait_for(caught, 60, "the check-aware worker failing a spot check")  # a dispute is rechecked first
    except AssertionError as exc:
        seen = [line for line in (sub.home / "node.log").read_text(errors="replace").splitlines() if "spot" in line]
        raise AssertionError(f"{exc} after {i + 1} jobs\nthe cheater's log:\n"
                             f"{(cheat.home / 'node.log').read_text(errors='replace')[-3000:]}\n"
                             f"the submitter's spot checks:\n" + "\n".join(seen[-30:])) from None
    assert {r["peer"] for r in rows} == {cheat.node_id}  # only the cheater, never an honest worker
    assert ledger_peers(sub)[cheat.node_id]["spot_failed"] >= 1
    log = (cheat.home / "node.log").read_text(errors="replace")
    assert "looks real: answered wrong" in log
    for cue in ("job id prefix", "step id", "code template"):  # nothing of the old wire form reached it
        assert f"({cue})" not in log


@pytest.mark.mesh
@pytest.mark.timeout(300)
def test_honest_workers_at_their_limits_are_never_blacklisted(make_mesh, tmp_path):
    """A wide job (more parallel steps than a worker takes from one peer) with a check planned for every
    replica: checks wait for a free slot instead of overflowing the worker's limit, and a worker that
    answers every other request "busy" (`--fault busy`, an honest node at its limits) is not punished."""
    mesh = make_mesh(4, lambda i: ["--no-model"] + (["--spot-rate", "1.0"] if i == 0 else [])
                     + (["--fault", "busy"] if i == 3 else []))
    sub, busy = mesh.nodes[0], mesh.nodes[3]
    steps = [{"id": f"s{k}", "kind": "python",
              "params": {"code": f"import time\ntime.sleep(0.3)\noutput = sum(range({k * 1000}))"}} for k in range(10)]
    for i in range(3):
        job = write_job(tmp_path / f"wide{i}.json", steps, redundancy=2, timeout=8, max_replicas=3)
        rep = cli_json("submit", job, "--home", str(sub.home), "--wait")
        assert rep["status"] == "done", rep
    wait_for(lambda: status(busy)["rejected"].get("busy", 0) >= 3, 30, "the busy worker refusing requests")
    assert [r for r in ledger_rows(sub.home) if r["kind"] == "spot_failed"] == []
    peers = ledger_peers(sub)
    assert all(p["spot_failed"] == 0 for p in peers.values()), peers
    for node in mesh.nodes[1:3]:
        assert status(node)["rejected"].get("busy", 0) == 0  # replicas and checks stayed within the limit
    # passed checks are paid like replicas, and their workers booked the receipts as earnings
    checks = {r["job"] for r in ledger_rows(sub.home)
              if r["kind"] == "paid" and "spot_check" in json.loads(r["detail"] or "{}")}
    assert checks, "no passed check was paid"
    wait_for(lambda: checks <= {r["job"] for node in mesh.nodes[1:] for r in ledger_rows(node.home)
                                if r["kind"] == "earned"}, 30, "the checked workers to book their receipts")
