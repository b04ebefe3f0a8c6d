"""The chaos harness: N real nodes on loopback, jobs submitted continuously from two of them, and a seeded
schedule of faults (tests/chaos/schedule.py) replayed against the real processes: kill -9 and restart on
the same home, SIGSTOP/SIGCONT, and cut links (tests/chaos/links.py). At the end everything is resumed,
the jobs are given a bounded time to end, the nodes are stopped and the invariants of "nothing lost" are
checked and returned as a `Result` (never only asserted):

- every job a submitter accepted is done, or failed with a reason: none still running (stuck), none
  the submitter no longer knows (lost: 404 for an id it handed out);
- for each (job, step, worker), what the submitter's ledger paid equals what the worker's ledger earned,
  and neither is booked twice;
- every ledger passes `mesh ledger verify`;
- no process of a node outlives the node's stop.

Every wait polls a condition under a deadline; the only timed pauses are the schedule's own (faults).
Progress goes to stderr; `python -m tests.chaos` prints the Result as JSON.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Callable

import psutil

from mesh.cli.local import LocalMesh, LocalNode
from mesh.errors import MeshError
from mesh.node.home import read_token

from .links import LinkCutter
from .schedule import ACTIONS, Event, schedule, violations

ROOT = Path(__file__).resolve().parents[2]  # the checkout whose code the nodes run
JOB_STEP_S = (0.05, 0.3)  # how long each python step sleeps


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Config:
    seed: int = 1
    jobs: int = 40
    nodes: int = 4
    rate: float = 0.5  # jobs submitted per second (the chaos lasts jobs / rate seconds)
    submitters: int = 2  # nodes 0..submitters-1 take the jobs, alternately
    redundancy: int = 2
    steps: int = 4  # python steps per job, in a chain (long enough that a killed submitter has jobs in flight)
    job_timeout: float = 60.0  # each job's own timeout (the node ends it failed after this)
    drain_s: float = 150.0  # after every fault is over: how long the jobs may take to end
    settle_s: float = 75.0  # then: how long receipts may take to reach their workers (backoff ends at 60 s)
    actions: tuple[str, ...] = ACTIONS
    max_concurrent: int = 1
    directory: Path | None = None  # default: a fresh temporary directory
    progress_s: float = 5.0


@dataclass
class JobRecord:
    index: int
    job_id: str
    submitter: int
    at: float  # seconds from the start of the chaos
    status: str = "running"  # running | done | failed | lost (404 from its submitter)
    reasons: list[str] = field(default_factory=list)


@dataclass
class Result:
    seed: int
    nodes: int
    jobs_wanted: int
    directory: str
    schedule: list[dict]
    applied: list[dict]  # each fault as carried out: when, lag, outcome
    submitted: int = 0
    done: int = 0
    failed: int = 0
    failed_reasons: dict[str, int] = field(default_factory=dict)
    failed_without_reason: int = 0
    stuck: int = 0
    lost: int = 0
    stuck_jobs: list[str] = field(default_factory=list)
    lost_jobs: list[str] = field(default_factory=list)
    lost_by_submitter_fault: dict[str, int] = field(default_factory=dict)
    submit_attempts: int = 0
    submit_failures: dict[str, int] = field(default_factory=dict)  # by cause; a timeout is ambiguous
    ledgers: dict = field(default_factory=dict)
    verify: dict[str, dict] = field(default_factory=dict)
    leaked: list[dict] = field(default_factory=list)
    rejected: dict[str, dict] = field(default_factory=dict)  # each node's count of refused messages, at the end
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok}


class Unreachable(Exception):
    """The node's API did not answer (refused, reset or timed out)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def http(endpoint: tuple[str, str], method: str, path: str, body: object = None,
         timeout: float = 5.0) -> tuple[int, object]:
    """(status, decoded body) of one API call; Unreachable when there is no answer. Unlike the CLI's
    Client it keeps the status code: a 404 for a job the node accepted is what "lost" means."""
    base, token = endpoint
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            raw = exc.read()
        except OSError as read_exc:
            raise Unreachable("reset", str(read_exc)) from None
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, {"error": raw.decode(errors="replace")[:200]}
    except urllib.error.URLError as exc:
        kind = ("timeout" if isinstance(exc.reason, TimeoutError) else
                "refused" if isinstance(exc.reason, ConnectionRefusedError) else "reset")
        raise Unreachable(kind, str(exc.reason)) from None
    except TimeoutError as exc:
        raise Unreachable("timeout", str(exc)) from None
    except (ConnectionError, OSError) as exc:  # a reset while reading the answer
        raise Unreachable("reset", str(exc)) from None
    except HTTPException as exc:  # killed mid-answer: the body ends short (IncompleteRead)
        raise Unreachable("reset", repr(exc)) from None


def port_of(addr: str) -> int:
    """The TCP port in 'host:port', 'http://host:port' or a multiaddr '/ip4/…/tcp/PORT/…'."""
    m = re.search(r"/tcp/(\d+)", addr) or re.search(r":(\d+)/?$", addr)
    if not m:
        raise ValueError(f"no port in {addr!r}")
    return int(m.group(1))


def job_spec(seed: int, k: int, steps: int, timeout: float) -> dict:
    """Job k of a run: a chain of python steps, each sleeping a seeded while and answering a constant."""
    rng = random.Random(f"{seed}/{k}")
    out = []
    for i in range(steps):
        code = f"import time\ntime.sleep({rng.uniform(*JOB_STEP_S):.3f})\noutput = {k * 100 + i}"
        out.append({"id": f"s{i}", "kind": "python", "after": [f"s{i - 1}"] if i else [], "params": {"code": code}})
    return {"name": f"chaos-{seed}-{k}", "steps": out, "timeout": timeout}


SETTLE_CALM_S = 3.0  # settled receipts must stay settled this long before the nodes are stopped


def poll(cond: Callable[[], object], timeout: float, interval: float = 0.5) -> object:
    """Poll `cond` until it returns something truthy (returned) or `timeout` passes (returns its last value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def normalise(reason: str) -> str:
    """A failure reason without the ids and figures that make each one unique (for a histogram)."""
    r = re.sub(r"\b[0-9a-f]{8,}\b", "<id>", reason)
    r = re.sub(r"\d+(\.\d+)?", "N", r)
    return r[:160]


class ChaosRun:
    def __init__(self, cfg: Config):
        if not 1 <= cfg.submitters < cfg.nodes:
            raise ValueError("submitters must be from 1 to nodes - 1")
        self.cfg = cfg
        self.dir = Path(cfg.directory or tempfile.mkdtemp(prefix="homemesh-chaos-")).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        env = node_env()
        self.mesh = LocalMesh(self.dir / "mesh", cfg.nodes, lambda i: ["--no-model", "--credit-line", "1000000"])
        for node in self.mesh.nodes:
            node.env = dict(env)
        self.env = env
        self.lock = threading.Lock()
        self.endpoints: dict[int, tuple[str, str]] = {}
        self.ids: list[str] = []
        self.state = ["up"] * cfg.nodes  # up | down | stopped | cut (the harness's own view)
        self.jobs: list[JobRecord] = []
        self.attempts = 0
        self.submit_failures: Counter[str] = Counter()
        self.seen: dict[int, tuple[float, int]] = {}  # pid -> (create time, node): every process a node ran
        self.cutter: LinkCutter | None = None
        self.faulted: dict[int, list[tuple[float, float]]] = {}  # node -> (from, to) of its faults
        self.t0 = 0.0
        self.stop_client = threading.Event()
        self.client_error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def run(self) -> Result:
        cfg = self.cfg
        duration = cfg.jobs / cfg.rate
        actions = tuple(cfg.actions)
        res = Result(cfg.seed, cfg.nodes, cfg.jobs, str(self.dir), [], [])
        if "drop" in actions:
            why = LinkCutter.unavailable()
            if why:
                res.notes.append(f"link drops left out: {why}")
                actions = tuple(a for a in actions if a != "drop")
        events = schedule(cfg.seed, cfg.nodes, duration, max_concurrent=cfg.max_concurrent, actions=actions)
        bad = violations(events, cfg.nodes, cfg.max_concurrent)
        if bad:
            raise AssertionError(f"the schedule breaks its own rules: {bad}")
        res.schedule = [e.to_json() for e in events]
        log(f"chaos: seed {cfg.seed}, {cfg.nodes} nodes, {cfg.jobs} jobs at {cfg.rate:g}/s over {duration:g} s, "
            f"{len(events)} faults in {self.dir}")
        for e in events:
            log(f"  at {e.at:7.2f} s  {e.action:<5} node{e.node} for {e.duration:.2f} s")
        started = time.monotonic()
        try:
            self.check_imports()
            if "drop" in actions:
                self.cutter = LinkCutter(f"{os.getpid()}")
                self.cutter.open()
            self.start_mesh()
            res.seconds["start"] = round(time.monotonic() - started, 1)
            self.t0 = time.monotonic()
            client = threading.Thread(target=self.client_loop, name="chaos-client", daemon=True)
            client.start()
            self.replay(events, res)
            self.wait_submitted(client)
            res.seconds["chaos"] = round(self.now(), 1)
            self.resume_all(res)
            self.drain(res)
            res.seconds["drain"] = round(self.now() - res.seconds["chaos"], 1)
            self.settle_receipts(res)
            res.seconds["settle"] = round(self.now() - res.seconds["chaos"] - res.seconds["drain"], 1)
            res.rejected = self.rejections()
            self.stop_all()
            self.count_jobs(res)
            res.leaked = self.leaks()
            res.ledgers = compare_ledgers([n.home for n in self.mesh.nodes], self.ids)
            res.verify = self.verify_ledgers()
        finally:
            self.stop_client.set()
            self.stop_all()
            self.kill_seen()
            if self.cutter is not None:
                res.notes += self.cutter.close()
        res.seconds["total"] = round(time.monotonic() - started, 1)
        res.violations = judge(res)
        return res

    def check_imports(self) -> None:
        """The nodes must run this checkout's code (the venv may have another checkout installed)."""
        out = subprocess.run([sys.executable, "-P", "-c", "import mesh, ledger, actors; print(mesh.__file__, "
                              "ledger.__file__, actors.__file__)"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **self.env}, cwd=self.dir, check=True).stdout.split()
        wrong = [p for p in out if not Path(p).resolve().is_relative_to(ROOT)]
        if wrong:
            raise AssertionError(f"node processes would import {wrong}, not the code under {ROOT}")

    def start_mesh(self) -> None:
        start_nodes(self.mesh, self.cutter)
        for i, node in enumerate(self.mesh.nodes):
            self.ids.append(node.node_id)
            self.published(i)

    def spawn(self, i: int, bootstrap: list[str]) -> None:
        spawn(self.mesh.nodes[i], i, bootstrap, self.cutter)

    def published(self, i: int) -> None:
        """After a node (re)started: the API endpoint the client uses, and its processes."""
        node = self.mesh.nodes[i]
        node.info = None
        with self.lock:
            self.endpoints[i] = (node.api, read_token(node.home))
        self.record_tree(i)

    def record_tree(self, i: int) -> None:
        node = self.mesh.nodes[i]
        if node.proc is None:
            return
        try:
            procs = [psutil.Process(node.proc.pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                self.seen.setdefault(p.pid, (p.create_time(), i))
            except psutil.NoSuchProcess:
                continue

    # -- the schedule -------------------------------------------------------------------------------
    def replay(self, events: list[Event], res: Result) -> None:
        """Carry out each fault at its time (later when the one before took longer), and its end."""
        timeline = sorted([(e.at, 0, k, e) for k, e in enumerate(events)] + [(e.end, 1, k, e) for k, e in enumerate(events)],
                          key=lambda x: (x[0], x[1], x[2]))
        last = -1e9
        applied = 0
        for when, phase, k, ev in timeline:
            while self.now() < when:
                if self.now() - last >= self.cfg.progress_s:
                    last = self.now()
                    self.progress(applied, len(events))
                self.stop_client.wait(min(when - self.now(), 0.5))  # the schedule's own delay (the fault)
            lag = round(self.now() - when, 2)
            if phase == 0:
                out = self.begin(ev)
                applied += 1
                res.applied.append({**ev.to_json(), "began": round(self.now(), 2), "lag": lag, **out})
            else:
                out = self.end(ev)
                res.applied[k].update({"ended": round(self.now(), 2), "end_lag": lag, **out})
            log(f"[{self.now():7.2f} s] {'begin' if phase == 0 else 'end  '} {ev.action} node{ev.node}"
                f"{' ' + json.dumps(out) if out else ''}")
        self.progress(applied, len(events))

    def begin(self, ev: Event) -> dict:
        node = self.mesh.nodes[ev.node]
        self.faulted.setdefault(ev.node, []).append((self.now(), self.now() + ev.duration))
        if ev.action == "kill9":
            self.record_tree(ev.node)
            node.kill(signal.SIGKILL)
            try:
                node.proc.wait(10)
            except subprocess.TimeoutExpired:
                return {"error": "the node outlived kill -9 for 10 s"}
            self.state[ev.node] = "down"
            return {}
        if ev.action == "stop":
            self.record_tree(ev.node)
            node.kill(signal.SIGSTOP)
            self.state[ev.node] = "stopped"
            return {}
        assert ev.action == "drop" and self.cutter is not None
        others = [port_of(n.listen) for j, n in enumerate(self.mesh.nodes) if j != ev.node and n.info is not None]
        cut = self.cutter.cut(ev.node, tree_of(node), port_of(node.listen), node.api_port, others)
        self.state[ev.node] = "cut"
        return {"rules": len(cut.rules)}

    def end(self, ev: Event) -> dict:
        node = self.mesh.nodes[ev.node]
        if ev.action == "kill9":
            return self.restart(ev.node)
        if ev.action == "stop":
            node.kill(signal.SIGCONT)
            self.state[ev.node] = "up"
            return {}
        assert self.cutter is not None
        seen_down = self.peers_seeing_down(ev.node)
        dropped = self.cutter.heal(ev.node)
        self.state[ev.node] = "up"
        return {"packets_dropped": dropped, "peers_saw_it_down": seen_down}

    def restart(self, i: int) -> dict:
        """Start a killed node again on its home, bootstrapped from the nodes that are up."""
        node = self.mesh.nodes[i]
        t = time.monotonic()
        boot = [n.listen for j, n in enumerate(self.mesh.nodes) if j != i and self.state[j] == "up" and n.info]
        self.spawn(i, boot)
        try:
            node.wait_started(60)
        except MeshError as exc:
            return {"error": f"restart failed: {exc}"}
        self.state[i] = "up"
        self.published(i)
        return {"restart_s": round(time.monotonic() - t, 2)}

    def peers_seeing_down(self, i: int) -> list[int]:
        """Nodes (up, not cut) whose /status shows node i not linked: evidence a cut cut."""
        out = []
        for j in range(self.cfg.nodes):
            if j == i or self.state[j] != "up":
                continue
            try:
                code, st = http(self.endpoints[j], "GET", "/status", timeout=3)
            except Unreachable:
                continue
            if code == 200:
                peer = next((p for p in st["peers"] if p["node"] == self.ids[i]), None)
                if peer is None or peer["state"] != "up" or not peer["connected"]:
                    out.append(j)
        return out

    def progress(self, applied: int, total: int) -> None:
        with self.lock:
            c = Counter(j.status for j in self.jobs)
            n = len(self.jobs)
        faults = f"faults {applied}/{total}" if total >= 0 else "faults over"
        log(f"[{self.now():7.2f} s] {faults} | jobs submitted {n}/{self.cfg.jobs}: done {c['done']}, "
            f"failed {c['failed']}, running {c['running']}, unknown to submitter {c['lost']} | nodes "
            f"{' '.join(self.state)} | submit failures {dict(self.submit_failures)}")
        for i in range(self.cfg.nodes):
            self.record_tree(i)

    # -- the client: submissions at a steady rate, polls in between -----------------------------------
    def client_loop(self) -> None:
        try:
            self._client_loop()
        except BaseException as exc:  # reported by wait_submitted in the main thread, not swallowed
            self.client_error = exc
            raise

    def _client_loop(self) -> None:
        cfg = self.cfg
        k, next_at, cursor = 0, 0.0, 0
        while k < cfg.jobs and not self.stop_client.is_set():
            if self.now() >= next_at:
                if self.submit(k):
                    k += 1
                    next_at = max(next_at + 1 / cfg.rate, self.now() - 1 / cfg.rate)
                else:
                    next_at = self.now() + 1.0  # every submitter refused or is unreachable: later
                continue
            cursor = self.poll_one(cursor)
            self.stop_client.wait(min(0.2, max(0.0, next_at - self.now())))  # the submission rate

    def submit(self, k: int) -> bool:
        cfg = self.cfg
        spec = job_spec(cfg.seed, k, cfg.steps, cfg.job_timeout)
        order = [(k + s) % cfg.submitters for s in range(cfg.submitters)]
        for s in order:
            with self.lock:
                ep = self.endpoints[s]
            self.attempts += 1
            try:
                code, body = http(ep, "POST", "/jobs", {"job": spec, "redundancy": cfg.redundancy}, timeout=5)
            except Unreachable as exc:
                self.submit_failures[exc.kind] += 1  # a timeout is ambiguous: the node may run it later
                continue
            if code in (200, 201):
                with self.lock:
                    self.jobs.append(JobRecord(k, body["job_id"], s, round(self.now(), 2)))
                return True
            self.submit_failures[f"http {code}"] += 1
        return False

    def poll_one(self, cursor: int) -> int:
        with self.lock:
            open_jobs = [j for j in self.jobs if j.status in ("running", "lost")]
        if not open_jobs:
            return cursor
        j = open_jobs[cursor % len(open_jobs)]
        self.check_job(j, timeout=2)
        return cursor + 1

    def check_job(self, j: JobRecord, timeout: float) -> None:
        with self.lock:
            ep = self.endpoints[j.submitter]
        try:
            code, rep = http(ep, "GET", f"/jobs/{j.job_id}", timeout=timeout)
        except Unreachable:
            return
        with self.lock:
            if code == 404:
                j.status = "lost"
            elif code == 200 and rep.get("status") in ("running", "done", "failed"):
                j.status = rep["status"]
                if j.status == "failed":
                    j.reasons = sorted({s.get("error") or "" for s in rep.get("steps", {}).values()
                                        if s.get("status") == "failed"} - {""})
                    if not j.reasons and rep.get("error"):
                        j.reasons = [str(rep["error"])]

    def wait_submitted(self, client: threading.Thread) -> None:
        """The schedule is over; let the client submit the rest (bounded: every node is up by now)."""
        budget = (self.cfg.jobs - len(self.jobs)) / self.cfg.rate + 120
        deadline = time.monotonic() + budget
        while client.is_alive() and time.monotonic() < deadline:
            client.join(timeout=self.cfg.progress_s)
            if client.is_alive():
                self.progress(-1, -1)
        self.stop_client.set()
        client.join(timeout=30)
        if self.client_error is not None:
            raise RuntimeError("the chaos client thread failed") from self.client_error

    # -- the end --------------------------------------------------------------------------------------
    def resume_all(self, res: Result) -> None:
        """Every fault is over by the end of the schedule; make sure (a failed restart is tried again)."""
        for i, node in enumerate(self.mesh.nodes):
            if self.state[i] == "stopped":
                node.kill(signal.SIGCONT)
            elif self.state[i] == "cut" and self.cutter is not None:
                self.cutter.heal(i)
            elif self.state[i] == "down" or not node.alive():
                res.notes.append(f"node{i} was down at the end of the schedule: restarted")
                out = self.restart(i)
                if "error" in out:
                    res.notes.append(f"node{i}: {out['error']}")
            self.state[i] = "up" if node.alive() else "down"
        try:
            took = self.mesh.wait_ready(120)
            log(f"[{self.now():7.2f} s] every fault over; the mesh is whole again after {took:.1f} s")
        except MeshError as exc:
            res.notes.append(f"the mesh did not heal within 120 s: {exc}")
            log(f"[{self.now():7.2f} s] {exc}")

    def drain(self, res: Result) -> None:
        """Poll every job not yet ended until all have or the drain time is up."""
        deadline = time.monotonic() + self.cfg.drain_s
        last = 0.0
        while True:
            with self.lock:
                open_jobs = [j for j in self.jobs if j.status in ("running", "lost")]
            for j in open_jobs:
                self.check_job(j, timeout=5)
            with self.lock:
                left = [j for j in self.jobs if j.status == "running"]
            if not left or time.monotonic() > deadline:
                return
            if time.monotonic() - last > self.cfg.progress_s:
                last = time.monotonic()
                self.progress(-1, -1)
            self.stop_client.wait(1.0)  # the poll's interval

    def settle_receipts(self, res: Result) -> None:
        """Receipts go out after the payer's commit and are sent again with backoff (up to a minute) until
        acknowledged: wait until every paid entry has its earned one and no node's outbox holds an
        unacknowledged receipt, or settle_s passes. What was still unacknowledged goes in the notes."""
        homes = [n.home for n in self.mesh.nodes]
        unacked: dict[str, int] = {}

        def settled() -> bool:
            unacked.clear()
            for i in range(self.cfg.nodes):
                try:
                    code, st = http(self.endpoints[i], "GET", "/status", timeout=5)
                except Unreachable:
                    unacked[f"node{i}"] = -1  # not answering: not settled
                    continue
                n = st.get("receipts_unacknowledged", 0) if code == 200 else -1
                if n:
                    unacked[f"node{i}"] = n
            return not unacked and compare_ledgers(homes, self.ids)["paid_not_earned"] == 0

        calm: list[float] = []  # when settled() first held in the current run of polls where it held

        def settled_for_a_while() -> bool:
            """settled() on polls at least SETTLE_CALM_S apart: once, it held in the instant between a job
            reported done and its last payments written (CI: 2 paid, never earned, after nodes stopped)."""
            if not settled():
                calm.clear()
                return False
            calm.append(time.monotonic())
            return calm[-1] - calm[0] >= SETTLE_CALM_S

        if not poll(settled_for_a_while, self.cfg.settle_s, interval=1.0):
            res.notes.append(f"receipts still unacknowledged after {self.cfg.settle_s:g} s (-1: no answer): {unacked}")

    def rejections(self) -> dict[str, dict]:
        """What each node refused (bad receipts among them), from /status before the stop."""
        out = {}
        for i in range(self.cfg.nodes):
            try:
                code, st = http(self.endpoints[i], "GET", "/status", timeout=5)
            except Unreachable as exc:
                out[f"node{i}"] = {"unreachable": exc.kind}
                continue
            out[f"node{i}"] = st.get("rejected", {}) if code == 200 else {"http": code}
        return out

    def stop_all(self) -> None:
        for node in self.mesh.nodes:
            if node.alive():
                node.kill(signal.SIGCONT)  # a stopped node would not see SIGTERM before this
        self.mesh.stop()

    def count_jobs(self, res: Result) -> None:
        with self.lock:
            jobs = list(self.jobs)
        res.submitted = len(jobs)
        res.submit_attempts = self.attempts
        res.submit_failures = dict(self.submit_failures)
        reasons: Counter[str] = Counter()
        for j in jobs:
            if j.status == "done":
                res.done += 1
            elif j.status == "failed":
                res.failed += 1
                if not j.reasons:
                    res.failed_without_reason += 1
                for r in j.reasons:
                    reasons[normalise(r)] += 1
            elif j.status == "running":
                res.stuck += 1
                res.stuck_jobs.append(f"{j.job_id} (job {j.index}, node{j.submitter})")
            else:
                res.lost += 1
                res.lost_jobs.append(f"{j.job_id} (job {j.index}, node{j.submitter})")
                faults = [f"{a['action']}" for a in res.applied if a["node"] == j.submitter and a["began"] >= j.at]
                res.lost_by_submitter_fault[faults[0] if faults else "none"] = \
                    res.lost_by_submitter_fault.get(faults[0] if faults else "none", 0) + 1
        res.failed_reasons = dict(reasons.most_common())

    def leaks(self) -> list[dict]:
        """After the stop: processes a node ran that are still alive, and any process naming the run's
        directory. Each is killed (by pid) once recorded."""
        found: dict[int, dict] = {}
        for pid, (created, i) in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    found[pid] = {"pid": pid, "node": i, "cmdline": " ".join(p.cmdline())[:200]}
            except psutil.NoSuchProcess:
                continue
        mine = {os.getpid()} | {p.pid for p in psutil.Process().parents()}  # this run and who started it
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if p.pid not in mine and str(self.dir) in cmd and p.status() != psutil.STATUS_ZOMBIE:
                    found.setdefault(p.pid, {"pid": p.pid, "node": None, "cmdline": cmd[:200]})
            except psutil.NoSuchProcess:
                continue
        for pid in found:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                continue
        return sorted(found.values(), key=lambda d: d["pid"])

    def kill_seen(self) -> None:
        for pid, (created, _) in self.seen.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    p.kill()
            except psutil.NoSuchProcess:
                continue

    def verify_ledgers(self) -> dict[str, dict]:
        out = {}
        for i, node in enumerate(self.mesh.nodes):
            r = subprocess.run([sys.executable, "-m", "mesh", "ledger", "verify", "--home", str(node.home), "--json"],
                               capture_output=True, text=True, timeout=300, cwd=ROOT, stdin=subprocess.DEVNULL,
                               env={**os.environ, **self.env})
            try:
                obj = json.loads(r.stdout)
            except ValueError:
                obj = {"ok": False, "reason": (r.stdout + r.stderr).strip()[-300:]}
            out[f"node{i}"] = {**obj, "exit": r.returncode}
        return out


def node_env() -> dict[str, str]:
    """What a node's environment adds: this checkout first on the path."""
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}


def spawn(node: LocalNode, i: int, bootstrap: list[str], cutter: LinkCutter | None) -> None:
    """LocalNode.start, then the node into its cgroup at once (it opens no socket for a while after exec)."""
    node.start(bootstrap)
    if cutter is not None:
        cutter.adopt(i, node.proc.pid)


def start_nodes(mesh: LocalMesh, cutter: LinkCutter | None, timeout: float = 180) -> None:
    """LocalMesh.start + wait_ready, each node adopted by the cutter as it starts."""
    first, rest = mesh.nodes[0], mesh.nodes[1:]
    spawn(first, 0, [], cutter)
    first.wait_started(120)
    for i, node in enumerate(rest, 1):
        spawn(node, i, [first.listen], cutter)
    for node in rest:
        node.wait_started(120)
    mesh.wait_ready(timeout, progress=lambda line: log(f"  {line}"))


def tree_of(node: LocalNode) -> list[int]:
    try:
        p = psutil.Process(node.proc.pid)
        return [p.pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def read_entries(home: Path) -> list[tuple[str, str, str, str, float]]:
    """(kind, job, step, peer, amount) of the paid and earned entries, read-only (a reader sees only
    commits); none when the node never made its ledger."""
    path = home / "ledger.db"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT kind, job, step, peer, amount FROM entries WHERE kind IN ('paid', 'earned')").fetchall()
    finally:
        db.close()


def compare_ledgers(homes: list[Path], ids: list[str]) -> dict:
    """Each (job, step, worker): what its payer's ledger paid against what the worker's ledger earned."""
    paid: dict[tuple[str, str, str], list[tuple[str, float]]] = {}
    earned: dict[tuple[str, str, str], list[tuple[str, float]]] = {}
    for home, me in zip(homes, ids, strict=True):
        for kind, job, step, peer, amount in read_entries(home):
            if kind == "paid":
                paid.setdefault((job, step, peer), []).append((me, -amount))
            else:
                earned.setdefault((job, step, me), []).append((peer, amount))
    name = {nid: f"node{i}" for i, nid in enumerate(ids)}
    out = {"paid": sum(map(len, paid.values())), "earned": sum(map(len, earned.values())), "matched": 0,
           "paid_not_earned": 0, "earned_not_paid": 0, "amount_mismatch": 0, "duplicate_paid": 0,
           "duplicate_earned": 0, "paid_not_earned_by_worker": Counter(), "credits_paid": 0.0,
           "credits_earned": 0.0, "examples": {}}

    def example(kind: str, key: tuple[str, str, str], what: object) -> None:
        out["examples"].setdefault(kind, [])
        if len(out["examples"][kind]) < 5:
            out["examples"][kind].append({"job": key[0], "step": key[1], "worker": name.get(key[2], key[2][:12]),
                                          "what": what})

    for key in sorted(paid.keys() | earned.keys()):
        p, e = paid.get(key, []), earned.get(key, [])
        out["credits_paid"] += sum(a for _, a in p)
        out["credits_earned"] += sum(a for _, a in e)
        if len(p) > 1:
            out["duplicate_paid"] += 1
            example("duplicate_paid", key, [(name.get(x, x[:12]), a) for x, a in p])
        if len(e) > 1:
            out["duplicate_earned"] += 1
            example("duplicate_earned", key, [(name.get(x, x[:12]), a) for x, a in e])
        if p and not e:
            out["paid_not_earned"] += 1
            out["paid_not_earned_by_worker"][name.get(key[2], key[2][:12])] += 1
            example("paid_not_earned", key, {"payer": name.get(p[0][0]), "amount": p[0][1]})
        elif e and not p:
            out["earned_not_paid"] += 1
            example("earned_not_paid", key, {"payer": name.get(e[0][0], e[0][0][:12]), "amount": e[0][1]})
        elif p and e:
            if {x for x, _ in p} != {x for x, _ in e} or abs(sum(a for _, a in p) - sum(a for _, a in e)) > 1e-6:
                out["amount_mismatch"] += 1
                example("amount_mismatch", key, {"paid": p, "earned": e})
            elif len(p) == len(e) == 1:
                out["matched"] += 1
    out["paid_not_earned_by_worker"] = dict(out["paid_not_earned_by_worker"])
    out["credits_paid"] = round(out["credits_paid"], 6)
    out["credits_earned"] = round(out["credits_earned"], 6)
    return out


def judge(res: Result) -> list[str]:
    """The invariants, each broken one as a sentence."""
    v = []
    if res.submitted < res.jobs_wanted:
        v.append(f"only {res.submitted} of {res.jobs_wanted} jobs could be submitted")
    if res.stuck:
        v.append(f"{res.stuck} jobs still running at the deadline (stuck): {res.stuck_jobs[:5]}")
    if res.lost:
        v.append(f"{res.lost} accepted jobs unknown to their submitter at the end (lost): {res.lost_jobs[:5]}")
    if res.failed_without_reason:
        v.append(f"{res.failed_without_reason} jobs failed without a reason")
    led = res.ledgers
    for key, what in (("paid_not_earned", "paid by the submitter, never earned by the worker"),
                      ("earned_not_paid", "earned by the worker, never paid by the submitter"),
                      ("amount_mismatch", "earned a different amount than paid"),
                      ("duplicate_paid", "paid more than once"), ("duplicate_earned", "earned more than once")):
        if led.get(key):
            v.append(f"{led[key]} (job, step, worker) {what}")
    for name, r in res.verify.items():
        if not r.get("ok"):
            v.append(f"{name}: ledger does not verify: {r.get('reason')} (entry {r.get('entry')})")
    if res.leaked:
        v.append(f"{len(res.leaked)} processes outlived their node: {res.leaked[:3]}")
    return v


def run(cfg: Config) -> Result:
    return ChaosRun(cfg).run()
