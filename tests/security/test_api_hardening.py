"""The node's HTTP API against a web page and local processes (issue 16, item 5): a Host that does not name
the API over loopback is refused on every route (DNS rebinding), a request that does not arrive within
READ_TIMEOUT_S is cut off (slowloris: a trickled head, a silent connection, a trickled body) while others
are served, idle connections cannot lock the owner's CLI out, and the editor may not be framed."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass

import psutil
import pytest

from mesh.cli.local import LocalMesh, free_ports
from mesh.http.common import error_body
from mesh.http.httpguard import MAX_CONNECTIONS, READ_TIMEOUT_S, GuardedH11, HostGuard, allowed_hosts

from ..conftest import run_cli, tree_pids, wait_for

MARGIN_S = 2.5  # how late after READ_TIMEOUT_S a cut-off may come (the event loop, this test's polling)


# -- the Host check, without sockets ---------------------------------------------------------------------
def call_guard(host_headers: list[bytes], path: str = "/health", port: int = 8000) -> tuple[int, dict | None]:
    """Run one request through HostGuard around an app that answers 200; returns (status, JSON body)."""
    sent: list[dict] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": path, "headers": [(b"host", h) for h in host_headers]}
    asyncio.run(HostGuard(app, allowed_hosts(port), error_body)(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], json.loads(body) if body else None


def test_host_guard_lets_only_this_apis_loopback_names_through():
    for good in (b"127.0.0.1:8000", b"localhost:8000", b"LocalHost:8000", b"[::1]:8000"):
        assert call_guard([good]) == (200, None), good
    for bad in (b"evil.example:8000", b"127.0.0.1.nip.io:8000", b"localhost.:8000", b"127.0.0.1:8001",
                b"127.0.0.1", b"localhost", b"127.0.0.1:8000.evil.example", b"127.0.0.1:8000@evil", b""):
        status, body = call_guard([bad])
        assert status == 421 and "not this node's API" in body["error"], (bad, body)
    for headers in ([], [b"127.0.0.1:8000", b"127.0.0.1:8000"]):  # none, or two
        status, body = call_guard(headers)
        assert status == 421 and "exactly one Host" in body["error"], headers
    status, body = call_guard([b"evil.example:8000"], "/v1/models")  # OpenAI-shaped under /v1
    assert status == 421 and body["error"]["type"] == "invalid_request_error"
    assert "localhost" in allowed_hosts(80) and "localhost" not in allowed_hosts(8000)
    assert "[::1]:9" in allowed_hosts(9, "::1")


def test_host_guard_passes_lifespan_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(HostGuard(app, allowed_hosts(1))({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]


class _Transport:
    def __init__(self, unsent: int = 0):
        self.unsent, self.closed = unsent, False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return self.unsent


def _conn(conns: set, busy_since: float | None, unsent: int = 0, paused: bool = False,
          owner: bool = False) -> GuardedH11:
    c = object.__new__(GuardedH11)  # (the protocol's state only: _evict reads nothing else)
    c.connections, c.transport, c.client = conns, _Transport(unsent), ("127.0.0.1", 1)
    c.deadline, c.waiting_since, c.busy_since = None, None, busy_since
    c.paused_since, c.owner = (busy_since if paused else None), owner
    conns.add(c)
    return c


def test_past_the_cap_a_connection_that_reads_none_of_its_answers_goes_before_the_owners_stream():
    """Found by this project's red team (2026-12-06): a local process with no token sent 100 requests for a
    static file down each of 280 connections and read none of the answers; each counted as busy, and past
    the cap the busy one held longest was dropped: the owner's event stream and its `?wait=` request, 4 s
    into the flood. A connection whose answers are not being read (over STUCK_BYTES unsent) goes first."""
    conns: set = set()
    owner = _conn(conns, busy_since=1.0)  # a stream its client reads
    flood = [_conn(conns, busy_since=2.0 + i, unsent=(4 << 20)) for i in range(3)]
    newcomer = _conn(conns, busy_since=9.0)  # the one that went over the cap
    newcomer._evict()
    assert not owner.transport.closed, "the owner's stream was dropped"
    assert [c.transport.closed for c in flood] == [True, False, False]  # the stuck one held longest


def test_past_the_cap_connections_held_by_flow_control_or_without_the_token_go_before_the_owners():
    """Found by the red team of 2026-12-07: uvicorn's flow control keeps a non-reading client's unsent
    answers near 64 KiB, under STUCK_BYTES, so 260 such connections counted as busy and the owner's stream,
    held longest, went. Writing paused counts as stuck; and of the busy, those that never showed the API token
    go before the owner's."""
    conns: set = set()
    owner = _conn(conns, busy_since=1.0, owner=True)
    flood = [_conn(conns, busy_since=2.0 + i, unsent=70_000, paused=True) for i in range(2)]
    newcomer = _conn(conns, busy_since=9.0)
    newcomer._evict()
    assert not owner.transport.closed and [c.transport.closed for c in flood] == [True, False]
    reader = _conn(conns, busy_since=3.0)  # a stranger's stream, read as it comes: it goes before the owner's
    for c in flood:
        c.transport.closed = True
    newcomer._evict()
    assert reader.transport.closed and not owner.transport.closed


# -- a real node -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lone(tmp_path_factory):
    """One node without a model; stopped, with everything it started, by pid at the module's end."""
    mesh = LocalMesh(tmp_path_factory.mktemp("api-hardening"), 1, lambda i: ["--no-model"])
    procs: dict[int, psutil.Process] = {}
    try:
        mesh.start(timeout=60)
        mesh.wait_ready(timeout=60)
        for pid in tree_pids(mesh.nodes[0].proc.pid):
            procs[pid] = psutil.Process(pid)
        yield mesh.nodes[0]
    finally:
        mesh.stop()
        for proc in procs.values():
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def request(node, method: str, path: str, host: str | None, token: bool = False,
            body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request with exactly the Host header given (none if None)."""
    conn = http.client.HTTPConnection("127.0.0.1", node.api_port, timeout=10)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("Host", host)
        if token:
            conn.putheader("Authorization", f"Bearer {node.client.token}")
        if body is not None:
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw_status(node, data: bytes) -> int:
    with socket.create_connection(("127.0.0.1", node.api_port), timeout=10) as s:
        s.sendall(data)
        head = s.recv(4096)
    return int(head.split(b" ", 2)[1])


ROUTES = [("GET", "/health", False, None), ("GET", "/editor/", False, None), ("GET", "/openapi.json", False, None),
          ("GET", "/steps", False, None), ("GET", "/status", True, None), ("GET", "/v1/models", True, None),
          ("POST", "/jobs", True, b'{"job": {"name": "x", "steps": []}}'),
          ("POST", "/v1/chat/completions", True, b'{"model": "default", "messages": []}')]


@pytest.mark.mesh
@pytest.mark.timeout(90)
def test_wrong_host_is_refused_on_every_route(lone):
    port = lone.api_port
    other = free_ports(1)[0]
    for bad in (f"evil.example:{port}", f"127.0.0.1.nip.io:{port}", f"localhost:{other}", "127.0.0.1",
                f"attacker.test:{port}"):
        for method, path, token, body in ROUTES:
            status, headers, raw = request(lone, method, path, bad, token, body)
            assert status == 421, (bad, path, status, raw[:200])
            assert headers["content-type"] == "application/json"
            err = json.loads(raw)["error"]
            assert "not this node's API" in (err["message"] if path.startswith("/v1/") else err), (path, err)
    # no Host at all: HTTP/1.1 requires one (h11 says 400), HTTP/1.0 may omit it (the guard says 421)
    assert raw_status(lone, b"GET /health HTTP/1.1\r\n\r\n") == 400
    assert raw_status(lone, b"GET /health HTTP/1.0\r\n\r\n") == 421
    assert raw_status(lone, f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n\r\n"
                      .encode()) in (400, 421)


@pytest.mark.mesh
@pytest.mark.timeout(90)
def test_right_host_still_works_and_the_token_still_counts(lone):
    port = lone.api_port
    for good in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"):
        status, _, raw = request(lone, "GET", "/health", good)
        assert status == 200 and json.loads(raw)["node"] == lone.node_id, good
        assert request(lone, "GET", "/openapi.json", good)[0] == 200
        status, _, raw = request(lone, "GET", "/status", good)
        assert status == 401 and "token" in json.loads(raw)["error"]
        status, _, raw = request(lone, "GET", "/status", good, token=True)
        assert status == 200 and json.loads(raw)["node"] == lone.node_id
        status, headers, _ = request(lone, "GET", "/health", good)
        assert "access-control-allow-origin" not in headers  # still no CORS
    status, _, raw = request(lone, "POST", "/jobs", f"127.0.0.1:{port}", True, b"x" * (5 << 20))
    assert status == 413, raw[:200]  # the body limit still holds


@pytest.mark.mesh
@pytest.mark.timeout(60)
def test_the_editor_may_not_be_framed(lone):
    for path in ("/editor/", "/editor/editor.js"):
        status, headers, _ = request(lone, "GET", path, f"127.0.0.1:{lone.api_port}")
        assert status == 200, path
        csp = [d.strip() for d in headers["content-security-policy"].split(";")]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "connect-src 'self'" in csp
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


@pytest.mark.mesh
@pytest.mark.timeout(60)
def test_the_tokens_answers_are_never_stored_and_the_pages_are_asked_for_again(lone):
    """Found by the red team of 2026-12-07: no answer said Cache-Control, so Chromium wrote /status (the node's
    key, peers, balance) to its disk cache from the dashboard, and ran the pages' scripts from its cache,
    without asking the node, after the node was replaced."""
    host = f"127.0.0.1:{lone.api_port}"
    for path in ("/status", "/dashboard/data", "/ledger/history", "/ledger/balance", "/peers", "/jobs", "/v1/models"):
        status, headers, _ = request(lone, "GET", path, host, token=True)
        assert status == 200 and headers.get("cache-control") == "no-store", (path, headers)
    assert request(lone, "GET", "/status", host)[1].get("cache-control") == "no-store"  # (the 401 too)
    assert "frame-ancestors 'none'" in request(lone, "GET", "/dashboard/data", host, token=True)[1][
        "content-security-policy"]
    for path in ("/editor/", "/editor/page.js", "/dashboard/", "/dashboard/dashboard.js"):
        status, headers, _ = request(lone, "GET", path, host)
        assert status == 200 and headers.get("cache-control") == "no-cache" and headers.get("etag"), (path, headers)


# -- slow and idle clients -------------------------------------------------------------------------------
@dataclass
class Slow:
    sock: socket.socket
    trickle: bytes  # sent a byte at a time; b"" sends nothing
    started: float
    sent: int = 0
    closed_at: float | None = None  # seconds after connecting that the node hung up


class Attack:
    """Connections that never complete a request, driven from one thread: each trickles its bytes one per
    `interval` and is watched ten times a second for the node hanging up."""

    def __init__(self, port: int, interval: float = 0.5):
        self.port, self.interval = port, interval
        self.conns: list[Slow] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, trickle: bytes = b"", first: bytes = b"") -> Slow:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(first)
        s.setblocking(False)
        conn = Slow(s, trickle, time.monotonic())
        self.conns.append(conn)
        return conn

    @property
    def open(self) -> int:
        return sum(c.closed_at is None for c in self.conns)

    def start(self) -> "Attack":
        self._thread.start()
        return self

    def _run(self) -> None:
        last_send = 0.0
        while not self._stop.is_set():
            send = time.monotonic() - last_send >= self.interval
            if send:
                last_send = time.monotonic()
            for c in self.conns:
                if c.closed_at is not None:
                    continue
                try:
                    if send and c.sent < len(c.trickle):
                        c.sent += c.sock.send(c.trickle[c.sent:c.sent + 1])
                    if c.sock.recv(4096) == b"":
                        c.closed_at = time.monotonic() - c.started
                except BlockingIOError:
                    pass
                except OSError:
                    c.closed_at = time.monotonic() - c.started
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for c in self.conns:
            c.sock.close()


def slow_head(port: int) -> bytes:
    """A valid request head longer than a byte per 0.5 s can deliver within READ_TIMEOUT_S."""
    return f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Pad: {'a' * 200}\r\n\r\n".encode()


def served(node) -> bool:
    status, _, raw = request(node, "GET", "/health", f"127.0.0.1:{node.api_port}")
    return status == 200 and json.loads(raw)["node"] == node.node_id


def cli_status(node) -> bool:
    res = run_cli("status", "--home", str(node.home), "--json", timeout=30)
    return res.returncode == 0 and json.loads(res.stdout)["node"] == node.node_id


@pytest.mark.mesh
@pytest.mark.timeout(60)
def test_slowloris_is_cut_off_within_the_timeout_while_others_are_served(lone):
    port = lone.api_port
    attack = Attack(port)
    heads = [attack.add(slow_head(port)) for _ in range(5)]
    silent = [attack.add() for _ in range(5)]
    body = f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n" \
           f"Content-Length: 1000\r\nAuthorization: Bearer {lone.client.token}\r\n\r\n".encode()
    bodies = [attack.add(b"{" * 1000, first=body) for _ in range(3)]  # a full head, then a trickled body
    attack.start()
    try:
        answered = 0
        while time.monotonic() - attack.conns[0].started < READ_TIMEOUT_S - 2:
            t0 = time.monotonic()
            assert served(lone), "a normal request was not answered during the attack"
            assert time.monotonic() - t0 < 1.0, "a normal request was slow during the attack"
            answered += 1
            time.sleep(0.5)
        assert cli_status(lone), "`mesh status` failed during the attack"
        assert attack.open == len(attack.conns), "the attack was cut short: nothing was measured"
        wait_for(lambda: attack.open == 0, READ_TIMEOUT_S + MARGIN_S + 1, "the node to cut every slow connection")
    finally:
        attack.stop()
    for what, conns in (("a trickled head", heads), ("a silent connection", silent), ("a trickled body", bodies)):
        for c in conns:
            assert READ_TIMEOUT_S - 0.5 <= c.closed_at <= READ_TIMEOUT_S + MARGIN_S, \
                f"{what} was cut after {c.closed_at:.1f} s (timeout {READ_TIMEOUT_S:g} s)"
    assert all(c.sent < len(c.trickle) for c in heads + bodies)
    assert served(lone)
    cut = [c.closed_at for c in attack.conns]
    print(f"slow connections cut after {min(cut):.2f}-{max(cut):.2f} s; {answered} normal requests answered "
          f"during the attack")


@pytest.mark.mesh
@pytest.mark.timeout(60)
def test_a_hundred_idle_connections_do_not_lock_out_the_cli(lone):
    port = lone.api_port
    attack = Attack(port, interval=1.0)
    for i in range(100):
        attack.add(slow_head(port) if i % 2 else b"")
    attack.start()
    try:
        t0 = time.monotonic()
        assert cli_status(lone), "`mesh status` failed with 100 idle connections open"
        assert served(lone)
        took = time.monotonic() - t0
        assert attack.open == 100, "idle connections were dropped before the CLI was measured"
    finally:
        attack.stop()
    print(f"`mesh status` and a request took {took:.2f} s with 100 idle connections open")


@pytest.mark.mesh
@pytest.mark.timeout(60)
def test_past_the_connection_cap_the_longest_waiting_are_dropped(lone):
    port = lone.api_port
    over = 20
    attack = Attack(port, interval=1.0)
    for _ in range(MAX_CONNECTIONS + over):
        attack.add()
    attack.start()
    try:
        wait_for(lambda: attack.open <= MAX_CONNECTIONS, 5, "the node to drop connections over its cap")
        assert served(lone) and cli_status(lone), "a client was refused past the connection cap"
        dropped = [i for i, c in enumerate(attack.conns) if c.closed_at is not None]
        assert set(range(over)) <= set(dropped), dropped  # the ones waiting longest went first
    finally:
        attack.stop()
    wait_for(lambda: served(lone), 5, "the node to serve after the attack")


@pytest.mark.mesh
@pytest.mark.timeout(60)
def test_a_job_or_chat_with_a_lone_surrogate_is_refused_and_the_node_keeps_serving(lone, tmp_path):
    """Found by this project's attack round on the API: "\\ud800" in a job (as JavaScript sends half an
    emoji) passed every check and was taken (201); its first step failed with a traceback, GET /jobs
    answered 500 from then on, and the journal it left stopped the node from starting again. Such text, or
    a NaN, has no canonical form to journal or sign: the job is refused at the door, by name."""
    host = f"127.0.0.1:{lone.api_port}"
    for body in (b'{"job": {"name": "half \\ud83d", "steps": [{"id": "a", "kind": "python",'
                 b' "params": {"code": "output = 1"}}]}}',
                 b'{"job": {"steps": [{"id": "a", "kind": "python", "params": {"code": "x = \'\\udfff\'"}}]}}',
                 b'{"job": {"steps": [{"id": "a", "kind": "python", "params": {"code": "output = 1", "n": NaN}}]}}'):
        status, _, raw = request(lone, "POST", "/jobs", host, True, body)
        assert status == 400, (body, status, raw[:300])
        err = json.loads(raw)["error"]
        assert "lone surrogate" in err or "NaN" in err, err
    status, _, raw = request(lone, "POST", "/v1/chat/completions", host, True,
                             b'{"model": "default", "messages": [{"role": "user", "content": "hi \\ud800"}]}')
    assert status == 400 and "lone surrogate" in json.loads(raw)["error"]["message"], raw[:300]
    status, _, raw = request(lone, "GET", "/jobs", host, True)
    assert status == 200, raw[:300]
    job = tmp_path / "half.json"
    job.write_text('{"name": "x", "steps": [{"id": "a", "kind": "python", "params": {"code": "s = \'\\udfff\'"}}]}')
    out = run_cli("submit", str(job), "--home", str(lone.home))
    assert out.returncode != 0 and "lone surrogate" in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.mesh
@pytest.mark.timeout(120)
def test_tokenless_connections_that_read_nothing_do_not_cut_the_owners_event_stream(make_mesh):
    """The red team's flood of 2026-12-07 on a real node: 260 connections without the token, each sending 200
    requests for the editor's biggest file and reading nothing; the owner's job event stream, opened
    before, was closed within 2 s ("over 256 connections")."""
    lone = make_mesh(2, lambda i: ["--no-model", "--no-scrape"]).nodes[0]  # (a worker for its job)
    port = int(lone.api.rpartition(":")[2])
    job = {"job": {"name": "sleeper", "redundancy": 1, "steps": [
        {"id": "a", "kind": "python", "params": {"code": "import time\ntime.sleep(40)\noutput = 1"}}]}}
    job_id = lone.client.request("POST", "/jobs", job)["job_id"]
    owner = socket.create_connection(("127.0.0.1", port), timeout=10)
    owner.sendall(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"Authorization: Bearer {lone.client.token}\r\n\r\n".encode())
    assert owner.recv(65536).startswith(b"HTTP/1.1 200")
    ask = f"GET /editor/vendor/drawflow/drawflow.min.js HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    flood: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS + 4):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(ask * 200)
            flood.append(s)
            time.sleep(0.01)  # (the attack's pace: each connection busy writing before the next comes)
        assert lone.client.request("GET", "/health", timeout=10)["ok"]  # (past the cap: the flood made room)
        owner.settimeout(3)
        with contextlib.suppress(TimeoutError):
            while True:
                assert owner.recv(65536), "the owner's event stream was closed by the flood"
    finally:
        for s in flood:
            s.close()
        owner.close()
