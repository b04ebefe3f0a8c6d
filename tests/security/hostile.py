"""A hostile peer on raw sockets, and probes of what a node made of it: its rejection counters, its log
and its ledger. Nothing here goes through the gateway code: the attacker builds its own bytes, using the
library only to sign what an attacker with its own valid key could sign."""

from __future__ import annotations

import json
import re
import selectors
import socket
import sqlite3
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import trio
from multiaddr import Multiaddr

from mesh import PROTOCOL_VERSION
from mesh.cli.local import LocalMesh, LocalNode, free_ports
from mesh.node.p2p.addresses import peer_id_of
from mesh.node.p2p.client import BlockingLink
from mesh.node.p2p.transport import PROTOCOL, build_host
from mesh.node.p2p.triothread import TrioThread
from mesh.wire.canonical import canonical
from mesh.wire.envelope import ANYONE, Sealer, signed_bytes
from mesh.wire.identity import Identity
from mesh.wire.messages import MODEL_PART, Hello, PeerRecord, asked_digest
from mesh.wire.records import make_record
from mesh.wire.schema import dump

from ..conftest import cli_json, run_cli, wait_for
from ..tinygguf import tiny_gguf

NETWORK = "homemesh-local"
HEADER = struct.Struct(">I")
PY_JOB = {"name": "honest", "steps": [{"id": "sum", "kind": "python",
                                        "params": {"code": "output = sum(range(10)) * 2"}}]}


def now_ms() -> int:
    return int(time.time() * 1000)


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def asked_of(step_frame: dict) -> str:
    """What an answer to a received `step` frame names as asked (mesh.wire.messages.asked_digest)."""
    return asked_digest(step_frame["payload"]["kind"], step_frame["payload"]["params"])


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def tamper_signature(framed: bytes) -> bytes:
    """The same envelope with one bit of its signature flipped (still well-formed JSON and hex)."""
    body = json.loads(framed[HEADER.size:])
    sig = bytearray(bytes.fromhex(body["sig"]))
    sig[0] ^= 1
    body["sig"] = sig.hex()
    return frame(canonical(body))


# -- the attacker -------------------------------------------------------------------------------------
class HostilePeer:
    """One TCP connection to a node's peer port, driven by hand. `identity` is the attacker's own valid
    key (a fresh one by default); `sent` keeps every frame it sent, for replays. Every attacker key made
    in this process is remembered in `HostilePeer.known`, so a shared mesh's ledger can be checked against
    all of them. `source`: the address a link connects from (and a libp2p one listens on; loopback by default:
any 127.x.y.z is another network prefix to the node)."""

    known: dict[str, str] = {}  # node id → hex public key of every attacker identity seen

    def __init__(self, addr: str, identity: Identity | None = None, network: str = NETWORK,
                 timeout: float = 5.0, connect: bool = True, transport: str = "libp2p", source: str = "127.0.0.1"):
        self.addr = addr
        self.identity = identity or Identity.generate()
        HostilePeer.known[self.identity.node_id] = self.identity.public_key.hex()
        self.network = network
        self.sealer = Sealer(self.identity, network)
        self.advertise = f"127.0.0.1:{free_ports(1)[0]}"  # nobody listens there: dials back fail
        self.sent: list[bytes] = []
        self.received: list[dict] = []
        self._buf = bytearray()
        self.eof = False
        self.sock: socket.socket | None = None
        self.local_port = 0
        self.transport = transport
        if connect and transport == "libp2p":  # the node's real transport: Noise proves self.identity
            self.sock = BlockingLink(addr, self.identity, timeout, source=source)
        elif connect:  # connect=False: a key that only seals (e.g. to write into another peer's socket)
            self.sock = socket.create_connection(split_addr(addr), timeout=timeout, source_address=(source, 0))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.local_port = self.sock.getsockname()[1]

    # who am I, as the node sees me
    @property
    def key(self) -> bytes:
        return self.identity.public_key

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    @property
    def label(self) -> str:
        """How the node's log names this connection."""
        if self.transport == "libp2p":
            return f"in:{str(peer_id_of(self.key))[-8:]}:direct"
        return f"in:127.0.0.1:{self.local_port}"

    # building envelopes
    def record(self, kinds: list[str] | None = None, ts: int | None = None) -> PeerRecord:
        return make_record(self.identity, self.network, self.advertise, kinds or [], [], False, ts or now_ms())

    def seal(self, kind: str, recipient: bytes, payload: Any, ts: int | None = None) -> bytes:
        """An honest-format envelope from this attacker's key, as the library would seal it."""
        return self.sealer.seal(kind, recipient, payload, ts or now_ms())

    def seal_raw(self, kind: str, recipient: bytes, payload: Any, *, ts: int | None = None,
                 seq: int | None = None, network: str | None = None, **override: Any) -> bytes:
        """A correctly signed envelope over any kind/network/payload (a dataclass or raw JSON), with
        any envelope field overridden afterwards (`override`, e.g. v=2 or sig='00')."""
        ts = ts or now_ms()
        seq = seq if seq is not None else max(self.sealer._last_seq + 1, ts * 1000)
        self.sealer._last_seq = max(self.sealer._last_seq, seq)
        net = network if network is not None else self.network
        body_payload = dump(payload) if hasattr(payload, "__dataclass_fields__") else payload
        sig = self.identity.sign(signed_bytes(kind, net, self.key, recipient, seq, ts, body_payload))
        body = {"v": PROTOCOL_VERSION, "kind": kind, "net": net, "from": self.key.hex(),
                "to": recipient.hex(), "seq": seq, "ts": ts, "payload": body_payload, "sig": sig.hex()}
        body.update(override)
        return frame(canonical(body))

    def hello_frame(self, recipient: bytes = ANYONE, peers: list[PeerRecord] | None = None,
                    ts: int | None = None) -> bytes:
        return self.seal("hello", recipient, Hello(self.record(ts=ts), list(peers or [])), ts)

    # the wire
    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, framed: bytes) -> bytes:
        self.sock.sendall(framed)
        self.sent.append(framed)
        return framed

    def handshake(self, node_key: bytes | None = None, timeout: float = 10.0) -> dict:
        """Introduce myself with a valid hello; return the node's hello back (it answers one to ANYONE)."""
        self.send(self.hello_frame(ANYONE))
        reply = self.expect(lambda f: f["kind"] == "hello" and f["to"] == self.key.hex()
                            and (node_key is None or f["from"] == node_key.hex()), timeout)
        assert reply is not None, "the node did not answer a valid hello"
        return reply

    def _pump(self, timeout: float) -> bool:
        """Read what is there within `timeout`; False at EOF or reset."""
        if self.eof:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return True
        except (ConnectionResetError, BrokenPipeError, OSError):
            self.eof = True
            return False
        if not data:
            self.eof = True
            return False
        self._buf += data
        while len(self._buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self._buf)
            if len(self._buf) < HEADER.size + n:
                break
            self.received.append(json.loads(self._buf[HEADER.size:HEADER.size + n]))
            del self._buf[:HEADER.size + n]
        return True

    def expect(self, pred, timeout: float) -> dict | None:
        """The first frame the node sent me that satisfies `pred`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for f in self.received[seen:]:
                if pred(f):
                    return f
            seen = len(self.received)
            left = deadline - time.monotonic()
            if left <= 0 or not self._pump(min(left, 0.2)):
                return next((f for f in self.received[seen:] if pred(f)), None)

    def closed_by_node(self, timeout: float) -> bool:
        """True when the node closes (or resets) this connection within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._pump(min(0.2, deadline - time.monotonic())):
                return True
        return self.eof

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def __enter__(self) -> "HostilePeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- many connections at once --------------------------------------------------------------------------
class Flood:
    """Keeps `size` connections open to each address, sending nothing; every `interval` it reopens the
    ones the node closed, so the node's unverified slots stay taken for as long as the flood runs."""

    def __init__(self, addrs: list[str], size: int = 300, interval: float = 0.25):
        self.addrs, self.size, self.interval = addrs, size, interval
        self.sel = selectors.DefaultSelector()  # epoll: hundreds of sockets, past select()'s FD_SETSIZE
        self.open: dict[str, int] = dict.fromkeys(addrs, 0)
        self.opened = self.dropped = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _connect(self, addr: str) -> bool:
        s = socket.socket()
        s.settimeout(0.5)
        try:
            s.connect(split_addr(addr))
        except OSError:  # its accept backlog is full (SYNs dropped): try again next round
            s.close()
            self.failed += 1
            return False
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ, addr)
        self.open[addr] += 1
        self.opened += 1
        return True

    def _top_up(self) -> None:
        for addr in self.addrs:
            for _ in range(self.size - self.open[addr]):
                if not self._connect(addr):
                    break

    def holding(self, at_least: int) -> bool:
        """The flood is running and holds at least `at_least` connections to every address."""
        return self.running and min(self.open.values()) >= at_least

    def _run(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            for key, _ in self.sel.select(timeout=0.05):
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    data = b""
                if not data:  # the node closed it
                    self.sel.unregister(key.fileobj)
                    key.fileobj.close()
                    self.open[key.data] -= 1
                    self.dropped += 1
            if time.monotonic() - last >= self.interval:
                self._top_up()
                last = time.monotonic()

    def start(self) -> "Flood":
        self._top_up()
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for key in list(self.sel.get_map().values()):
            self.sel.unregister(key.fileobj)
            key.fileobj.close()
        self.sel.close()


@dataclass
class Trickle:
    """One slowloris connection: a frame header, then one byte a second; `closed_at` is when the node
    hung up (seconds after the header), None while it holds on."""

    sock: socket.socket
    started: float = field(default_factory=time.monotonic)
    closed_at: float | None = None
    peer: HostilePeer | None = None
    last_byte: float = field(default_factory=time.monotonic)


class Slowloris:
    """Trickles a byte a second into many connections from one thread until each is dropped or `stop()`;
    it looks for the node hanging up ten times a second, so `closed_at` is precise to ~0.1 s."""

    def __init__(self, declared: int = 1000):
        self.declared = declared
        self.conns: list[Trickle] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add_raw(self, addr: str) -> Trickle:
        s = socket.create_connection(split_addr(addr), timeout=5)
        s.sendall(HEADER.pack(self.declared))
        s.setblocking(False)
        t = Trickle(s)
        self.conns.append(t)
        return t

    def add_verified(self, peer: HostilePeer) -> Trickle:
        """A peer that already showed a valid envelope starts a frame it never finishes."""
        peer.send_raw(HEADER.pack(self.declared))
        peer.sock.setblocking(False)
        t = Trickle(peer.sock, peer=peer)
        self.conns.append(t)
        return t

    def _run(self) -> None:
        while not self._stop.is_set():
            for t in self.conns:
                if t.closed_at is not None:
                    continue
                try:
                    while t.sock.recv(65536):  # drain heartbeats; b'' is the node hanging up
                        pass
                    t.closed_at = time.monotonic() - t.started
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    t.closed_at = time.monotonic() - t.started
                    continue
                if time.monotonic() - t.last_byte < 1.0:
                    continue
                t.last_byte = time.monotonic()
                try:
                    t.sock.send(b"x")
                except OSError:
                    t.closed_at = time.monotonic() - t.started
            self._stop.wait(0.1)

    def start(self) -> "Slowloris":
        self._thread.start()
        return self

    @property
    def alive(self) -> int:
        return sum(t.closed_at is None for t in self.conns)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for t in self.conns:
            t.sock.close()


# -- what the node made of it ---------------------------------------------------------------------------
def status(node: LocalNode) -> dict:
    return node.client.request("GET", "/status", timeout=10)


def rejected(node: LocalNode) -> dict[str, int]:
    return status(node)["rejected"]


def log_lines(node: LocalNode, reason: str, needle: str = "") -> list[str]:
    """WARNING lines of the node's log that name `reason` (as a whole word) and contain `needle`."""
    word = re.compile(rf"(?<![\w-]){re.escape(reason)}(?![\w-])")
    try:
        text = (node.home / "node.log").read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [ln for ln in text.splitlines() if " WARNING " in ln and word.search(ln) and needle in ln]


def wait_rejection(node: LocalNode, reason: str, before: dict[str, int], needle: str = "",
                   at_least: int = 1, timeout: float = 15) -> dict:
    """Wait until `reason` counted at least `at_least` more times than in `before` and is in node.log
    (on a line naming `needle`); returns the status that showed it."""
    want = before.get(reason, 0) + at_least
    st = wait_for(lambda: (s := status(node))["rejected"].get(reason, 0) >= want and s, timeout,
                  f"{reason!r} counted on {node.home.name} (had {before.get(reason, 0)})")
    wait_for(lambda: log_lines(node, reason, needle), timeout,
             f"{reason!r} in {node.home.name}/node.log on a line with {needle!r}")
    return st


def peer_ids(node: LocalNode) -> set[str]:
    return {p["node"] for p in status(node)["peers"]}


def ledger_rows(home: Path) -> list[dict]:
    """Every ledger entry, read-only (the node holds the database open for writing)."""
    db = sqlite3.connect(f"file:{home / 'ledger.db'}?mode=ro", uri=True, timeout=10)
    try:
        cols = ("id", "kind", "job", "step", "peer", "amount", "detail")
        return [dict(zip(cols, row, strict=True))
                for row in db.execute(f"SELECT {', '.join(cols)} FROM entries ORDER BY id")]
    finally:
        db.close()


def ledger_count(home: Path) -> int:
    db = sqlite3.connect(f"file:{home / 'ledger.db'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    finally:
        db.close()


def ledger_verify(home: Path):
    return run_cli("ledger", "verify", "--home", str(home))


def penalties(home: Path) -> dict[str, int]:
    """node id → penalties, from `mesh ledger peers --json`."""
    return {p["node"]: p["penalty"] for p in cli_json("ledger", "peers", "--home", str(home))}


def assert_ledger_clean(node: LocalNode, honest: set[str], attackers: list[HostilePeer | Identity] = ()) -> None:
    """Nothing an attacker did reached the ledger but gateway penalties against its own key: every other
    entry is about an honest node and mentions no attacker; honest nodes were never penalised; and the
    chain verifies (`mesh ledger verify` exits 0). `attackers` are added to every key HostilePeer made."""
    idents = [a.identity if isinstance(a, HostilePeer) else a for a in attackers]
    known = {**HostilePeer.known, **{i.node_id: i.public_key.hex() for i in idents}}
    bad_ids, bad_keys = set(known), set(known.values())
    for row in ledger_rows(node.home):
        text = json.dumps(row)
        if row["peer"] in bad_ids:
            assert row["kind"] == "penalty" and row["job"] == "gateway" and row["amount"] == 0, row
            continue
        assert row["peer"] in honest, f"ledger entry about a node outside the mesh: {row}"
        assert row["kind"] != "penalty", f"an honest node was penalised: {row}"
        assert not any(x in text for x in bad_ids | bad_keys), f"ledger entry mentions an attacker: {row}"
    res = ledger_verify(node.home)
    assert res.returncode == 0, res.stdout + res.stderr


# -- honest traffic ---------------------------------------------------------------------------------------
def submit(node: LocalNode, job: dict = PY_JOB, redundancy: int = 3) -> str:
    return node.client.request("POST", "/jobs", {"job": job, "redundancy": redundancy})["job_id"]


def wait_job(node: LocalNode, job_id: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (r := node.client.request("GET", f"/jobs/{job_id}?wait=2"))["status"] != "running" and r,
                    timeout, f"job {job_id} to end")


def lone_answer_by(node: LocalNode, worker: str, right: object, tries: int = 300) -> dict:
    """Run PY_JOB alone (r=1) on `node` until `worker` has answered it, wrongly and unopposed: that report.
    A new id draws about 5% of such placements beside two workers with verified results (weight 0.5 x 0.2
    against ~0.95; it took 1, 40, 33, 27 and 8 jobs in five runs): 40 tries missed it once in CI, 300
    miss it about once in ten million."""
    for _ in range(tries):
        rep = wait_job(node, submit(node, PY_JOB, 1))
        (replica,) = rep["steps"]["sum"]["replicas"]
        if replica["node"] == worker:
            assert rep["status"] == "done" and rep["steps"]["sum"]["output"] != right, rep
            return rep
    raise AssertionError(f"{worker[:12]} was never given a step in {tries} jobs")


def assert_serves(mesh: LocalMesh, redundancy: int | None = None) -> dict:
    """Every node answers its API, and node0 gets a python job done on `redundancy` other nodes (all of
    them by default), each of which agreed."""
    for n in mesh.nodes:
        assert status(n)["node"] == n.node_id
    r = redundancy or len(mesh.nodes) - 1
    rep = wait_job(mesh.nodes[0], submit(mesh.nodes[0], PY_JOB, r))
    assert rep["status"] == "done", rep
    step = rep["steps"]["sum"]
    assert step["output"] == 90
    assert len(step["replicas"]) == r and all(x["agreed"] for x in step["replicas"]), step
    wait_paid(mesh, rep)
    return rep


def wait_paid(mesh: LocalMesh, rep: dict, timeout: float = 15) -> None:
    """Wait until every agreeing worker of a finished job booked the submitter's receipt: the honest
    payment path works, and no write from this job is still on its way to a ledger."""
    by_id = {n.node_id: n for n in mesh.nodes}
    for sid, step in rep["steps"].items():
        for r in step["replicas"]:
            if r["agreed"]:
                home = by_id[r["node"]].home
                wait_for(lambda home=home, sid=sid: [e for e in ledger_rows(home) if e["kind"] == "earned"
                                                     and e["job"] == rep["job_id"] and e["step"] == sid],
                         timeout, f"{home.name} to book its receipt for {rep['job_id']}/{sid}")


def honest_ids(mesh: LocalMesh) -> set[str]:
    return {n.node_id for n in mesh.nodes}


# -- peers that complete the handshake and then say nothing -----------------------------------------------
class SilentPeers:
    """`n` real libp2p hosts (Noise + Yamux, each with its own key) on 127.0.0.1, all run by one trio
    thread: they accept a node's link and its `/homemesh/1` stream and never send a byte. `records()`
    are their validly signed peer records, for an attacker to gossip; `streams` counts the streams the
    node opened to them."""

    def __init__(self, n: int, network: str = NETWORK):
        self.network, self.n, self.streams = network, n, 0
        self.opened: Counter[str] = Counter()  # address → streams the node opened to it
        self.events: list[tuple[float, str, str]] = []  # (monotonic time, address, open | closed)
        self.by_addr: dict[str, Identity] = {}
        self.thread = TrioThread("silent-peers")
        self.thread.start()
        self._stop: trio.Event | None = None
        self.thread.run_blocking(self.thread.nursery.start, self._serve)

    async def _serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(self.n):
                nursery.start_soon(self._run_one, Identity.generate())
            while len(self.by_addr) < self.n:
                await trio.sleep(0.01)
            task_status.started()

    async def _run_one(self, ident: Identity) -> None:
        host = build_host(ident)
        async with host.run([Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            addr = str(host.get_addrs()[0]).split("/p2p/")[0]

            async def hold(stream) -> None:  # keep the stream open, answer nothing, note when it ends
                self.streams += 1
                self.opened[addr] += 1
                self.events.append((time.monotonic(), addr, "open"))
                try:
                    while await stream.read(65536):
                        pass
                except Exception:  # reset or closed by the node: either way, its end of the link
                    pass
                self.events.append((time.monotonic(), addr, "closed"))

            host.set_stream_handler(PROTOCOL, hold)
            self.by_addr[addr] = ident
            await self._stop.wait()

    def redials(self) -> list[float]:
        """For each stream the node closed, the seconds until it opened the next to that peer (inf:
        not yet)."""
        gaps, closed = [], {}
        for t, addr, what in self.events:
            if what == "closed":
                closed[addr] = t
            elif addr in closed:
                gaps.append(t - closed.pop(addr))
        return gaps + [float("inf")] * len(closed)

    def records(self) -> list[PeerRecord]:
        return [make_record(ident, self.network, addr, ["python"], [], False, now_ms())
                for addr, ident in self.by_addr.items()]

    def close(self) -> None:
        if self._stop is not None:
            self.thread.post(self._stop.set)
        self.thread.stop()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far: for bounds on what an attack costs a node."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def rss_mb(pid: int) -> float:
    """A process's resident memory, in MiB."""
    return psutil.Process(pid).memory_info().rss / 2**20


def serving_tiny_model(where: Path, parts: int, *options: str):
    """A generator for a module fixture: one node serving a tiny model of `parts` parts (llm steps, model
    sharing) started with `options`, yielded with the model's sha as (node, sha) once it offers llm steps,
    stopped after."""
    model = where / "tiny.gguf"
    sha = tiny_gguf(model, pad=(parts - 1) * MODEL_PART)
    node = LocalNode(where / "node", ["--model", str(model), "--threads", "1", *options])
    node.start([])
    try:
        node.wait_started(120)
        wait_for(lambda: "llm" in status(node).get("kinds", []), 60, "the node to offer llm steps", 0.3)
        yield node, sha
    finally:
        node.stop()
