"""Evidence, not opinions, on real processes: a stranger's proof that a worker was outvoted reruns what
that worker answered alone for n0, because the ids that outvoted it are ones n0 trusts by its own ledger —
not because n0 trusts the stranger (it weighs the stranger's testimony at nothing). The same channel is
attacked first: a proof whose majority is two sybils is not even checked ('proof-untrusted'), and one
claiming n1's and n2's answers, altered, is refused ('bad-proof'); the honest worker those two tried to
frame is never held against."""

from __future__ import annotations

import pytest

from mesh.cli.local import LocalNode
from mesh.wire.canonical import digest
from mesh.wire.envelope import signed_bytes
from mesh.wire.identity import Identity
from mesh.wire.messages import Outvoted, SignedAnswer, StepRequest, StepResult, Work, asked_digest
from mesh.wire.schema import dump, parse

from ..conftest import wait_for
from .hostile import NETWORK, PY_JOB, HostilePeer, lone_answer_by, now_ms, status, submit, wait_job

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(300)]
FAST = ["--no-model", "--testimony-every", "1"]
RIGHT = 90  # PY_JOB's answer


def own_prefix(n: int) -> list[str]:
    """Listen and dial from loopback /24 number n: each node is a network prefix of its own."""
    return ["--listen", f"127.0.{n}.1:0"]


def linked(node, *others) -> bool:
    up = {p["node"] for p in status(node)["peers"] if p["state"] == "up" and p["connected"]}
    return all(o.node_id in up for o in others)


def answer_of(frame: dict) -> SignedAnswer:
    """A result envelope as received (JSON), kept as signed."""
    return SignedAnswer(frame["kind"], frame["net"], frame["from"], frame["to"], frame["seq"], frame["ts"],
                        frame["sig"], parse(StepResult, frame["payload"]))


def signed_by(who: Identity, to: bytes, job: str, step: str, output: object, asked: str) -> SignedAnswer:
    """A result `who` really signs (a sybil's answer: valid, but from nobody n0 knows), to the request
    `asked` names."""
    payload = StepResult(job, step, True, output, digest(output), "python:bwrap", Work(cpu_s=0.01), asked=asked)
    ts = now_ms()
    sig = who.sign(signed_bytes("result", NETWORK, who.public_key, to, ts * 1000, ts, dump(payload)))
    return SignedAnswer("result", NETWORK, who.public_key.hex(), to.hex(), ts * 1000, ts, sig.hex(), payload)


def altered(a: SignedAnswer, output: object) -> SignedAnswer:
    """`a` with another output (and its digest): its signature no longer matches."""
    p = a.payload
    return SignedAnswer(a.kind, a.net, a.sender, a.to, a.seq, a.ts, a.sig,
                        StepResult(p.job, p.step, p.ok, output, digest(output), p.identity, p.work, asked=p.asked))


def test_a_strangers_proof_reruns_a_cheaters_lone_answers_and_forged_or_sybil_proofs_do_nothing(make_mesh, tmp_path, fork_node):
    mesh = make_mesh(3, lambda i: FAST + own_prefix(10 if i == 0 else i))
    n0, n1, n2 = mesh.nodes
    for _ in range(7):  # n0 sees n1 and n2 do verified work (r=2 on two workers): 7 of FULL_FLOW's 10 each
        rep = wait_job(n0, submit(n0, PY_JOB, 2))
        assert rep["status"] == "done" and rep["steps"]["sum"]["output"] == RIGHT, rep

    stranger = LocalNode(tmp_path / "stranger", FAST + own_prefix(3), launch=fork_node)
    cheat = LocalNode(tmp_path / "cheat", FAST + own_prefix(4) + ["--fault", "wrong"], launch=fork_node)
    evil = Identity.generate()
    try:
        for late in (stranger, cheat):
            late.start([n0.listen])
            late.wait_started(60)
        wait_for(lambda: all(linked(a, b) for a in (n0, n1, n2, stranger) for b in (n0, n1, n2, stranger, cheat)
                             if a is not b), 60, "the stranger and the cheater linked to everyone")

        # -- the attacks: an attacker gets real signed answers to its own step from n1, n2 and the stranger
        real: dict[str, SignedAnswer] = {}
        for who in (n1, n2, stranger):
            with HostilePeer(who.listen, evil) as peer:
                key = bytes.fromhex(status(who)["key"])
                peer.handshake(key)
                peer.send(peer.seal("step", key, StepRequest("frame", "x", "python", {"code": "output = 7"}, 20.0)))
                res = peer.expect(lambda f: f["kind"] == "result" and f["payload"]["step"] == "x", 30)
                assert res is not None and res["payload"]["output"] == 7, res
                real[who.node_id] = answer_of(res)
        framed = real[stranger.node_id]  # an honest answer the attacker wants held against the stranger
        sybils = [Identity.generate() for _ in range(2)]
        assert framed.payload.asked == asked_digest("python", {"code": "output = 7"})  # what it answered
        by_sybils = Outvoted(framed, [signed_by(s, evil.public_key, "frame", "x", 8, framed.payload.asked)
                                      for s in sybils])
        forged = Outvoted(framed, [altered(real[n1.node_id], 8), altered(real[n2.node_id], 8)])
        before = status(n0)["rejected"]
        with HostilePeer(n0.listen, evil) as peer:
            peer.handshake(bytes.fromhex(status(n0)["key"]))
            peer.send(peer.seal("outvoted", bytes.fromhex(status(n0)["key"]), by_sybils))
            peer.send(peer.seal("outvoted", bytes.fromhex(status(n0)["key"]), forged))
            counted = wait_for(lambda: (r := status(n0)["rejected"]).get("bad-proof", 0) > before.get("bad-proof", 0)
                               and r.get("proof-untrusted", 0) > before.get("proof-untrusted", 0) and r, 30,
                               "n0 to refuse the forged proof and set aside the sybils' one")
        assert counted["bad-proof"] == before.get("bad-proof", 0) + 1, counted
        assert stranger.node_id[:12] not in status(n0)["testimony"]["proven"], "an honest worker was framed"

        # -- the real thing: n0 runs steps alone (r=1) until the cheater has answered one, wrongly
        fooled = lone_answer_by(n0, cheat.node_id, RIGHT)
        # the stranger asks all four workers (r=4): n0, n1 and n2 outvote the cheater, and the stranger passes
        # the proof on to its linked peers
        caught = wait_job(stranger, submit(stranger, PY_JOB, 4))
        assert caught["steps"]["sum"]["output"] == RIGHT, caught
        assert cheat.node_id in {r["node"] for r in caught["steps"]["sum"]["replicas"] if not r["agreed"]}, caught

        def rerun() -> dict | None:
            r = n0.client.request("GET", f"/jobs/{fooled['job_id']}")
            verdict = r.get("rechecks", {}).get("sum", {}).get("verdict")
            return r if verdict not in (None, "running") else None
        after = wait_for(rerun, 90, "n0 to rerun the step the cheater answered alone")
        seen = status(n0)["testimony"]
    finally:
        for late in (stranger, cheat):
            late.stop()
    check = after["rechecks"]["sum"]
    assert check["cause"] == cheat.node_id and check["verdict"] == "overturned", after
    assert after["steps"]["sum"]["output"] == RIGHT, after
    assert seen["proven"] == {cheat.node_id[:12]: 1}, seen  # the cheater, once; the framed stranger never
    assert seen["issuers"].get(stranger.node_id[:12], 0.0) == 0.0, seen  # the messenger is not trusted
