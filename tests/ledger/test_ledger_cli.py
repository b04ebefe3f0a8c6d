"""The ledger as a user meets it after a real job: every number explained, earnings exported and
checked offline, and any edit to the database caught by `mesh ledger verify`."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from ..conftest import cli_json, run_cli, wait_for, write_job

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]


@pytest.fixture
def paid_mesh(make_mesh, tmp_path: Path):
    mesh = make_mesh(4, lambda i: ["--no-model"])
    job = write_job(tmp_path / "j.json", [
        {"id": "a", "kind": "python", "params": {"code": "output = 2 ** 10"}},
        {"id": "b", "kind": "python", "params": {"code": "output = inputs['a'] + 1"}, "after": ["a"]}])
    rep = cli_json("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", "3", "--wait")
    assert rep["status"] == "done" and rep["steps"]["b"]["output"] == 1025
    wait_for(lambda: all(cli_json("ledger", "balance", "--home", str(n.home))["balance"] > 0 for n in mesh.nodes[1:]),
             30, "receipts")
    return mesh


def test_explain_history_export_and_offline_check(paid_mesh, tmp_path: Path):
    sub, worker = paid_mesh.nodes[0], paid_mesh.nodes[1]
    history = cli_json("ledger", "history", "--home", str(sub.home))
    kinds = sorted(e["kind"] for e in history)
    assert kinds == ["agreed"] * 6 + ["paid"] * 6
    paid = next(e for e in history if e["kind"] == "paid")
    assert paid["detail"]["receipt"]["worker"] == paid["peer"] and paid["job"] and paid["step"] in ("a", "b")
    text = cli_json("ledger", "explain", str(paid["id"]), "--home", str(sub.home))["explanation"]
    assert "majority" in text and "needs 2 agreeing" in text and "CPU-seconds" in text and "signature valid" in text

    out = tmp_path / "earned.json"
    res = run_cli("ledger", "export", str(out), "--home", str(worker.home))
    assert res.returncode == 0, res.stderr
    data = json.loads(out.read_text())
    payers = [item["payer"] for item in data["receipts"]]
    assert payers == [{"known": True, "reputation": None, "trusted": True, "met_only": False,
                       "limit": payers[0]["limit"]}] * 2
    assert payers[0]["limit"] >= 10 * data["total_all"] - 1e-4  # (it paid the worker all of them: 10x that)
    balance = cli_json("ledger", "balance", "--home", str(worker.home))["balance"]
    assert data["total"] == data["total_all"] == pytest.approx(balance)
    # checked by the node that paid: it knows and trusts itself
    check = cli_json("ledger", "verify-receipts", str(out), "--home", str(sub.home))
    assert check["ok"] and check["valid"] == 2 and check["judged_by"] == sub.node_id
    assert check["total"] == pytest.approx(balance) and check["unknown"]["receipts"] == 0
    # checked on a machine with no node: the receipts verify, but nothing vouches for their payer
    res = run_cli("ledger", "verify-receipts", str(out), "--json", env={"MESH_HOME": str(tmp_path / "nobody")})
    nobody = json.loads(res.stdout)
    assert res.returncode == 0 and nobody["valid"] == 2 and nobody["judged_by"] is None
    assert nobody["total"] == 0 and nobody["unknown"]["credits"] == pytest.approx(balance)

    data["receipts"][0]["receipt"]["amount"] *= 100  # a worker inflating its earnings
    data["receipts"].append(dict(data["receipts"][1]))  # and counting one twice
    out.write_text(json.dumps(data))
    res = run_cli("ledger", "verify-receipts", str(out))
    assert res.returncode == 1
    assert "receipt 1: receipt signature does not verify" in res.stdout and "appears twice" in res.stdout


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="needs the sqlite3 command-line tool")
def test_editing_any_row_with_sqlite3_is_caught_and_located(paid_mesh):
    sub = paid_mesh.nodes[0]
    paid_mesh.stop()  # edit at rest, as an operator with a text editor would
    db = sub.home / "ledger.db"
    assert run_cli("ledger", "verify", "--home", str(sub.home)).returncode == 0
    subprocess.run(["sqlite3", str(db), "PRAGMA wal_checkpoint(TRUNCATE);"], check=True, capture_output=True)
    n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    for row in (1, n // 2, n):
        copy = db.with_name(f"copy{row}.db")
        shutil.copy(db, copy)
        subprocess.run(["sqlite3", str(db), f"UPDATE entries SET amount = amount - 1 WHERE id = {row}"], check=True)
        res = run_cli("ledger", "verify", "--home", str(sub.home))
        assert res.returncode == 1
        assert f"entry {row} does not match its hash" in res.stdout, res.stdout
        shutil.copy(copy, db)
    subprocess.run(["sqlite3", str(db), "DELETE FROM entries WHERE id = 3"], check=True)
    res = run_cli("ledger", "verify", "--home", str(sub.home), "--json")
    assert res.returncode == 1 and json.loads(res.stdout)["reason"] == "entry 3 is missing"


def test_explain_and_export_errors_are_one_line(tmp_path: Path):
    assert run_cli("init", "--home", str(tmp_path / "h")).returncode == 0
    res = run_cli("ledger", "explain", "--home", str(tmp_path / "h"))
    assert res.returncode == 2 and "needs an ENTRY" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("ledger", "verify-receipts", str(tmp_path / "none.json"))
    assert res.returncode == 2 and "cannot read" in res.stderr
    (tmp_path / "bad.json").write_text("[1, 2]")
    res = run_cli("ledger", "verify-receipts", str(tmp_path / "bad.json"))
    assert res.returncode == 2 and "not a homemesh receipts export" in res.stderr


def rebuild_chain(db: sqlite3.Connection) -> None:
    """What a tamperer who read ledger/store.py does after editing rows: renumber them and hash the
    chain again, so every row matches its hash."""
    from ledger.store import GENESIS, entry_hash

    rows = db.execute("SELECT ts, kind, job, step, peer, amount, detail FROM entries ORDER BY id").fetchall()
    db.execute("DELETE FROM entries")
    prev = GENESIS
    for i, (ts, kind, job, step, peer, amount, detail) in enumerate(rows, 1):
        h = entry_hash(prev, i, ts, kind, job, step, peer, amount, detail)
        db.execute("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?)", (i, ts, kind, job, step, peer, amount, detail, prev, h))
        prev = h
    db.commit()


TAMPERINGS = {
    "the last row deleted": lambda db: db.execute("DELETE FROM entries WHERE id = (SELECT MAX(id) FROM entries)"),
    "every paid row deleted, the chain rebuilt": lambda db: (db.execute("DELETE FROM entries WHERE kind = 'paid'"),
                                                            rebuild_chain(db)),
    "disagreed rewritten as agreed, the chain rebuilt": lambda db: (
        db.execute("UPDATE entries SET kind = 'agreed' WHERE kind = 'disagreed'"), rebuild_chain(db)),
    "a receipt booked twice, the chain rebuilt": lambda db: (book_twice(db), rebuild_chain(db)),
}


def book_twice(db: sqlite3.Connection) -> None:
    """A second row for one receipt: the table rebuilt without its UNIQUE (kind, job, step, peer) first."""
    db.executescript("""
        ALTER TABLE entries RENAME TO old;
        CREATE TABLE entries (id INTEGER PRIMARY KEY, ts INTEGER, kind TEXT, job TEXT, step TEXT, peer TEXT,
                              amount REAL, detail TEXT, prev TEXT, hash TEXT);
        INSERT INTO entries SELECT * FROM old;
        INSERT INTO entries SELECT 1000, ts, kind, job, step, peer, amount, detail, prev, hash
            FROM old WHERE kind = 'paid' LIMIT 1;
        DROP TABLE old;""")


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_rewritten_history_is_caught_by_the_signed_heads(make_mesh, tmp_path: Path, tampering: str):
    """Each edit leaves a chain whose rows all match their hashes, which `verify` passed before the node
    signed its chain's head (when the ledger opens, every 64 entries and in every write)."""
    mesh = make_mesh(4, lambda i: ["--no-model", "--fault", "wrong"] if i == 3 else ["--no-model"])
    sub = mesh.nodes[0]
    job = write_job(tmp_path / "j.json", [{"id": "a", "kind": "python", "params": {"code": "output = 5"}}])
    rep = cli_json("submit", job, "--home", str(sub.home), "--redundancy", "3", "--wait")
    assert rep["status"] == "done"
    mesh.stop()  # edited at rest (the latest head was signed with the last write)
    assert run_cli("ledger", "verify", "--home", str(sub.home)).returncode == 0
    db = sqlite3.connect(sub.home / "ledger.db")
    kinds = [k for (k,) in db.execute("SELECT kind FROM entries")]
    assert "paid" in kinds and "disagreed" in kinds, kinds  # (the liar's answer was outvoted)
    TAMPERINGS[tampering](db)
    db.commit()
    rebuilt = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    db.close()
    res = run_cli("ledger", "verify", "--home", str(sub.home), "--json")
    assert res.returncode == 1, (tampering, res.stdout)
    why = json.loads(res.stdout)["reason"]
    expect = {"the last row deleted": f"the ledger ends at entry {rebuilt}, but its head was signed at entry",
              "every paid row deleted, the chain rebuilt": "were deleted",
              "disagreed rewritten as agreed, the chain rebuilt": "is not the one its signed head names",
              "a receipt booked twice, the chain rebuilt": "books the receipt entry"}[tampering]
    assert expect in why, why
