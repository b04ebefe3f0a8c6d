"""Attacks on `mesh ledger verify-receipts` (ledger/export.py, mesh/cli/main.py) by this project's red team of
2026-12-07, who had not read the other tests: the file checked is a stranger's, hostile until checked."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.export import FORMAT, MAX_RECEIPTS_FILE, export_receipts, judge_with, sign_export, verify_receipts
from ledger.receipts import make_receipt
from ledger.store import Entry, Ledger
from mesh.wire.identity import Identity

ROOT = Path(__file__).resolve().parents[2]


def _checker_ledger(tmp_path: Path, worker: str, paid: float) -> Ledger:
    """Checker C's ledger: it paid `worker` `paid` credits for one step (the worker did work for it)."""
    led = Ledger(tmp_path / "checker.db")
    led.append([Entry("paid", "job-1", "step-1", worker, -paid)], int(time.time() * 1000))
    return led


@pytest.mark.timeout(60)
def test_a_workers_own_receipts_to_itself_are_not_trusted_earnings(tmp_path):
    """Worker W did 1 credit of work for checker C. W signs receipts *to itself* with its own key (no
    accomplice, no credits moved) and exports them. C knows W (it dealt with it, neutral reputation), so
    W as a payer is 'trusted' and believed up to VOUCH_FACTOR x 1: C's verify-receipts counts 10 credits
    W paid itself as trusted earnings. A node never pays itself for a step; a receipt whose payer is its
    worker is no earning."""
    c, w = Identity.generate(bits=0), Identity.generate(bits=0)
    led = _checker_ledger(tmp_path, w.node_id, 1.0)
    judge = judge_with(led, c.node_id, ())
    now = int(time.time() * 1000)
    own = make_receipt(w, "made-up-job", "s", w.node_id, 10.0, now)
    data = export_receipts([{"kind": "earned", "detail": {"receipt": own}}], w.node_id, lambda p: judge(p))
    path = tmp_path / "export.json"
    path.write_text(json.dumps(sign_export(data, w, "fresh-challenge", now)))
    checked = verify_receipts(path, judge, "fresh-challenge")
    led.close()
    assert checked.trusted.credits == 0, (
        f"W's receipts to itself counted as {checked.trusted.credits:g} trusted credits "
        f"(trusted payers {sorted(checked.trusted.payers)}, W={w.node_id[:12]})")


def _limit_as(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


@pytest.mark.mesh  # writes a 256 MiB file: seconds of disk
@pytest.mark.timeout(300)
def test_an_export_within_the_size_cap_is_checked_within_bounded_memory(tmp_path):
    """A hostile 'export' of MAX_RECEIPTS_FILE (256 MiB, the cap verify-receipts sets itself) whose
    receipts are all `{}`: 3 bytes each in the file, a 64-byte dict each in memory (89 million of them),
    then a problem line each. Checked with 4 GiB of address space (16 times the file) the CLI dies of
    MemoryError with a traceback; unbounded, it takes over 10 GB of a home machine's memory."""
    path = tmp_path / "hostile.json"
    head, tail = b'{"format": "homemesh-receipts/1", "receipts": [', b'{}]}'
    n = (MAX_RECEIPTS_FILE - len(head) - len(tail)) // 3
    with open(path, "wb") as f:
        f.write(head)
        chunk = b"{}," * (1 << 20)
        for _ in range(n >> 20):
            f.write(chunk)
        f.write(b"{}," * (n - ((n >> 20) << 20)))
        f.write(tail)
    assert path.stat().st_size <= MAX_RECEIPTS_FILE
    env = {**os.environ, "MESH_HOME": str(tmp_path / "no-home")}
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "mesh", "ledger", "verify-receipts", str(path)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=280, preexec_fn=_limit_as(4 << 30))
    path.unlink()
    last = (res.stderr.strip().splitlines() or [""])[-1]
    assert "Traceback" not in res.stderr and res.returncode >= 0, (
        f"verify-receipts of a {MAX_RECEIPTS_FILE:,}-byte file in 4 GiB: exit {res.returncode} after "
        f"{time.monotonic() - t0:.0f} s: {last[:200]}")


@pytest.mark.timeout(300)
def test_a_small_export_of_bad_receipts_does_not_take_a_hundred_times_its_size(tmp_path):
    """16 MiB of `0,` items (8 million 'receipts'): one problem line each, kept in a list, joined, made
    printable, printed. Peak memory of the CLI measured (4 GiB address-space cap for safety)."""
    path = tmp_path / "zeros.json"
    head, tail = b'{"format": "homemesh-receipts/1", "receipts": [', b'0]}'
    n = ((16 << 20) - len(head) - len(tail)) // 2
    path.write_bytes(head + b"0," * n + tail)
    env = {**os.environ, "MESH_HOME": str(tmp_path / "no-home")}
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    res = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "mesh", "ledger", "verify-receipts",
                          str(path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
                         preexec_fn=_limit_as(4 << 30))
    code, kib = res.stdout.split()[-2:]
    peak = int(kib) << 10  # (KiB on Linux)
    last = (res.stderr.strip().splitlines() or [""])[-1]
    assert peak <= 16 * path.stat().st_size, (
        f"a {path.stat().st_size:,}-byte file: peak RSS {peak:,} bytes ({peak / path.stat().st_size:.0f}x), "
        f"exit {code} {last[:160]}")


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MESH_HOME": str(tmp_path / "no-home")}
    return subprocess.run([sys.executable, "-m", "mesh", "ledger", "verify-receipts", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.timeout(120)
def test_a_receipt_with_a_lone_surrogate_is_a_bad_receipt_not_a_traceback(tmp_path):
    """A hostile export whose receipt spells its job "\\ud800" (json.loads takes the escape; no UTF-8 can
    hold it) and whose payer is any 32-byte key: Receipt.problem() builds the signed bytes outside its
    try, canonical() raises UnicodeEncodeError, and verify-receipts dies with a traceback."""
    receipt = {"job": "\ud800", "step": "s", "worker": "ab" * 32, "amount": 1, "payer": "11" * 32, "ts": 1,
               "sig": "22" * 64}
    path = tmp_path / "surrogate.json"
    path.write_text(json.dumps({"format": FORMAT, "node": "ab" * 32, "receipts": [{"receipt": receipt}]}))
    res = _cli(tmp_path, str(path), "--json")
    assert "Traceback" not in res.stderr, res.stderr.strip().splitlines()[-1]


@pytest.mark.timeout(120)
def test_a_node_id_with_a_lone_surrogate_is_shown_not_a_traceback(tmp_path):
    """A hostile export naming its node "\\ud800..." with one well-signed receipt for another worker:
    the problem line quotes node[:12] raw, printable() leaves surrogates alone, print() raises
    UnicodeEncodeError: a traceback instead of the report."""
    payer = Identity.generate(bits=0)
    receipt = make_receipt(payer, "j", "s", "cd" * 32, 1.0, 1)
    path = tmp_path / "node.json"
    path.write_text(json.dumps({"format": FORMAT, "node": "\ud800" + "ab" * 31, "receipts": [{"receipt": receipt}]}))
    res = _cli(tmp_path, str(path))
    assert "Traceback" not in res.stderr, res.stderr.strip().splitlines()[-1]


@pytest.mark.timeout(120)
def test_a_big_export_written_as_compactly_as_json_goes_is_read_and_its_bad_receipts_counted_past_a_hundred(tmp_path):
    """The refusal of files packing more values than an export holds must not catch an honest one: 3,000
    receipts with one-letter step ids, written with no spaces at all (its signature is over the canonical
    form, so a re-encoded file still checks), of which 2,000 have their signature broken. Those are listed
    to MAX_LISTED and counted past it."""
    from ledger.export import MAX_LISTED

    c, w, payer = Identity.generate(bits=0), Identity.generate(bits=0), Identity.generate(bits=0)
    led = _checker_ledger(tmp_path, payer.node_id, 1.0)
    judge = judge_with(led, c.node_id, ())
    now = int(time.time() * 1000)
    rows = []
    for i in range(3000):
        r = make_receipt(payer, f"{i:020x}", "s", w.node_id, 0.001, now)
        if i % 3:
            r["sig"] = "00" * 64
        rows.append({"kind": "earned", "detail": {"receipt": r}})
    data = sign_export(export_receipts(rows, w.node_id, judge), w, "", now)
    path = tmp_path / "compact.json"
    path.write_text(json.dumps(data, separators=(",", ":")))
    checked = verify_receipts(path, judge)
    led.close()
    assert checked.trusted.receipts == 1000 and checked.signed, checked.to_json()
    assert checked.problems_total == 2000 and len(checked.problems) == MAX_LISTED + 1
    assert checked.problems[-1] == f"... and {2000 - MAX_LISTED:,} more problems"
