"""The simulator: determinism (one seed, one trace), replay, scenario errors, sane metrics for each
adversary, and the core deciding alike under the simulator and under a real mesh."""

from __future__ import annotations

import json

import pytest

from mesh.core.dag import parse_job
from mesh.core.jobrun import replay_log
from simulations.driver import replay_core_log
from simulations.engine import Engine
from simulations.run import Simulation, simulate
from simulations.scenario import ScenarioError, load, parse_text
from simulations.world import StepMsg

from ..conftest import cli_json, run_cli

pytestmark = pytest.mark.timeout(300)


def small(name: str, steps: int = 1500, **changes):
    s, text = load(name)
    return s.replace(steps=steps, **changes), text


def test_engine_runs_in_time_order_and_ties_in_scheduling_order():
    e, seen = Engine(1), []
    for when, tag in [(2.0, "c"), (1.0, "a"), (2.0, "d"), (1.0, "b")]:
        e.at(when, seen.append, tag)
    e.after(0.5, lambda: e.after(0.0, seen.append, "first"))
    e.run(lambda: False)
    assert seen == ["first", "a", "b", "c", "d"] and e.now == 2.0 and e.events == 6


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_the_same_seed_gives_one_trace_every_time():
    """As trio's scheduler determinism test: run the same seed several times, expect one trace."""
    s, text = small("colluding-20", 800)
    hashes = {simulate(s, text, "t", 7)[0]["trace_hash"] for _ in range(4)}
    assert len(hashes) == 1
    assert simulate(s, text, "t", 8)[0]["trace_hash"] not in hashes


def test_a_run_collects_garbage_less_often_and_gives_the_collector_back_as_it_was(monkeypatch):
    """Simulation.run raises the young-collection threshold while it runs and restores the caller's
    thresholds after, also when the run fails: nothing leaks into the next test or the caller."""
    import gc

    from simulations.run import GC_YOUNG

    before = gc.get_threshold()
    s, _ = small("baseline", 20)
    seen: list[tuple[int, int, int]] = []
    real = Engine.run
    monkeypatch.setattr(Engine, "run", lambda self, *a, **k: (seen.append(gc.get_threshold()), real(self, *a, **k))[1])
    Simulation(s, 1).run()
    assert seen == [(GC_YOUNG, before[1], before[2])] and gc.get_threshold() == before
    monkeypatch.setattr(Engine, "run", lambda self, *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        Simulation(s, 1).run()
    assert gc.get_threshold() == before


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_replay_reproduces_a_trace_in_a_fresh_process_and_names_the_first_tampered_record(tmp_path):
    trace = tmp_path / "run.trace"
    res = run_cli("simulate", "churn", "--steps", "600", "--seed", "3", "--trace", str(trace), "--json",
                  "--quiet")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    replayed = run_cli("replay", str(trace), "--quiet")
    assert replayed.returncode == 0, replayed.stderr
    assert result["trace_hash"] in replayed.stdout and "bit for bit" in replayed.stdout

    lines = trace.read_text().splitlines()
    lines[50] = lines[50].replace("[", "[1", 1)  # a different time on record 50
    trace.write_text("\n".join(lines) + "\n")
    broken = run_cli("replay", str(trace), "--quiet")
    assert broken.returncode == 1 and "record 50" in broken.stdout

    (tmp_path / "junk").write_text("not a trace\n")
    junk = run_cli("replay", str(tmp_path / "junk"))
    assert junk.returncode == 2 and "not a homemesh simulator trace" in junk.stderr


@pytest.mark.parametrize("text, message", [
    ("name = 'x'\nsteps = [", "not valid TOML"),
    ("name = 'x'\nsteps = 10\nspeed = 3", "scenario.speed is not"),
    ("name = 'x'\nsteps = 10\n[jobs]\nredundnacy = 3", "unknown field 'redundnacy'"),
    ("name = 'x'\nsteps = 10\n[[adversaries]]\nstrategy = 'random-wrong'\nfraction = 1.5", "fraction in (0, 1)"),
    ("name = 'x'\nsteps = 10\n[[adversaries]]\nstrategy = 'lazy'\nfraction = 0.1", "unknown adversary strategy"),
    ("name = 'x'\nsteps = 10\n[jobs]\nquorum = 'most'", "quorum must be"),
    ("name = 'x'\nsteps = 10\n[network]\nnodes = 4", "at least `jobs.redundancy` workers"),
])
def test_bad_scenarios_are_one_clear_error(text, message, tmp_path):
    with pytest.raises(ScenarioError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_text(text, "bad.toml")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    res = run_cli("simulate", str(path))
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_a_plugged_in_strategy_class_is_used(tmp_path):
    s, text = load("malicious-20")
    text = text.replace('strategy = "random-wrong"', 'strategy = "simulations.adversaries:Colluding"')
    plugged = parse_text(text).replace(steps=300)
    result, sim = simulate(plugged, text, "t", 1)
    assert {n.cls for n in sim.world.nodes.values()} == {"honest", "colluding"}


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_baseline_honest_network_accepts_every_step_right():
    s, text = small("baseline", 2000)
    r, _ = simulate(s, text, "t", 1)
    assert r["steps"] == 2000 and r["wrong_accepted"] == 0 and r["reputation_auc"] is None
    assert r["adversary_credit_share"] == 0 and 1 <= r["replicas_per_step"] <= 3.5
    assert 0 < r["latency_p50"] <= r["latency_p99"] and r["events"] > r["steps"]


@pytest.mark.parametrize("name, max_wrong, max_share_of_ids", [
    ("malicious-20", 0.002, 0.5), ("colluding-20", 0.01, 0.5), ("sybil-30", 0.02, 0.6), ("on-off", 0.02, 1.0)])
@pytest.mark.mesh  # seconds of work: the full suite runs it, the fast one does not
def test_each_adversary_scenario_gives_sane_metrics(name, max_wrong, max_share_of_ids):
    s, text = small(name, 4000)
    for a in s.adversaries:  # (a copy) on-off: start cheating early enough for a short run
        a.good_steps = min(a.good_steps, 20)
    r, _ = simulate(s, text, "t", 2)
    assert r["steps"] == 4000
    assert r["wrong_accepted_rate"] <= max_wrong, r
    assert r["reputation_auc"] > 0.8, r  # reputation tells adversaries from honest nodes
    assert r["adversary_credit_share"] < max_share_of_ids * r["adversary_id_share"], r  # they earn less than their share
    assert r["caught"] > 0 and r["spot_checks_per_step"] > 0
    assert r["wrong_at_settle_rate"] >= r["wrong_accepted_rate"]  # rechecks only ever fix answers


@pytest.mark.mesh  # seconds of work: the full suite runs it, the fast one does not
def test_plain_majority_lets_colluders_through_where_the_full_policy_does_not():
    s, text = small("colluding-20", 3000)
    plain = s.replace(**{"policy.margin": False, "jobs.adaptive": 0, "policy.spot_rate": 0.0,
                         "policy.recheck": False})
    full_r, _ = simulate(s, text, "t", 4)
    plain_r, _ = simulate(plain, text, "t", 4)
    assert plain_r["wrong_accepted_rate"] > 5 * max(full_r["wrong_accepted_rate"], 1e-4), (plain_r, full_r)
    assert plain_r["replicas_per_step"] >= 3 > full_r["replicas_per_step"]


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_churn_and_partitions_still_settle_every_step():
    s, text = small("churn", 1500)
    r, sim = simulate(s, text, "t", 5)
    assert r["steps"] == 1500 and r["accepted"] + r["failed"] == 1500
    assert r["accepted"] >= 0.98 * 1500
    # churn really happened (how much depends on how long the last step takes to settle: 300 to 1,064
    # virtual seconds as the trust rules changed, so only that it happened is asserted)
    assert r["joins"] > 0 and r["leaves"] > 0 and 0 < r["crashes"] < r["leaves"]
    assert r["messages_lost"] > 0  # loss and the partition


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_a_goodbye_reaches_only_submitters_a_worker_may_hold_something_of(monkeypatch):
    """A submitter skips a leaving worker no pool of its named (SimSubmitter.on_node_lost): that holds only
    while placement, spot checks and rechecks draw from pools. At every leave of a churny run, each
    submitter that skips the worker is asked what a node asks first (core.holds): it must hold nothing."""
    from simulations.driver import SimSubmitter

    s, text = small("churn", 4000)  # long enough for leaves of workers some submitter never met
    real = SimSubmitter.on_node_lost
    told, skipped = [0], [0]

    def checked(self, node):
        told[0] += 1
        if node not in self._met:
            skipped[0] += 1
            assert not self.core.holds(node), (self.id, node)
        real(self, node)

    monkeypatch.setattr(SimSubmitter, "on_node_lost", checked)
    r, _ = simulate(s, text, "t", 5)
    assert r["leaves"] > 0 and 0 < skipped[0] < told[0], (told, skipped)


def replay_every_job(s, seed: int = 11) -> list:
    """Run scenario `s` recording every job's log, replay each log into a fresh JobRun (asserting it
    decides the same), and return the jobs replayed."""
    sim = Simulation(s, seed, record=True)
    sim.run()
    replayed = []
    for sub in sim.submitters:
        for job_id, sj in sub.core.jobs.items():
            if sj.run.log is None:  # a recheck (its runs keep no log)
                continue
            log = json.loads(json.dumps(sj.run.log))
            assert replay_log(job_id, sj.run.job, sj.seed, log, s.policy.margin) == log
            replayed.append(sj)
    return replayed


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_core_log_of_a_simulated_job_replays_to_the_same_decisions():
    s, text = small("colluding-20", 400)
    assert len(replay_every_job(s)) > 50


@pytest.mark.mesh  # seconds of work: the full suite runs it, the fast one does not
def test_a_simulated_submitters_whole_core_log_replays_to_the_same_decisions():
    """Every input the simulator fed a submitter's core (jobs, ticks, answers, lost workers, spot-check
    timeouts, ledger results) and every effect it got back, replayed into a fresh core."""
    s, text = small("colluding-20", 400)
    sim = Simulation(s, 12, record=True)
    sim.run()
    for sub in sim.submitters:
        log = json.loads(json.dumps(sub.core.log))
        assert {e[0] for e in log} >= {"config", "submit", "tick", "on_result", "on_recorded", "effects"}
        assert replay_core_log(log) == log
    assert sum(e[0] == "on_alarm" for sub in sim.submitters for e in sub.core.log) > 0


@pytest.mark.mesh
@pytest.mark.timeout(240)
def test_core_decides_the_same_under_a_real_mesh_and_a_replay(make_mesh, tmp_path):
    """The node records what its JobRun and its submission core were fed (--core-log); a fresh JobRun fed
    the same events, and a submission core built as the simulator builds its own, decide exactly the same."""
    mesh = make_mesh(5, lambda i: ["--no-model"] + (["--core-log", "--spot-rate", "0.5"] if i == 0 else [])
                     + (["--fault", "wrong"] if i == 4 else []))
    job = tmp_path / "two.json"
    job.write_text(json.dumps({"name": "two", "redundancy": 3, "steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = 6 * 7"}},
        {"id": "b", "kind": "python", "params": {"code": "output = inputs['a'] + 1"}, "after": ["a"]}]}))
    report = cli_json("submit", str(job), "--wait", "--home", str(mesh.nodes[0].home))
    assert report["status"] == "done" and report["steps"]["b"]["output"] == 43
    core = report["core_log"]
    assert any(e[0] == "dispatched" and e[1] for e in core["log"]) and any(e[0] == "on_result" for e in core["log"])
    assert replay_log(report["job_id"], parse_job(core["job"]), core["seed"], core["log"]) == core["log"]

    # the node's whole submission core (slots, spot checks, ledger entries), replayed by the simulator's
    lines = (mesh.nodes[0].home / "submission-log.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in lines]
    assert log[0][0] == "config" and any(e[0] == "submit" and e[1] == report["job_id"] for e in log)
    effects = [e[0] for entry in log if entry[0] == "effects" for e in entry[1]]
    assert {"Started", "Send", "Answer", "Record", "Finished"} <= set(effects)
    assert replay_core_log(log) == log


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_settings_from_the_command_line_are_checked_and_kept_in_the_trace(tmp_path):
    trace = tmp_path / "plain.trace"
    res = run_cli("simulate", "colluding-20", "--steps", "300", "--policy", "plain", "--set", "jobs.redundancy=5",
                  "--trace", str(trace), "--json", "--quiet")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["replicas_per_step"] >= 5 and r["spot_checks_per_step"] == 0  # plain voting at r=5
    assert run_cli("replay", str(trace), "--quiet").returncode == 0
    for bad, message in [("jobs.redundancy=x", "is not int"), ("nope.x=1", "no scenario setting 'nope.x'"),
                         ("jobs.redundancy=0", "redundancy must be")]:
        res = run_cli("simulate", "colluding-20", "--steps", "10", "--set", bad)
        assert res.returncode == 2 and message in res.stderr, res.stderr


@pytest.mark.mesh  # a whole simulated network: seconds, so not in the fast suite
def test_a_submitter_places_among_workers_it_knows_as_well_as_a_fresh_sample():
    """A node stays linked to the peers it works with. Each job drew all of its 32 afresh, so in a mesh of
    10,000 a submitter met each worker about once and never used what it learned (large-10k: 1,532 wrong
    answers in 200,000 steps, replicating almost everything). Drawn at random from those it knows, few
    were met ten times; by longest run alone, the same few got every lone step and refused the rest."""
    s, _ = small("large-10k", 3000)
    sim = Simulation(s, 1)
    sim.run()
    sub = sim.submitters[0]
    known = list(sub._known.members)
    assert known and all(sub.evidence[n].good > sub.evidence[n].bad for n in known)
    online = {n for n in known if sim.world.nodes[n].online}
    pools = [sub._pool() for _ in range(20)]
    assert all(sub.id not in p and len(p) == len(set(p)) for p in pools)
    met = {n for p in pools for n in p}
    assert len(met & online) >= min(len(online), 32)  # those it knows come back
    assert not met & (set(known) - online)  # unless they are offline
    # linked first: the longest runs of validated results here, passing over those running a request of ours
    k, runs = s.network.peer_sample, {n: sub._candidate(n).streak for n in online}
    linked = pools[0][k:]
    left = [runs[n] for n in online if n not in pools[0] and not sub.core.engaged(n)]
    assert linked and min(runs[n] for n in linked) >= max(left, default=0), (linked, sorted(left)[-5:])
    sub.core.outstanding[linked[0]] = {("busy", "s0"): float("inf")}
    assert linked[0] not in sub._pool()[k:]
    for nid in known[:3]:  # a worker whose record turns bad is no longer sought out
        sub._known.drop(nid)
    assert not set(known[:3]) & set(sub._known.members)
    alone = Simulation(small("large-10k", 10, **{"network.known_peers": 0})[0], 1)
    alone.submitters[0]._known.add("n00100")
    assert all(len(alone.submitters[0]._pool()) <= 32 for _ in range(5))


@pytest.mark.mesh  # two simulated networks: seconds, so not in the fast suite
def test_refusals_are_counted_apart_among_the_replicas_sent():
    """`replicas_per_step` counts every replica sent, a `busy` refusal too, though no work was done on it:
    `refused_per_step` says how many of them were refused. A refused spot check is not a replica and is
    not counted."""
    s, _ = small("baseline", 10)
    sim = Simulation(s, 1)
    sub = sim.submitters[0]
    sub.on_result("no-such-job", "s1", "n00050", None, "", {}, "busy: too many steps in flight")
    sub._checks["wire-id"] = "no-such-check"
    sub.on_result("wire-id", "s1", "n00050", None, "", {}, "busy: too many steps in flight")
    sub.on_result("no-such-job", "s1", "n00050", None, "", {}, "timeout")
    assert sim.m.refused == 1
    crowded = Simulation(small("baseline", 3000, **{"jobs.rate_per_s": 100.0})[0], 1).run()
    quiet = Simulation(small("baseline", 3000)[0], 1).run()
    assert 0 < crowded["refused_per_step"] < crowded["replicas_per_step"], crowded
    assert quiet["refused_per_step"] < crowded["refused_per_step"] / 10, (quiet, crowded)


def test_a_worker_refuses_a_step_it_could_not_start_before_the_deadline():
    """A real node takes a bounded number of steps and answers the rest "busy". The simulated one queued
    without bound and ran steps its submitter had long given up on: in large-10k, 400-600 slow workers
    sat on backlogs of 60-1,200 s and every step placed on them timed out. Now a worker whose queue
    reaches past a step's deadline answers busy at once, and the queue does not grow."""
    s, _ = small("baseline", 10)
    sim = Simulation(s, 1)
    node = next(n for n in sim.world.nodes.values() if n.online and n.id not in sim.submitter_ids)
    sub = sim.submitters[0]
    got: list[tuple] = []
    now = sim.engine.now
    node.busy_until = now + 50.0
    sim.world.receive(node.id, lambda *a: got.append(a), sub.id, StepMsg("j1", "s1", 7, 1.0, {}, "python", now + 40))
    assert node.busy_until == now + 50.0  # not queued
    sim.world.receive(node.id, lambda *a: got.append(a), sub.id, StepMsg("j2", "s1", 7, 1.0, {}, "python", now + 60))
    assert node.busy_until > now + 50.0  # this one it can start in time: queued
    sim.engine.run(lambda: len(got) >= 2 or sim.engine.now > now + 100, lambda: None, batch=1)
    busy = [a for a in got if a[0] == "j1"]
    assert busy and busy[0][-1].startswith("busy"), got
    assert [a for a in got if a[0] == "j2"][0][3] == 7  # the queued one is answered


def test_the_quiet_loner_cheats_only_after_a_quiet_gap_once_proven_and_then_waits():
    """The red team's patient cheater (simulations.adversaries.QuietLoner) as its rule says, from what a
    worker sees: a request after more than GAP_S of silence from its submitter with nothing of it in hand,
    once paid good_steps times in a row there, and not again there until SPACING more answers were paid."""
    import random

    from simulations.adversaries import QuietLoner, Request

    s = QuietLoner(random.Random(1), rate=1.0, good_steps=2)

    def ask(job: str, at: float) -> object:
        req = Request("sub", job, "s", "python", arrived=at)
        s.arrived(req)
        return s.respond(req, 42, at)

    assert ask("j1", 0.0) == 42  # quiet, but no run yet
    s.settled("j1", "s", True, 1.0)
    assert ask("j2", 40.0) == 42  # still a run of 1
    s.settled("j2", "s", True, 41.0)
    assert ask("j3", 45.0) == 42  # a run of 2, but 5 s after the last request: it may be a check
    s.settled("j3", "s", True, 46.0)
    assert ask("j4", 80.0) != 42  # a run of 3 and 35 s of silence: cheats
    s.settled("j4", "s", True, 81.0)
    assert ask("j5", 120.0) == 42  # then waits SPACING paid answers
