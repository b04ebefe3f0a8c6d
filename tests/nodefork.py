"""Node processes forked from one interpreter that has already imported the node, for the tests.

A test's node started as `python -P -m mesh node …` spent ~2.3 s of CPU before it did anything, nearly
all of it imports (py-libp2p ~1.4 s, FastAPI ~0.4 s); the suite starts ~450 nodes and the CI's two CPUs
were busy 87% of its run (measured 2026-12-07). Here one server process per pytest worker imports the
node once, and each node is a fork of it running `mesh.cli.main.main(argv)` as the exec'd node would:
its own session, its log as stdout and stderr, its environment and working directory, SIGTERM when its
parent dies. Its command line, as `ps` shows it, stays the server's (`python -P -m tests.nodefork`).
Only the tests use this (`LocalNode(launch=…)`; MESH_TEST_EXEC_NODES=1 execs every node instead, to tell a
fork's fault from the node's). Two faults were found on the way in clean CI runs: a node taken for ended
because its pid had been an ended node's (exits are kept by the server's serial number of each fork), and
a hostile scrape test that saw none of its page's pings (most likely the page's own timer: it declared
itself ready 1.5 s after starting them, whatever the machine's load; it asks the site now). `mesh up` and
users' nodes are exec'd, and tests that check a node's own start (the CLI's, the README's) exec it either
way.

The server is a child of the test process (SIGKILL when the thread that started it ends); a node is the
server's child, so the server reaps it and reports its exit status, which `Forked` gives back as
`subprocess.Popen` would."""

from __future__ import annotations

import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
from pathlib import Path

from mesh.node.actorsys import die_with_parent

ROOT = Path(__file__).resolve().parent.parent
PRELOAD = ("mesh.cli.main", "mesh.node.lifecycle", "mesh.http.api", "mesh.node.p2p.transport",
           "mesh.node.p2p.nat", "mesh.node.p2p.dht", "actors.node_actor")


class ForkServerError(RuntimeError):
    """The fork server is gone or could not start a node."""


class Forked:
    """A node forked by the server: the part of `subprocess.Popen` LocalNode uses (it signals the node's
    process group itself)."""

    def __init__(self, server: "ForkServer", pid: int, serial: int, args: list[str]):
        self.server, self.pid, self.serial, self.args = server, pid, serial, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.serial)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            code = self.server.wait_exit(self.serial, timeout)
            if code is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = code
        return self.returncode


class ForkServer:
    """One server process; `launch` has LocalNode's signature for starting a node."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "tests.nodefork"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=ROOT, start_new_session=True,
                                     preexec_fn=lambda: die_with_parent(signal.SIGKILL))
        self._lock = threading.Lock()  # one request at a time: replies come in order
        self._changed = threading.Condition()
        self._replies: list[dict] = []
        # exit codes by the server's serial number of the fork, never by pid: this machine's pids (pid_max
        # 32768) came round within one CI run, and a node given an ended node's pid was taken for ended
        self._exits: dict[int, int] = {}
        self._reader = threading.Thread(target=self._read, name="nodefork-reader", daemon=True)
        self._reader.start()
        ready = self._reply(timeout=120)
        if not ready.get("ready"):
            raise ForkServerError(f"the fork server did not start: {ready}")

    def launch(self, cmd: list[str], log: Path, env: dict[str, str]) -> Forked:
        """Start `cmd` (`[python, -P, -m, mesh, node, …]`) forked, its output appended to `log`."""
        argv = cmd[cmd.index("mesh") + 1:]
        with self._lock:
            self._send({"argv": argv, "env": env, "cwd": os.getcwd(), "log": str(log)})
            reply = self._reply(timeout=30)
        if "pid" not in reply:
            raise ForkServerError(f"the fork server could not start a node: {reply}")
        return Forked(self, reply["pid"], reply["serial"], cmd)

    def exit_code(self, serial: int) -> int | None:
        with self._changed:
            return self._exits.get(serial)

    def wait_exit(self, serial: int, timeout: float | None) -> int | None:
        with self._changed:
            self._changed.wait_for(lambda: serial in self._exits or self.proc.poll() is not None, timeout)
            return self._exits.get(serial)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def _send(self, obj: dict) -> None:
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as exc:
            raise ForkServerError(f"the fork server is gone: {exc}") from exc

    def _reply(self, timeout: float) -> dict:
        with self._changed:
            if not self._changed.wait_for(lambda: self._replies or self.proc.poll() is not None, timeout):
                raise ForkServerError(f"no answer from the fork server in {timeout:g} s")
            if not self._replies:
                raise ForkServerError(f"the fork server exited with {self.proc.returncode}")
            return self._replies.pop(0)

    def _read(self) -> None:
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self._changed:
                if "exit" in msg:
                    self._exits[msg["exit"]] = msg["code"]
                else:
                    self._replies.append(msg)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()


# -- the server process --------------------------------------------------------------------------------


def _serve() -> dict:
    """Import the node, then fork a node per request; returns (in the child only) the request to run."""
    import importlib

    before = dict(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    set_by_imports = {k: v for k, v in os.environ.items() if before.get(k) != v}  # (py-libp2p's yamux setting)
    out = os.fdopen(os.dup(1), "w", buffering=1)
    if threading.active_count() != 1 or len(os.listdir("/proc/self/task")) != 1:
        out.write(json.dumps({"error": "a thread was started by the imports: forking would be unsafe"}) + "\n")
        raise SystemExit(1)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    out.write(json.dumps({"ready": True}) + "\n")
    requests = sys.stdin.buffer
    children: dict[int, int] = {}  # pid → serial, for the children not yet reaped
    serials = itertools.count(1)
    while True:
        readable, _, _ = select.select([requests, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
            _reap(out, children)
        if requests in readable:
            line = requests.readline()
            if not line:
                raise SystemExit(0)  # the test process is done
            req = json.loads(line)
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                out.close()
                req["set_by_imports"] = set_by_imports
                return req
            children[pid] = serial = next(serials)
            out.write(json.dumps({"pid": pid, "serial": serial}) + "\n")
            _reap(out, children)


def _reap(out, children: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        out.write(json.dumps({"exit": children.pop(pid), "code": os.waitstatus_to_exitcode(status)}) + "\n")


def _become_node(req: dict) -> int:
    """In the forked child: what `python -P -m mesh node …` would be, then run it."""
    os.setsid()
    die_with_parent(signal.SIGTERM)
    log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(null)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for k, v in req["set_by_imports"].items():
        os.environ.setdefault(k, v)
    sys.argv = [str(ROOT / "mesh" / "__main__.py"), *req["argv"]]
    from mesh.cli.main import main

    return main(req["argv"])


if __name__ == "__main__":
    raise SystemExit(_become_node(_serve()))
