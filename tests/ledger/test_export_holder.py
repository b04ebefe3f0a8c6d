"""Receipts prove that a worker id was paid, not that whoever shows them is that worker: an export was a
plain file, and anyone holding a copy could show it as their own earnings (found after this project's attack
rounds, 2026-12-07). An export is signed as a whole with its node's key, for a challenge its checker chose.
Tested against the honest worker, the checker, and an attacker holding a copy of the worker's file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger.export import FORMAT, PayerView, export_receipts, sign_export, verify_receipts
from ledger.receipts import make_receipt
from ledger.store import Entry, Ledger
from mesh.wire.identity import Identity, load_or_create

from ..conftest import run_cli

pytestmark = pytest.mark.timeout(60)
NOW = 1_796_000_000_000


def earned_export(worker: Identity, payer: Identity, n: int = 2) -> dict:
    rows = [{"kind": "earned", "detail": {"receipt": make_receipt(payer, f"j{i}", "s", worker.node_id, 1.5, NOW)}}
            for i in range(n)]
    return export_receipts(rows, worker.node_id, lambda p: PayerView(True))


def written(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def test_a_file_made_for_the_checkers_challenge_checks_and_a_copy_shown_for_another_does_not(tmp_path):
    worker, payer, thief = Identity.generate(bits=0), Identity.generate(bits=0), Identity.generate(bits=0)
    honest = written(tmp_path, "honest.json", sign_export(earned_export(worker, payer), worker, "nonce-1", NOW))
    check = verify_receipts(honest, None, "nonce-1").to_json()
    assert check["ok"] and check["signed"] and check["challenge"] == "nonce-1" and check["valid"] == 2
    assert verify_receipts(honest).to_json()["ok"]  # no challenge asked: the receipts and the signature hold

    # the thief shows the worker's file to a checker who asked for another challenge
    replay = verify_receipts(honest, None, "nonce-2").to_json()
    assert not replay["ok"] and "answers the challenge 'nonce-1', not 'nonce-2'" in replay["problems"][0]
    # ... rewrites the challenge in it
    data = json.loads(honest.read_text())
    edited = written(tmp_path, "edited.json", {**data, "challenge": "nonce-2"})
    assert "signature does not check" in verify_receipts(edited, None, "nonce-2").problems[0]
    # ... signs it anew with its own key (the worker's node id stays in the file: the receipts name it)
    resigned = written(tmp_path, "resigned.json", sign_export({k: v for k, v in data.items()
                                                               if k not in ("key", "challenge", "signed_ms", "sig")},
                                                              thief, "nonce-2", NOW))
    out = verify_receipts(resigned, None, "nonce-2")
    assert not out.signed and f"not node {worker.node_id[:12]}'s" in out.problems[0]
    # ... or drops the signature, as an unsigned file of the old kind
    bare = written(tmp_path, "bare.json", {k: v for k, v in data.items() if k not in ("key", "sig")})
    assert "not signed by its node" in verify_receipts(bare, None, "nonce-2").problems[0]
    plain = verify_receipts(bare)  # with no challenge asked, an unsigned file is read as before, and said unsigned
    assert plain.problems == [] and not plain.signed and plain.valid == 2

    # hostile values in the signature's fields are problems, never a traceback
    for key, sig in ((["x"], "00"), ("zz", "00"), (worker.public_key.hex(), 7)):
        odd = written(tmp_path, "odd.json", {**data, "key": key, "sig": sig})
        assert verify_receipts(odd, None, "nonce-1").problems


def test_a_signed_files_own_challenge_is_never_echoed_whole(tmp_path):
    """The file's challenge is its maker's to write (its node signs whatever it likes): 100,000 characters of it
    came back whole in the problem, the text output and the JSON of the check (found on review)."""
    worker, payer = Identity.generate(bits=0), Identity.generate(bits=0)
    path = written(tmp_path, "long.json", sign_export(earned_export(worker, payer), worker, "y" * 100_000, NOW))
    asked = verify_receipts(path, None, "nonce-1")
    assert asked.problems and all(len(p) < 400 for p in asked.problems), [len(p) for p in asked.problems]
    plain = verify_receipts(path)
    assert plain.challenge is None and "not 0 to 256 printable characters" in plain.problems[0]
    assert len(str(plain.to_json())) < 2000


def test_an_inflated_total_or_payer_view_breaks_the_signature(tmp_path):
    worker, payer = Identity.generate(bits=0), Identity.generate(bits=0)
    data = sign_export(earned_export(worker, payer), worker, "", NOW)
    data["total"] = data["total_all"] = 1e9
    assert "signature does not check" in verify_receipts(written(tmp_path, "f.json", data)).problems[0]
    assert data["format"] == FORMAT


@pytest.mark.mesh  # five CLI processes, ~2 s: out of the fast suite (`-m "not mesh"`), in the full one
def test_the_cli_exports_for_a_challenge_and_checks_it(tmp_path):
    home = tmp_path / "worker"
    worker, _ = load_or_create(home)
    payer = Identity.generate(bits=0)
    led = Ledger(home / "ledger.db")
    led.append([Entry("earned", "j1", "s", payer.node_id, 1.5,
                      {"receipt": make_receipt(payer, "j1", "s", worker.node_id, 1.5, NOW)})], NOW)
    led.close()
    out, env = tmp_path / "earned.json", {"MESH_HOME": str(tmp_path / "nobody")}
    res = run_cli("ledger", "export", str(out), "--home", str(home), "--challenge", "from-alice-42")
    assert res.returncode == 0 and "for the challenge 'from-alice-42'" in res.stdout, res.stderr
    res = run_cli("ledger", "verify-receipts", str(out), "--challenge", "from-alice-42", env=env)
    assert res.returncode == 0 and f"signed by node {worker.node_id[:16]}'s own key" in res.stdout, res.stdout
    res = run_cli("ledger", "verify-receipts", str(out), "--challenge", "from-bob-7", "--json", env=env)
    assert res.returncode == 1 and not json.loads(res.stdout)["ok"]
    res = run_cli("ledger", "verify-receipts", str(out), "--challenge", "a\nb", env=env)
    assert res.returncode != 0 and "printable" in res.stderr and "Traceback" not in res.stderr
