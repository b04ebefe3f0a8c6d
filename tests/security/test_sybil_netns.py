"""test_sybil_collusion.py across real hosts: the submitter and three honest workers each in a network
namespace of its own, on a /24 of its own behind a router (tests/netns.py), and one more namespace, "the
machine", running 20 colluding ids (tests/security/sybil_machine.py) that each advertise a /24 of their own
and answer every step with one and the same wrong answer. Jobs at r=3 still come out right (escalating as
needed), the sybils are paid nothing and booked as having disagreed, the honest workers are paid; sybils
outvoted together on a step (a bloc) are banned once a recheck on uninvolved workers confirms the answer.
Bans are not in the node's status or ledger: they are read by replaying the submitter's --core-log."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.cli.client import Client
from mesh.core.submission import Config, Submission
from mesh.node.home import RuntimeInfo
from mesh.node.peers import prefix_of_ip
from mesh.node.submitter import CORE_LOG_FILE
from mesh.wire.canonical import digest

from ..conftest import wait_for
from ..netns import NEEDS_ROOT, Hosts
from .hostile import ledger_rows, status, wait_paid
from .sybil_machine import WRONG

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(600), pytest.mark.skipif(**NEEDS_ROOT)]

SYBILS, STEPS = 20, 12
HONEST = ("w1", "w2", "w3")


@dataclass
class Node:
    """What hostile.status and wait_paid need of a node."""

    home: Path
    node_id: str
    client: Client


@dataclass
class Mesh:
    nodes: list[Node]


def core_log(home: Path) -> list:
    """The submitter's core inputs and effects (--core-log), as far as written."""
    lines = (home / CORE_LOG_FILE).read_text().splitlines()
    return [json.loads(ln) for ln in lines if ln.endswith(("]", "}"))]  # (a line being written is left out)


def prefixes(log: list) -> dict[str, set[str]]:
    """node → every network prefix placement was given for it (the one its link really comes from)."""
    seen: dict[str, set[str]] = {}
    for e in log:
        if e[0] == "tick":
            for c in (c for cs in e[2].values() for c in cs):
                seen.setdefault(c["node"], set()).add(c["prefix"])
    return seen


def banned(log: list) -> set[str]:
    """The workers the submitter holds banned: its core's inputs replayed into a fresh core, whose spot
    checker then holds the same bans (the core is deterministic: mesh.core.submission.replay_log)."""
    core = Submission(Config.from_json(log[0][1]))
    for entry in log[1:]:
        if entry[0] != "effects":
            core.apply(entry)
    return set(core.spot.banned)


def test_twenty_colluding_ids_in_one_namespace_get_no_wrong_answer_through_and_earn_nothing(tmp_path: Path):
    with Hosts(["submitter", *HONEST, "sybils"]) as hosts:
        # the submitter, then three honest workers bootstrapping to it, each from its own namespace and /24
        sub_home = tmp_path / "submitter"
        hosts.start_node("submitter", sub_home, "--core-log")
        info = RuntimeInfo.read(sub_home)
        node = Node(sub_home, info.node, hosts.client("submitter", sub_home))
        procs = {h: hosts.start_node(h, tmp_path / h, "--bootstrap", info.listen, wait=False) for h in HONEST}
        workers = [Node(tmp_path / h, hosts.wait_node(p, tmp_path / h, 120).node, hosts.client(h, tmp_path / h))
                   for h, p in procs.items()]
        honest = {w.node_id for w in workers}

        def up() -> set[str]:
            return {p["node"] for p in status(node)["peers"] if p["state"] == "up"}

        wait_for(lambda: honest <= up(), 120, "the three honest workers up on the submitter")

        # the machine: 20 ids from one namespace, linked to the submitter
        out = tmp_path / "sybils.json"
        machine = hosts.popen("sybils", sys.executable, "-m", "tests.security.sybil_machine", info.listen,
                              str(out), "--source", hosts.ip["sybils"], "--ids", str(SYBILS), log=tmp_path / "sybils.log")

        def machine_state() -> dict:
            assert machine.poll() is None, (tmp_path / "sybils.log").read_text()
            return json.loads(out.read_text()) if out.exists() else {}

        sybil_ids = set(wait_for(lambda: machine_state().get("ids"), 120, "the sybils to say hello"))
        assert len(sybil_ids) == SYBILS
        wait_for(lambda: sybil_ids | honest <= up(), 120, f"{SYBILS + 3} workers up")

        steps = [{"id": f"s{k}", "kind": "python", "params": {"code": f"output = {k} * 2"}} for k in range(STEPS)]
        job_id = node.client.request("POST", "/jobs", {"job": {"name": "sybil", "redundancy": 3, "timeout": 30,
                                                               "steps": steps}})["job_id"]

        def ended() -> dict | None:
            machine_state()  # (the machine still runs)
            r = node.client.request("GET", f"/jobs/{job_id}?wait=2")
            return r if r["status"] != "running" else None

        report = wait_for(ended, 300, "the job to end while the sybils answer")

        # every recheck the job started (blocs among them) ends before the bans are read
        def settled() -> dict | None:
            r = node.client.request("GET", f"/jobs/{job_id}")
            return r if all(c["verdict"] != "running" for c in r.get("rechecks", {}).values()) else None

        report = wait_for(settled, 240, "the job's rechecks to end")
        answered = machine_state()["answered"]

        assert answered, "no sybil was ever given a step: the attack was not tried"
        assert {a[0] for a in answered} <= sybil_ids
        assert report["status"] == "done", report
        outputs = {sid: st["output"] for sid, st in report["steps"].items()}
        assert outputs == {f"s{k}": k * 2 for k in range(STEPS)}  # every step answered right
        for sid, st in report["steps"].items():
            agreed = {r["node"] for r in st["replicas"] if r["agreed"]}
            assert agreed <= honest and len(agreed) >= 2, (sid, st["replicas"])
        # what counted is where the links come from: all 20 ids on the machine's /24, whatever they advertise
        seen = prefixes(core_log(node.home))
        assert {n: seen.get(n) for n in sybil_ids} == dict.fromkeys(sybil_ids, {prefix_of_ip(hosts.ip["sybils"])})
        assert {n: seen.get(n) for n in honest} == {w.node_id: {prefix_of_ip(hosts.ip[h])}
                                                    for h, w in zip(HONEST, workers, strict=True)}
        rows = ledger_rows(node.home)
        assert not [r for r in rows if r["peer"] in sybil_ids and r["kind"] == "paid"], "a sybil was paid"
        booked = {r["peer"] for r in rows if r["kind"] == "disagreed"}
        assert booked & sybil_ids, "the sybils' wrong answers were not booked against them"
        assert booked <= sybil_ids, "an honest worker was booked as disagreeing"
        wait_paid(Mesh([node, *workers]), report, 60)  # and the honest workers were paid

        # blocs: two or more sybils outvoted on a step with the one wrong answer; a recheck on workers with
        # no part in it confirmed the step's answer, so each of them is banned
        # (those with an error had been distrusted before the step settled: their answer no longer counted)
        wrong = digest(WRONG)
        blocs = {sid: b for sid, st in report["steps"].items()
                 if len(b := {r["node"] for r in st["replicas"] if r["digest"] == wrong and not r["agreed"]
                              and "error" not in r}) >= 2}
        rechecks = report.get("rechecks", {})
        assert set(blocs) <= set(rechecks), (blocs, rechecks)  # every bloc's step was rechecked
        assert all(c["verdict"] != "overturned" for c in rechecks.values()), rechecks
        convicted = set().union(*(b for sid, b in blocs.items() if rechecks[sid]["verdict"] == "confirmed"))
        log = core_log(node.home)
        assert [e for e in log if e[0] == "submit" and e[1] == job_id], "the core log lacks the job"
        held = banned(log)
        assert held <= sybil_ids, "an honest worker was banned"
        assert convicted <= held, (convicted - held, rechecks)
        print(f"blocs {json.dumps({s: len(b) for s, b in blocs.items()})}; sybils answered {len(answered)} requests on {len({tuple(a[1:]) for a in answered})} steps; "
              f"rechecks {json.dumps({s: [c['cause'], c['verdict']] for s, c in rechecks.items()})}; "
              f"banned {len(held)} of {SYBILS}")
