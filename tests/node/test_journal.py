"""The submitter's journal on a real SQLite file, in-process: a core fed through it and killed at any
input is rebuilt by a replay into the very same state; the clock goes on across a restart; a journal
that cannot be written stops at a valid prefix; the receipt outbox releases only written batches."""

from __future__ import annotations

import json
import random
import sqlite3
import time

import pytest

from mesh.core.dag import parse_job
from mesh.core.effects import Record, Send
from mesh.core.policy import Candidate
from mesh.core.submission import Config, Submission
from mesh.errors import JournalError
from mesh.node.journal import Journal
from mesh.node.outbox import ACKED, ASK_RULE, ASKED_AGAIN_S, DAMAGED, SENDING, Outbox
from mesh.wire.canonical import digest

pytestmark = pytest.mark.timeout(60)
JOB = parse_job({"redundancy": 2, "timeout": 10, "steps": [
    {"id": "a", "kind": "python", "params": {"code": "output = 1"}},
    {"id": "b", "kind": "python", "after": ["a"], "params": {"code": "output = 2"}}]})
WORKERS = {"python": [Candidate(f"w{i}", 0.5, f"10.0.{i}") for i in range(4)]}


def drive(sub: Submission, seed: int, inputs: int) -> None:
    """A seeded run of three jobs: ticks, answers (some wrong), lost workers and written batches."""
    rng, now = random.Random(seed), 0.0
    for j in range(3):
        sub.submit(f"job{j}", JOB, rng.getrandbits(64))
    out: list[Send] = []
    records: list[Record] = []
    for _ in range(inputs):
        now += rng.uniform(0.05, 2.0)
        roll = rng.random()
        if out and roll < 0.5:
            s = out.pop(rng.randrange(len(out)))
            value = rng.choice([1, 1, 2])
            effects = sub.on_result(s.node, s.job, s.step, True, digest(value), value, {"cpu_s": 0.1}, "", now)
        elif records and roll < 0.6:
            effects = []
            sub.on_recorded(records.pop(0).id, rng.random() < 0.9, "disk")
        elif roll < 0.63:
            effects = sub.on_node_lost(f"w{rng.randrange(4)}", "connection lost", now)
        else:
            effects = sub.tick(f"job{rng.randrange(3)}", WORKERS, now)
        out += [e for e in effects if isinstance(e, Send)]
        records += [e for e in effects if isinstance(e, Record)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_core_killed_at_any_input_is_rebuilt_exactly_by_its_journal(tmp_path, seed):
    journal = Journal(tmp_path)
    config = Config(seed, spot_rate=0.3, check_spread_s=1.0)
    journal.start_epoch(config)
    live = Submission(config, record=True, sink=lambda e: journal.append(e, 0.0))
    drive(live, seed, 120)
    journal.close()  # (a kill -9 leaves the same file: every input was committed before it was decided on)

    replayed = Journal(tmp_path).replayed()
    again = Submission(replayed.config, record=True)
    for entry in replayed.entries:
        again.apply(entry)
    assert json.loads(json.dumps(again.log)) == json.loads(json.dumps(live.log))
    assert again.outstanding == live.outstanding and again.unconfirmed == live.unconfirmed
    assert {j: s.run.status for j, s in again.jobs.items()} == {j: s.run.status for j, s in live.jobs.items()}


def test_the_clock_goes_on_across_a_restart_counting_the_time_down(tmp_path):
    journal = Journal(tmp_path)
    journal.start_epoch(Config(1))
    journal.append(["on_alarm", 500.0], 500.0)
    replayed = journal.replayed()
    later = time.time() + 30  # the node was down 30 s, and the machine rebooted (monotonic starts over)
    offset = Journal.clock_at(type(replayed)(replayed.config, replayed.entries, replayed.walls, replayed.now,
                                             replayed.wall - 30), 2.0)
    assert later - time.time() <= 30 and 529.0 < 2.0 + offset < 532.0


def test_a_write_that_fails_stops_the_journal_at_a_valid_prefix(tmp_path):
    journal = Journal(tmp_path)
    journal.start_epoch(Config(1))
    journal.append(["on_alarm", 1.0], 1.0)
    journal.db.execute("PRAGMA query_only=1")  # as a full disk or a read-only mount would refuse it
    journal.append(["on_alarm", 2.0], 2.0)
    assert "could not be written" in journal.error
    journal.db.execute("PRAGMA query_only=0")
    journal.append(["on_alarm", 3.0], 3.0)  # space came back: still nothing, or the replay would skip input 2
    assert [e[1] for e in journal.replayed().entries] == [1.0]


def test_a_tick_naming_new_candidates_is_one_commit_and_known_ones_are_not_stored_again(tmp_path):
    """A tick names the candidates it placed among; a set not stored yet is stored with the tick in one
    transaction (one fsync on the submitter's event loop, not two), and a set stored before only by ref."""
    journal = Journal(tmp_path)
    journal.start_epoch(Config(1))
    said: list[str] = []
    journal.db.set_trace_callback(said.append)
    tick = ["tick", "job0", {k: list(v) for k, v in WORKERS.items()}, 1.0]
    journal.append(tick, 1.0)
    assert [s.split()[0] for s in said] == ["BEGIN", "INSERT", "INSERT", "COMMIT"]
    said.clear()
    journal.append([*tick[:3], 2.0], 2.0)  # the same candidates
    assert len(said) == 1 and said[0].startswith("INSERT INTO inputs")
    journal.db.set_trace_callback(None)
    entries = journal.replayed().entries
    assert len(entries) == 2 and entries[0][2] == entries[1][2]
    assert [c["node"] for c in entries[0][2]["python"]] == [c.node for c in WORKERS["python"]]


@pytest.mark.parametrize("damage", ["not a database", "bad row"])
def test_a_damaged_journal_is_a_clear_error_naming_what_to_do(tmp_path, damage):
    if damage == "not a database":
        (tmp_path / "journal.db").write_bytes(b"\x00garbage" * 512)
    else:
        journal = Journal(tmp_path)
        journal.start_epoch(Config(1))
        journal.db.execute("INSERT INTO inputs (now, wall, entry) VALUES (1, 1, '[\"tick\", {')")
        journal.close()
    with pytest.raises(JournalError, match="move it aside"):
        Journal(tmp_path).replayed()


def test_a_malformed_input_is_refused_by_the_core_not_dispatched():
    sub = Submission(Config(1))
    for entry in (["_finish", "job0"], ["tick"], ["on_alarm", "soon"], "submit", []):
        with pytest.raises(ValueError):
            sub.apply(entry)


def test_receipts_go_out_only_for_written_batches_and_stop_once_acknowledged(tmp_path):
    journal = Journal(tmp_path)
    outbox = Outbox(journal)
    r = {"job": "j", "step": "a", "ts": 1}
    outbox.hold("1:1", [("w1", r)])
    outbox.hold("1:2", [("w2", {**r, "step": "b"})])
    assert outbox.due() == [] and outbox.held("1:1") == {("w1", "j", "a"): r}
    with journal.batch():
        outbox.settle("1:1", True)
        outbox.settle("1:2", False)  # the ledger refused that batch: its receipt stays held
    assert outbox.due(time.time()) == [("w1", r)]
    assert outbox.due(time.time()) == []  # backed off
    assert outbox.due(time.time() + 1.5) == [("w1", r)]
    outbox.nudge("w1")
    assert outbox.due() == [("w1", r)]
    assert outbox.acked("w9", "j", ["a"]) == 0  # only the payee stops its own receipts
    assert outbox.asked("w9", "j", ["a"]) == [] and outbox.asked("w1", "j", ["a"]) == [r]
    assert outbox.acked("w1", "j", ["a"]) == 1
    assert outbox.due(time.time() + 3600) == [] and outbox.pending() == 0
    assert outbox.stranded({"1:2"}) == [] and outbox.stranded(set()) == [("w2", "j", "b")]
    outbox.release("w2", "j", "b", None)  # the ledger holds no such payment: its receipt never goes
    rows = sqlite3.connect(tmp_path / "journal.db").execute("SELECT peer, state FROM outbox").fetchall()
    assert rows == [("w1", ACKED)] and SENDING != ACKED


def test_a_receipt_the_outbox_lost_is_answered_from_the_ledger_once_in_a_while(tmp_path):
    """A journal lost or torn leaves the ledger's paid rows, each with its receipt: asked for one the outbox
    has no row of, the outbox takes it from `elsewhere` (read only then), at most once in ASKED_AGAIN_S."""
    outbox = Outbox(Journal(tmp_path))
    r = {"job": "j", "step": "a", "ts": 1}
    reads = []

    def ledger() -> dict:
        reads.append(1)
        return {"a": r}

    assert outbox.asked("w1", "j", ["a", "b"], 100.0, elsewhere=ledger) == [r] and len(reads) == 1
    assert outbox.asked("w1", "j", ["a"], 101.0, elsewhere=ledger) == [] and len(reads) == 1  # asked again soon
    assert outbox.asked("w1", "j", ["a"], 100.0 + ASKED_AGAIN_S, elsewhere=ledger) == [r]
    outbox.hold("1:1", [("w1", {**r, "step": "c"})])
    outbox.settle("1:1", True)
    n = len(reads)
    assert outbox.asked("w1", "j", ["c"], 500.0, elsewhere=ledger) == [{**r, "step": "c"}] and len(reads) == n


def test_a_receipt_scheduled_by_a_clock_that_ran_ahead_goes_once_the_clock_is_set_back(tmp_path):
    """Resends are scheduled by the wall clock (they outlive the process): scheduled while the clock ran an
    hour ahead, a receipt waited that hour after NTP set it back (red team G's suspicion, 2026-12-07). A
    next send further ahead than the longest backoff is due now."""
    journal = Journal(tmp_path)
    outbox = Outbox(journal)
    r = {"job": "j", "step": "a", "ts": 1}
    outbox.hold("1:1", [("w1", r)])
    with journal.batch():
        outbox.settle("1:1", True)
    ahead = 1_800_000_000.0 + 3600
    assert outbox.due(ahead) == [("w1", r)]  # sent, the next send set by the clock an hour ahead
    assert outbox.due(1_800_000_000.0) == [("w1", r)]  # set back: not an hour's wait
    assert outbox.due(1_800_000_000.0 + 0.5) == []  # (its backoff from now holds as before)


def test_a_peers_receipt_asks_are_read_as_often_as_a_returning_worker_needs_and_no_more(tmp_path):
    """A worker whose payer comes back asks at most 32 times at once (Worker.on_peer_up); a peer asking more is
    flooding, and its asks are refused before their signatures (Node.screen asks `answers`)."""
    outbox = Outbox(Journal(tmp_path))
    burst, rate = ASK_RULE
    assert burst >= 32 and all(outbox.take_ask("w1", 100.0) for _ in range(int(burst)))
    assert not outbox.answers("w1", 100.0) and not outbox.take_ask("w1", 100.0)
    assert outbox.answers("w2", 100.0)  # another peer's turn is its own
    assert outbox.answers("w1", 100.0 + 1 / rate) and outbox.take_ask("w1", 100.0 + 1 / rate)
    assert not outbox.take_ask("w1", 100.0 + 1 / rate)


def test_a_receipt_row_that_does_not_decode_is_set_aside_and_the_rest_still_go(tmp_path):
    """Found by this project's red team (2026-12-06): one unreadable outbox row killed the delivery task,
    and no receipt went out until the node was restarted."""
    journal = Journal(tmp_path)
    outbox = Outbox(journal)
    r = {"job": "j", "step": "a", "ts": 1}
    outbox.hold("1:1", [("w1", r), ("w2", {**r, "step": "b"}), ("w3", {**r, "step": "c"})])
    with journal.batch():
        outbox.settle("1:1", True)
    journal.db.execute("UPDATE outbox SET receipt='{\"job\": ' WHERE peer='w2'")
    journal.db.execute("UPDATE outbox SET receipt=? WHERE peer='w3'", ("[" * 5000 + "]" * 5000,))
    assert outbox.due() == [("w1", r)]
    assert outbox.due(time.time() + 3600) == [("w1", r)]  # the damaged ones are not tried again
    assert outbox.asked("w2", "j", ["b"]) == []
    assert [s for (s,) in journal.db.execute("SELECT state FROM outbox ORDER BY peer")] == [SENDING, DAMAGED, DAMAGED]


def test_an_input_the_core_cannot_replay_is_one_clear_line_at_start(tmp_path):
    """A journal input nested 5,000 deep stopped the start with a RecursionError traceback."""
    journal = Journal(tmp_path)
    journal.start_epoch(Config(1))
    journal.db.execute("INSERT INTO inputs (now, wall, entry) VALUES (1, 1, ?)", ("[" * 5000 + "]" * 5000,))
    journal.close()
    with pytest.raises(JournalError, match="move it aside"):
        Journal(tmp_path).replayed()


def test_a_saved_report_is_amended_with_payments_the_ledger_wrote_after_its_caller_gave_up(tmp_path):
    """A ledger that answered past LEDGER_ANSWER_S: the job's report said 0 credits spent and "none were
    made" for good, though the ledger held the payments; the next start finds them (Submitter._reconcile)
    and amends the report."""
    from types import SimpleNamespace

    from mesh.node.submitter import Submitter

    (tmp_path / "jobs").mkdir()
    report = tmp_path / "jobs" / "j1.json"
    report.write_text(json.dumps({"job_id": "j1", "credits_spent": 0.0,
                                  "payment_error": "the ledger did not record its payments: no answer"}))
    driver = SimpleNamespace(ports=SimpleNamespace(home=tmp_path))
    Submitter._amend(driver, "j1", 0.75)
    rep = json.loads(report.read_text())
    assert rep["credits_spent"] == 0.75 and "found in it at the next start" in rep["payment_error"]
    Submitter._amend(driver, "gone", 1.0)  # no report saved: nothing to amend, nothing raised
    assert not (tmp_path / "jobs" / "gone.json").exists()
