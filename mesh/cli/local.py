"""A local mesh: N node processes on loopback, each in its own process group (its actors included) so
stopping one stops all of it. Nodes bind port 0 and publish what they got in node.json, so no port is
ever guessed free and then lost to a race. Used by `mesh up`, `mesh demo`, the tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from mesh.cli.client import Client
from mesh.errors import ConfigError, MeshError, UserError
from mesh.node.actorsys import die_with_parent
from mesh.node.home import RuntimeInfo, own_folder, read_token


class NodeProcess(Protocol):
    """What LocalNode needs of a started node: subprocess.Popen's, or a forked node's (tests/nodefork.py)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


# (command, log file, environment) → the started node
Launch = Callable[[list[str], Path, dict[str, str]], NodeProcess]


def free_ports(n: int) -> list[int]:
    """Ports free right now (for tests that need a port number nobody listens on)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class LocalNode:
    home: Path
    extra: list[str] = field(default_factory=list)
    threads: int = 1  # many nodes share this machine's cores: oversubscribed llama.cpp threads spin
    proc: NodeProcess | None = None
    info: RuntimeInfo | None = None
    env: dict[str, str] = field(default_factory=dict)  # extra environment (tests)
    # how the node's process is started (tests: forked from an interpreter that has imported the node,
    # tests/nodefork.py); None: `python -P -m mesh node …`
    launch: Launch | None = None

    @property
    def listen(self) -> str:
        return self.runtime().listen

    @property
    def api(self) -> str:
        return self.runtime().api

    @property
    def api_port(self) -> int:
        return int(self.api.rpartition(":")[2])

    @property
    def node_id(self) -> str:
        return self.runtime().node

    @property
    def client(self) -> Client:
        return Client(self.api, read_token(self.home))

    def runtime(self) -> RuntimeInfo:
        if self.info is None:
            self.info = RuntimeInfo.read(self.home)
        return self.info

    def start(self, bootstrap: list[str]) -> None:
        own_folder(self.home)  # (before its stdout.log is opened: see own_folder)
        self.info = None  # node.json is left alone: it may be another node's, running on this home
        # -P: the working directory is not put on sys.path, so a `mesh/` folder there (`mesh up --dir mesh`)
        # cannot shadow the package; PYTHONPATH still counts
        cmd = [sys.executable, "-P", "-m", "mesh", "node", "--home", str(self.home), "--listen", "127.0.0.1:0",
               "--api", "127.0.0.1:0", "--threads", str(self.threads), *self.extra]
        for b in bootstrap:
            cmd += ["--bootstrap", b]
        env = {**os.environ, **self.env}
        if self.launch is not None:
            self.proc = self.launch(cmd, self.home / "stdout.log", env)
            return
        with open(os.open(self.home / "stdout.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600),
                  "ab") as log:  # a node outlives neither `mesh up` nor a test
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env,
                                         preexec_fn=lambda: die_with_parent(signal.SIGTERM))

    def exited(self) -> MeshError:
        """The error of a node that exited: a UserError when it refused its options (exit 2), so a mistake
        passed through `mesh up --` exits 2 as the node would have."""
        why = f"node in {self.home} exited: {self.last_log() or 'see its stdout.log'}"
        return UserError(why) if self.proc is not None and self.proc.returncode == 2 else MeshError(why)

    def wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._published():
            if not self.alive():
                raise self.exited()
            if time.monotonic() > deadline:
                raise MeshError(f"node in {self.home} did not start within {timeout:g} s")
            time.sleep(0.05)

    def _published(self) -> bool:
        """Whether this node (not one killed before it on this home) wrote its node.json."""
        try:
            info = RuntimeInfo.read(self.home)
        except ConfigError:
            return False
        if self.proc is not None and info.pid != self.proc.pid:
            return False
        self.info = info
        return True

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the node's whole process group (the node and its actors)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None:
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        self.kill(signal.SIGKILL)  # whatever the node left behind in its group
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def last_log(self) -> str:
        try:
            lines = (self.home / "stdout.log").read_text(errors="replace").strip().splitlines()
        except FileNotFoundError:
            return ""
        return lines[-1] if lines else ""


MAX_NODES = 64  # node process trees on one machine (each 80-140 MiB); 99,999 made 125 homes a minute, on


class LocalMesh:
    def __init__(self, directory: Path, n: int, extra: Callable[[int], list[str]] | None = None,
                 threads: int = 1, launch: Launch | None = None):
        if not 1 <= n <= MAX_NODES:
            raise UserError(f"--nodes is from 1 to {MAX_NODES} (each node is a process tree of about 100 MiB)")
        self.nodes = [LocalNode(directory / f"node{i}", extra(i) if extra else [], threads, launch=launch)
                      for i in range(n)]

    def start(self, timeout: float = 120) -> None:
        first = self.nodes[0]
        first.start([])
        first.wait_started(timeout)
        for node in self.nodes[1:]:
            node.start([first.listen])

    def wait_ready(self, timeout: float = 180, progress: Callable[[str], None] | None = None) -> float:
        """Poll until every node is up and knows every other; returns the seconds it took."""
        t0 = time.monotonic()
        want = len(self.nodes) - 1
        last = ""
        while True:
            ready = 0
            for node in self.nodes:
                if not node.alive():
                    raise node.exited()
                try:
                    status = node.client.request("GET", "/status", timeout=2)
                except (MeshError, ConfigError):
                    continue
                if sum(p["state"] == "up" and p["connected"] for p in status["peers"]) >= want:
                    ready += 1
            line = f"{ready}/{len(self.nodes)} nodes ready"
            if progress and line != last:
                progress(line)
                last = line
            if ready == len(self.nodes):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise MeshError(f"mesh not ready after {timeout:g} s ({line})")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill(signal.SIGTERM)
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> "LocalMesh":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
