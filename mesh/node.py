"""`mesh node`: one node process. The asyncio loop runs the peer gateway, the HTTP API and the job
drivers (network-bound coordination, driving the sans-I/O JobRun); the Thespian actor system (loopback
only) holds the isolated, crash-prone work: the model runner, sandboxed steps and the ledger."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from actors.messages import (
    EntriesRecorded,
    NodeConfig,
    NodeReady,
    PeerStatsQuery,
    PeerStatsReply,
    RecordEntries,
    RunStep,
    StepDone,
)
from ledger.receipts import check_receipt, make_receipt, payer_id
from ledger.store import Entry

from . import actorsys
from .bridge import ActorBridge, NoAnswer
from .canonical import canonical, digest
from .dag import Job, check_request
from .envelope import ANYONE, DEFAULT_FRAME_CAP, Envelope, Receiver, Sealer
from .errors import ConfigError, JobError, LedgerError, MeshError
from .gateway import Connection, Gateway
from .home import LEDGER_FILE, RuntimeInfo, ensure_token
from .identity import Identity, load_or_create
from .jobrun import Dispatch, JobRun, Outcome
from .messages import Bye, Hello, PeerRef, ReceiptMsg, StepRequest, StepResult
from .models import default_model_sha, sha256_file
from .peers import Peer, prefix_of
from .policy import Candidate, reputation
from .sandbox import bwrap_path

log = logging.getLogger("mesh.node")
FAULTS = ("wrong", "silent", "slow", "crash", "forge")
HEARTBEAT_S = 2.0
DOWN_AFTER_S = 10.0
MAX_GOSSIP = 64  # new peers taken from one hello: a liar cannot make us dial thousands


@dataclass
class NodeOptions:
    home: Path
    listen: tuple[str, int]
    api: tuple[str, int]
    bootstrap: list[tuple[str, int]] = field(default_factory=list)
    network: str = "homemesh-local"
    fault: str = ""
    allow_unsandboxed_python: bool = False
    load_model: bool = True
    threads: int = 0
    frame_cap: int = DEFAULT_FRAME_CAP
    model: Path | None = None


@dataclass
class JobState:
    run: JobRun
    wake: asyncio.Event
    done: asyncio.Event
    created: float
    credits: float = 0.0


def now_ms() -> int:
    return int(time.time() * 1000)


def bind(host: str, port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = "is in use" if exc.errno == 98 else f"cannot be bound ({exc.strerror})"
        raise ConfigError(f"{what} address {host}:{port} {reason}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, opts: NodeOptions, identity: Identity, asys, node_actor, ready: NodeReady):
        self.opts = opts
        self.identity = identity
        self.id = identity.node_id
        self.asys = asys
        self.bridge = ActorBridge(asys, node_actor)
        self.models = ready.models
        self.model_error = ready.error
        self.sandboxed = bwrap_path() is not None
        self.kinds = (["llm"] if self.models else []) + (
            ["python"] if self.sandboxed or opts.allow_unsandboxed_python else [])
        self.listen = f"{opts.listen[0]}:{opts.listen[1]}"  # run() puts the bound port here (port 0 → any)
        self.receiver = Receiver(identity.public_key, opts.network)
        self.sealer = Sealer(identity, opts.network)
        self.gateway = Gateway(self.sealer, self.receiver, self, now_ms, opts.frame_cap)
        self.peers: dict[bytes, Peer] = {}
        self.bootstrap = {f"{h}:{p}" for h, p in opts.bootstrap}
        self.jobs: dict[str, JobState] = {}
        self.stats: dict[str, dict] = {}
        self.tasks: set[asyncio.Task] = set()
        self.rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        self.stopping = asyncio.Event()
        self.token = ensure_token(opts.home)
        (opts.home / "jobs").mkdir(exist_ok=True)

    # -- lifecycle -----------------------------------------------------------------------------------
    def spawn(self, coro) -> asyncio.Task:
        """Start a task the node owns: kept referenced, cancelled at shutdown, failures logged."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self.stopping.is_set():
            log.error("task failed", exc_info=task.exception())

    async def run(self, peer_sock: socket.socket, api_sock: socket.socket) -> None:
        from .api import serve_api

        reply = await self.bridge.ask(PeerStatsQuery(uuid.uuid4().hex), 30)
        if isinstance(reply, PeerStatsReply) and not reply.error:
            self.stats = {n: {k: s[k] for k in ("agreed", "disagreed", "no_show")} for n, s in reply.stats.items()}
        self.listen = f"{self.opts.listen[0]}:{peer_sock.getsockname()[1]}"
        await self.gateway.start(peer_sock)
        api_task = self.spawn(serve_api(self, api_sock, self.stopping))
        api_host, api_port = api_sock.getsockname()[:2]
        RuntimeInfo(self.id, os.getpid(), f"http://{api_host}:{api_port}", self.listen).write(self.opts.home)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        log.info("node %s ready: peers on %s, API on http://%s:%s", self.id, self.listen, api_host, api_port)
        print(f"node {self.id} ready: peer port {self.listen}, API http://{api_host}:{api_port}", flush=True)
        self.spawn(self._heartbeat())
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({stop, api_task}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        failed = api_task.done() and not api_task.cancelled() and api_task.exception()
        await self._shutdown(api_task)
        if failed:
            raise MeshError(f"the node's HTTP API failed: {failed}")

    async def _shutdown(self, api_task: asyncio.Task) -> None:
        for peer in self.peers.values():
            for conn in list(peer.conns):
                self.gateway.send(conn, "bye", peer.key, Bye("shutdown"))
        await asyncio.sleep(0)  # let the byes reach the sockets' buffers
        await self.gateway.close()
        await asyncio.wait({api_task}, timeout=5)
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        (self.opts.home / "node.json").unlink(missing_ok=True)
        self.bridge.close()

    # -- peers ---------------------------------------------------------------------------------------
    def hello(self) -> Hello:
        known = [PeerRef(p.key.hex(), p.addr) for p in self.peers.values() if p.addr and p.state == "up"]
        return Hello(self.listen, self.kinds, self.models, self.sandboxed, known)

    async def _heartbeat(self) -> None:
        while True:
            now = time.monotonic()
            for addr in list(self.bootstrap):
                if not any(p.addr == addr and p.connected for p in self.peers.values()):
                    self.spawn(self._dial(addr, ANYONE))
            for peer in list(self.peers.values()):
                if peer.connected:
                    self._send(peer, "hello", self.hello())
                    if now - peer.last_seen > DOWN_AFTER_S and peer.state == "up":
                        peer.state = "down"
                elif peer.addr and peer.state != "left" and now >= peer.next_dial:
                    self.spawn(self._dial(peer.addr, peer.key))
            await asyncio.sleep(HEARTBEAT_S)

    async def _dial(self, addr: str, key: bytes) -> Connection | None:
        host, _, port = addr.rpartition(":")
        try:
            conn = await self.gateway.dial(host.strip("[]"), int(port))
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            peer = self.peers.get(key)
            if peer is not None:
                peer.failures += 1
                peer.next_dial = time.monotonic() + min(30.0, 2.0 ** peer.failures) * (0.5 + self.rng.random())
                if peer.state == "up":
                    peer.state = "down"
            log.info("cannot reach %s: %s", addr, exc)
            return None
        self.gateway.send(conn, "hello", key, self.hello())
        if key != ANYONE and key in self.peers:
            self.peers[key].conns.add(conn)
        return conn

    def _conn_for(self, peer: Peer) -> Connection | None:
        return next((c for c in peer.conns if c.open), None)

    def _send(self, peer: Peer, kind: str, payload: object) -> bool:
        conn = self._conn_for(peer)
        if conn is None:
            return False
        frame = self.sealer.seal(kind, peer.key, payload, now_ms())
        if self.opts.fault == "forge" and kind == "result":
            frame = _forge(frame)
        conn.write(frame)
        return True

    async def _send_dialling(self, peer: Peer, kind: str, payload: object) -> bool:
        if self._send(peer, kind, payload):
            return True
        if peer.addr and await self._dial(peer.addr, peer.key) is not None:
            return self._send(peer, kind, payload)
        return False

    # -- gateway events ------------------------------------------------------------------------------
    def on_envelope(self, env: Envelope, conn: Connection) -> None:
        if env.sender == self.identity.public_key:
            self.receiver.count("from-self")
            conn.close()
            return
        peer = self.peers.get(env.sender)
        if env.kind == "hello":
            self._on_hello(env, conn, peer)
            return
        if peer is None:  # work and receipts only from peers that introduced themselves
            self.receiver.count("unknown-peer")
            return
        peer.conns.add(conn)
        peer.last_seen = time.monotonic()
        if env.kind == "step":
            self.spawn(self._work(peer, env.payload))
        elif env.kind == "result":
            self._on_result(peer, env.payload)
        elif env.kind == "receipt":
            self.spawn(self._on_receipt(peer, env.payload))
        elif env.kind == "bye":
            peer.state = "left"
            for c in list(peer.conns):
                c.close()

    def _on_hello(self, env: Envelope, conn: Connection, peer: Peer | None) -> None:
        hello: Hello = env.payload
        fresh = peer is None or peer.state != "up"
        if peer is None:
            peer = self.peers[env.sender] = Peer(env.sender)
        peer.update(hello, time.monotonic())
        peer.conns.add(conn)
        self.bootstrap.discard(hello.listen)
        if fresh or env.recipient == ANYONE:
            self.gateway.send(conn, "hello", env.sender, self.hello())
            log.info("peer %s up at %s (%s)", peer.node[:12], peer.addr, ",".join(peer.kinds))
        for ref in hello.peers[:MAX_GOSSIP]:
            try:
                key = bytes.fromhex(ref.key)
            except ValueError:
                continue
            if len(key) == 32 and key != self.identity.public_key and key not in self.peers:
                self.peers[key] = Peer(key, addr=ref.addr)
                self.spawn(self._dial(ref.addr, key))

    def on_disconnect(self, conn: Connection) -> None:
        for peer in self.peers.values():
            if conn in peer.conns:
                peer.conns.discard(conn)
                if not peer.connected:
                    if peer.state == "up":
                        peer.state = "down"
                    for st in self.jobs.values():
                        if not st.run.finished:
                            st.run.on_node_lost(peer.node, "connection lost")
                            st.wake.set()

    # -- worker side ---------------------------------------------------------------------------------
    async def _work(self, peer: Peer, req: StepRequest) -> None:
        fault = self.opts.fault
        if fault == "silent":
            return
        result = await self._execute(req)
        if fault == "crash":
            log.error("fault=crash: dying mid-step")
            os.killpg(os.getpgrp(), signal.SIGKILL)
        if fault == "slow":
            await asyncio.sleep(min(req.timeout, 30.0))
        if fault == "wrong" and result.ok:
            out = _corrupt(result.output)
            result = StepResult(req.job, req.step, True, out, digest(out), result.identity, result.work)
        await self._send_dialling(peer, "result", result)

    async def _execute(self, req: StepRequest) -> StepResult:
        def fail(msg: str) -> StepResult:
            return StepResult(req.job, req.step, False, None, "", "", {}, msg)

        if req.kind not in self.kinds:
            why = self.model_error if req.kind == "llm" else "no sandbox (bwrap) on this node"
            return fail(f"this node does not run {req.kind} steps: {why}")
        try:
            check_request(req.kind, req.params)
        except JobError as exc:
            return fail(f"refused: {exc}")
        model = req.params.get("model", "default")
        if req.kind == "llm" and (default_model_sha() if model == "default" else model) not in self.models:
            return fail(f"this node does not hold model {str(model)[:16]}")
        timeout = max(1.0, min(req.timeout, 3600.0))
        try:
            done = await self.bridge.ask(
                RunStep(uuid.uuid4().hex, req.kind, req.params, timeout, self.sandboxed), timeout + 15)
        except NoAnswer as exc:
            return fail(str(exc))
        if not isinstance(done, StepDone):
            return fail(f"internal error: unexpected {type(done).__name__}")
        if not done.ok:
            return fail(done.error)
        size = len(canonical(done.output))
        if size > self.opts.frame_cap // 2:  # the signed result must fit in one frame, with room to spare
            return fail(f"output of {size} bytes is over this mesh's limit of {self.opts.frame_cap // 2}")
        return StepResult(req.job, req.step, True, done.output, digest(done.output), done.identity, done.work)

    async def _on_receipt(self, peer: Peer, msg: ReceiptMsg) -> None:
        r = msg.receipt
        why = check_receipt(r)
        if not why and (r["worker"] != self.id or payer_id(r) != peer.node):
            why = "receipt names another worker or payer"
        if why:
            self.receiver.count("bad-receipt")
            log.warning("receipt from %s refused: %s", peer.node[:12], why)
            return
        entry = Entry("earned", r["job"], r["step"], peer.node, float(r["amount"]), {"receipt": r})
        await self._record([entry])

    # -- submitter side ------------------------------------------------------------------------------
    def submit(self, job: Job) -> str:
        job_id = uuid.uuid4().hex[:20]
        st = JobState(JobRun(job_id, job, random.Random(self.rng.getrandbits(64))), asyncio.Event(),
                      asyncio.Event(), time.time())
        self.jobs[job_id] = st
        self.spawn(self._drive(job_id, st))
        log.info("job %s (%s) submitted: %d steps at r=%d", job_id, job.name, len(job.steps), job.redundancy)
        return job_id

    def candidates(self) -> dict[str, list[Candidate]]:
        out: dict[str, list[Candidate]] = {}
        default = default_model_sha()
        for peer in self.peers.values():
            if not peer.connected or peer.state != "up":
                continue
            s = self.stats.get(peer.node, {})
            cand = Candidate(peer.node, reputation(s.get("agreed", 0), s.get("disagreed", 0), s.get("no_show", 0)),
                             prefix_of(peer.addr))
            for cap in peer.capabilities(default):
                out.setdefault(cap, []).append(cand)
        return out

    async def _drive(self, job_id: str, st: JobState) -> None:
        run = st.run
        while True:
            st.wake.clear()
            now = time.monotonic()
            run.on_time(now)
            for d in run.advance(self.candidates(), now):
                self.spawn(self._dispatch(job_id, st, d))
            outcomes = run.take_outcomes()
            if outcomes:
                await self._settle(job_id, st, outcomes)
            if run.finished:
                break
            try:
                await asyncio.wait_for(st.wake.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
        report = self.report(job_id)
        (self.opts.home / "jobs" / f"{job_id}.json").write_text(json.dumps(report))
        st.done.set()
        log.info("job %s %s", job_id, run.status)

    async def _dispatch(self, job_id: str, st: JobState, d: Dispatch) -> None:
        peer = next((p for p in self.peers.values() if p.node == d.node), None)
        timeout = max(1.0, d.deadline - time.monotonic())
        req = StepRequest(job_id, d.step, d.kind, d.params, timeout)
        if peer is None or not await self._send_dialling(peer, "step", req):
            st.run.on_failure(d.step, d.node, "unreachable")
            st.wake.set()

    def _on_result(self, peer: Peer, res: StepResult) -> None:
        st = self.jobs.get(res.job)
        if st is None:
            self.receiver.count("unexpected-result")
            return
        ok = res.ok
        if ok and digest(res.output) != res.digest:
            ok, res.error = False, "digest does not match output"
        if not st.run.on_result(res.step, peer.node, ok, res.digest, res.output, res.work, res.error):
            self.receiver.count("unexpected-result")
            return
        st.wake.set()

    async def _settle(self, job_id: str, st: JobState, outcomes: list[Outcome]) -> None:
        """Record settled steps in the ledger (one batch), then hand receipts to the paid workers."""
        ts = now_ms()
        entries: list[Entry] = []
        receipts: list[tuple[str, dict]] = []
        for o in outcomes:
            for node in o.agreeing:
                r = make_receipt(self.identity, job_id, o.step, node, o.credit, ts)
                receipts.append((node, r))
                entries.append(Entry("paid", job_id, o.step, node, -o.credit, {"receipt": r, "digest": o.digest}))
                entries.append(Entry("agreed", job_id, o.step, node, 0.0, {"digest": o.digest}))
            if o.accepted:
                run = st.run.steps[o.step]
                for node in o.dissenting:
                    entries.append(Entry("disagreed", job_id, o.step, node, 0.0,
                                         {"digest": run.replicas[node].digest, "accepted": o.digest}))
            for node in o.failed:
                reason = st.run.steps[o.step].replicas[node].error
                entries.append(Entry("no_show", job_id, o.step, node, 0.0, {"reason": reason}))
        try:
            reply = await self.bridge.ask(RecordEntries(uuid.uuid4().hex, entries, ts), 30)
            if not isinstance(reply, EntriesRecorded) or reply.error:
                raise LedgerError(getattr(reply, "error", "") or "no answer from the ledger")
        except (NoAnswer, LedgerError) as exc:
            log.error("job %s: ledger write failed, no credits paid: %s", job_id, exc)
            return
        for e in entries:
            if e.kind in ("agreed", "disagreed", "no_show"):
                counts = self.stats.setdefault(e.peer, {"agreed": 0, "disagreed": 0, "no_show": 0})
                counts[e.kind] += 1
        st.credits += sum(-e.amount for e in entries if e.kind == "paid")
        for node, r in receipts:
            peer = next((p for p in self.peers.values() if p.node == node), None)
            if peer is not None:
                await self._send_dialling(peer, "receipt", ReceiptMsg(r))

    async def _record(self, entries: list[Entry]) -> None:
        try:
            reply = await self.bridge.ask(RecordEntries(uuid.uuid4().hex, entries, now_ms()), 30)
        except NoAnswer as exc:
            log.error("ledger write failed: %s", exc)
            return
        if isinstance(reply, EntriesRecorded) and reply.error:
            log.error("ledger write failed: %s", reply.error)

    def report(self, job_id: str) -> dict:
        st = self.jobs[job_id]
        rep = st.run.report()
        rep["credits_spent"] = round(st.credits, 6)
        rep["submitter"] = self.id
        return rep

    def status(self) -> dict:
        now_mono, now_wall = time.monotonic(), time.time()
        peers = []
        for p in sorted(self.peers.values(), key=lambda p: p.node):
            s = self.stats.get(p.node, {})
            peers.append({
                "node": p.node, "address": p.addr, "state": p.state, "connected": p.connected,
                "last_seen": round(now_wall - (now_mono - p.last_seen), 3) if p.last_seen else None,
                "reputation": round(reputation(s.get("agreed", 0), s.get("disagreed", 0), s.get("no_show", 0)), 6),
                "models": p.models, "kinds": p.kinds,
            })
        return {"node": self.id, "listen": self.listen, "kinds": self.kinds, "models": self.models,
                "sandbox": self.sandboxed, "fault": self.opts.fault or None, "peers": peers,
                "rejected": dict(self.receiver.rejected),
                "jobs": {"running": sum(not s.run.finished for s in self.jobs.values()), "total": len(self.jobs)}}


def _corrupt(output: object) -> object:
    """fault=wrong: a plausible but wrong answer, validly signed."""
    return output + " [tampered]" if isinstance(output, str) else {"tampered": output}


def _forge(frame: bytes) -> bytes:
    """fault=forge: keep the frame well-formed but break its signature."""
    body = json.loads(frame[4:])
    sig = bytearray(bytes.fromhex(body["sig"]))
    sig[0] ^= 1
    body["sig"] = sig.hex()
    out = canonical(body)
    return len(out).to_bytes(4, "big") + out


def run_node(opts: NodeOptions) -> None:
    """Start everything, serve until SIGINT/SIGTERM, stop everything. Raises ConfigError for bad set-up."""
    if opts.fault and opts.fault not in FAULTS:
        raise ConfigError(f"--fault must be one of {', '.join(FAULTS)}")
    if opts.api[0] not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError("the API listens on loopback only (it holds the power to spend credits)")
    model_sha = ""
    if opts.model is not None:
        if not opts.model.is_file():
            raise ConfigError(f"model file {opts.model} not found")
        model_sha = sha256_file(opts.model)
    identity, _ = load_or_create(opts.home)
    for (host, port), what in ((opts.listen, "peer"), (opts.api, "API")):
        bind(host, port, what).close()  # fail fast, before forking the actor system
    logging.basicConfig(filename=str(opts.home / "node.log"), level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asys = actorsys.start(free_port(), opts.home / "actors.log")
    try:
        from actors.node_actor import NodeActor

        node_actor = asys.createActor(NodeActor)
        ready = asys.ask(node_actor, NodeConfig(str(opts.home), str(opts.home / LEDGER_FILE), True, opts.threads,
                                                opts.load_model, str(opts.model or ""), model_sha), 120)
        if not isinstance(ready, NodeReady):
            raise MeshError("the node's actors did not start (see actors.log in the node's home)")
        if ready.error:
            print(f"warning: {ready.error}; this node will not run llm steps", flush=True)
        peer_sock = bind(*opts.listen, "peer")
        api_sock = bind(*opts.api, "API")
        node = Node(opts, identity, asys, node_actor, ready)
        asyncio.run(node.run(peer_sock, api_sock))
    finally:
        asys.shutdown()
