"""`mesh node`: one node process. The asyncio loop runs the peer gateway, the HTTP API, discovery and
the job drivers (network-bound coordination around the sans-I/O core); the Thespian actor system
(loopback only) holds the isolated, crash-prone work: the model runner, sandboxed steps and the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from actors.messages import (
    EntriesRecorded,
    LoadModel,
    ModelLoaded,
    NodeConfig,
    NodeReady,
    PeerStatsQuery,
    PeerStatsReply,
    RecordEntries,
)
from ledger.store import REPUTATION_KINDS, Entry, Ledger
from mesh.core.admission import Account, Standing
from mesh.core.dag import Job
from mesh.core.policy import Candidate, Reputations, StepEvidence, reputation_group
from mesh.core.pricing import MAX_DEFAULT, capped
from mesh.core.trust import UNKNOWN_PREFIX
from mesh.errors import ConfigError, MeshError, NoAnswer, Rejected
from mesh.http.facade import NodeFacade
from mesh.node import actorsys
from mesh.node import owner as owner_mod
from mesh.node.bridge import ActorBridge
from mesh.node.capacity import shortfall
from mesh.node.dialscope import AddressRefused, Gate, first_hop
from mesh.node.flow import Limits
from mesh.node.gateway import Connection, Gateway, TcpTransport, Transport
from mesh.node.heldheads import HeldHeads
from mesh.node.home import (
    CANCEL_DIR,
    LEDGER_FILE,
    PEERS_FILE,
    REPLAY_FILE,
    RUNTIME_FILE,
    RuntimeInfo,
    ensure_token,
    lock_home,
    read_peers,
    write_private,
)
from mesh.node.journal import Journal
from mesh.node.logfile import json_handler, text_handler
from mesh.node.modelshare import MODEL_FLOOR, ModelFetcher, ModelServer
from mesh.node.owed import Owed
from mesh.node.owner import Owner, OwnerLimits
from mesh.node.peers import GossipLimit, Peer, PeerTable, prefix_of, prefix_of_ip, room_to_dial, to_dial
from mesh.node.replaystore import ReplayStore
from mesh.node.schedule import Probe
from mesh.node.submitter import Options as SubmitterOptions
from mesh.node.submitter import Ports, Submitter
from mesh.node.tally import Tally
from mesh.node.testimony import TESTIMONY_S, Testimonies
from mesh.node.twin import KeyTwins
from mesh.node.worker import StepRunner, Worker, WorkerPort
from mesh.node.worklog import WorkLog
from mesh.steps import cgroup
from mesh.steps.models import INSTRUCT_SHA256, default_model, default_model_sha, instruct_model, sha256_file
from mesh.steps.ownports import ROLL, OwnPorts, enrol, leave
from mesh.steps.registry import ModelEntry, Registry, model_file
from mesh.steps.sandbox import sandbox_problem
from mesh.steps.scrape import Scraper, find_browser
from mesh.steps.ssrf import Allow
from mesh.steps.stepuser import StepUser, step_user
from mesh.wire.canonical import canonical
from mesh.wire.envelope import ANYONE, DEFAULT_FRAME_CAP, Envelope, Receiver, Sealer
from mesh.wire.identity import Identity, ensure_work, load_or_create, node_id_of
from mesh.wire.messages import (
    Bye,
    HeadAsk,
    HeadHeld,
    Hello,
    LedgerHead,
    Outvoted,
    PeerRecord,
    RateCard,
    TestimonyItem,
    TestimonyTell,
)
from mesh.wire.records import (
    DEFAULT_OFFER,
    DEFAULT_RATES,
    MAX_ALT,
    RECORD_TTL_MS,
    check_record,
    make_record,
    next_issued,
)
from mesh.wire.schema import parse

log = logging.getLogger("mesh.node.lifecycle")
FAULTS = ("wrong", "overclaim", "silent", "slow", "crash", "forge", "relay-drop", "relay-delay", "check-aware", "busy",
          "slander", "corrupt-model")
HEARTBEAT_S = 2.0  # how often the node looks over its links (dials, silence, expiry)
HELLO_EVERY_S = 6.0  # how often each linked peer gets a hello when nothing else is said: on libp2p a
# message costs ~1 ms of Python on each side, and hellos to every link every 2 s kept 32 nodes on 2 cores
# from settling; a crashed peer is seen at once anyway, by its connection closing
DOWN_AFTER_S = 20.0  # a linked peer silent this long (three hellos missed) is down
MAX_THREADS = 512  # llama.cpp threads (--threads): more than a home computer has cores; 100,000 crashed llama.cpp
MAX_GOSSIP = 8  # records a hello carries, and takes: a sample for a start; the DHT finds the rest
# Workers per capability a node keeps linked, found through the DHT when gossip did not, on as many network
# prefixes when the mesh has them (`to_dial`): placement draws a prefix as one node, so an operator holding 2
# of 8 linked prefixes gets a majority of a 3-replica step (2 of its 3 prefixes) about 6 times in 56 at equal
# weights, against 1 in 2 with 4 prefixes; and 8 keeps the DHT walks of a mesh short of it where they were.
WANT_PER_CAP = 8
DISCOVER_FIRST_S, DISCOVER_EVERY_S = 3.0, 30.0
OWNER_WATCH_S = 5.0  # how often the clock and the machine are looked at for --hours and --when-idle
HEAD_SHARE_S, HEAD_KEEPERS = 10.0, 3  # how often the ledger's head goes out, and to how many peers
# how long a ledger write may take before it counts as failed (it may still land: Submitter._reconcile at the
# next start); a slow disk can take tens of seconds, and a write given up made the node refuse paid work
LEDGER_ANSWER_S = 60.0
PENALTY_EVERY_S = 60.0  # a peer is booked at most one penalty a minute (ledger rows are kept for good)
MAX_PENALISED = 4096  # peers whose last penalty time is remembered
FIND_WAIT_S = 15.0  # how long a new job waits for workers the DHT names before its steps may give up


@dataclass
class NodeOptions:
    home: Path
    listen: tuple[str, int]
    api: tuple[str, int]
    bootstrap: list[str] = field(default_factory=list)  # HOST:PORT or multiaddrs, checked by the CLI
    network: str = "homemesh-local"
    advertise: str = ""  # host:port peers should dial; default: the listen address
    fault: str = ""
    allow_unsandboxed_python: bool = False
    load_model: bool = True
    threads: int = 0
    # the owner's limits (mesh.node.owner): None where not given on the command line (then node.toml's)
    max_cpu: float | None = None  # --max-cpu: the share of this machine's CPUs peers' steps may use in all
    max_memory: int | None = None  # --max-memory: bytes all of peers' python steps may use together
    max_steps: int | None = None  # --max-steps: peers' steps running here at once
    hours: str | None = None  # --hours 22:00-07:00: when peers' steps may start (local time)
    when_idle: float | None = None  # --when-idle MINUTES: only after the machine was idle this long
    frame_cap: int = DEFAULT_FRAME_CAP
    model: Path | None = None
    credit_line: float = 10.0  # credits this node may spend beyond what it has earned
    collude: str = ""  # with fault=wrong: nodes of one group return the same wrong answer
    spot_rate: float = 0.0  # probability that a replica sent out comes with a spot check for its worker
    blacklist_s: float = 3600.0  # how long a worker caught by a spot check gets no work from this node
    core_log: bool = False  # keep each job's cross-checking inputs/outputs in its report (for replay tests)
    scrape_allow: list[str] = field(default_factory=list)  # CIDRs or hosts scrapes may reach though private
    browser: str = ""  # Chromium to drive ('' → found on PATH; none → plain HTTP fetches)
    no_scrape: bool = False
    share_models: bool = True  # answer peers' model-asks with the files of the models this node serves
    fetch_models: int = 0  # bytes of models it may fetch from peers to run steps that need them (0: never)
    keep_jobs: int = 1000  # finished jobs kept in memory (older ones are read from <home>/jobs)
    transport: str = "libp2p"  # libp2p (Noise-encrypted, keys proven) | tcp (plain, for loopback tests)
    relay: bool = True  # once reachable, relay (with limits) for peers behind NATs
    relay_budget: int = 2 << 30  # bytes an hour it relays for others in all (a quarter for one network prefix)
    max_links: int = 64  # peers linked on our own initiative (gossip); the DHT adds workers jobs need
    rates: RateCard = DEFAULT_RATES  # what this node charges for work (in its signed record)
    max_rates: RateCard = MAX_DEFAULT  # the most it pays a worker, whatever that worker's card asks
    require_credit: float | None = None  # as a worker: refuse submitters this far in its debt (None: never)
    testimony_s: float = TESTIMONY_S  # between two rounds of asking linked peers for their testimony
    down_after_s: float = DOWN_AFTER_S  # silence after which a linked peer is down; hellos and beats scale
    fault_after: float | None = None  # with fault relay-drop/-delay: each circuit's honest seconds first


def liveness_periods(down_after_s: float) -> tuple[float, float]:
    """(heartbeat, hello interval) for a liveness limit: the defaults', scaled down with a shorter limit
    (tests), so a peer still misses three hellos before it is called down."""
    scale = min(1.0, down_after_s / DOWN_AFTER_S)
    return HEARTBEAT_S * scale, HELLO_EVERY_S * scale


def make_transport(opts: NodeOptions, identity: Identity) -> Transport:
    gate = Gate.for_node(f"{opts.listen[0]}:{opts.listen[1]}", opts.advertise, opts.bootstrap)
    if opts.transport == "tcp":
        return TcpTransport(gate)
    from mesh.node.p2p.transport import Libp2pTransport  # py-libp2p takes ~0.6 s to import

    return Libp2pTransport(identity, advertise=opts.advertise, relay=opts.relay, fault=opts.fault,
                           fault_after=opts.fault_after, network=opts.network, gate=gate,
                           relay_budget=opts.relay_budget)


def bootstrap_keys(addrs: list[str], transport: str) -> dict[str, bytes | None]:
    """Each bootstrap address with the node key it names (a multiaddr's /p2p/ id), so the dial is
    authenticated from the first byte; HOST:PORT names none, and Noise tells who answered."""
    if transport == "tcp":
        return dict.fromkeys(addrs)
    from mesh.node.p2p.addresses import key_of, parse

    out: dict[str, bytes | None] = {}
    for addr in addrs:
        target = parse(addr)
        out[addr] = key_of(target.peer) if target.peer is not None else None
    return out


@dataclass
class HeadAsking:
    """One `mesh ledger verify --peers` round: the peers asked, and the heads each handed back."""

    asked: set[bytes]
    answers: dict[bytes, list[LedgerHead]] = field(default_factory=dict)
    all_in: asyncio.Event = field(default_factory=asyncio.Event)

    def answered(self, key: bytes, heads: list[LedgerHead]) -> None:
        self.answers.setdefault(key, heads)
        if len(self.answers) >= len(self.asked):
            self.all_in.set()


def now_ms() -> int:
    return int(time.time() * 1000)


def since_boot_s() -> float:
    """Seconds since the machine booted, sleep included (CLOCK_BOOTTIME; else the monotonic clock)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


CLOCK_STEP_MS = 5_000  # a wall clock this far behind where it was at the start, by the boot clock, was set back


def start_floor(floor_ms: int, now: int, since_start_s: float) -> int:
    """The wall time this node started at, as the wall clock reads now: envelopes stamped before it are
    refused (their replay memory died with the last run). A clock set back since the start (it ran ahead:
    a dual-boot PC's local-time RTC before NTP) moves it back too; kept, it refused every peer for as long
    as the clock had been wrong (red team G: an hour). Never moved forward: a clock that jumps ahead moves
    every stamp ahead with it."""
    start = now - int(since_start_s * 1000)
    return start if start < floor_ms - CLOCK_STEP_MS else floor_ms


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


def _forge(frame: bytes) -> bytes:
    """fault=forge: keep the frame well-formed but break its signature."""
    body = json.loads(frame[4:])
    sig = bytearray(bytes.fromhex(body["sig"]))
    sig[0] ^= 1
    body["sig"] = sig.hex()
    out = canonical(body)
    return len(out).to_bytes(4, "big") + out


class Node:
    def __init__(self, opts: NodeOptions, identity: Identity, asys, node_actor, ready: NodeReady,
                 user: StepUser | None = None, journal: Journal | None = None, owner: Owner | None = None):
        self.opts = opts
        self.owner = owner or Owner(opts.home, {}, OwnerLimits(), None)  # its limits, caps and pause
        self.journal = journal or Journal(opts.home)  # jobs, receipts out and steps owed, across restarts
        self.identity = identity
        self.id = identity.node_id
        self.bridge = ActorBridge(asys, node_actor)
        self.models = ready.models
        self.model_error = ready.error
        self.sandbox_problem = sandbox_problem()  # why python steps cannot be sandboxed here ('' when they can)
        self.sandboxed = not self.sandbox_problem
        if self.sandbox_problem:
            print(f"warning: {self.sandbox_problem}: this node runs no python steps for peers"
                  + (" (--allow-unsandboxed-python: it runs them UNSANDBOXED)" if opts.allow_unsandboxed_python else "")
                  + "; llm and scrape steps are unaffected", flush=True)
        self.kinds = (["llm"] if self.models else []) + (
            ["python"] if self.sandboxed or opts.allow_unsandboxed_python else []) + (
            [] if opts.no_scrape else ["scrape"])
        self.fetch_allowance = opts.fetch_models if opts.load_model else 0  # (a node without models runs none)
        self.scraper = Scraper(Allow.parse(opts.scrape_allow), find_browser(opts.browser or None), user,
                               self.owner.cap.name if self.owner.cap else "", OwnPorts(os.getpid(), roll=ROLL))
        self.listen = f"{opts.listen[0]}:{opts.listen[1]}"  # run() puts the bound port here (port 0 → any)
        self.receiver = Receiver(identity.public_key, opts.network, floor_ms=now_ms())
        self.started_boot_s = since_boot_s()  # (start_floor)
        self.replay_store = ReplayStore(opts.home / REPLAY_FILE, self.receiver.window_ms)
        self.receiver.highest_seq.update(self.replay_store.load(now_ms()))
        self.sealer = Sealer(identity, opts.network)
        self.gateway = Gateway(self.sealer, self.receiver, self, now_ms, opts.frame_cap, Limits(),
                               make_transport(opts, identity), screen=self.screen)
        self.relayed_addrs: list[str] = []  # our circuits through relays, when peers cannot dial us
        if hasattr(self.gateway.transport, "on_address"):
            self.gateway.transport.on_address = self._on_relayed_address
            self.gateway.transport.on_direct = self._on_direct
        self.peers = PeerTable(identity.public_key, opts.network)
        self.gossip_limit = GossipLimit()
        self.held = HeldHeads(opts.home)  # peers' signed ledger heads this node keeps for them
        self.penalised: dict[str, float] = {}  # peer → when its last penalty was booked (monotonic)
        self.held.load()
        self.head_given: dict[bytes, int] = {}  # keeper → the entry count of the last head it was given
        self.head: LedgerHead | None = None  # the ledger's newest signed head, as last read
        self.head_stale = True  # a write since it was read (the ledger signs a new head with each)
        self.head_asks: dict[str, HeadAsking] = {}  # nonce → whom we asked, their answers
        self.next_head_share = 0.0
        self.next_testimony = 0.0
        self.dialling: dict[bytes | str, asyncio.Task] = {}  # dials under way, by key (address: bootstraps)
        self.finding: dict[str, asyncio.Task] = {}  # DHT searches for workers under way, by capability
        self.bootstrap = bootstrap_keys(opts.bootstrap, opts.transport)  # address → key it names, if any
        self.own_record: PeerRecord | None = None
        self.twins = KeyTwins()  # records of this node's key it did not sign: another holder (mesh.node.twin)
        self.reputations = Reputations()  # evidence and streaks by node id, from the ledger
        self.testimonies = Testimonies(self.id, self.reputations, self.receiver.count)  # shared reputation
        self.balance = 0.0  # credits earned minus spent, from the ledger
        self.accounts: dict[str, Account] = {}  # per peer: credits earned from it and paid to it
        self.ledger_error = ""  # set when a write failed: no paid work until the operator fixes it
        self.tasks: set[asyncio.Task] = set()
        self.rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        self.stopping = asyncio.Event()
        self.stop_reason = ""  # what stopped the node, said as it exits ("signal TERM")
        self.shut_at = 0.0  # (monotonic) when the loop's own part of the stop ended
        self.token = ensure_token(opts.home)
        self.tally = Tally()  # jobs, steps and replicas counted as they end (/metrics)
        self.worklog = WorkLog()  # the newest steps run for peers, with when and why (the dashboard)
        self._saved_peers = -1  # the peer table version last written
        steps = StepRunner(self.bridge.ask, self.scraper.scrape, self.sandboxed, opts.home / CANCEL_DIR)
        self.worker = Worker(WorkerPort(
            node_id=self.id, fault=opts.fault, collude=opts.collude, frame_cap=opts.frame_cap,
            limits=self.owner.limits.limits(self.gateway.limits), kinds=self.kinds, models=self.models,  # (lists: a fetched model joins them)
            model_error=self.model_error, sandbox_problem=self.sandbox_problem, steps=steps, send=self.send, send_dialling=self.send_dialling,
            record=self.record, ledger_error=lambda: self.ledger_error, count=self.receiver.count, rates=opts.rates,
            standing=self.standing, account=lambda node: self.accounts.get(node, Account()),
            require_credit=opts.require_credit, fetch_model=self.fetch_for_step if self.fetch_allowance else None,
            paused=lambda: self.owner.paused, step_memory=lambda: self.owner.limits.memory, worked=self._worked),
            Owed(self.journal, lambda payer: self.accounts.get(payer, Account()).earned > 0))
        self.model_server = ModelServer(self._served_models if opts.share_models else dict, self.send,
                                        corrupt=opts.fault == "corrupt-model", backlog=self._backlog,
                                        group=self.observed_prefix)
        self.fetcher = ModelFetcher(opts.home, self._tell, self._holders, self._penalise, self.install_model, self.spawn,
                                    self._expect_bytes)
        self.api_view = NodeFacade(  # what the HTTP API sees of this node (mesh.http never imports it)
            node_id=self.id, token=self.token, home=opts.home, ledger_path=opts.home / LEDGER_FILE,
            jobs_dir=opts.home / "jobs",
            model_missing="" if "llm" in self.kinds else self.model_error or "started with --no-model",
            peer_heads=self.peer_heads,
            status=self.status, jobs=lambda: self.submitter.visible(),
            report=lambda st: self.submitter.shown(st), submit=lambda job: self.submitter.submit_kept(job),
            cancel=lambda job_id: self.submitter.cancel(job_id), pause=self.pause,
            workers_for=lambda needs: len(self.candidates().get(needs, [])), shortage=self.shortage,
            kinds_offered=lambda: Counter(k for p in self.peers.up() for k in p.kinds),
            models_held=lambda: Counter(m for p in self.peers.up() for m in p.models),
            ask_model=functools.partial(steps.output, "llm"),
            fetch_model=lambda sha, max_bytes, sources, name: self.fetcher.start(sha, max_bytes, sources, name).to_json(),
            fetches=lambda: [st.to_json() for st in self.fetcher.status.values()], metrics=self.metrics,
            work=self.work)
        self.submitter = Submitter(self._submitter_ports(), SubmitterOptions(
            opts.spot_rate, opts.blacklist_s, opts.credit_line, opts.keep_jobs, opts.core_log), self.rng.getrandbits(64),
            self.journal)
        (opts.home / "jobs").mkdir(exist_ok=True)
        shutil.rmtree(opts.home / CANCEL_DIR, ignore_errors=True)  # flags of a previous run's steps
        (opts.home / CANCEL_DIR).mkdir()

    def _submitter_ports(self) -> Ports:
        """All the submitter may use of this node."""

        async def send_to(node: str, kind: str, payload: object) -> bool:
            peer = self.peers.by_node(node)
            return peer is not None and await self.send_dialling(peer, kind, payload)

        def tell(node: str, kind: str, payload: object) -> bool:
            peer = self.peers.by_node(node)
            return peer is not None and self.send(peer, kind, payload)

        return Ports(self.id, self.identity, self.opts.home, send_to, self.record, self.candidates, self.spawn,
                     self.receiver.count, lambda: self.balance, lambda: self.ledger_error, self.find_workers, tell,
                     self.spread_proof, self.tally)

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

    def _stop_on(self, sig: int) -> None:
        self.stop_reason = self.stop_reason or f"signal {signal.Signals(sig).name.removeprefix('SIG')}"
        self.stopping.set()

    async def run(self, peer_sock: socket.socket, api_sock: socket.socket) -> str:
        """Serve until a signal or a failure stops the node; returns why it stopped."""
        from mesh.http.api import serve_api

        reply = await self.bridge.ask(PeerStatsQuery(uuid.uuid4().hex), 30)
        if not isinstance(reply, PeerStatsReply) or reply.error:
            raise MeshError(f"cannot read the ledger: {getattr(reply, 'error', 'no answer')}")
        self.reputations = Reputations(dict(reply.evidence), dict(reply.streaks))
        self.testimonies.rebind(self.reputations)
        self.balance = reply.balance
        self.accounts = dict(reply.accounts)
        self.listen = f"{self.opts.listen[0]}:{peer_sock.getsockname()[1]}"
        self._load_peers()
        await self.gateway.start(peer_sock)
        api_task = self.spawn(serve_api(self.api_view, api_sock, self.stopping))
        api_host, api_port = api_sock.getsockname()[:2]
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # before node.json: whoever reads its pid may signal it
            loop.add_signal_handler(sig, self._stop_on, sig)
        loop.add_signal_handler(signal.SIGHUP, self.reload_owner)
        api_url = f"http://{f'[{api_host}]' if ':' in api_host else api_host}:{api_port}"  # (IPv6 in brackets)
        RuntimeInfo(self.id, os.getpid(), api_url, self.listen).write(self.opts.home)
        log.info("node %s ready: peers on %s, API on http://%s:%s", self.id, self.listen, api_host, api_port)
        print(f"node {self.id} ready: peer port {self.listen}, API http://{api_host}:{api_port}", flush=True)
        self.spawn(self._heartbeat())
        self.spawn(self._discover())
        self.spawn(self._watch_owner())
        self.submitter.resume()  # jobs the journal left unfinished (the node was killed or stopped)
        self.spawn(self.submitter.deliver())
        stop = asyncio.create_task(self.stopping.wait())
        await asyncio.wait({stop, api_task}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        failed = api_task.done() and not api_task.cancelled() and api_task.exception()
        await self._shutdown(api_task)
        if failed:
            raise MeshError(f"stopped: the node's HTTP API failed: {failed}")
        return self.stop_reason or "its HTTP API ended"

    async def _shutdown(self, api_task: asyncio.Task) -> None:
        """Each part of a clean stop is bounded and a slow one named in the log: a peer that never reads,
        a thread stuck on a busy database or a browser that will not close must not keep the node running
        past the time whoever stopped it waits before killing it (which would leave its cgroups behind)."""
        await _bounded("sharing the ledger's head", self._share_head(), 3)  # (as it stands, to its keepers)
        for peer in self.peers:  # a clean leave: peers stop sending work at once
            for conn in list(peer.conns):
                self.gateway.send(conn, "bye", peer.key, Bye("shutdown"))
        await asyncio.sleep(0)
        await _bounded("closing the peer links", self.gateway.close(), 3)
        await asyncio.wait({api_task}, timeout=5)
        for task in list(self.tasks):
            task.cancel()
        await _bounded("ending the node's tasks", asyncio.gather(*self.tasks, return_exceptions=True), 3)
        await _bounded("closing the browser", self.scraper.close(), 5)
        (self.opts.home / RUNTIME_FILE).unlink(missing_ok=True)
        self.bridge.close()
        self.journal.close()
        self.shut_at = time.monotonic()  # (asyncio.run then waits for the threads still running: _serve)

    # -- discovery and liveness ----------------------------------------------------------------------
    def my_record(self, fresh: bool = False) -> PeerRecord:
        """This node's signed record, re-issued when a third of its lifetime has passed (or `fresh`)."""
        now = now_ms()
        last = self.own_record.issued if self.own_record else None
        issued = next_issued(last, now)
        if fresh and issued is None:
            issued = max(now, last + 1)
        if issued is not None:
            addrs = [self.opts.advertise] if self.opts.advertise else self.relayed_addrs or [self.listen]
            self.own_record = make_record(self.identity, self.opts.network, addrs[0],
                                          self.kinds, self.models, self.sandboxed, issued, alt=addrs[1:],
                                          rates=self.opts.rates, fetch_models=self.fetch_allowance,
                                          offer=self.owner.limits.offer(bool(self.owner.paused)))
            self.twins.signed(self.own_record)
        return self.own_record

    def _own_record_seen(self, rec: PeerRecord, via: str) -> None:
        """A record of this node's own key, passed on by a peer (gossip, the DHT): proof that another
        process holds the key when this one did not sign it (mesh.node.twin)."""
        twin = self.twins.check(rec, via, now_ms(), self.receiver.floor_ms,
                                lambda r: check_record(r, self.opts.network, now_ms()))
        if twin is None:
            return
        if self.twins.count == 1:
            # peers hold whichever record was issued last and pass it on: re-issue ours, once, so that they
            # hand it to the other holder, which then finds out too (each side re-issues on its first only)
            self.republish()
        if self.twins.count <= 3:  # (each further record is counted, not logged)
            log.error("another node runs with this node's key: a record it signed, issued %.0f s after this "
                      "node started, names %s (passed on by %s). A copied home? Run the copy on a home of its own "
                      "(`mesh init --home DIR`); if nobody copied it, the key was stolen: move to a new home",
                      (twin.issued_ms - self.receiver.floor_ms) / 1000, ", ".join([twin.addr, *twin.alt]), via[:12])

    def republish(self) -> None:
        """Re-issue this node's record now and hand it to every linked peer (a new address, the owner's
        new limits, a pause): peers act on it at once instead of at the next re-issue."""
        self.my_record(fresh=True)
        hello = self.hello()
        for peer in self.peers:
            if peer.connected:
                self.send(peer, "hello", hello)

    # -- the owner's say ------------------------------------------------------------------------------
    def pause(self, reason: str) -> dict:
        """`mesh pause`: no new steps (running ones finish and are paid), peers told at once so placement
        skips this node, unpunished; kept across restarts. `reason` '' resumes (the hours or idleness may
        still hold it: the status says)."""
        if self.owner.pause(reason):
            self._pause_changed()
        return self.owner.status()

    def _pause_changed(self) -> None:
        paused = self.owner.paused
        log.info("%s", f"paused: {paused}" if paused else "resumed: taking steps again")
        print(f"paused: {paused}" if paused else "resumed: taking steps again", flush=True)
        self.republish()

    def reload_owner(self) -> None:
        """SIGHUP: node.toml read again; the limits it sets (where no flag overrides them) take effect at
        once: the cgroups' figures, the slots, the hours, and the record peers place by. A bad file
        changes nothing."""
        try:
            new = self.owner.reload()
        except ConfigError as exc:
            log.error("node.toml not applied: %s", exc)
            print(f"node.toml not applied: {exc}", flush=True)
            return
        self.worker.set_limits(new.limits(self.gateway.limits))
        log.info("limits now: %s", new.describe())
        print(f"limits now: {new.describe()}", flush=True)
        self.owner.tick(time.localtime())
        self.republish()

    async def _watch_owner(self) -> None:
        """--hours and --when-idle: look at the clock and the machine every OWNER_WATCH_S."""
        while True:  # (in a thread: the idle probe reads every process and may ask logind)
            if await asyncio.to_thread(self.owner.tick, time.localtime()):
                self._pause_changed()
            await asyncio.sleep(OWNER_WATCH_S)

    def _room(self, linked: int | None = None, chosen: int | None = None) -> bool:
        """Whether to link to one more peer on our own initiative (asked-for links are always made): see
        peers.room_to_dial. `linked`, `chosen`: the heartbeat's own counts (taken once a beat, plus the dials it started):
        counting the table for every peer made each beat quadratic, and 1,449 gossiped peers froze the loop."""
        return room_to_dial(sum(p.connected for p in self.peers) if linked is None else linked,
                            sum(p.chosen for p in self.peers) if chosen is None else chosen, self.opts.max_links)

    def _my_turn(self, peer: Peer, now: float, linked: int | None = None, chosen: int | None = None) -> bool:
        """Whether to dial `peer` on our own initiative now."""
        return (bool(peer.addr) and peer.state != "left" and now >= peer.next_dial and not peer.connected
                and peer.dials_first(self.identity.public_key, now) and self._room(linked, chosen))

    def _dial_peer(self, peer: Peer, now: float) -> None:
        peer.next_dial = now + HEARTBEAT_S * 2  # not again while this dial may be under way
        self.spawn(self._dial(peer.addr, peer.key))

    def offers(self) -> list[str]:
        """What this node announces in the DHT, in Step.needs terms."""
        return [k for k in self.kinds if k != "llm"] + [f"llm:{m}" for m in self.models]

    async def _discover(self) -> None:
        """Keep our record and offers in the DHT, and find workers for what jobs need there instead of
        from every peer's gossip: providers of each capability, their signed records checked, dialled
        while we have room."""
        if not hasattr(self.gateway.transport, "find"):
            return
        await asyncio.sleep(DISCOVER_FIRST_S)
        published = -1
        wait: dict[str, float] = {}  # capability → seconds until it is looked for again
        due: dict[str, float] = {}
        while True:
            try:
                record = self.my_record()
                if record.issued != published:  # a new record (every TTL/3, or a new address): put it out
                    await self.gateway.transport.publish(record, self.offers())
                    published = record.issued
                # python workers always (most jobs have python steps: the first should not wait for a
                # walk), others only while a job here needs them: every node walked the DHT for llm and
                # scrape as it started, on a loaded machine, for jobs it never had
                wanted = {"python"} | {self._dht_capability(n) for n in self.submitter.needs()}
                for cap in sorted(wanted):
                    if time.monotonic() < due.get(cap, 0.0):
                        continue
                    found = await self._find_workers(cap)
                    # Nothing new: ask again later and later (each query opens ~20 DHT streams).
                    wait[cap] = DISCOVER_EVERY_S if found else min(3600.0, wait.get(cap, DISCOVER_EVERY_S) * 2)
                    due[cap] = time.monotonic() + wait[cap]
            except (ValueError, ConnectionError) as exc:  # a record refused, the libp2p thread stopping
                log.info("discovery round failed: %s", exc)
            await asyncio.sleep(DISCOVER_FIRST_S)

    async def find_workers(self, want: dict[str, int]) -> None:
        """A new job needs `want[cap]` workers of each capability: for those the linked peers cannot
        supply, look in the DHT now, not at the next discovery round, and wait up to FIND_WAIT_S for the
        links (the core gives a step up when it starts with too few workers). One walk per capability at
        a time, however many jobs ask."""
        if not hasattr(self.gateway.transport, "find"):
            return

        def short() -> list[str]:
            have = self.candidates()
            return [cap for cap, n in want.items() if len(have.get(cap, ())) < n]

        caps = short()
        if not caps:
            return
        log.info("looking for workers in the DHT (%s): up to %g s", ", ".join(caps), FIND_WAIT_S)
        deadline = time.monotonic() + FIND_WAIT_S
        for cap in caps:
            if cap not in self.finding:
                task = self.finding[cap] = self.spawn(self._find_workers(self._dht_capability(cap)))
                task.add_done_callback(lambda _, cap=cap: self.finding.pop(cap, None))
        searches = [self.finding[cap] for cap in caps if cap in self.finding]
        if searches:  # (asyncio.wait cancels none of them, on its timeout or when this job's driver stops)
            done, pending = await asyncio.wait(searches, timeout=FIND_WAIT_S)
            if not pending and not any(not t.cancelled() and t.exception() is None and t.result() for t in done):
                return  # the DHT named nobody new to dial: the core may say at once that the mesh has too few
        while short() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    @staticmethod
    def _dht_capability(cap: str) -> str:
        """Step.needs as announced in the DHT: the default model by its SHA-256."""
        return f"llm:{default_model_sha()}" if cap == "llm:default" else cap

    async def _find_workers(self, cap: str) -> int:
        """Keep providers of `cap` linked on WANT_PER_CAP network prefixes (or, on fewer prefixes, WANT_PER_CAP
        of them), whatever --max-links says (placement needs them): dial those gossip already named, and
        only when they are too few, find more in the DHT (a walk costs each of ~20 peers a stream; their
        records are checked: the DHT is hearsay). Returns how many are being dialled."""
        default = default_model_sha()
        offering = [p for p in self.peers if p.record is not None and p.state != "left"
                    and cap in p.capabilities(default)]
        linked = [p for p in offering if p.connected and p.state == "up"]
        have = {self.observed_prefix(p) for p in linked}
        if len(have) >= WANT_PER_CAP:
            return 0
        now = time.monotonic()
        named = [(self.observed_prefix(p), p) for p in offering if not p.connected and not p.failures]
        missing = max(WANT_PER_CAP - len(have) - len({q for q, _ in named} - have),
                      WANT_PER_CAP - len(linked) - len(named))
        if missing > 0:  # fewer named than wanted: by prefixes, or by ids on a mesh of few prefixes
            known = frozenset(p.key for p in self.peers if p.record is not None)  # no record lookup for these
            for rec in await self.gateway.transport.find(cap, missing, known):
                if rec.key == self.identity.public_key.hex():
                    self._own_record_seen(rec, "the DHT")
                    continue
                peer, why = self.peers.learn(rec, now_ms())
                if why:
                    self.receiver.count(why)
                elif peer is not None and not peer.connected:
                    named.append((self.observed_prefix(peer), peer))
        dialled = 0
        for peer in to_dial(named, have, len(linked), WANT_PER_CAP):
            if peer.key in self.dialling:  # the heartbeat's dial of it is under way
                dialled += 1
            elif now >= peer.next_dial:
                dialled += 1
                self._dial_peer(peer, now)
        return dialled

    def _on_relayed_address(self, addrs: list[str]) -> None:
        """Peers cannot dial us, and relays hold slots for us (or one of them was lost): publish our
        circuits through them at once, the first as `addr` and the others as alternatives."""
        addrs = addrs[:1 + MAX_ALT]
        if addrs == self.relayed_addrs or self.opts.advertise:
            return
        log.info("unreachable from outside: advertising %s", " and ".join(addrs) or "no relay (none holds a slot)")
        self.relayed_addrs = addrs
        self.republish()

    def _on_direct(self, key: bytes) -> None:
        """A peer we reached through a relay now has a direct (hole-punched) link: open our stream on it
        before the relayed one is closed, so no step sees the peer go away."""
        peer = self.peers.get(key)
        if peer is not None and not any(c.open and c.kind != "relayed" for c in peer.conns) and peer.addr:
            self.spawn(self._dial(peer.addr, peer.key))

    def hello(self) -> Hello:
        records = self.peers.records(now_ms())  # a fresh sample each beat, so every peer gets passed on
        return Hello(self.my_record(), self.rng.sample(records, min(MAX_GOSSIP, len(records))))

    async def _heartbeat(self) -> None:
        beat, hello_every = liveness_periods(self.opts.down_after_s)
        while True:
            now = time.monotonic()
            for addr, key in list(self.bootstrap.items()):
                if not any((p.addr == addr or p.key == key) and p.connected for p in self.peers):
                    self.spawn(self._dial(addr, key or ANYONE))
            hello: bytes | None = None  # the same for every peer: built and encoded once per beat
            linked = sum(p.connected for p in self.peers)
            chosen = sum(p.chosen for p in self.peers)
            for peer in self.peers:
                if peer.connected:
                    if now >= peer.next_hello:
                        hello = hello or self.sealer.encode(self.hello())
                        self._send_encoded(peer, "hello", hello)
                        peer.next_hello = now + hello_every * (0.9 + 0.2 * self.rng.random())
                    if now - peer.last_seen > self.opts.down_after_s and peer.state == "up":
                        # asleep, cut off, or behind a relay that drops: its links say nothing and close
                        # nothing, so close them (their replicas move now, not at the 60 s idle limit)
                        # and dial it again, at its next address first
                        log.info("peer %s silent for %.0f s: down, its links closed", peer.node[:12],
                                 now - peer.last_seen)
                        peer.state = "down"
                        for conn in list(peer.conns):
                            conn.drop()
                elif self._my_turn(peer, now, linked, chosen):
                    self._dial_peer(peer, now)
                    linked, chosen = linked + 1, chosen + 1
            floor = start_floor(self.receiver.floor_ms, now_ms(), since_boot_s() - self.started_boot_s)
            if floor != self.receiver.floor_ms:
                log.warning("the wall clock was set back %.0f s since this node started: envelopes stamped "
                            "since the start as the clock now reads it are taken", (self.receiver.floor_ms - floor) / 1000)
                self.receiver.floor_ms = floor
            for peer in self.peers.expire(now_ms()):
                log.info("forgot peer %s: its record expired", peer.node[:12])
            self._save_peers()
            self.held.save()
            if now >= self.next_head_share:
                self.next_head_share = now + HEAD_SHARE_S
                self.spawn(self._share_head())
            if now >= self.next_testimony:
                self.next_testimony = now + self.opts.testimony_s
                self._testimony_round()
            await asyncio.sleep(beat)

    def _save_peers(self) -> None:
        """Remember peers' signed records, so a restarted node finds the mesh again without a bootstrap;
        written (each heartbeat at most) only when the table took or forgot a record since the last."""
        if self.peers.version == self._saved_peers:
            return
        records = [dataclasses.asdict(p.record) for p in self.peers if p.record]
        write_private(self.opts.home / PEERS_FILE, json.dumps(records, sort_keys=True))
        self._saved_peers = self.peers.version

    def _load_peers(self) -> None:
        for item in read_peers(self.opts.home):
            try:
                rec = parse(PeerRecord, item, "peer record")
            except Rejected:
                continue
            self.peers.learn(rec, now_ms())  # verified like any gossip: a tampered file teaches nothing

    async def _dial(self, addr: str, key: bytes) -> Connection | None:
        """Link to a peer; while a dial of it is under way, wait for that one (a second would open a
        second link). The dial is the node's task: a caller that gives up does not cancel it."""
        who = addr if key == ANYONE else key
        task = self.dialling.get(who)
        if task is None:
            task = self.dialling[who] = self.spawn(self._dial_once(addr, key))
            task.add_done_callback(lambda _: self.dialling.pop(who, None))
        return await asyncio.shield(task)

    async def _dial_once(self, addr: str, key: bytes) -> Connection | None:
        try:
            self.gateway.transport.gate.check(addr)
        except AddressRefused as exc:  # an address we do not dial: try its others, if none, not before it moves
            peer = self.peers.get(key)
            if peer is not None:
                peer.dial_failed(addr, time.monotonic(), 0.5 + self.rng.random())
                if not any(self.gateway.transport.gate.allows(a) for a in peer.addrs):
                    peer.next_dial = time.monotonic() + RECORD_TTL_MS / 1000
            log.info("not dialling %s: %s", addr[:120], exc.reason)
            return None
        try:
            conn = await self.gateway.dial(addr, None if key == ANYONE else key)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            peer = self.peers.get(key)
            if peer is not None:
                peer.dial_failed(addr, time.monotonic(), 0.5 + self.rng.random())
                if peer.state == "up":
                    peer.state = "down"
            log.info("cannot reach %s: %s", addr, exc)
            return None
        self.gateway.send(conn, "hello", key, self.hello())
        peer = self.peers.get(key)
        if peer is not None:
            peer.conns.add(conn)
        return conn

    def send(self, peer: Peer, kind: str, payload: object) -> bool:
        return self._send_encoded(peer, kind, self.sealer.encode(payload))

    def _send_encoded(self, peer: Peer, kind: str, encoded: bytes) -> bool:
        conn = peer.best_conn(self.identity.public_key)
        if conn is None:
            return False
        frame = self.sealer.seal_encoded(kind, peer.key, encoded, now_ms())
        if self.opts.fault == "forge" and kind == "result":
            frame = _forge(frame)
        return conn.deliver(frame)

    def _backlog(self, peer: Peer) -> int:
        """Bytes sent to `peer` on the link it is sent on that it has not read yet."""
        conn = peer.best_conn(self.identity.public_key)
        return conn.backlog if conn is not None else 0

    async def send_dialling(self, peer: Peer, kind: str, payload: object) -> bool:
        if self.send(peer, kind, payload):
            return True
        if peer.addr and await self._dial(peer.addr, peer.key) is not None:
            return self.send(peer, kind, payload)
        return False

    # -- ledger heads kept by peers --------------------------------------------------------------------
    def _head_keepers(self) -> list[Peer]:
        """The peers given this node's ledger head: the HEAD_KEEPERS linked peers of best reputation (the
        same ones while that holds, so each keeps a run of heads)."""
        up = sorted(self.peers.up(), key=lambda p: (-self.reputation_of(p.node), p.node))
        return up[:HEAD_KEEPERS]

    async def _share_head(self) -> None:
        """Give the ledger's newest signed head to the keepers that do not have it yet (read again only
        after a write: an idle node does not open its ledger every HEAD_SHARE_S)."""
        def latest() -> LedgerHead | None:
            led = Ledger(self.opts.home / LEDGER_FILE, readonly=True)
            try:
                head = led.latest_head()
            finally:
                led.close()
            return LedgerHead(head.n, head.hash, head.sig) if head else None

        if self.head_stale:
            self.head_stale = False
            try:
                self.head = await asyncio.to_thread(latest)
            except (OSError, sqlite3.Error) as exc:
                self.head_stale = True
                log.warning("cannot read the ledger's head to share it: %s", exc)
                return
        head = self.head
        for peer in self._head_keepers() if head else []:
            if self.head_given.get(peer.key, -1) < head.n and self.send(peer, "head", head):
                self.head_given[peer.key] = head.n

    async def peer_heads(self, wait: float) -> dict:
        """Ask every linked peer which heads of this node's ledger it holds; wait up to `wait` seconds
        for the answers (`mesh ledger verify --peers` checks the chain against them)."""
        nonce = uuid.uuid4().hex
        asked = {p.key for p in self.peers.up() if self.send(p, "head-ask", HeadAsk(nonce))}
        ask = self.head_asks[nonce] = HeadAsking(asked)
        try:
            if ask.asked:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ask.all_in.wait(), wait)
        finally:
            del self.head_asks[nonce]
        return {"asked": sorted(node_id_of(k) for k in ask.asked),
                "answers": [{"peer": node_id_of(k), "heads": [dataclasses.asdict(h) for h in heads]}
                            for k, heads in sorted(ask.answers.items())]}

    def _on_head_message(self, peer: Peer, kind: str, payload: object) -> None:
        if kind == "head":  # a peer's own head, to keep
            why = self.held.take(peer.key, payload, time.monotonic(), self.observed_prefix(peer))
            if why:
                self.receiver.count(why)
        elif kind == "head-ask":
            self.send(peer, "head-held", HeadHeld(payload.nonce, self.held.of(peer.key)))
        else:  # head-held: an answer, taken only from a peer asked under that nonce
            ask = self.head_asks.get(payload.nonce)
            if ask is not None and peer.key in ask.asked:
                ask.answered(peer.key, payload.heads)
            else:
                self.receiver.count("unasked-heads")

    # -- gateway events ------------------------------------------------------------------------------
    def screen(self, key: bytes, kind: str, payload: object) -> str:
        """Why a frame of `kind` on a link proven to be `key`'s is refused before its signature is checked
        ('' : it is read in full): an ask this node would drop for its sender's rate anyway. Read in full, each
        was a signature, a schema and a task: 30 s of one peer's manifest asks (5,540) cost 5.99 s of CPU (found
        by this project's third attack round, 2026-12-07). `payload` is as decoded, unchecked: only a
        well-formed ask is screened; anything else is read and refused in full."""
        if kind == "model-ask" and isinstance(payload, dict) and type(payload.get("part")) is int:
            peer = self.peers.get(key)  # (a key that sent no hello: read, and refused as unknown-peer)
            return "" if peer is None or self.model_server.admits(peer, payload["part"]) else "model-ask-rate"
        if kind == "testimony-ask" and self.opts.fault != "slander":
            return "" if self.testimonies.answers(node_id_of(key)) else "testimony-rate"
        if kind == "receipt-ask":
            return "" if self.submitter.outbox.answers(node_id_of(key)) else "receipt-ask-rate"
        return ""

    def on_envelope(self, env: Envelope, conn: Connection) -> None:
        now = now_ms()
        if env.ts_ms > now:  # stamped ahead of our clock: the restart floor would not cover it
            self.replay_store.remember(env.sender, env.seq, env.ts_ms, now)
        if env.sender == self.identity.public_key:
            self.receiver.count("from-self")
            log.warning("dropping %s: from-self: an envelope signed with this node's own key", conn.label)
            conn.close()
            return
        if env.kind == "hello":
            self._on_hello(env, conn)
            return
        peer = self.peers.get(env.sender)
        if peer is None or peer.record is None:  # work and receipts only from peers that introduced themselves
            self.receiver.count("unknown-peer")
            # counted on its link as a rejection, so a key that sends no hello is dropped after a few, and
            # logged once a link: logged each time, one such key wrote 200 lines a second to node.log
            conn.rejections += 1
            if conn.rejections == 1:
                log.warning("rejected %s on %s: unknown-peer: %s sent no hello", env.kind, conn.label, env.sender_id[:12])
            if conn.rejections == self.gateway.limits.max_rejections:  # (frames read with it still come)
                log.warning("dropping %s: too-many-rejections: %d, the last from %s, which sent no hello",
                            conn.label, conn.rejections, env.sender_id[:12])
                conn.close()
            return
        self.receiver.promote(env.sender, now)
        peer.conns.add(conn)
        peer.last_seen, peer.skew_ms = time.monotonic(), env.ts_ms - now
        self._on_peer_message(peer, env, now)

    def _on_peer_message(self, peer: Peer, env: Envelope, now: int) -> None:
        """An envelope from a peer that introduced itself, to whoever handles its kind."""
        if env.kind == "step":
            self.spawn(self.worker.work(peer, env.payload))
        elif env.kind == "cancel":
            self.worker.cancel(peer.node, env.payload.job, env.payload.steps, "cancelled: its submitter no longer needs it")
        elif env.kind == "result":
            self.submitter.on_result(peer, env.payload, env)
        elif env.kind == "progress":
            self.submitter.on_progress(peer, env.payload)
        elif env.kind == "receipt":
            self.spawn(self.worker.on_receipt(peer, env.payload))
        elif env.kind == "receipt-ack":
            self.submitter.on_receipt_ack(peer, env.payload)
        elif env.kind == "receipt-ask":
            self.submitter.on_receipt_ask(peer, env.payload)
        elif env.kind in ("head", "head-ask", "head-held", "testimony-ask", "testimony", "outvoted"):
            self._on_peer_knowledge(peer, env.kind, env.payload, now)
        elif env.kind == "model-ask":
            self.spawn(self.model_server.serve(peer, env.payload))
        elif env.kind in ("model-manifest", "model-part"):
            self.fetcher.on_answer(peer.node, env.kind, env.payload)
        elif env.kind == "bye":
            peer.state = "left"
            log.info("peer %s left", peer.node[:12])
            for c in list(peer.conns):
                c.close()

    def _refuse_hello(self, conn: Connection, why: str, what: str) -> None:
        """A hello whose record is refused ends its link: kept, the link counted as a proven peer's, and
        hellos of keys without id-work held 519 links of a node's 512, so no newcomer got in (found by this
        project's attack round, 2026-12-06). Counted and logged as before; no penalty is written."""
        self.receiver.count(why)
        log.warning("rejected hello on %s: %s: %s; link closed", conn.label, why, what)
        conn.close()

    def _on_hello(self, env: Envelope, conn: Connection) -> None:
        hello: Hello = env.payload
        if hello.record.key != env.sender.hex():
            self._refuse_hello(conn, "bad-record", "its record is another key's")
            return
        now = now_ms()
        held = self.peers.get(env.sender)
        where = held.addrs if held is not None else None
        changed, why = self.peers.learn(hello.record, now, own=True)
        if why == "record-rate":  # re-issued too soon: the record held still serves, and the link stays
            self.receiver.count(why)
        elif why:
            self._refuse_hello(conn, why, "its sender's own record")
            return
        if changed is not None and changed.addrs != where:
            # a new peer, or one at new addresses: on disk at once (a node killed right after still finds
            # it). A mere re-issue waits for the heartbeat: a peer re-signing its record on every hello
            # made the node rewrite its whole table 150 times a second (half its loop, py-spy)
            self._save_peers()
        peer = self.peers.get(env.sender)
        if peer is None:
            return
        self.receiver.promote(env.sender, now)
        fresh, new_link = peer.state != "up", conn not in peer.conns
        peer.state, peer.last_seen, peer.failures = "up", time.monotonic(), 0
        peer.skew_ms = env.ts_ms - now
        peer.conns.add(conn)
        if fresh or new_link:  # linked (again): what each side owes the other can move now
            self.submitter.on_peer_up(peer.node)
            self.worker.on_peer_up(peer)
        self._proven(peer, conn)
        for addr, key in list(self.bootstrap.items()):
            if addr == peer.addr or key == peer.key:
                del self.bootstrap[addr]
        if fresh or new_link:  # answered once a link (each answer was a log line and our whole signed hello,
            # and one key sent 50 a second on one link). Every new link, not only a dial that did not name us:
            # our heartbeat's hellos go on one link of a peer's, and a second process with the peer's key (a
            # copied home) redialling us by key heard nothing from us, so never learned of the first
            self.gateway.send(conn, "hello", env.sender, self.hello())
            if fresh or env.recipient == ANYONE:
                log.info("peer %s up at %s (%s)", peer.node[:12], peer.addr, ",".join(peer.kinds))
        self._take_gossip(hello.peers[:MAX_GOSSIP], peer, conn, now)

    def _take_gossip(self, records: list[PeerRecord], peer: Peer, conn: Connection, now: int) -> None:
        """The records a hello passes on: each new key within the sender's gossip rate, checked, learned,
        and dialled when it is this node's turn; one of this node's own key is looked at for another holder."""
        source = prefix_of_ip(conn.remote_ip) if conn.remote_ip else conn.label
        mine = self.identity.public_key.hex()
        for rec in records:
            if rec.key == mine:
                self._own_record_seen(rec, peer.node)
                continue
            if (not self.peers.knows(rec.key)
                    and not self.gossip_limit.take(peer.key, source, time.monotonic())):
                self.receiver.count("gossip-rate")  # counted, not logged: the log would be the flood
                continue
            learned, why = self.peers.learn(rec, now)
            if why:
                self.receiver.count(why)
                if why != "record-rate":  # (counted, not logged: the log would be the flood)
                    log.warning("rejected gossip on %s: %s: record of %r", conn.label, why, rec.key[:12])
            elif learned is not None and self._my_turn(learned, time.monotonic()):
                self._dial_peer(learned, time.monotonic())

    def _proven(self, peer: Peer, conn: Connection) -> None:
        """A valid hello on `conn`: tell the dial budget where this key lives: the address we dialled it
        at, or the host its link comes from (its record's address only when on that host). Not the
        record's address on a link we dialled: a key that answered a dial, or took a stream on a link it
        had opened itself, and then named a victim's address in its hello had that address proven, and
        dialled past the budget."""
        budget = self.gateway.transport.gate.budget
        if conn.dialled:
            budget.succeeded(first_hop(conn.dialled), peer.key)
        elif conn.remote_ip and conn.kind != "relayed":
            budget.connected_in(conn.remote_ip, first_hop(peer.addr) if peer.addr else None, peer.key)

    def on_disconnect(self, conn: Connection) -> None:
        for peer in self.peers:
            if conn in peer.conns:
                peer.conns.discard(conn)
                if conn.silent and conn.outbound and peer.addr:
                    # it took our link and never said hello: a failed handshake backs off like a
                    # failed connect (80 such peers were redialled every 20 s)
                    now = time.monotonic()
                    wait = self.gateway.transport.gate.budget.silent(first_hop(peer.addr), peer.key, now)
                    peer.dial_failed(peer.addr, now, 0.5 + self.rng.random())
                    peer.next_dial = max(peer.next_dial, now + wait)
                if not peer.connected:
                    if peer.state == "up":
                        peer.state = "down"
                    self.submitter.on_node_lost(peer.node, "connection lost")
                    self.worker.drop(peer.node, "cancelled: its requester disconnected")

    def on_abuse(self, conn: Connection, reason: str) -> None:
        """A peer with a valid key broke the rules on its connection: that costs it reputation."""
        peer = self.peers.get(conn.peer_key) if conn.peer_key else None
        if peer is not None:
            self._penalise(peer.node, reason)

    def _penalise(self, node: str, reason: str) -> None:
        """A penalty in the ledger, one per peer per PENALTY_EVERY_S at most: each is a row the append-only
        ledger keeps for good, and one key that reconnected to break the rules again wrote 41 in 32 s
        (found by this project's attack round on workers). Its links are dropped all the same."""
        now = time.monotonic()
        if now - self.penalised.get(node, -PENALTY_EVERY_S) < PENALTY_EVERY_S:
            log.info("peer %s broke the rules again (%s): penalised within the last minute already", node[:12], reason)
            return
        self.penalised.pop(node, None)
        self.penalised[node] = now  # (the most recent last)
        while len(self.penalised) > MAX_PENALISED:
            del self.penalised[next(iter(self.penalised))]
        log.warning("peer %s penalised: %s", node[:12], reason)
        entry = Entry("penalty", "gateway", f"{reason}@{now_ms()}", node, 0.0, {"reason": reason})
        self.spawn(self.record([entry]))

    # -- models shared with peers --------------------------------------------------------------------
    def _tell(self, node: str, kind: str, payload: object) -> bool:
        peer = self.peers.by_node(node)
        return peer is not None and self.send(peer, kind, payload)

    def _expect_bytes(self, node: str, amount: int, cap: int) -> None:
        """This node asked `node` for `amount` bytes: each of its links may send them past its byte rate."""
        peer = self.peers.by_node(node)
        for conn in peer.conns if peer is not None else ():
            conn.bytes.grant(amount, cap)

    def _holders(self, sha: str) -> list[str]:
        """Linked peers that advertise model `sha`, the best reputed first."""
        return [p.node for p in sorted(self.peers.up(), key=lambda p: -self.reputation_of(p.node)) if sha in p.models]

    def _served_models(self) -> dict[str, Path]:
        """The files of the models this node serves, by SHA-256 (what peers may fetch from it)."""
        files = {e.sha256: Path(e.path) for e in Registry(self.opts.home).entries() if e.path}
        for sha in self.models:  # the one loaded as this node's default: --model PATH, or the package's
            if sha not in files:
                files[sha] = self.opts.model or default_model()[0]
        return {sha: path for sha, path in files.items() if sha in self.models}

    async def fetch_for_step(self, sha: str) -> str:
        """--fetch-models: bring in model `sha` a step asks for, from the peers that serve it ('' once it
        is served here, else why not). All such fetches together stay within the operator's allowance, one at
        a time: a stranger's requests naming model after model fill no more disk than that."""
        if sha in self.models:
            return ""
        busy = [f for f in self.fetcher.under_way() if f != sha]
        if busy:
            return f"this node is fetching model {busy[0][:12]} for another step; it fetches one at a time"
        freed = self.fetcher.reclaim(sha)  # (a failed fetch's leftovers: see there)
        if freed:
            log.info("model fetch: %d bytes of failed fetches deleted to make room", freed)
        room = self.fetch_allowance - self.fetcher.bytes_held(sha)
        if room < MODEL_FLOOR:  # (whatever its size, the model will count that much once it is whole)
            return (f"this node's --fetch-models allowance ({self.fetch_allowance:,} bytes) is used up: each "
                    f"model fetched counts at least {MODEL_FLOOR >> 20} MiB, what its runner takes in memory")
        try:
            self.fetcher.start(sha, room)
        except ConfigError as exc:
            return f"cannot fetch model {sha[:12]}: {exc}"
        st = await self.fetcher.wait(sha)
        if st.state != "done" or sha not in self.models:
            return f"fetching model {sha[:12]} failed: {st.error or st.state}"
        return ""

    async def install_model(self, sha: str, path: Path, name: str) -> str:
        """A fetched model: registered, then served at once (loaded, advertised in the next hello and in
        the DHT) unless this node runs without models. Its registry name back. The fetch has hashed the file
        to `sha` and checked its structure (ModelFetcher, _check_file): not done again, and the registry's
        file work is off the event loop (a hash of a large model held it for seconds)."""
        entry = await asyncio.to_thread(Registry(self.opts.home).add, path, name or f"fetched-{sha[:12]}", sha)
        if self.opts.load_model and sha not in self.models:
            reply = await self.bridge.ask(LoadModel(str(path), sha, self.opts.threads), 180)
            if not isinstance(reply, ModelLoaded) or reply.error:
                raise ConfigError(f"fetched model {sha[:12]} did not load: {getattr(reply, 'error', reply)}")
            self.models.append(sha)
            if "llm" not in self.kinds:
                self.kinds.insert(0, "llm")
            self.own_record = None  # re-issued with the model at the next hello
        return entry.name

    # -- ledger and placement ------------------------------------------------------------------------
    async def record(self, entries: list[Entry], ts: int | None = None) -> bool:
        """Append entries to the ledger in one batch; on success fold reputation entries into the
        placement view. False (and logged) when the ledger could not take them."""
        try:
            reply = await self.bridge.ask(RecordEntries(uuid.uuid4().hex, entries, ts or now_ms()), LEDGER_ANSWER_S)
        except NoAnswer as exc:  # it may still write them: the next start finds out (Submitter._reconcile)
            reply = EntriesRecorded("", error=f"{exc}; whether it wrote them is known at the node's next start")
        if not isinstance(reply, EntriesRecorded) or reply.error:
            self.ledger_error = getattr(reply, "error", "") or f"unexpected {type(reply).__name__}"
            log.error("ledger write failed; refusing paid work until the node is restarted: %s", self.ledger_error)
            return False
        self.balance += reply.amount  # what was really added: a duplicate the ledger skipped adds nothing
        self.head_stale = True
        if reply.added == len(entries):  # (a batch with a duplicate the ledger skipped: counted at the restart)
            for e in entries:
                measured = e.detail.get("measured") if isinstance(e.detail, dict) else None
                self.accounts[e.peer] = self.accounts.get(e.peer, Account()).add(e.kind, e.amount, measured)
        for e in entries:
            if e.kind in REPUTATION_KINDS:
                self.reputations.fold(e.kind, e.peer, ts or now_ms(), StepEvidence.in_detail(e.detail))
        return True

    def _on_peer_knowledge(self, peer: Peer, kind: str, payload: object, now: int) -> None:
        """What peers keep for each other: ledger heads, testimony about other peers, proofs of wrong answers."""
        if kind == "outvoted":
            self._on_proof(peer, payload, now)
        elif kind == "testimony-ask":
            if self.opts.fault == "slander":  # tests: says every worker asked of gave it a wrong answer just now
                said = [TestimonyItem(w, 0.0, 500.0, 0, 0, now, now) for w in payload.workers if w != peer.node]
                self.send(peer, "testimony", TestimonyTell(said))
            elif (told := self.testimonies.answer(peer.node, payload, now)) is not None:
                self.send(peer, "testimony", told)
        elif kind == "testimony":
            self.testimonies.heard(peer.node, payload, {p.node for p in self.peers}, now)
        else:
            self._on_head_message(peer, kind, payload)

    def _on_proof(self, peer: Peer, proof: Outvoted, now: int) -> None:
        """A proof of a wrong answer: kept when those who outvoted it are trusted here; then what the
        accused answered alone for this node is run again at once, and the proof goes on to the other
        linked peers (only kept ones: a node never amplifies what it would not act on)."""
        if not self.testimonies.proof(peer.node, proof, self.opts.network, {p.node for p in self.peers}, now):
            return
        for worker in self.testimonies.reported():
            self.submitter.on_reported(worker)
        self.spread_proof(proof, skip=(peer.node,))

    def spread_proof(self, proof: Outvoted, skip: tuple[str, ...] = ()) -> None:
        """Tell every linked peer but the accused (and `skip`) of a proof: one encoding, a seal each."""
        accused = node_id_of(bytes.fromhex(proof.accused.sender))
        encoded = self.sealer.encode(proof)
        for peer in list(self.peers.up()):
            if peer.node != accused and peer.node not in skip:
                self._send_encoded(peer, "outvoted", encoded)

    def reputation_of(self, node: str) -> float:
        return self.reputations.score(node, now_ms())

    def _testimony_round(self) -> None:
        """Weigh the issuers on what was heard since the last round; act on new outvote proofs, and on what
        trusted issuers newly say of a worker (mesh.core.trust.Shared.suspected); then ask each linked peer
        about the others (answers come as `testimony` envelopes, see on_envelope)."""
        up = list(self.peers.up())
        self.testimonies.refresh({p.node: self.observed_prefix(p) for p in up}, now_ms())
        for r in self.testimonies.reports(now_ms()):
            (self.submitter.on_reported if r.evidence else self.submitter.on_suspected)(r.worker, r.reason)
        for peer in up:
            ask = self.testimonies.ask(p.node for p in up if p.node != peer.node)
            if ask is not None:
                self.send(peer, "testimony-ask", ask)

    def standing(self, peer: Peer) -> Standing:
        """A requester as this node's worker judges it: reputation here, whether it did work for this
        node (this node paid it), and the network prefix its link really comes from."""
        return Standing(peer.node, self.observed_prefix(peer), self.reputation_of(peer.node),
                        self.accounts.get(peer.node, Account()).paid > 0)

    async def shortage(self, job: Job) -> str:
        """Why the mesh cannot run `job` now ('' when it can), counted as its first placement would count
        workers; when some are missing, after looking for them in the DHT (up to FIND_WAIT_S)."""
        want = {step.needs: job.redundancy for step in job.steps}
        why = shortfall(job, self.candidates(want))
        if why and hasattr(self.gateway.transport, "find"):
            await self.find_workers(want)
            why = shortfall(job, self.candidates(want))
        return why

    def candidates(self, want: Mapping[str, int] | None = None) -> dict[str, list[Candidate]]:
        """Workers by capability. `want`: capabilities a job about to be submitted needs, as if it ran
        (peers that fetch models count for its models too)."""
        out: dict[str, list[Candidate]] = {}
        fetchers: list[Candidate] = []
        now = now_ms()
        default = default_model_sha()
        for peer in self.peers.up():
            offer = peer.record.offer if peer.record else DEFAULT_OFFER
            if offer.paused or self.submitter.blacklisted(peer.node):  # (paused by its owner: skipped, unpunished)
                continue
            prefix = self.observed_prefix(peer)
            standing = self.testimonies.standing(peer.node, now)  # own record and weighed testimony
            rep = standing.evidence.score(now)
            cand = Candidate(peer.node, rep, prefix, standing.streak, reputation_group(prefix, rep),
                             capped(peer.record.rates if peer.record else DEFAULT_RATES, self.opts.max_rates),
                             standing.evidence.good, offer.per_peer)
            for cap in peer.capabilities(default):
                out.setdefault(cap, []).append(cand)
            if peer.record is not None and peer.record.fetch_models > 0:
                fetchers.append(cand)
        if fetchers:
            self._add_fetchers(out, fetchers, want or {})
        return out

    def _add_fetchers(self, out: dict[str, list[Candidate]], fetchers: list[Candidate],
                      want: Mapping[str, int]) -> None:
        """Peers that fetch models (--fetch-models) become candidates for a model's steps while fewer peers
        hold it than a running job's redundancy and some linked peer serves it to fetch from; with enough
        holders, nobody is made to fetch."""
        wanted = self.submitter.wanted()
        for cap, most in want.items():
            wanted[cap] = max(most, wanted.get(cap, 0))
        for cap, most in wanted.items():
            if not cap.startswith("llm:"):
                continue
            holders = out.get(cap, [])
            if len(holders) >= most or not holders:  # (no holder: nobody to fetch it from)
                continue
            held = {c.node for c in holders}  # (a peer holding the model offers its cap: it is among them)
            out[cap] = holders + [c for c in fetchers if c.node not in held]

    def observed_prefix(self, peer: Peer) -> str:
        """The network prefix replicas are spread by: that of the address the peer really connects
        from, never the one it advertises (20 sybils on one machine advertised 20 /24s and were spread
        over as if diverse); the advertised one only while unlinked. A link through a relay shows no
        address of the peer's own: every such peer is one group, UNKNOWN_PREFIX (grouped by its circuit
        address, which ends in its own id, each sybil behind one relay-only machine was a prefix of its
        own: red team H, 2026-12-08)."""
        conn = peer.best_conn(self.identity.public_key)
        if conn is None:
            return prefix_of(peer.addr)
        return prefix_of_ip(conn.remote_ip) if conn.remote_ip else UNKNOWN_PREFIX

    def reachability(self) -> str:
        """public | private | unknown: whether peers can dial this node (AutoNAT's verdict, when run)."""
        return getattr(self.gateway.transport, "reachability", "unknown")

    def metrics(self) -> dict:
        """What /metrics adds to the status: the tally, and the credits this node's ledger holds."""
        return {**self.tally.snapshot(), "credits_earned": round(sum(a.earned for a in self.accounts.values()), 6),
                "credits_paid": round(sum(a.paid for a in self.accounts.values()), 6)}

    def _worked(self, key: tuple[str, str, str], kind: str, outcome: str, seconds: float | None, why: str) -> None:
        """A step a peer asked of this node ended: into the lifetime counts (/metrics) and the recent list
        (the dashboard)."""
        self.tally.step_worked(kind, outcome, seconds)
        self.worklog.add(key, kind, outcome, why)

    def work(self) -> dict:
        """The dashboard's view of the steps run for peers (mesh.node.worklog), and what they use of the
        owner's limits where the node can measure it (the owner's memory group; the CPU share its cap's
        accounting group used since the last look)."""
        cap = self.owner.cap
        return {**self.worklog.view(self.worker.owed.unpaid, time.time()),
                "use": {"slots": self.worker.slots.use(), "memory": cap.memory_used() if cap else None,
                        "cpu": cap.cpu_share() if cap else None}}

    def status(self) -> dict:
        now_mono, now_wall, now = time.monotonic(), time.time(), now_ms()
        peers = [{
            "node": p.node, "address": p.addr, "state": p.state, "connected": p.connected,
            "last_seen": round(now_wall - (now_mono - p.last_seen), 3) if p.last_seen else None,
            "reputation": round(self.reputation_of(p.node), 6),
            "standing": round(self.testimonies.standing(p.node, now).evidence.score(now), 6),
            "models": p.models, "kinds": p.kinds,
            "connection": best.kind if (best := p.best_conn(self.identity.public_key)) else None,
            "offer": dataclasses.asdict(p.record.offer) if p.record else None,  # its owner's limits, as signed
            "rates": dataclasses.asdict(p.record.rates) if p.record else None,  # its card, as signed (uncapped)
            "clock_skew_ms": p.skew_ms,
            "prefix": self.observed_prefix(p),  # the group placement, testimony and admission count it in
        } for p in sorted(self.peers, key=lambda p: p.node)]
        jobs = self.submitter.jobs
        return {"node": self.id, "key": self.identity.public_key.hex(), "network": self.opts.network,
                "listen": self.listen, "transport": self.gateway.transport.kind,
                "addresses": self.gateway.addresses, "advertised": [rec.addr, *rec.alt] if (rec := self.own_record) else [],
                "reachability": self.reachability(), "kinds": self.kinds, "models": self.models,
                "fetch_models": self.fetch_allowance, "sandbox": self.sandboxed,
                "sandbox_problem": self.sandbox_problem or None, **self.owner.status(),
                "fault": self.opts.fault or None, "peers": peers, "rejected": dict(self.receiver.rejected),
                "testimony": self.testimonies.status(),
                "balance": round(self.balance, 6), "credit_line": self.opts.credit_line, "spot_rate": self.opts.spot_rate,
                "rates": dataclasses.asdict(self.opts.rates), "max_rates": dataclasses.asdict(self.opts.max_rates),
                "ledger_error": self.ledger_error or None, "journal_error": self.journal.error or None,
                "receipts_unacknowledged": self.submitter.outbox.pending(),
                "key_in_use_elsewhere": self.twins.status(),
                "discovery": getattr(self.gateway.transport, "discovery_stats", dict)(),
                "relayed_bytes": getattr(self.gateway.transport, "relayed_bytes", 0),
                "dials_refused": dict(self.gateway.transport.gate.refused),
                "links_refused": dict(getattr(self.gateway.transport, "refused", {})),
                "jobs": {"running": sum(not s.run.finished for s in jobs.values()), "total": len(jobs)},
                "worker": self.worker.use()}


def run_node(opts: NodeOptions) -> None:
    """Start everything, serve until SIGINT/SIGTERM, stop everything. Raises ConfigError for bad set-up."""
    model_sha = _check_options(opts)
    lock = lock_home(opts.home)  # before anything is written in the home; held until the node is gone
    try:
        reason = _start(opts, model_sha)
    finally:
        os.close(lock)
    print(f"stopped: {reason}", flush=True)


def _start(opts: NodeOptions, model_sha: str) -> str:
    identity, _ = load_or_create(opts.home)
    try:
        os.chmod(opts.home, 0o700)  # the step user (and anyone else) must not read the ledger or the logs
        identity = ensure_work(opts.home, identity, lambda line: print(line, flush=True))
    except OSError as exc:
        raise ConfigError(f"cannot use {opts.home} as this node's home ({exc.strerror}): it keeps its ledger, "
                          "job journal and logs there, so it must be writable") from None
    user = step_user(opts.home, identity.node_id)
    cgroup.sweep_stale()  # what nodes killed on this machine left behind
    for (host, port), what in ((opts.listen, "peer"), (opts.api, "API")):
        bind(host, port, what).close()  # fail fast, before forking the actor system
    flags = {"cpu": opts.max_cpu, "memory": opts.max_memory, "steps": opts.max_steps, "hours": opts.hours,
             "idle": opts.when_idle}
    limits = owner_mod.resolve(opts.home, flags)
    cap = _owner_cap(opts, limits, identity.node_id)
    try:
        return _run(opts, identity, user, model_sha, Owner(opts.home, flags, limits, cap, Probe()), cap)
    finally:
        if cap is not None and (left := cap.close()):
            log.warning("stopping: could not remove the owner's cap groups %s (the next node started here "
                        "removes them)", ", ".join(map(str, left)))


def _owner_cap(opts: NodeOptions, owner: OwnerLimits, node_id: str) -> cgroup.OwnerCap | None:
    """--max-cpu and --max-memory: the groups every python step (and, for the CPU, every model runner) of
    this node joins; a model runner's threads follow the CPU cap (more threads only wait for quota)."""
    if not (owner.cpu or owner.memory):
        return None
    try:
        cap = cgroup.OwnerCap(f"{node_id[:12]}-{os.getpid()}", owner.cpu, owner.memory)
    except cgroup.CapError as exc:
        flags = " and ".join(f for f, v in (("--max-cpu", owner.cpu), ("--max-memory", owner.memory)) if v)
        raise ConfigError(f"{flags} cannot be enforced on this machine: {exc}") from None
    if owner.cpu:
        opts.threads = min(opts.threads, cap.threads) if opts.threads else min(4, cap.threads)
    return cap


def _run(opts: NodeOptions, identity: Identity, user: StepUser | None, model_sha: str, owner: Owner,
         cap: cgroup.OwnerCap | None) -> str:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(text_handler(opts.home))  # HOME/node.log, rotated, strangers' control characters escaped
    root.addHandler(json_handler(opts.home))  # HOME/logs/node.jsonl, rotated
    journal = Journal(opts.home)  # a damaged or unwritable journal stops the start here, with what to do
    asys = actorsys.start(opts.home / "actors.log")
    try:
        node_actor, ready = _start_actors(asys, opts, model_sha, user, cap.name if cap else "")
        peer_sock = bind(*opts.listen, "peer")
        api_sock = bind(*opts.api, "API")
        node = Node(opts, identity, asys, node_actor, ready, user, journal, owner)
        on_roll = enrol()  # (the user's roll of nodes on this machine: each keeps the others' ports from its pages)
        if on_roll is None:
            log.warning("cannot use %s (missing, not a folder of this user's, or open to others): this node's "
                        "scraped pages are kept from its own ports only, not from other nodes' here", ROLL)
        try:
            return _serve(node, peer_sock, api_sock)
        finally:
            leave(on_roll)
            node.replay_store.close()  # the replay marks still waiting for their fsync
    finally:
        t0 = time.monotonic()
        asys.shutdown()  # (Thespian waits up to 10 s for its admin)
        if (took := time.monotonic() - t0) > SLOW_STOP_S:
            log.info("stopping: the actor system took %.1f s to stop", took)


SLOW_STOP_S = 1.0  # a part of the stop that takes longer is named in the log


async def _bounded(what: str, step: Awaitable[object], timeout: float) -> None:
    """Await one part of the node's stop for at most `timeout` seconds; log it when slow or cut short."""
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(step, timeout)
    except TimeoutError:
        log.warning("stopping: %s did not end within %g s; stopping without it", what, timeout)
        return
    if (took := time.monotonic() - t0) > SLOW_STOP_S:
        log.info("stopping: %s took %.1f s", what, took)


def _check_periods(opts: NodeOptions) -> None:
    for value, lo, hi, flag in ((opts.testimony_s, 1, 86400, "--testimony-every"),
                                (opts.down_after_s, 3, 3600, "--down-after")):
        if not lo <= value <= hi:
            raise ConfigError(f"{flag} is a number of seconds from {lo} to {hi}")
    if opts.fault_after is not None and not (opts.fault.startswith("relay-") and 1 <= opts.fault_after <= 3600):
        raise ConfigError("--fault-after goes with --fault relay-drop or relay-delay: seconds from 1 to 3600")
    if not 1 << 20 <= opts.relay_budget <= 1 << 50:
        raise ConfigError("--relay-budget is a size from 1MB to 1PB (bytes an hour relayed for others)")


NETWORK_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # (its length is one byte of every signed envelope's bytes)
MAX_FRAME_CAP = 64 << 20  # bytes: a frame this size is buffered whole before its signature is checked
MAX_BLACKLIST_S = 365 * 86400.0


def _check_counts(opts: NodeOptions) -> None:
    if not NETWORK_ID.fullmatch(opts.network):  # (300 characters started a node whose first seal crashed)
        raise ConfigError("--network is 1 to 64 letters, digits, '.', '_' or '-'")
    if not 64 << 10 <= opts.frame_cap <= MAX_FRAME_CAP:
        raise ConfigError(f"--frame-cap must be from 65536 to {MAX_FRAME_CAP} bytes")
    if not 0 <= opts.blacklist_s <= MAX_BLACKLIST_S:  # (nan and -1 were taken)
        raise ConfigError("--blacklist is a number of seconds from 0 to a year (31536000)")
    if not 1 <= opts.max_links <= 10_000:
        raise ConfigError("--max-links must be from 1 to 10000")
    if not 0 <= opts.threads <= MAX_THREADS:  # (100,000 started, and its model runner segfaulted on every step)
        raise ConfigError(f"--threads is 0 (up to 4, the default) or a number of llama.cpp threads up to {MAX_THREADS}")


def _check_options(opts: NodeOptions) -> str:
    """Refuse a bad set-up with a ConfigError before anything starts (`--collude` alone implies
    `--fault wrong`: set here); returns the --model file's SHA-256, '' without one."""
    if opts.fault and opts.fault not in FAULTS:
        raise ConfigError(f"--fault must be one of {', '.join(FAULTS)}")
    if opts.collude and opts.fault not in ("", "wrong"):
        raise ConfigError("--collude goes with --fault wrong (or alone, which implies it)")
    if opts.collude:
        opts.fault = "wrong"
    if opts.api[0] not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError("the API listens on loopback only (it holds the power to spend credits)")
    if opts.api[1] and opts.api[1] == opts.listen[1] and (opts.listen[0] in (opts.api[0], "0.0.0.0", "::")):
        # (found only after the whole start-up, as "API address … is in use": in use by the node itself)
        raise ConfigError(f"--listen and --api name the same port {opts.api[1]}: the peer port and the API need one each")
    if opts.keep_jobs < 1:
        raise ConfigError("--keep-jobs must be at least 1")
    if not 0 <= opts.credit_line < float("inf"):
        raise ConfigError("--credit-line is a number of credits, 0 or more")
    if not 0 <= opts.spot_rate <= 1:
        raise ConfigError("--spot-rate is a probability, from 0 to 1")
    _check_counts(opts)
    if opts.require_credit is not None and not (0 <= opts.require_credit < float("inf")):
        raise ConfigError("--require-credit is a number of credits, 0 or more")
    _check_periods(opts)
    if opts.transport == "tcp" and opts.fault.startswith("relay-"):
        raise ConfigError(f"--fault {opts.fault} needs --transport libp2p (plain TCP has no relays)")
    Allow.parse(opts.scrape_allow)  # a bad --scrape-allow is a ConfigError now, not at the first scrape
    if opts.browser and find_browser(opts.browser) is None:
        raise ConfigError(f"--browser {opts.browser}: no such program")
    if opts.model is None:
        return ""
    # not a GGUF file: refused, as `models add` does (it was a warning, and a node serving no model; the
    # default model, missing or damaged, still only warns: the node runs without it)
    return sha256_file(model_file(opts.model))


def _served(home: Path) -> list[ModelEntry]:
    """The registry's models this node loads besides the default one: those added by path, and the
    instruct model once its file is checked against its pinned SHA-256 (a damaged install is left out,
    with a warning: advertising a SHA-256 it does not serve would make every replica of it disagree)."""
    out = []
    for e in Registry(home).entries():
        if e.sha256 == INSTRUCT_SHA256:
            try:
                instruct_model()
            except ConfigError as exc:
                print(f"warning: {exc}; this node will not serve it", flush=True)
                continue
        if e.path:
            out.append(e)
    return out


def _start_actors(asys, opts: NodeOptions, model_sha: str, user: StepUser | None,
                  cap: str = "") -> tuple[object, NodeReady]:
    """The NodeActor, and its answer once the ledger is open and the models are loaded (a minute per
    extra model at most)."""
    from actors.node_actor import NodeActor

    node_actor = asys.createActor(NodeActor)
    extra = [[e.path, e.sha256] for e in _served(opts.home)] if opts.load_model else []
    config = NodeConfig(str(opts.home), str(opts.home / LEDGER_FILE), opts.threads, opts.load_model,
                        str(opts.model or ""), model_sha, extra, user, cap)
    ready = asys.ask(node_actor, config, 120 + 60 * len(extra))
    if not isinstance(ready, NodeReady):
        raise MeshError("the node's actors did not start (see actors.log in the node's home)")
    if ready.error:
        print(f"warning: {ready.error}; this node will not run llm steps", flush=True)
    return node_actor, ready


def _serve(node: Node, peer_sock: socket.socket, api_sock: socket.socket) -> str:
    """Run the node's loop to its end; with $MESH_PROFILE, under cProfile (benchmarks: where this
    process spends its time), the statistics written to that file."""
    profile = os.environ.get("MESH_PROFILE")
    if not profile:
        reason = asyncio.run(node.run(peer_sock, api_sock))
        if node.shut_at and (took := time.monotonic() - node.shut_at) > SLOW_STOP_S:
            log.info("stopping: threads of the node's loop took %.1f s to end", took)
        return reason
    import cProfile

    with cProfile.Profile() as prof:
        reason = asyncio.run(node.run(peer_sock, api_sock))
    prof.dump_stats(profile)
    return reason
