"""Attacks on the economy by peers holding valid keys, over real connections to real nodes (issue:
credits that mean something). A hostile submitter sets the amounts of the receipts it signs: a worker
must book only what its own measured work is worth at the rates it advertised."""

from __future__ import annotations

import json

import pytest

from ledger.export import sign_export
from ledger.receipts import make_receipt
from mesh.wire.canonical import digest
from mesh.wire.envelope import ANYONE
from mesh.wire.identity import Identity, load
from mesh.wire.messages import Bye, Hello, Progress, ReceiptMsg, StepRequest, StepResult, Work
from mesh.wire.records import make_record

from ..conftest import cli_json, run_cli, wait_for, write_job
from .hostile import (
    HostilePeer,
    asked_of,
    ledger_rows,
    now_ms,
    penalties,
    rejected,
    status,
    tamper_signature,
    wait_rejection,
)

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(90)]


def key_of(node) -> bytes:
    return bytes.fromhex(status(node)["key"])


def test_a_payer_cannot_book_a_worker_more_than_its_rate_card_allows(mesh4):
    """The attack as found: a submitter paid 999,999,999 for `output = 1` and the worker booked it. Now
    the worker books a receipt only up to its own measured CPU-seconds at its own cpu_s rate (both in
    its signed record and status), and no less than the minimum charge."""
    node = mesh4.nodes[1]
    me, card = key_of(node), status(node)["rates"]
    assert card["cpu_s"] == 1.0  # the default card, in the node's signed record
    before = rejected(node)
    with HostilePeer(node.listen) as evil:
        evil.handshake(me)
        answers = {}
        for step in ("over", "under", "fair"):
            evil.send(evil.seal("step", me, StepRequest("j1", step, "python", {"code": "output = 1"}, 10.0)))
            res = evil.expect(lambda f, s=step: f["kind"] == "result" and f["payload"]["step"] == s, 30)
            assert res is not None and res["payload"]["ok"], res
            answers[step] = res["payload"]["work"]
        cpu = answers["fair"]["cpu_s"]
        assert 0 <= cpu < 1, answers  # `output = 1` costs milliseconds, measured by the worker itself
        for step, amount in (("over", 999_999_999), ("under", 0.001)):
            evil.send(evil.seal("receipt", me, ReceiptMsg(make_receipt(evil.identity, "j1", step, node.node_id,
                                                                       amount, now_ms()))))
        wait_rejection(node, "bad-receipt", before, "outside this node's rate card", at_least=2)
        fair = round(max(0.01, cpu * card["cpu_s"]), 6)
        evil.send(evil.seal("receipt", me, ReceiptMsg(make_receipt(evil.identity, "j1", "fair", node.node_id,
                                                                   fair, now_ms()))))
        earned = wait_for(lambda: [r for r in ledger_rows(node.home) if r["kind"] == "earned"
                                   and r["peer"] == evil.node_id], 15, "the fair receipt booked")
    assert [(r["step"], r["amount"]) for r in earned] == [("fair", fair)]
    assert status(node)["balance"] < 1, "the inflated receipt reached the balance"
    assert "over" not in json.dumps([r["detail"] for r in earned])


def test_each_worker_is_paid_at_the_rate_card_in_its_signed_record(make_mesh, tmp_path):
    """An honest job: node1 asks 3 credits a CPU-second, node2 a million, node3 the default 1. The
    submitter prices every agreeing replica from the median of their own measurements (never above a
    worker's own), at that worker's card but at most its own limit (4 a CPU-second by default), and
    each worker books exactly what its receipt says."""
    mesh = make_mesh(4, lambda i: ["--no-model", *({1: ["--rate", "cpu_s=3"], 2: ["--rate", "cpu_s=1000000"]}
                                                   .get(i, []))])
    dear, greedy = mesh.nodes[1], mesh.nodes[2]
    assert status(dear)["rates"]["cpu_s"] == 3.0 and status(greedy)["rates"]["cpu_s"] == 1e6
    job = write_job(tmp_path / "busy.json", [{"id": "busy", "kind": "python",
                                               "params": {"code": "output = sum(i * i for i in range(300000))"}}])
    rep = cli_json("submit", job, "--home", str(mesh.nodes[0].home), "--redundancy", "3", "--wait")
    assert rep["status"] == "done", rep
    replicas = {r["node"]: r for r in rep["steps"]["busy"]["replicas"]}
    assert len(replicas) == 3 and all(r["agreed"] for r in replicas.values())
    cpu = {n: r["work"]["cpu_s"] for n, r in replicas.items()}
    median = sorted(cpu.values())[1]
    for n, r in replicas.items():
        rate = {dear.node_id: 3.0, greedy.node_id: 4.0}.get(n, 1.0)
        assert r["credit"] == round(max(0.01, min(median, cpu[n]) * rate), 6), (n, r, cpu)
    for node in mesh.nodes[1:]:
        earned = wait_for(lambda node=node: [x for x in ledger_rows(node.home) if x["kind"] == "earned"], 15,
                          f"{node.home.name}'s receipt booked")
        assert [x["amount"] for x in earned] == [replicas[node.node_id]["credit"]]
    assert not rejected(dear).get("bad-receipt")


def test_earnings_from_payers_the_checking_node_never_met_or_distrusts_are_not_counted(mesh4, tmp_path):
    """The attack as found: receipts signed by fresh keys (1e10 in all) passed `verify-receipts` and were
    counted. An export now says what its node knows of each payer, but the check believes only its own
    node: receipts from payers it never met (minted, perhaps) and from payers it distrusts (here, a key
    it penalised) verify, and are reported apart, outside the total."""
    sub, worker = mesh4.nodes[0], mesh4.nodes[1]
    job = write_job(tmp_path / "j.json", [{"id": "a", "kind": "python", "params": {"code": "output = 3"}}])
    assert cli_json("submit", job, "--home", str(sub.home), "--redundancy", "3", "--wait")["status"] == "done"
    wait_for(lambda: any(r["kind"] == "earned" for r in ledger_rows(worker.home)), 15, "the worker's receipt")
    out = tmp_path / "earned.json"
    assert run_cli("ledger", "export", str(out), "--home", str(worker.home)).returncode == 0
    data = json.loads(out.read_text())
    assert data["total"] == data["total_all"]  # every payer of the worker is one it met
    # the genuine receipts from node0 only (the module's other tests paid this worker from keys of their
    # own, which node0 may or may not have heard of by gossip)
    data["receipts"] = [i for i in data["receipts"] if i["receipt"]["payer"] == key_of(sub).hex()]
    honest = round(sum(i["receipt"]["amount"] for i in data["receipts"]), 6)
    assert honest > 0

    with HostilePeer(sub.listen) as bad:  # a key the checking node penalised (20 forged envelopes)
        bad.handshake(key_of(sub))
        for _ in range(20):
            bad.send(tamper_signature(bad.seal("bye", key_of(sub), Bye("x"))))
        wait_for(lambda: penalties(sub.home).get(bad.node_id, 0) >= 1, 15, "a penalty for the forger")
    fresh = [Identity.generate() for _ in range(3)]
    lie = {"known": True, "reputation": 1.0, "trusted": True}  # the file's own word on its payers
    data["receipts"] += [{"receipt": make_receipt(k, f"minted-{i}", "s", worker.node_id, 1e8, now_ms()), "payer": lie}
                         for i, k in enumerate(fresh)]
    data["receipts"].append({"receipt": make_receipt(bad.identity, "j", "s", worker.node_id, 5e7, now_ms()),
                             "payer": lie})
    data["total"] = data["total_all"] = 3e8 + 5e7 + honest
    # the worker lies in its own file, and signs it with its own key as `export` does (an edit alone breaks it)
    data = sign_export({k: v for k, v in data.items() if k not in ("key", "challenge", "signed_ms", "sig")},
                       load(worker.home), "", now_ms())
    out.write_text(json.dumps(data))

    check = cli_json("ledger", "verify-receipts", str(out), "--home", str(sub.home))
    assert check["ok"] and check["valid"] == len(data["receipts"])  # every signature is good...
    assert check["total"] == pytest.approx(honest)  # ...but only the checking node's trusted payers count
    assert check["unknown"]["receipts"] == 3 and check["unknown"]["credits"] == 3e8
    assert check["unknown"]["payers"] == sorted(k.node_id for k in fresh)
    assert check["distrusted"] == {"receipts": 1, "credits": 5e7, "payers": [bad.node_id]}
    text = run_cli("ledger", "verify-receipts", str(out), "--home", str(sub.home)).stdout
    assert "never met (minted, perhaps)" in text and f"total: {honest:g} credits" in text


def sole_python_worker(node, evil: HostilePeer) -> tuple[str, dict]:
    """`evil` linked to `node` as its only python worker, and a one-step job's request in its hands:
    (the job id, the step request as it came)."""
    evil.send(evil.seal("hello", ANYONE, Hello(evil.record(kinds=["python"]), [])))
    assert evil.expect(lambda f: f["kind"] == "hello" and f["to"] == evil.key.hex(), 10)
    wait_for(lambda: any(p["node"] == evil.node_id and p["state"] == "up" for p in status(node)["peers"]), 10,
             "the hostile worker up")
    job_id = node.client.request("POST", "/jobs", {"job": {"name": "j", "redundancy": 1, "steps": [
        {"id": "a", "kind": "python", "params": {"code": "output = 1"}}]}})["job_id"]
    req = evil.expect(lambda f: f["kind"] == "step", 20)
    assert req is not None, "the step never reached the only worker"
    return job_id, req


def test_a_worker_cannot_put_anything_but_measured_numbers_into_work(make_mesh):
    """The attack as found: a worker put a 400-deep nested `work` dict in its answer, and GET /jobs/{id}
    then returned 500 forever; `work` could also be half a megabyte per replica, kept for 1000 jobs. Now
    `work` has a strict schema (a few numbers, bounded texts): such answers are refused as bad-schema,
    the report stays readable, and the worker's honest answer later is taken."""
    node = make_mesh(1, lambda i: ["--no-model"]).nodes[0]
    me = key_of(node)
    with HostilePeer(node.listen) as evil:
        job_id, req = sole_python_worker(node, evil)
        deep: dict = {}
        cur = deep
        for _ in range(400):
            cur["x"] = {}
            cur = cur["x"]
        before = rejected(node)
        for work in ({"cpu_s": 0.1, "nested": deep}, {"cpu_s": deep}, {"stdout": "x" * 500_000},
                     {"cpu_s": 0.1, "token_ids": [2 ** 80]}):
            evil.send(evil.seal("result", me, StepResult(job_id, "a", True, 1, digest(1), "python:bwrap", work)))
        wait_rejection(node, "bad-schema", before, evil.label, at_least=4)
        assert node.client.request("GET", f"/jobs/{job_id}")["status"] == "running"  # readable, still waiting
        # well-formed, but the signed bytes are not the typed answer's (work fields left out, an int for a
        # float): it could never be shown to others as signed, so it is not taken (mesh.wire.proof)
        evil.send(evil.seal("result", me, StepResult(job_id, "a", True, 1, digest(1), "python:bwrap", {"cpu_s": 1})))
        wait_rejection(node, "non-canonical", before, evil.node_id[:12])
        assert node.client.request("GET", f"/jobs/{job_id}")["status"] == "running"
        # an answer is the step's output, whatever its shape (a python step may well nest 400 deep): it is
        # checked against its digest, and the report still serves it
        evil.send(evil.seal("result", me, StepResult(job_id, "a", True, deep, digest(deep), "python:bwrap",
                                                     Work(cpu_s=0.002, peak_mb=9.5), asked=asked_of(req))))
        rep = wait_for(lambda: (r := node.client.request("GET", f"/jobs/{job_id}"))["status"] == "done" and r, 20,
                       "the job done on the well-formed answer")
    (replica,) = rep["steps"]["a"]["replicas"]
    assert replica["work"] == {"cpu_s": 0.002, "peak_mb": 9.5}
    assert rep["steps"]["a"]["output"] == deep


def test_a_worker_streaming_progress_for_a_python_step_is_not_kept(make_mesh):
    """Found by this project's red team (2026-12-06): a worker sent one progress message of ~1 MB per step
    it was placed on, then its honest answer; the submitter kept each whole text until the job was
    forgotten (147 MB over 240 steps), for python steps too. Only generations stream now, their text's
    tail kept while the replica runs."""
    node = make_mesh(1, lambda i: ["--no-model"]).nodes[0]
    me = key_of(node)
    with HostilePeer(node.listen) as evil:
        job_id, req = sole_python_worker(node, evil)
        before = rejected(node).get("unexpected-progress", 0)
        for i in range(3):
            evil.send(evil.seal("progress", me, Progress(job_id, "a", i + 1, "x" * 900_000)))
        wait_for(lambda: rejected(node).get("unexpected-progress", 0) >= before + 3, 20, "the progress refused")
        rep = node.client.request("GET", f"/jobs/{job_id}")
        assert rep["status"] == "running" and "partial" not in rep["steps"]["a"]["replicas"][0], rep


def test_replicas_are_spread_by_the_address_peers_connect_from_not_the_one_they_advertise(make_mesh, tmp_path):
    """The attack as found: 20 sybils on one machine advertised different /24s and were treated as
    diverse. Here 10 sybil keys connect from 127.0.0.1 (each advertising its own 10.x.0.0/24) and three
    honest workers from three loopback /24s of their own: the first three replicas of every step go to
    distinct observed prefixes, so never to two sybils."""
    mesh = make_mesh(4, lambda i: ["--no-model", "--listen", f"127.0.{10 if i == 0 else i}.1:0"])
    node = mesh.nodes[0]
    sybils = [HostilePeer(node.listen) for _ in range(10)]
    try:
        for i, s in enumerate(sybils):
            rec = make_record(s.identity, s.network, f"10.{i + 1}.0.1:4750", ["python"], [], True, now_ms())
            s.send(s.seal("hello", ANYONE, Hello(rec, [])))
        wait_for(lambda: sum(p["state"] == "up" for p in status(node)["peers"]) == 13, 20, "13 workers up")
        steps = [{"id": f"s{k}", "kind": "python", "params": {"code": f"output = {k}"}} for k in range(10)]
        job_id = node.client.request("POST", "/jobs", {"job": {"name": "spread", "redundancy": 3, "timeout": 30,
                                                               "steps": steps}})["job_id"]
        honest = {n.node_id for n in mesh.nodes[1:]}

        def placed() -> dict | None:
            """The report once every step has its first three replicas placed (the sybils never answer, so
            the job itself would end only when their replicas time out), or once the job ended. Replicas
            are listed in the order they were placed and never removed: the first three are final."""
            r = node.client.request("GET", f"/jobs/{job_id}")
            done = r["status"] != "running" or all(len(st["replicas"]) >= 3 for st in r["steps"].values())
            return r if done else None

        report = wait_for(placed, 60, "three replicas of every step placed")
        for sid, step in report["steps"].items():
            first = [r["node"] for r in step["replicas"]][:3]  # (in the order they were placed)
            assert sum(n not in honest for n in first) <= 1, (sid, first)
    finally:
        for s in sybils:
            s.close()


def test_a_ledger_rebuilt_and_re_signed_with_the_nodes_own_key_is_caught_by_the_heads_its_peers_hold(
        make_mesh, tmp_path):
    """Whoever holds a node's disk holds its key: it can rewrite the ledger, hash the chain again and sign
    new heads, and `mesh ledger verify` passes. The heads the node gave its peers cannot be re-signed:
    `verify --peers` asks them, and the rewritten entry no longer matches."""
    import sqlite3

    from ledger.heads import GENESIS, HEAD_EVERY, Head
    from mesh.wire.identity import load

    from ..ledger.test_ledger_cli import rebuild_chain
    from .hostile import ledger_count

    mesh = make_mesh(4, lambda i: ["--no-model", "--fault", "wrong"] if i == 3 else ["--no-model"])
    sub = mesh.nodes[0]
    job = write_job(tmp_path / "j.json", [{"id": "a", "kind": "python", "params": {"code": "output = 5"}}])
    assert cli_json("submit", job, "--home", str(sub.home), "--redundancy", "3", "--wait")["status"] == "done"

    def verify_peers() -> dict:
        res = run_cli("ledger", "verify", "--home", str(sub.home), "--peers", "--wait", "3", "--json")
        return {"rc": res.returncode, **json.loads(res.stdout)}

    def holding_the_last_entry() -> list:
        got, n = verify_peers(), ledger_count(sub.home)
        return [a for a in got["peers"]["answers"] if n in a["heads"]] if got["rc"] == 0 else []

    wait_for(lambda: len(holding_the_last_entry()) >= 2, 60, "two peers to hold the head at the last entry")

    sub.stop()  # the full-disk attacker: rows rewritten, the chain rebuilt, every head signed again
    me = load(sub.home)
    db = sqlite3.connect(sub.home / "ledger.db")
    assert db.execute("UPDATE entries SET kind = 'agreed' WHERE kind = 'disagreed'").rowcount >= 1
    db.commit()
    rebuild_chain(db)
    rows = db.execute("SELECT id, hash FROM entries ORDER BY id").fetchall()
    db.execute("DELETE FROM heads")
    for n, h in [(0, GENESIS), *[(i, h) for i, h in rows if i % HEAD_EVERY == 0 or i == len(rows)]]:
        head = Head.sign(me.sign, me.node_id, n, h)
        db.execute("INSERT INTO heads VALUES (?,?,?)", (head.n, head.hash, head.sig))
    db.commit()
    db.close()
    assert run_cli("ledger", "verify", "--home", str(sub.home)).returncode == 0  # alone, it cannot tell

    sub.start(bootstrap=[mesh.nodes[1].listen])
    sub.wait_started(60)
    wait_for(lambda: sum(p["state"] == "up" for p in status(sub)["peers"]) >= 2, 60, "node0 linked again")
    got = verify_peers()
    assert got["rc"] == 1 and not got["ok"], got
    bad = [a for a in got["peers"]["answers"] if not a["ok"]]
    assert len(bad) >= 2 and all("is not the one its signed head names" in " ".join(a["problems"]) for a in bad), got


def test_a_peer_cannot_plant_a_forged_head_or_answer_an_ask_nobody_made(mesh4):
    """What a stranger sends about ledger heads: a head signed by another key than its sender's is not
    kept (`bad-head`), and an answer to no `head-ask` is counted and dropped (`unasked-heads`). Lower
    counts and floods are refused too: tests/node/test_heldheads.py."""
    from ledger.heads import Head
    from mesh.wire.messages import HeadHeld, LedgerHead

    node = mesh4.nodes[1]
    key = key_of(node)
    with HostilePeer(node.listen) as evil:
        evil.handshake(key)
        before = rejected(node)
        other = Identity.generate()
        forged = Head.sign(other.sign, evil.node_id, 64, "a" * 64)  # its name, another key's signature
        evil.send(evil.seal("head", key, LedgerHead(forged.n, forged.hash, forged.sig)))
        wait_for(lambda: rejected(node).get("bad-head", 0) > before.get("bad-head", 0), 15, "bad-head counted")
        mine = Head.sign(evil.identity.sign, evil.node_id, 64, "b" * 64)
        evil.send(evil.seal("head", key, LedgerHead(mine.n, mine.hash, mine.sig)))
        evil.send(evil.seal("head-held", key, HeadHeld("never-asked", [LedgerHead(mine.n, mine.hash, mine.sig)])))
        wait_for(lambda: rejected(node).get("unasked-heads", 0) > before.get("unasked-heads", 0), 15,
                 "unasked-heads counted")
