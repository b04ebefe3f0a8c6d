"""`mesh models fetch` follows the node's event stream of the fetch (GET /models/fetch/SHA/events), not a
poll of GET /models/fetch: against a small local SSE server standing in for the node, each request
counted. The stream ending early, cut mid-chunk or quiet past --timeout costs one GET, and ends in one
clear line, never a traceback; what a peer put in the status (its id, the error) reaches the terminal
escaped. The real node and peer: tests/node/test_model_fetch_mesh.py."""

from __future__ import annotations

import io
import json
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mesh.cli.main import main

pytestmark = pytest.mark.timeout(30)

SHA = "ab" * 32
TOKEN = "t" * 32


def status(state: str = "fetching", done: int = 0, **extra) -> dict:
    """One fetch's status as the node shows it (mesh.node.modelshare.FetchStatus)."""
    return {"sha256": SHA, "state": state, "done_bytes": done, "size": 3 << 20, "source": "c0ffee" * 10,
            "error": "", "name": "", "seconds": 0.0, **extra}


@dataclass
class Script:
    """What the stand-in node does: the events it streams, then `end`: 'close' (the stream ends, done or
    not), 'cut' (a chunk cut off mid-way) or 'stall' (nothing more, the line held open); `listed`: what
    GET /models/fetch answers."""

    events: list[tuple[str, dict]]
    end: str = "close"
    listed: list[dict] = field(default_factory=list)
    requests: Counter = field(default_factory=Counter)
    release: threading.Event = field(default_factory=threading.Event)


def serve(script: Script) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _json(self, code: int, obj: object) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            script.requests["POST " + self.path] += 1
            self.rfile.read(int(self.headers["Content-Length"]))
            assert self.headers["Authorization"] == f"Bearer {TOKEN}"
            self._json(202, status())

        def do_GET(self) -> None:
            script.requests["GET " + self.path] += 1
            if self.path == "/models/fetch":
                self._json(200, script.listed)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i, (kind, data) in enumerate(script.events):
                self._chunk(f"id: {i}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode())
                self._chunk(b": keep-alive\n\n")
            if script.end == "cut":
                self.wfile.write(b"400\r\nevent: progr")  # a chunk promised 1024 bytes, 12 came
            elif script.end == "stall":
                script.release.wait(20)
            else:
                self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.handle_error = lambda request, address: None  # (the CLI hangs up after done: a broken pipe here)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def node(monkeypatch):
    """fetch(script, *options) → (exit code, stdout, stderr, requests) of `mesh models fetch SHA` run
    against a stand-in node playing `script`."""
    monkeypatch.setenv("MESH_API_TOKEN", TOKEN)
    servers: list[tuple[ThreadingHTTPServer, Script]] = []

    def fetch(script: Script, *options: str, tty: bool = False) -> tuple[int, str, str, Counter]:
        server = serve(script)
        servers.append((server, script))
        out, err = io.StringIO(), TTY() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        code = main(["models", "fetch", SHA, "--api", f"http://127.0.0.1:{server.server_port}", *options])
        monkeypatch.undo()
        monkeypatch.setenv("MESH_API_TOKEN", TOKEN)
        return code, out.getvalue(), err.getvalue(), script.requests

    yield fetch
    for server, script in servers:
        script.release.set()
        server.shutdown()
        server.server_close()


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_cli_follows_the_event_stream_and_never_polls(node):
    done = status("done", 3 << 20, name="fetched-abababababab", seconds=1.5)
    script = Script([("progress", status(done=1 << 20)), ("progress", status(done=2 << 20)), ("done", done)])
    code, out, err, requests = node(script)
    assert code == 0, err
    assert out.strip() == (f"fetched fetched-abababababab ({SHA}): 3,145,728 bytes in 1.5 s (2.1 MB/s), checked, "
                           "and served by this node now")
    assert requests == {"POST /models/fetch": 1, f"GET /models/fetch/{SHA}/events": 1}  # no GET /models/fetch

    code, out, err, requests = node(Script(list(script.events)), "--json")
    assert code == 0 and json.loads(out) == done and err == ""  # --json: the status object, as before
    assert requests["GET /models/fetch"] == 0


def test_a_progress_bar_on_a_terminal_and_what_peers_wrote_shown_escaped(node):
    """The bar goes to stderr only on a terminal; the source's id and a failure's error came from peers."""
    hostile = "\x1b]0;owned\x07\x1b[2J"
    script = Script([("progress", status(done=1 << 20, source="\x1b[31m" + "ab" * 10)),
                     ("done", status("failed", 1 << 20, error=f"peer said {hostile}", seconds=0.5))])
    code, out, err, requests = node(script, tty=True)
    assert code == 3 and "\x1b" not in out + err and "\x07" not in out + err
    assert "33.3%" in err and "from \\x1b[31mabab" in err  # (12 characters of the source, escaped)
    assert out.strip() == "fetching model abababababab failed: peer said \\x1b]0;owned\\x07\\x1b[2J"
    assert requests["GET /models/fetch"] == 0

    code, out, err, _ = node(Script(list(script.events)))  # not a terminal: no bar
    assert code == 3 and err == "" and "failed" in out


@pytest.mark.parametrize("end", ["close", "cut"])
def test_a_broken_stream_costs_one_get_and_says_so(node, end):
    """The node restarted or the connection dropped mid-fetch: one GET /models/fetch tells where the fetch
    is. Still going: a clear error naming the broken stream; ended meanwhile: its end, as usual; unknown
    to the node (it restarted): how to resume."""
    events = [("progress", status(done=1 << 20))]
    code, out, err, requests = node(Script(events, end, listed=[status(done=2 << 20)]))
    assert code == 2 and out == "" and "Traceback" not in err
    assert err.startswith("mesh: error: the event stream of model fetch abababababab "), err
    assert ("broke: IncompleteRead" if end == "cut" else "ended before model fetch abababababab did") in err, err
    assert "still fetching (2,097,152 of 3,145,728 bytes)" in err
    assert requests["GET /models/fetch"] == 1

    ended = status("done", 3 << 20, name="m", seconds=1.0)
    code, out, err, requests = node(Script(events, end, listed=[ended]), "--json")
    assert code == 0 and json.loads(out) == ended and requests["GET /models/fetch"] == 1

    code, out, err, requests = node(Script(events, end, listed=[]))
    assert code == 2 and "no longer knows this fetch" in err and "run the same command again" in err
    assert requests["GET /models/fetch"] == 1


def test_past_the_timeout_a_stalled_fetch_is_still_fetching(node):
    """A fetch that stops moving sends nothing but keep-alives: --timeout still ends the waiting, with the
    'still fetching' error as before, after one GET for its latest state."""
    script = Script([("progress", status(done=1 << 20))], "stall", listed=[status(done=1 << 20)])
    code, out, err, requests = node(script, "--timeout", "0.5")
    assert code == 2 and out == ""
    assert err.strip() == "mesh: error: model abababababab still fetching after 0.5 s (it goes on; see GET /models/fetch)"
    assert requests["GET /models/fetch"] == 1
