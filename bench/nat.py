"""NAT traversal with real nodes behind real NATs: a public node ("pub") and one node behind each of two
MASQUERADE home routers ("lan1", "lan2"), in the network namespaces of tests/p2p/nettopo.py (root,
iproute2, iptables). The lan nodes get nothing but `--bootstrap pub`; AutoNAT tells them they are
private, pub relays for them (circuit relay v2), and DCUtR may punch a direct lan1↔lan2 link.

Per trial (one fresh topology and three fresh `mesh node --no-model` processes), alternating the NAT
kind (drop, reset, drop, reset, …) so drift on a shared machine hits both alike:

1. Formation and hole punching, timed from spawning the two lan nodes (pub already listening): until
   pub sees both lan nodes with circuit addresses (`formation_s`), until lan1 has lan2 up and
   connected (`link_s`), and whether lan1's link to lan2 becomes `hole-punched` within --punch-wait seconds of
   the link existing (`punch_s`, from the link). NAT "drop" silently drops unsolicited inbound packets
   (the usual home router); "reset" answers them with TCP resets (hole punching cannot work).
   `punch_share_<nat>` is the share of trials whose NATed pair ended on a direct link (a campaign that
   measured libp2p hole punching in the wild found 70% ± 7.1% success: `punch_share_wild`; our two
   NAT kinds are the two ends of that range, not a sample of it).
2. Relayed against direct: one-step python jobs at r=2 submitted sequentially from lan1, whose only
   workers are pub and lan2 (a step never runs on its submitter), so lan2 always runs one replica and
   the job waits for its answer. A batch runs as soon as the lan1→lan2 link exists (relayed: always
   behind reset NATs, and behind drop NATs while the punch is pending), and on drop trials another
   batch once the link is hole-punched. Each job is classed by lan1's view of that link just before
   and just after it (relayed / hole-punched; a job that straddles a change is dropped). Per job the
   client (inside lan1's namespace, on the node's API) times submit → done, and from the job's event
   stream when each replica's answer reached lan1: `lan2_minus_pub_ms` is lan2's answer minus pub's
   (pub is reached directly either way, so it is the control; samples where either answer was
   already in the stream when it opened are left out).

    python -m bench.nat [--trials 3] [--jobs 5] [--punch-wait 30] [--json]

--trials is per NAT kind (quick: 3, full: 6). Figures: min / median / max over trials, and the ratio
relayed ÷ hole-punched of the median job latency. Nothing is asserted. Every process started is
stopped by its pid (SIGTERM to its process group, SIGKILL after 10 s) and the namespaces are removed,
also when a trial fails. Without root, iproute2 or iptables, prints why and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from .report import emit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.p2p.nettopo, run from anywhere
from tests.p2p import nettopo  # noqa: E402  (uses pytest only to skip, which we never ask it to)

PREFIX = "hmbnat"  # namespaces hmbnat<pid>_<n>-<role>: our own, removed on exit
PORT = 4750
NATS = ("drop", "reset")
POLL_S = 0.2  # status polls of pub and lan1 while waiting (each a request to the node's API)
LINK_WAIT_S = 90.0  # from spawning the lan nodes until formation and the lan1→lan2 link; a trial fails past it
STEP = {"id": "s", "kind": "python", "params": {"code": "output = sum(range(1000))"}}
WILD = {"share": 0.70, "plus_minus": 0.071,
        "what": "DCUtR hole-punch success in the IPFS network, given a relay reservation and a known public "
                "address: 4.4M attempts from 85k networks (Trautwein et al., arXiv 2510.27500)"}

# Runs inside a namespace, next to one node: answers one JSON line per command line read from stdin,
# talking to that node's HTTP API on the namespace's loopback (no mesh imports: a light process).
#   {"op": "status"}                          → {"t": monotonic, "status": {reachability, peers}}
#   {"op": "jobs", "n": N, "r": R, "peer": ID} → {"jobs": [...]} each with the link kind to `peer`
#                                              seen before and after it, and its timings
_AGENT = r"""
import json, sys, time, urllib.request
home, step = sys.argv[1], json.loads(sys.argv[2])

def api():
    with open(home + "/node.json") as f:
        base = json.load(f)["api"]
    with open(home + "/api-token") as f:
        return base, f.read().strip()

def open_(method, path, body=None, timeout=10):
    base, token = api()
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 method=method, headers={"Authorization": "Bearer " + token,
                                                         "Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=timeout)

def status():
    with open_("GET", "/status") as r:
        st = json.loads(r.read())
    return {"reachability": st.get("reachability"),
            "peers": [{k: p.get(k) for k in ("node", "address", "state", "connected", "connection")}
                      for p in st.get("peers", [])]}

def link(peer):
    for p in status()["peers"]:
        if p["node"] == peer:
            return p["connection"] if p["connected"] else None
    return None

def job(r):
    t0 = time.monotonic()
    with open_("POST", "/jobs", {"job": {"name": "nat-bench", "redundancy": r, "steps": [step]}}) as resp:
        job_id = json.loads(resp.read())["job_id"]
    answered, report = {}, None
    with open_("GET", "/jobs/%s/events" % job_id, timeout=120) as resp:
        opened = time.monotonic() - t0
        kind, data = "message", []
        for raw in resp:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                ev, at = json.loads("\n".join(data)), time.monotonic() - t0
                if kind == "replica" and ev.get("state") == "answered":
                    answered.setdefault(ev["node"], at)
                if kind == "done":
                    report = ev
                    break
                kind, data = "message", []
    took = time.monotonic() - t0
    step_rep = report["steps"]["s"] if report else {}
    return {"t0": t0, "s": took, "status": report and report["status"], "opened": opened, "answered": answered,
            "agreed": [x["node"] for x in step_rep.get("replicas", []) if x.get("agreed")],
            "placed": [x["node"] for x in step_rep.get("replicas", [])],
            "error": step_rep.get("error") or [x["error"] for x in step_rep.get("replicas", []) if x.get("error")]}

for line in sys.stdin:
    cmd = json.loads(line)
    try:
        if cmd["op"] == "status":
            out = {"t": time.monotonic(), "status": status()}
        else:
            jobs = []
            for _ in range(cmd["n"]):
                before = link(cmd["peer"])
                j = job(cmd["r"])
                j["before"], j["after"], j["t_after"] = before, link(cmd["peer"]), time.monotonic()
                jobs.append(j)
            out = {"jobs": jobs}
    except Exception as exc:
        out = {"error": "%s: %s" % (type(exc).__name__, exc)}
    print(json.dumps(out), flush=True)
"""


class Agent:
    """The `_AGENT` process in one namespace, for one node's home."""

    def __init__(self, topo: nettopo.Topology, ns: str, home: Path, log):
        self.ns = ns
        self.proc = topo.popen(ns, sys.executable, "-c", _AGENT, str(home), json.dumps(STEP),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, bufsize=0)

    def ask(self, cmd: dict, timeout: float) -> dict:
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"agent in {self.ns}: no answer to {cmd['op']} in {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"agent in {self.ns} exited ({self.proc.poll()})")
        return json.loads(line)

    def status(self) -> dict:
        """The node's status (reachability, peers), {} while its API is not up yet."""
        return self.ask({"op": "status"}, 30).get("status", {})


class Trial:
    """pub + lan1 + lan2 in one fresh topology; `stop()` ends every process by pid."""

    def __init__(self, topo: nettopo.Topology, tmp: Path):
        self.t, self.tmp = topo, tmp
        self.ips = {"pub": topo.pub_ip, "lan1": topo.lan1_ip, "lan2": topo.lan2_ip}
        self.nodes: dict[str, subprocess.Popen] = {}
        self.agents: dict[str, Agent] = {}

    def home(self, role: str) -> Path:
        return self.tmp / role

    def start(self, role: str) -> None:
        cmd = [sys.executable, "-P", "-m", "mesh", "node", "--home", str(self.home(role)), "--no-model",
               "--no-scrape", "--listen", f"{self.ips[role]}:{PORT}", "--api", f"127.0.0.1:{PORT + 1}"]
        if role != "pub":
            cmd += ["--bootstrap", f"{self.t.pub_ip}:{PORT}"]
        with (self.tmp / f"{role}.log").open("w") as log:
            self.nodes[role] = self.t.popen(role, *cmd, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))

    def wait_up(self, roles: tuple[str, ...], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all((self.home(r) / "node.json").exists() for r in roles):
            for r in roles:
                if self.nodes[r].poll() is not None:
                    raise RuntimeError(f"{r} exited with {self.nodes[r].returncode}: {self.tail(r)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{', '.join(roles)} not up after {timeout:.0f} s")
            time.sleep(0.05)

    def agent(self, role: str) -> Agent:
        if role not in self.agents:
            with (self.tmp / f"agent-{role}.log").open("w") as log:
                self.agents[role] = Agent(self.t, role, self.home(role), log)
        return self.agents[role]

    def node_id(self, role: str) -> str:
        return json.loads((self.home(role) / "node.json").read_text())["node"]

    def tail(self, role: str, lines: int = 5) -> str:
        path = self.tmp / f"{role}.log"
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM to each process group we started (nodes with their actors, agents), SIGKILL after
        10 s; the topology's close() then kills by pid anything still inside its namespaces."""
        for agent in self.agents.values():
            try:
                agent.proc.stdin.close()
            except OSError:
                pass
        procs = [*self.nodes.values(), *(a.proc for a in self.agents.values())]
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()


def peer_of(status: dict, node: str) -> dict:
    return next((p for p in status.get("peers", []) if p["node"] == node), {})


def run_trial(nat: str, jobs: int, punch_wait: float) -> dict:
    res: dict = {"nat": nat}
    with tempfile.TemporaryDirectory(prefix="bench-nat-") as d, nettopo.Topology(PREFIX, nat=nat, timeout=30) as t:
        tr = Trial(t, Path(d))
        try:
            _trial(tr, res, jobs, punch_wait)
        except Exception as exc:  # noqa: BLE001 - one failed trial is a figure too; the others still run
            res["error"] = f"{type(exc).__name__}: {exc}"
            res["logs"] = {r: tr.tail(r, 3) for r in tr.nodes}
        finally:
            t_stop = time.monotonic()
            tr.stop()
            res["stop_s"] = round(time.monotonic() - t_stop, 2)
    return res


class Watch:
    """Polls pub's and lan1's status; notes (seconds from `t1`) the first time each milestone is seen."""

    def __init__(self, tr: Trial, ids: dict[str, str], t1: float, res: dict):
        self.pub, self.lan1, self.ids, self.t1, self.res = tr.agent("pub"), tr.agent("lan1"), ids, t1, res
        self.marks: dict[str, float] = {}

    def mark(self, key: str, at: float) -> None:
        self.marks.setdefault(key, round(at - self.t1, 3))

    def look(self) -> dict:
        """One poll; returns lan1's entry for lan2."""
        sp, sl = self.pub.status(), self.lan1.status()
        now = time.monotonic()
        if sl.get("reachability") == "private":
            self.mark("lan1_private_s", now)
        if all("/p2p-circuit/" in (peer_of(sp, self.ids[r]).get("address") or "") for r in ("lan1", "lan2")):
            self.mark("formation_s", now)
        link = peer_of(sl, self.ids["lan2"])
        if link.get("connected") and link.get("state") == "up":  # a worker lan1 may place replicas on
            self.mark("link_s", now)
            self.res.setdefault("first_link", link.get("connection"))
            if link.get("connection") == "hole-punched":
                self.mark("punched_at_s", now)
        return link

    def until(self, done, deadline: float) -> bool:
        while not done():
            if time.monotonic() > deadline:
                return False
            self.look()
            time.sleep(POLL_S)
        return True

    def jobs(self, n: int) -> dict:
        """n timed jobs at r=2 from lan1 (after one warm-up); a punch seen between them is marked too."""
        batch = self.lan1.ask({"op": "jobs", "n": n + 1, "r": 2, "peer": self.ids["lan2"]}, 60 + 30 * n)
        for j in batch.get("jobs", []):
            if j.get("after") == "hole-punched":
                self.mark("punched_at_s", j["t_after"])
        return batch


def _trial(tr: Trial, res: dict, jobs: int, punch_wait: float) -> None:
    t0 = time.monotonic()
    tr.start("pub")
    tr.wait_up(("pub",), 60)
    res["pub_up_s"] = round(time.monotonic() - t0, 2)
    t1 = time.monotonic()  # every time below is from here: the lan nodes are spawned
    tr.start("lan1")
    tr.start("lan2")
    tr.wait_up(("lan1", "lan2"), 60)
    res["lan_up_s"] = round(time.monotonic() - t1, 2)
    ids = {r: tr.node_id(r) for r in ("pub", "lan1", "lan2")}
    w = Watch(tr, ids, t1, res)
    marks = w.marks
    if not w.until(lambda: "formation_s" in marks and "link_s" in marks, t1 + LINK_WAIT_S):
        res.update(marks)
        raise TimeoutError(f"no formation / lan1→lan2 link after {LINK_WAIT_S:.0f} s: {sorted(marks)}")
    # jobs at once, on whatever link there is (relayed, unless the punch came before we looked)
    batches = [w.jobs(jobs)]
    # the punch: polled until it happens or punch_wait after the link
    w.until(lambda: "punched_at_s" in marks, t1 + marks["link_s"] + punch_wait)
    res.update(marks)
    res["punched"] = "punched_at_s" in marks
    if res["punched"]:
        res["punch_s"] = round(marks["punched_at_s"] - marks["link_s"], 3)
        batches.append(w.jobs(jobs))
    res["end_link"] = w.look().get("connection")
    res["jobs"] = [_sample(j, ids["lan2"], ids["pub"]) for b in batches for j in b.get("jobs", [])[1:]]
    errors = [b["error"] for b in batches if "error" in b]
    if errors:
        res["job_errors"] = errors


def _sample(j: dict, lan2: str, pub: str) -> dict:
    kind = j["before"] if j["before"] == j["after"] else "mixed"
    out = {"link": kind, "s": round(j["s"], 4), "done": j["status"] == "done", "lan2_ran": lan2 in j["placed"]}
    if j.get("error"):
        out["error"] = str(j["error"])[:200]
    a = j["answered"]
    if lan2 in a and pub in a and min(a[lan2], a[pub]) > j["opened"] + 0.002:  # both answers came live
        out["lan2_minus_pub_ms"] = round((a[lan2] - a[pub]) * 1e3, 2)
        out["lan2_answer_ms"] = round(a[lan2] * 1e3, 2)
    return out


def spread(xs: list[float], digits: int = 3) -> dict | None:
    if not xs:
        return None
    return {"min": round(min(xs), digits), "median": round(statistics.median(xs), digits),
            "max": round(max(xs), digits), "n": len(xs)}


def summarise(trials: list[dict]) -> dict:
    res: dict = {}
    for nat in NATS:
        runs = [r for r in trials if r["nat"] == nat]
        ok = [r for r in runs if "error" not in r]
        punched = [r for r in ok if r["punched"]]
        res[f"trials_{nat}"] = len(runs)
        res[f"failed_{nat}"] = len(runs) - len(ok)
        res[f"punched_{nat}"] = f"{len(punched)}/{len(ok)}"
        res[f"punch_share_{nat}"] = round(len(punched) / len(ok), 3) if ok else None
        for key, digits in (("pub_up_s", 2), ("lan1_private_s", 2), ("formation_s", 2), ("link_s", 2)):
            res[f"{key}_{nat}"] = spread([r[key] for r in ok if key in r], digits)
        res[f"punch_s_{nat}"] = spread([r["punch_s"] for r in punched], 2)  # from the link existing
        res[f"punched_at_s_{nat}"] = spread([r["punched_at_s"] for r in punched], 2)  # from spawning
        res[f"first_link_{nat}"] = dict(Counter(str(r.get("first_link")) for r in ok))
        res[f"end_link_{nat}"] = dict(Counter(str(r.get("end_link")) for r in ok))
    res["punch_share_wild"] = WILD
    every = [(r["nat"], j) for r in trials for j in r.get("jobs", [])]
    res["jobs_not_done"] = sum(not j["done"] for _, j in every)
    res["jobs_without_lan2"] = sum(not j["lan2_ran"] for _, j in every)
    res["jobs_mixed"] = sum(j["link"] == "mixed" for _, j in every)
    for link, name in (("relayed", "relayed"), ("hole-punched", "punched")):
        done = [(nat, j) for nat, j in every if j["done"] and j["link"] == link]
        lat = [j["s"] for _, j in done]
        res[f"latency_{name}_s"] = round(statistics.median(lat), 4) if lat else None
        res[f"latency_{name}_s_jobs"] = spread(lat, 4)
        for nat in NATS:
            res[f"latency_{name}_s_{nat}_nat"] = spread([j["s"] for n, j in done if n == nat], 4)
        per_trial = [statistics.median(x) for r in trials
                     if (x := [j["s"] for j in r.get("jobs", []) if j["done"] and j["link"] == link])]
        res[f"latency_{name}_s_trials"] = spread(per_trial, 4)  # each trial's median
        diff = [j["lan2_minus_pub_ms"] for _, j in done if "lan2_minus_pub_ms" in j]
        res[f"lan2_minus_pub_ms_{name}"] = spread(diff, 2)
        res[f"lan2_answer_ms_{name}"] = spread([j["lan2_answer_ms"] for _, j in done if "lan2_answer_ms" in j], 2)
    if res["latency_relayed_s"] and res["latency_punched_s"]:
        res["latency_relayed_vs_punched"] = round(res["latency_relayed_s"] / res["latency_punched_s"], 3)
    # the same comparison inside each drop trial that had both: relayed first, hole-punched after
    paired = []
    for r in trials:
        rel = [j["s"] for j in r.get("jobs", []) if j["done"] and j["link"] == "relayed"]
        pun = [j["s"] for j in r.get("jobs", []) if j["done"] and j["link"] == "hole-punched"]
        if rel and pun:
            paired.append(statistics.median(rel) / statistics.median(pun))
    res["latency_relayed_vs_punched_same_trial"] = spread(paired, 3)
    return res


def _per_trial(jobs: list[dict]) -> dict:
    out: dict = {"jobs": len(jobs), "jobs_not_done": sum(not j["done"] for j in jobs),
                 "jobs_without_lan2": sum(not j["lan2_ran"] for j in jobs)}
    errors = [f'{j["link"]}: {j["error"]}' for j in jobs if "error" in j]
    if errors:
        out["job_errors"] = errors[:3]
    for link in ("relayed", "hole-punched"):
        lat = [j["s"] for j in jobs if j["done"] and j["link"] == link]
        if lat:
            out[f"latency_{link.replace('-', '_')}_s"] = round(statistics.median(lat), 4)
    return out


def run(trials: int = 3, jobs: int = 5, punch_wait: float = 30.0) -> dict:
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    res: dict = {"trials_per_nat": trials, "jobs_per_batch": jobs, "punch_wait_s": punch_wait}
    nettopo.cleanup(PREFIX)  # namespaces that dead runs of this bench left behind (never a live run's)
    runs = []
    for i in range(trials):
        for nat in NATS:
            t1 = time.monotonic()
            print(f"nat trial {i + 1}/{trials} {nat} …", file=sys.stderr, flush=True)
            r = run_trial(nat, jobs, punch_wait)
            r["seconds"] = round(time.monotonic() - t1, 1)
            print(f"nat trial {i + 1}/{trials} {nat}: {r.get('error') or ('punched' if r['punched'] else 'relayed')}"
                  f" in {r['seconds']} s", file=sys.stderr, flush=True)
            runs.append(r)
    res.update(summarise(runs))
    res["trials"] = [{k: v for k, v in r.items() if k != "jobs"} | _per_trial(r.get("jobs", [])) for r in runs]
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["loadavg_1m_start"], res["loadavg_1m_end"] = round(load, 2), round(os.getloadavg()[0], 2)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3, help="topologies per NAT kind (alternating drop, reset)")
    ap.add_argument("--jobs", type=int, default=5, help="timed jobs per batch (after one warm-up job)")
    ap.add_argument("--punch-wait", type=float, default=30.0, help="seconds after the link to wait for a punch")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    reason = nettopo.unavailable_reason()
    if reason:
        emit({"skipped": f"NAT bench needs network namespaces: {reason}"}, args.json)
        return 0
    emit(run(args.trials, args.jobs, args.punch_wait), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
