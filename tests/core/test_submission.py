"""The submission core (mesh.core.submission) on its own, in memory: worker slots and queues, spot checks
that blacklist and trigger rechecks, settled steps turned into ledger entries, what a ledger failure does,
and the log replaying to the same decisions. No network, no clock: the tests pass the time in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mesh.core.dag import parse_job
from mesh.core.effects import Alarm, Answer, Finished, Judged, Record, Send, Started, Timer, Wake
from mesh.core.policy import Candidate, RecheckEvidence, StepEvidence, next_streak
from mesh.core.submission import PER_WORKER, SUSPECT_SAMPLE, Config, Submission, replay_log
from mesh.node.flow import Limits
from mesh.wire.canonical import digest
from simulations.driver import SimLedger, replay_core_log
from simulations.world import SimNode

pytestmark = pytest.mark.timeout(30)
ONE = parse_job({"redundancy": 1, "timeout": 10, "steps": [{"id": "a", "kind": "python", "params": {"code": "x"}}]})
THREE = parse_job({"redundancy": 3, "steps": [{"id": "a", "kind": "python", "params": {"code": "x"}}]})


def pool(*names: str) -> dict[str, list[Candidate]]:
    return {"python": [Candidate(n, 0.5, f"10.0.{i}") for i, n in enumerate(names)]}


def of(effects: list, kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


def answer(sub: Submission, send: Send, output: object, now: float, work: dict | None = None) -> list:
    return sub.on_result(send.node, send.job, send.step, True, digest(output), output, work or {}, "", now)


def test_the_per_worker_limit_is_the_workers_own():
    assert PER_WORKER == Limits().max_inflight_per_peer  # more would be answered "busy" and fail


def test_a_worker_gets_at_most_its_limit_and_the_rest_waits_for_a_free_slot():
    sub = Submission(Config(1))
    sends = []
    for i in range(PER_WORKER + 2):
        sub.submit(f"j{i}", ONE, i)
        effects = sub.tick(f"j{i}", pool("w0"), 0.0)
        assert of(effects, Timer) == [Timer(f"j{i}", 10.0)]  # placed, queued or not
        sends += of(effects, Send)
    assert [s.job for s in sends] == [f"j{i}" for i in range(PER_WORKER)]
    assert [j for j, _ in sub.queued["w0"]] == [f"j{PER_WORKER}", f"j{PER_WORKER + 1}"]

    effects = answer(sub, sends[0], 42, 1.0)  # a slot frees: the first queued replica goes at once
    assert [s.job for s in of(effects, Send)] == [f"j{PER_WORKER}"]
    assert of(effects, Answer)[0].taken and Wake("j0") in effects

    # the other queued replica's deadline passes before a slot frees: it is never sent, and its job's
    # next tick fails it (timeout) and places it again, on the same lone worker: queued once more
    assert of(answer(sub, sends[1], 42, 11.0), Send) == []
    effects = sub.tick(f"j{PER_WORKER + 1}", pool("w0"), 11.0)
    step = sub.jobs[f"j{PER_WORKER + 1}"].run.steps["a"]
    assert step.tally.failures == {"w0": "timeout"} or step.status == "failed"


def test_a_worker_offering_fewer_steps_gets_no_more_than_its_offer():
    """--max-steps 1 (its record's offer.per_peer = 1): one request at a time, the rest wait here instead
    of being refused there as busy; a later offer of more is taken up at the next placement."""
    sub = Submission(Config(1))
    one = {"python": [Candidate("w0", 0.5, "10.0.0", per_peer=1)]}
    sends = []
    for i in range(3):
        sub.submit(f"j{i}", ONE, i)
        sends += of(sub.tick(f"j{i}", one, 0.0), Send)
    assert [s.job for s in sends] == ["j0"]
    assert [j for j, _ in sub.queued["w0"]] == ["j1", "j2"]
    assert [s.job for s in of(answer(sub, sends[0], 42, 1.0), Send)] == ["j1"]
    sub.submit("j3", ONE, 3)
    more = of(sub.tick("j3", pool("w0"), 1.0), Send)  # the owner raised it back: the default again
    assert sorted(s.job for s in more) == ["j2", "j3"]


def test_a_lost_worker_frees_its_slots_and_fails_its_replicas_without_a_key_error():
    sub = Submission(Config(1))
    sub.submit("j", THREE, 1)
    sends = of(sub.tick("j", pool("w0", "w1", "w2", "w3"), 0.0), Send)
    lost = sends[0].node
    assert sub.on_node_lost(lost, "connection lost", 1.0) == [Wake("j")]
    assert lost not in sub.outstanding and sub.on_node_lost(lost, "again", 1.0) == []
    assert answer(sub, sends[0], 42, 1.5)[0] == Answer("j", "a", lost, True, digest(42), False)  # too late
    for s in sends[1:]:
        answer(sub, s, 42, 2.0)
    left = pool(*(n for n in ("w0", "w1", "w2", "w3") if n != lost))  # it did not come back
    (fill,) = of(sub.tick("j", left, 2.0), Send)  # 2 agree: the lost seat is filled
    assert fill.node not in {s.node for s in sends}
    answer(sub, fill, 42, 2.5)
    (rec,) = of(sub.tick("j", left, 2.5), Record)
    assert ("no_show", lost) in [(e.kind, e.peer) for e in rec.entries]
    assert rec.entries[-1].why.failed == {lost: "connection lost"}


def test_an_answer_whose_digest_does_not_match_its_output_fails_the_replica():
    sub = Submission(Config(1))
    sub.submit("j", ONE, 1)
    (send,) = of(sub.tick("j", pool("w0", "w1"), 0.0), Send)
    effects = sub.on_result(send.node, "j", "a", True, digest(41), 42, {}, "", 1.0)
    assert of(effects, Answer) == [Answer("j", "a", send.node, False, digest(41), True)]
    assert sub.jobs["j"].run.steps["a"].replicas[send.node].error == "digest does not match output"


def test_settled_steps_become_payments_and_verdicts_with_their_evidence():
    sub = Submission(Config(1))
    sub.submit("j", THREE, 1)
    sends = of(sub.tick("j", pool("w0", "w1", "w2"), 0.0), Send)
    for s, out in zip(sends, (42, 42, 41), strict=True):
        answer(sub, s, out, 1.0, {"cpu_s": 0.5})
    effects = sub.tick("j", pool("w0", "w1", "w2"), 1.0)  # 2 against 1, nobody left to ask: it stands
    (rec,) = of(effects, Record)
    assert of(effects, Finished) == [Finished("j", "done")]
    right = sorted(s.node for s in sends[:2])
    wrong = sends[2].node
    assert sorted((e.kind, e.peer, e.amount) for e in rec.entries) == sorted(
        [("paid", n, -0.5) for n in right] + [("agreed", n, 0.0) for n in right] + [("disagreed", wrong, 0.0)])
    why = rec.entries[0].why
    assert why.to_json() == {  # the keys `mesh ledger explain` and old ledgers know, unchanged
        "rule": "majority", "needed": 2, "redundancy": 3, "accepted": digest(42), "agreeing": right,
        "answers": {**{n: digest(42) for n in right}, wrong: digest(41)}, "failed": {},
        "credit_basis": why.credit_basis, "reason": ""}
    stored = json.loads(json.dumps({"why": why.to_json()}))
    assert StepEvidence.in_detail(stored) == why and StepEvidence.in_detail({"why": why}) is why
    assert next_streak(3, "agreed", why) == 4 and next_streak(3, "disagreed", why) == 0
    assert StepEvidence.in_detail({"why": RecheckEvidence("r", digest(1)).to_json()}) is None

    sub.on_recorded(rec.id, False, "disk I/O error")
    assert sub.jobs["j"].credits == 0 and "disk I/O error" in sub.jobs["j"].payment_error


def test_credits_count_only_once_the_ledger_took_them():
    sub = Submission(Config(1))
    sub.submit("j", ONE, 1)
    (send,) = of(sub.tick("j", pool("w0"), 0.0), Send)
    answer(sub, send, 42, 3.0, {"cpu_s": 2.0})  # (alone: at most one CPU for the 3 s it took)
    (rec,) = of(sub.tick("j", pool("w0"), 3.0), Record)
    assert sub.jobs["j"].credits == 0
    sub.on_recorded(rec.id, True)
    assert sub.jobs["j"].credits == 2.0 and not sub.jobs["j"].payment_error
    sub.on_recorded(rec.id, True)  # reported twice: counted once
    assert sub.jobs["j"].credits == 2.0


def test_the_simulated_ledger_folds_reputation_only_for_a_written_batch():
    sub = Submission(Config(1))
    sub.submit("j", ONE, 1)
    (send,) = of(sub.tick("j", pool("w0"), 0.0), Send)
    answer(sub, send, 42, 1.0)
    (rec,) = of(sub.tick("j", pool("w0"), 1.0), Record)
    ledger = SimLedger({"w0": SimNode("w0", "p", 1.0, None)})
    ledger.refuse = True
    assert not ledger.record(rec.entries, 1000)
    assert ledger.evidence == {} and ledger.streaks == {} and ledger.nodes["w0"].earned == 0
    ledger.refuse = False
    assert ledger.record(rec.entries, 1000)
    assert ledger.evidence["w0"].good == 1 and ledger.nodes["w0"].earned == 0.01


def check_of(sub: Submission, effects: list) -> Send:
    """The spot check the core planned in `effects`, sent at its alarm's moment (one Send, a check)."""
    (alarm,) = of(effects, Alarm)
    (check,) = of(sub.on_alarm(alarm.at), Send)
    assert check.check is not None
    return check


def right(sub: Submission, check: Send, now: float) -> list:
    return answer(sub, check, check.check.expected, now)


def spot_core(keep: int = 1000) -> tuple[Submission, Send, Send]:
    """A core checking every replica; worker `cheat` alone runs job j1 (r=1), then its check."""
    sub = Submission(Config(1, spot_rate=1.0, blacklist_s=60, keep=keep, check_tail_s=0))
    sub.submit("j1", ONE, 1)
    effects = sub.tick("j1", pool("cheat"), 0.0)
    (send,) = of(effects, Send)
    assert send.check is None  # nothing rides with the replica
    check = check_of(sub, effects)
    assert check.node == "cheat" and check.job != "j1" and check.step == "a"
    assert sub.outstanding["cheat"].keys() == {("j1", "a"), (check.job, "a")}  # the check takes a slot
    return sub, send, check


def test_a_step_waits_for_its_workers_check_then_a_failed_check_blacklists_and_rechecks():
    sub, send, check = spot_core()
    answer(sub, send, 666, 1.0)  # wrong, but r=1: nobody contradicts it
    assert of(sub.tick("j1", pool("cheat"), 1.0), Record) == []  # held: its check is out
    effects = right(sub, check, 2.0)
    assert of(effects, Judged) == [Judged("cheat", True, digest(check.check.expected), check.job)]
    assert Wake("j1") in effects
    assert of(sub.tick("j1", pool("cheat"), 2.0), Finished) == [Finished("j1", "done")]  # vouched for by cheat

    sub.submit("j2", ONE, 2)
    check2 = check_of(sub, sub.tick("j2", pool("cheat"), 3.0))
    effects = answer(sub, check2, 0, 14.0)
    (judged,) = of(effects, Judged)
    assert not judged.passed and sub.blacklisted("cheat", 14.0) and not sub.blacklisted("cheat", 75.0)
    (spot_failed,) = of(effects, Record)
    assert [(e.kind, e.job, e.step, e.peer) for e in spot_failed.entries] == [
        ("spot_failed", "spot", check2.job, "cheat")]
    (started,) = of(effects, Started)
    assert started.recheck_of == ("j1", "a") and sub.jobs["j1"].rechecks["a"]["cause"] == "cheat"

    sends = of(sub.tick(started.job, pool("cheat", "h1", "h2"), 14.0), Send)
    assert sorted(s.node for s in sends) == ["h1", "h2"]  # never the blacklisted worker
    for s in sends:
        answer(sub, s, 42, 15.0)  # (their checks are only planned: nothing holds the recheck)
    effects = sub.tick(started.job, pool("cheat", "h1", "h2"), 15.0)
    recs = of(effects, Record)
    assert [(e.kind, e.peer, e.why) for e in recs[-1].entries] == [
        ("disagreed", "cheat", RecheckEvidence(started.job, digest(42)))]
    assert sub.jobs["j1"].rechecks["a"]["verdict"] == "overturned"
    assert sub.jobs["j1"].run.steps["a"].output == 42


def test_an_undeliverable_replica_fails_and_an_undeliverable_check_is_withdrawn():
    sub, send, check = spot_core()
    assert sub.on_unreachable("j1", "a", "cheat", 0.5) == [Wake("j1")]
    assert not of(sub.on_unreachable(check.job, check.step, "cheat", 0.5), Judged)
    assert sub.spot.out == {} and "cheat" not in sub.outstanding and not sub.blacklisted("cheat", 0.5)


def test_an_unanswered_check_times_out_unpunished_and_releases_what_it_held():
    sub, send, check = spot_core()
    answer(sub, send, 42, 1.0)
    assert of(sub.tick("j1", pool("cheat"), 1.0), Finished) == []  # held
    assert sub.on_alarm(check.deadline) == [Wake("j1")]
    assert not sub.blacklisted("cheat", check.deadline) and sub.spot.out == {}
    assert of(sub.tick("j1", pool("cheat"), check.deadline), Finished) == [Finished("j1", "done")]


def test_finished_jobs_are_kept_up_to_a_limit_then_forgotten():
    sub = Submission(Config(1, keep=2))
    forgotten = []
    for i in range(4):
        sub.submit(f"j{i}", ONE, i)
        (send,) = of(sub.tick(f"j{i}", pool("w0"), 0.0), Send)
        answer(sub, send, 42, 1.0)
        forgotten += [e.job for e in sub.tick(f"j{i}", pool("w0"), 1.0) if type(e).__name__ == "Forgotten"]
    assert forgotten == ["j0", "j1"] and list(sub.jobs) == ["j2", "j3"] and sub.active == {}


def test_a_job_being_rechecked_is_kept_past_the_limit_until_its_verdict():
    sub, send, check = spot_core(keep=1)
    answer(sub, send, 666, 1.0)
    right(sub, check, 1.0)
    sub.tick("j1", pool("cheat"), 1.0)
    sub.submit("j2", ONE, 2)
    effects = sub.tick("j2", pool("cheat"), 2.0)
    (started,) = of(answer(sub, check_of(sub, effects), 0, 12.0), Started)
    effects = sub.tick("j2", pool("cheat"), 12.5)  # its only worker is distrusted: it fails
    assert of(effects, Finished) == [Finished("j2", "failed")] and "j1" in sub.jobs  # j1 kept: rechecked
    sends = of(sub.tick(started.job, pool("h1", "h2"), 13.0), Send)
    for s in sends:
        answer(sub, s, 42, 14.0)
    effects = sub.tick(started.job, pool("h1", "h2"), 14.0)
    assert [type(e).__name__ for e in effects if type(e).__name__ in ("Rechecked", "Forgotten")] == [
        "Rechecked", "Forgotten", "Forgotten"]  # the verdict on j1 first, then j1 and j2 let go
    assert list(sub.jobs) == [started.job]


def test_a_trusted_report_of_a_wrong_answer_elsewhere_rechecks_what_the_worker_vouched_for_here():
    """`cheat` ran j1 alone and was paid: its check passed. Another submitter catches it and says so
    (trust.Shared.reported): j1 is run again on others and overturned; cheat is not blacklisted here
    (only this node's own checks do that), its answer still running elsewhere stops counting, and a step
    it agreed on with others (j3) is left alone."""
    sub, send, check = spot_core()
    answer(sub, send, 666, 1.0)
    right(sub, check, 2.0)
    assert of(sub.tick("j1", pool("cheat"), 2.0), Finished) == [Finished("j1", "done")]
    sub.submit("j3", THREE, 3)  # a step it agreed on with two others: cross-checked, not rerun on a report
    for s in of(sub.tick("j3", pool("cheat", "h1", "h2"), 2.0), Send):
        answer(sub, s, 42, 2.5)
    assert of(sub.tick("j3", pool("cheat", "h1", "h2"), 2.6), Finished) == [Finished("j3", "done")]
    assert ("j3", "a", False) in sub.spot.vouched["cheat"]
    sub.submit("j2", THREE, 2)
    for s in of(sub.tick("j2", pool("cheat", "h1", "h2"), 3.0), Send):
        if s.node == "cheat":
            answer(sub, s, 666, 3.5)
    effects = sub.on_reported("cheat", "a trusted issuer reported a wrong answer", 4.0)
    (started,) = of(effects, Started)
    assert started.recheck_of == ("j1", "a") and Wake("j2") in effects
    assert "cheat" in sub.jobs["j2"].run.steps["a"].tally.failures and not sub.blacklisted("cheat", 4.0)
    for s in of(sub.tick(started.job, pool("h1", "h2", "h3"), 4.0), Send):
        answer(sub, s, 42, 5.0)
    sub.tick(started.job, pool("h1", "h2", "h3"), 5.0)
    assert sub.jobs["j1"].rechecks["a"]["verdict"] == "overturned"
    assert of(sub.on_reported("cheat", "again", 6.0), Started) == []  # each step rechecked once


def lone_steps(sub: Submission, worker: str, n: int) -> None:
    """`worker` runs n one-replica jobs alone (j0…), each accepted."""
    for i in range(n):
        sub.submit(f"j{i}", ONE, i)
        (send,) = of(sub.tick(f"j{i}", pool(worker), float(i)), Send)
        answer(sub, send, 42, i + 0.5)
        assert of(sub.tick(f"j{i}", pool(worker), i + 0.6), Finished) == [Finished(f"j{i}", "done")]


def test_a_worker_a_trusted_issuer_suspects_has_a_sample_of_its_lone_steps_rerun_and_nothing_more():
    """An opinion (trust.Shared.suspected), which sybils voice about every honest worker: SUSPECT_SAMPLE of
    the steps it ran alone here are rerun, each once; its answer in a running step still counts."""
    sub = Submission(Config(1, spot_rate=0.0))
    lone_steps(sub, "w", 5)
    sub.submit("jp", THREE, 9)
    for s in of(sub.tick("jp", pool("w", "h1", "h2"), 9.0), Send):
        if s.node == "w":
            answer(sub, s, 42, 9.5)
    first = of(sub.on_suspected("w", "a trusted issuer reported a wrong answer", 10.0), Started)
    assert len(first) == SUSPECT_SAMPLE and len({st.recheck_of for st in first}) == SUSPECT_SAMPLE
    assert "w" in sub.jobs["jp"].run.steps["a"].tally.answers  # not distrusted on a word
    rest = of(sub.on_suspected("w", "again", 11.0), Started)
    assert {st.recheck_of for st in first + rest} == {(f"j{i}", "a") for i in range(5)}
    assert of(sub.on_suspected("w", "again", 12.0), Started) == []


def test_a_sampled_step_overturned_reruns_everything_else_the_worker_ran_alone():
    sub = Submission(Config(1, spot_rate=0.0))
    lone_steps(sub, "w", 6)
    first = of(sub.on_suspected("w", "a trusted issuer reported a wrong answer", 10.0), Started)
    rid = first[0].job
    for s in of(sub.tick(rid, pool("h1", "h2", "h3"), 10.0), Send):
        answer(sub, s, 41, 11.0)  # the honest answer was 41: w's 42 is overturned
    effects = sub.tick(rid, pool("h1", "h2", "h3"), 11.0)
    assert sub.jobs[first[0].recheck_of[0]].rechecks["a"]["verdict"] == "overturned"
    rerun = {st.recheck_of for st in of(effects, Started)}
    assert rerun == {(f"j{i}", "a") for i in range(6)} - {st.recheck_of for st in first}


def test_the_cores_log_replays_to_the_same_decisions_here_and_in_the_simulators_core():
    sub = Submission(Config(5, spot_rate=0.5, job_log=True, check_spread_s=0.5), record=True)
    alarms: list[float] = []
    for i in range(6):
        sub.submit(f"j{i}", THREE, i)
        effects = sub.tick(f"j{i}", pool("a", "b", "c", "d", "e"), float(i))
        alarms += [a.at for a in of(effects, Alarm)]
        for s in of(effects, Send):
            answer(sub, s, 42 if s.node != "e" else 41, i + 0.5)
        for at in sorted(a for a in alarms if a <= i + 0.6):  # checks due by now go out, and are answered
            alarms.remove(at)
            for c in of(sub.on_alarm(at), Send):
                answer(sub, c, c.check.expected if c.node != "e" else 0, i + 0.6)
        for rec in of(sub.tick(f"j{i}", pool("a", "b", "c", "d", "e"), i + 0.7), Record):
            sub.on_recorded(rec.id, True)
    sub.on_reported("e", "a trusted issuer reported a wrong answer", 6.5)
    sub.on_suspected("d", "a trusted issuer reported a wrong answer", 6.6)
    log = json.loads(json.dumps(sub.log))
    assert any(e[0] == "on_reported" for e in log) and any(e[0] == "on_suspected" for e in log)
    assert any(e[0] == "on_alarm" for e in log) and any(e[0] == "effects" and any(
        x[0] == "Send" and x[1]["check"] for x in e[1]) for e in log)
    assert replay_log(log) == log and replay_core_log(log) == log
    log[3][-1] += 1.0  # the time of one tick: a different log
    assert replay_log(log) != log


def test_the_node_side_driver_sees_ports_never_the_node():
    text = (Path(__file__).parents[2] / "mesh" / "node" / "submitter.py").read_text()
    assert "lifecycle" not in text and "import Node" not in text


def test_a_worker_that_was_busy_or_lost_its_link_is_asked_again_not_given_up():
    """Two workers at r=2 and no third: a busy answer, or a link lost (a restart), no longer ends the step
    at once; the worker is asked again once it is up and RETRY_AFTER_S has passed, MAX_RETRIES times at
    most; a worker that never comes back gives the step up after REJOIN_S."""
    job = parse_job({"redundancy": 2, "timeout": 10, "steps": [{"id": "a", "kind": "python", "params": {"code": "x"}}]})
    sub = Submission(Config(1))
    sub.submit("j", job, 1)
    x, y = (s.node for s in of(sub.tick("j", pool("w1", "w2"), 0.0), Send))
    sub.on_result(x, "j", "a", False, "", None, {}, "busy: too many steps in flight", 0.1)
    assert not of(sub.tick("j", pool("w1", "w2"), 0.5), Send) and sub.jobs["j"].run.status == "running"
    sub.on_node_lost(y, "connection lost", 1.0)
    assert not of(sub.tick("j", pool(x), 1.5), Send)  # x in backoff, y not back yet: both waited for
    (again,) = of(sub.tick("j", pool(x), 4.0), Send)
    assert again.node == x
    answer(sub, again, 5, 4.5)
    (back,) = of(sub.tick("j", pool(x, y), 6.5), Send)  # y restarted and linked again
    assert back.node == y
    answer(sub, back, 5, 7.0)
    sub.tick("j", pool(x, y), 7.1)
    assert sub.jobs["j"].run.status == "done"

    sub.submit("k", job, 2)
    x, y = (s.node for s in of(sub.tick("k", pool("w1", "w2"), 10.0), Send))
    sub.on_node_lost(x, "connection lost", 10.5)
    sub.on_result(y, "k", "a", False, "", None, {}, "ZeroDivisionError: division by zero", 10.5)
    assert sub.jobs["k"].run.status == "running"
    sub.tick("k", pool(y), 11.0)  # y's failure is the step's own: never asked again; x may come back
    assert sub.jobs["k"].run.status == "running"
    sub.tick("k", pool(y), 11.0 + 16.0)  # x did not come back within REJOIN_S
    assert sub.jobs["k"].run.status == "failed"


def test_a_spent_budget_reuses_the_seat_of_a_replica_whose_link_was_lost():
    """r=2, at most 4 replicas: three replicas lost their links (restarts) and one is out. The step is not
    impossible: a lost worker, back up, is asked again in the seat it held, never a fifth worker."""
    job = parse_job({"redundancy": 2, "timeout": 10, "steps": [{"id": "a", "kind": "python", "params": {"code": "x"}}]})
    sub = Submission(Config(1))
    sub.submit("j", job, 1)
    everyone = pool("w1", "w2", "w3", "w4", "w5")
    first = [s.node for s in of(sub.tick("j", everyone, 0.0), Send)]
    sub.on_node_lost(first[0], "connection lost", 0.5)
    sub.on_node_lost(first[1], "connection lost", 0.5)
    restarting = pool(*(n for n in ("w1", "w2", "w3", "w4", "w5") if n not in first))  # not up yet
    second = [s.node for s in of(sub.tick("j", restarting, 1.0), Send)]
    sub.on_node_lost(second[0], "connection lost", 1.5)
    tally = sub.jobs["j"].run.steps["a"].tally
    assert tally.issued == tally.limit == 4 and len(tally.failures) == 3
    assert not of(sub.tick("j", everyone, 2.0), Send) and sub.jobs["j"].run.status == "running"
    again = of(sub.tick("j", everyone, 4.5), Send)  # the lost workers' own seats, never w5's
    assert again and {a.node for a in again} <= set(first + second[:1]) and tally.issued == 4


def test_only_a_worker_holding_our_request_is_expected_and_only_a_held_worker_is_lost():
    """What a driver asks before feeding the core (so a stranger's unasked results and the losses of peers
    that hold nothing are never inputs, nor journal rows)."""
    sub = Submission(Config(1))
    sub.submit("j", ONE, 1)
    (send,) = of(sub.tick("j", pool("w1"), 0.0), Send)
    assert sub.expects("w1", "j", "a") and not sub.expects("w1", "j", "b") and not sub.expects("w2", "j", "a")
    assert sub.holds("w1") and not sub.holds("w2")
    answer(sub, send, 7, 1.0)
    assert not sub.expects("w1", "j", "a") and not sub.holds("w1")  # answered: neither any more


def test_a_worker_that_leaves_with_its_check_out_does_not_strand_the_step_its_check_held():
    """j1 ran alone on `cheat`, answered, and waits for cheat's check. Cheat leaves the mesh: its check is
    dropped unanswered, and j1 must be driven again (it settled on a later tick only by chance before:
    a simulated 100-node run never ended, its last jobs held by checks of workers that had left)."""
    sub, send, check = spot_core()
    answer(sub, send, 42, 1.0)
    assert of(sub.tick("j1", pool("cheat"), 1.0), Record) == []  # held: its check is out
    assert Wake("j1") in sub.on_node_lost("cheat", "left the mesh", 2.0)
    assert of(sub.tick("j1", pool("cheat"), 2.0), Finished) == [Finished("j1", "done")]


def test_a_check_that_times_out_wakes_the_step_it_held_even_if_another_job_ticked_first():
    """Placement asking which workers a check holds used to drop the expired checks on the way, so the
    Alarm at their deadline found nothing to expire and woke nobody: the held step waited forever (a
    simulated churn run never ended)."""
    sub, send, check = spot_core()
    answer(sub, send, 42, 1.0)
    assert of(sub.tick("j1", pool("cheat"), 1.0), Record) == []  # held: its check is out
    sub.submit("j9", THREE, 9)
    sub.tick("j9", pool("h1", "h2", "h3"), check.deadline + 0.5)  # another job, after the check's deadline
    assert Wake("j1") in sub.on_alarm(check.deadline + 0.5)
    assert of(sub.tick("j1", pool("cheat"), check.deadline + 1), Finished) == [Finished("j1", "done")]


def test_a_step_whose_code_raises_fails_with_the_codes_error_first():
    """The user reads what their code did ("your code raised ZeroDivisionError at line 2: ..."), not "no
    unused worker left"; the workers' evidence follows."""
    sub = Submission(Config(1))
    sub.submit("j", ONE, 1)
    (send,) = of(sub.tick("j", pool("w0"), 0.0), Send)
    error = "your code raised ZeroDivisionError at line 2: division by zero"
    sub.on_result(send.node, "j", "a", False, "", None, {}, error, 1.0)
    sub.tick("j", pool("w0"), 1.0)
    step = sub.jobs["j"].run.steps["a"]
    assert step.status == "failed" and step.error.startswith(error + " (1 worker said so; w0 failed ("), step.error


def test_a_cancelled_job_pays_the_replicas_answered_so_far_and_nobody_else():
    """Settled work is owed: a job given up (mesh cancel) pays each worker that had answered a step still
    waiting for its quorum (its own measured work, capped by the step's limits), with no verdict (nobody
    knows who was right); a worker still running its replica gets nothing, and nothing is paid twice."""
    job = parse_job({"redundancy": 3, "quorum": "unanimous",
                     "steps": [{"id": "a", "kind": "python", "params": {"code": "x"}}]})
    sub = Submission(Config(1))
    sub.submit("j", job, 1)
    sends = of(sub.tick("j", pool("w0", "w1", "w2"), 0.0), Send)
    answer(sub, sends[0], 42, 1.0, {"cpu_s": 0.5, "wall_s": 0.6})
    answer(sub, sends[1], 42, 1.0, {"cpu_s": 0.5, "wall_s": 0.6})
    sub.tick("j", pool("w0", "w1", "w2"), 1.0)
    assert sub.jobs["j"].run.steps["a"].status == "running"  # unanimous: the third answer is awaited
    effects = sub.abort("j", "cancelled by its submitter")
    (rec,) = of(effects, Record)
    paid = {e.peer: e for e in rec.entries}
    assert set(paid) == {sends[0].node, sends[1].node}
    assert all(e.kind == "paid" and e.amount < 0 and "cancelled" in e.detail for e in paid.values())
    assert Finished("j", "failed") in effects
    step = sub.jobs["j"].run.steps["a"]
    assert step.status == "failed" and set(step.credits) == set(paid)
    sub.on_recorded(rec.id, True)
    assert sub.jobs["j"].credits == pytest.approx(-sum(e.amount for e in rec.entries))
    assert sub.abort("j", "again") == []  # nothing twice


@pytest.mark.parametrize("others", [(), ("w4", "w5")], ids=["no-other-worker", "others-free"])
def test_seats_lost_while_the_submitter_slept_are_all_asked_again_so_no_worker_that_ran_its_step_goes_unpaid(others):
    """A submitter's laptop sleeps past the envelope window (red team G): the answers its three workers sent
    meanwhile are refused as stale and every link is lost. Each worker ran the step and keeps its answer, so
    once it is up again every lost seat is asked again, before any other worker takes one: all three agree
    and are paid, and none is booked a no-show. (Before, only the two seats a quorum needed were asked
    again, or two fresh workers placed at once; the third worker did the work and was never paid.)"""
    everyone = pool("w1", "w2", "w3", *others)
    sub = Submission(Config(1))
    sub.submit("j", THREE, 1)
    sends = of(sub.tick("j", pool("w1", "w2", "w3"), 0.0), Send)
    assert sorted(s.node for s in sends) == ["w1", "w2", "w3"]
    for s in sends:
        sub.on_node_lost(s.node, "connection lost", 150.0)
    assert not of(sub.tick("j", everyone, 150.5), Send)  # up again: each may hold its answer, waited for
    again = of(sub.tick("j", everyone, 153.0), Send)
    assert sorted(s.node for s in again) == ["w1", "w2", "w3"]
    for s in again:
        answer(sub, s, 42, 153.5)
    (rec,) = of(sub.tick("j", everyone, 154.0), Record)
    kinds = {(e.kind, e.peer) for e in rec.entries}
    assert {("agreed", n) for n in ("w1", "w2", "w3")} <= kinds
    assert not [e for e in rec.entries if e.kind == "no_show"]
    assert {e.peer for e in rec.entries if e.kind == "paid"} == {"w1", "w2", "w3"}


def test_a_worker_that_drops_its_link_again_after_it_was_asked_again_is_replaced_not_waited_for():
    """A seat lost with its link is asked again first only once: a worker that takes the ask again, stays
    silent and drops the link again would otherwise hold the seat for a timeout each time."""
    everyone = pool("w1", "w2", "w3", "w4", "w5")
    sub = Submission(Config(1))
    sub.submit("j", THREE, 1)
    sends = of(sub.tick("j", pool("w1", "w2", "w3"), 0.0), Send)
    answer(sub, sends[0], 42, 1.0)
    answer(sub, sends[1], 42, 1.0)
    flaky = sends[2].node
    sub.on_node_lost(flaky, "connection lost", 1.0)
    assert not of(sub.tick("j", everyone, 1.5), Send)
    (again,) = of(sub.tick("j", everyone, 4.0), Send)
    assert again.node == flaky
    sub.on_node_lost(flaky, "connection lost", 5.0)
    (fill,) = of(sub.tick("j", everyone, 5.5), Send)  # at once, another worker: not the flaky one again
    assert fill.node in ("w4", "w5")
