"""Shared reputation between real nodes (mesh/node/testimony.py): an honest node's testimony reaches the
peers that have seen it do verified work and is weighed there; a stranger with a valid key — who did no
work for anyone — can slander an honest worker and praise whoever it likes without changing what the
node thinks, speak only for itself, grow nothing beyond the peer table, and is counted when it sends
what does not hold together."""

from __future__ import annotations

import pytest

from mesh.wire.identity import load
from mesh.wire.messages import TestimonyAsk, TestimonyItem, TestimonyTell

from ..conftest import wait_for
from .hostile import PY_JOB, HostilePeer, now_ms, rejected, status, submit, wait_job

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(240)]
FAST = ["--no-model", "--testimony-every", "1"]


def key_of(node) -> bytes:
    return bytes.fromhex(status(node)["key"])


def shared_view(node) -> dict:
    return status(node)["testimony"]


def test_testimony_travels_between_honest_nodes_and_a_strangers_weighs_nothing(make_mesh):
    mesh = make_mesh(3, lambda i: FAST)
    n0, n1, n2 = mesh.nodes
    for submitter in (n0, n1):  # each learns of the other two by verified work (r=2 on a 3-node mesh)
        rep = wait_job(submitter, submit(submitter, PY_JOB, 2))
        assert rep["status"] == "done", rep
    # n1 has seen n0 do verified work, so n0's testimony (about n2) counts for n1
    wait_for(lambda: shared_view(n1)["issuers"].get(n0.node_id[:12], 0) > 0, 30, "n1 to weigh n0's testimony")
    assert shared_view(n1)["held"] >= 1

    before = rejected(n1)
    with HostilePeer(n1.listen) as evil:
        evil.handshake(key_of(n1))
        now = now_ms()
        lies = [TestimonyItem(n2.node_id, 0.0, 500.0, 0, 0, now, now),  # slander an honest worker
                TestimonyItem(n0.node_id, 1000.0, 0.0, 1000, now - 1000, 0, now)]  # praise another
        evil.send(evil.seal("testimony", key_of(n1), TestimonyTell(lies)))
        unknown = TestimonyItem("ab" * 32, 1000.0, 0.0, 1000, now - 1000, 0, now)  # nobody n1 knows
        malformed = TestimonyItem(n2.node_id, -1.0, 0.0, 0, 0, 0, now)
        future = TestimonyItem(n2.node_id, 1.0, 0.0, 0, 0, 0, now + 3_600_000)
        evil.send(evil.seal("testimony", key_of(n1), TestimonyTell([unknown, malformed, future])))
        too_many = {"items": [TestimonyItem(n2.node_id, 1.0, 0.0, 0, 0, 0, now).__dict__] * 257}
        evil.send(evil.seal_raw("testimony", key_of(n1), too_many))
        # it asks what n1 knows: n1 answers with its own testimony, never about the asker
        evil.send(evil.seal("testimony-ask", key_of(n1), TestimonyAsk([n0.node_id, n2.node_id, evil.node_id])))
        reply = evil.expect(lambda f: f["kind"] == "testimony", 10.0)
        assert reply is not None, "n1 did not answer a testimony-ask"
        told = {item["worker"] for item in reply["payload"]["items"]}
        assert told <= {n0.node_id, n2.node_id} and told, reply["payload"]

        def counted() -> bool:
            now_rej = rejected(n1)
            return all(now_rej.get(k, 0) - before.get(k, 0) >= n for k, n in
                       (("bad-testimony", 2), ("testimony-unknown-worker", 1), ("bad-schema", 1)))
        wait_for(counted, 20, "the stranger's bad testimony counted")
        wait_for(lambda: shared_view(n1)["held"] >= 2, 20, "n1 to hold the stranger's testimony")
        rounds = shared_view(n1)["rounds"]
        wait_for(lambda: shared_view(n1)["rounds"] >= rounds + 2, 30, "n1 to weigh its issuers twice more")
        assert evil.node_id[:12] not in shared_view(n1)["issuers"], shared_view(n1)
    # the slandered worker is still placed and the job still runs right
    rep = wait_job(n1, submit(n1, PY_JOB, 2))
    assert rep["status"] == "done" and n2.node_id in {r["node"] for r in rep["steps"]["sum"]["replicas"]}, rep


def test_a_trusted_peer_that_slanders_every_worker_costs_them_nothing(make_mesh):
    """n1 works honestly for n0 (so its testimony weighs there) and tells n0 that every worker it asks about
    gave it a wrong answer just now (`--fault slander`): what sybils that did some real work would say of
    every honest worker. Counted as evidence it made an honest worker's standing at n0 fall to 0.02 and
    pushed it out of placement (simulated: `vouching-30`); now it is an opinion and moves nothing. And since
    what it says contradicts what n0 saw itself (n2 and n3 were right there every time), n1 no longer
    weighs as a teller at all (mesh.core.trust.Shared._borne_out: its verified work alone made it 0.8)."""
    mesh = make_mesh(4, lambda i: FAST + (["--fault", "slander"] if i == 1 else []))
    n0, n1, n2, n3 = mesh.nodes
    for _ in range(8):  # n1, n2 and n3 each do 8 verified results for n0: by its work, n1 weighs 0.8 there
        rep = wait_job(n0, submit(n0, PY_JOB, 3))
        assert rep["status"] == "done", rep
    wait_for(lambda: shared_view(n0)["held"] >= 2, 60, "n0 to hold what n1 says of n2 and n3")
    rounds = shared_view(n0)["rounds"]
    wait_for(lambda: shared_view(n0)["rounds"] >= rounds + 2, 30, "n0 to weigh its issuers twice more")
    assert shared_view(n0)["issuers"].get(n1.node_id[:12], 0) < 0.5, shared_view(n0)["issuers"]
    peers = {p["node"]: p for p in status(n0)["peers"]}
    for honest in (n2, n3):
        p = peers[honest.node_id]
        assert p["standing"] >= p["reputation"] > 0.8, p  # the slander subtracts nothing
    rep = wait_job(n0, submit(n0, PY_JOB, 3))  # and the slandered still serve, their answers counted
    agreed = {r["node"] for r in rep["steps"]["sum"]["replicas"] if r["agreed"]}
    assert rep["status"] == "done" and {n2.node_id, n3.node_id} <= agreed, rep


def test_two_ids_on_one_machine_that_hang_up_lend_a_cheater_no_run(make_mesh):
    """Found by this session's reputation attacker: two ids on one machine did honest work for n0 (enough
    to be trusted tellers), said a cheater had a run of 1000 begun just now, and hung up before n0 weighed
    its tellers again. Only linked peers' prefixes were known, so each counted as a prefix of its own, the
    run was confirmed — though n0 had just seen the cheater outvoted — and the cheater ran alone: its
    wrong answer was accepted in 10 of 10 jobs at adaptive 20."""
    mesh = make_mesh(6, lambda i: FAST + (["--fault", "wrong"] if i == 3 else []))
    n0, s1, s2, cheat = mesh.nodes[:4]
    right = sum(range(10)) * 2
    for _ in range(7):  # everyone works for n0: the two ids honestly, the cheater outvoted
        assert wait_job(n0, submit(n0, PY_JOB, 5), 90)["steps"]["sum"]["output"] == right
    key0 = key_of(n0)
    ids = [load(s1.home), load(s2.home)]
    s1.stop()
    s2.stop()
    gone = {s1.node_id, s2.node_id}
    wait_for(lambda: not any(p["node"] in gone and p["connected"] for p in status(n0)["peers"]), 30,
             "n0 to see the two ids' nodes gone")
    for ident in ids:  # the attacker speaks with their keys, from the same machine, and hangs up
        with HostilePeer(n0.listen, identity=ident) as liar:
            liar.handshake(key0)
            now = now_ms()
            liar.send(liar.seal("testimony", key0, TestimonyTell([TestimonyItem(cheat.node_id, 1e6, 0.0, 1000,
                                                                                now - 10, 0, now)])))
            liar.send(liar.seal("testimony-ask", key0, TestimonyAsk([cheat.node_id])))  # answered in order:
            assert liar.expect(lambda f: f["kind"] == "testimony", 10)  # n0 has read the testimony by then
    wait_for(lambda: not any(p["node"] in gone and p["connected"] for p in status(n0)["peers"]), 30,
             "the tellers to be unlinked")
    rounds = shared_view(n0)["rounds"]
    wait_for(lambda: shared_view(n0)["rounds"] >= rounds + 3, 30, "n0 to weigh its tellers again")
    for _ in range(10):
        rep = wait_job(n0, submit(n0, {**PY_JOB, "adaptive": 20}, 3), 90)
        assert rep["steps"]["sum"]["output"] == right, rep["steps"]["sum"]
