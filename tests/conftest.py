"""Shared fixtures: real node processes on loopback, stopped by pid (process group) after each test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import psutil
import pytest

from mesh.cli.local import Launch, LocalMesh

from .nodefork import Forked, ForkServer

# Seconds each of the slowest files took in a whole run on 2 CPUs (clean-clone CI run of 45335c2,
# 2026-12-07, from its junit report), most first. `make test` hands files to its two workers in this order,
# the rest after them by their number of tests (pytest-xdist's own order, which put these few-test files
# last, so a worker could start a several-minute file when the other had little left). A file missing here
# only runs later; the figures need not be exact.
SLOWEST_FILES = {
    "tests/steps/test_scrape.py": 190, "tests/p2p/test_nat_mesh.py": 156, "tests/steps/test_models.py": 145,
    "tests/simulations/test_simulator.py": 135, "tests/simulations/test_shared_sim.py": 108,
    "tests/node/test_mesh.py": 90, "tests/security/test_gossip_weapon.py": 87, "tests/node/test_crash.py": 74,
    "tests/security/test_hostile_round3.py": 72, "tests/node/test_faults.py": 69, "tests/chaos/test_chaos.py": 64,
    "tests/steps/test_llm_verify.py": 59, "tests/security/test_scrape_containment.py": 51,
    "tests/security/test_testimony_attacks.py": 48, "tests/p2p/test_dht.py": 46, "tests/p2p/test_discovery_mesh.py": 42,
}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Two tests with one node id are refused: pytest-xdist schedules by node id and silently ran one of 16
    such tests (schemathesis's), reporting the rest neither passed nor failed. Files are then ordered
    slowest first (SLOWEST_FILES), each file's tests kept in their order."""
    seen: set[str] = set()
    twice = sorted({item.nodeid for item in items if item.nodeid in seen or seen.add(item.nodeid)})
    if twice:
        raise pytest.UsageError(f"{len(twice)} node ids name more than one test, e.g. {twice[0]}: give each its own")
    file_of = {item: item.nodeid.split("::")[0] for item in items}
    count = Counter(file_of.values())
    items.sort(key=lambda item: (-SLOWEST_FILES.get(file_of[item], 0), -count[file_of[item]]))

ROOT = Path(__file__).resolve().parent.parent
# Test networks demand 8 bits of work per node id, not the real 20 (about 2 s of CPU per id): the tests
# mint hundreds of ids. Set before any node starts, so every node and every test agrees; the tests of
# the requirement itself (tests/wire/test_idwork.py, tests/security/test_id_work.py) set their own.
os.environ["MESH_ID_BITS"] = "8"
# Every node and CLI call the tests start is a fresh interpreter. With PYTHONDONTWRITEBYTECODE set (as on
# this project's CI machines) each compiled the project's ~110 modules again: 0.6 s of a node's 2.3 s of
# imports. Bytecode is written once (atomically, so concurrent writers are safe) and reused.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `mesh ARGS` as a user would, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "mesh", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def cli_json(*args: str, timeout: float = 120) -> object:
    res = run_cli(*args, "--json", timeout=timeout)
    assert res.returncode in (0, 3), f"mesh {' '.join(args)} failed ({res.returncode}): {res.stderr}"
    return json.loads(res.stdout)


def wait_for(cond: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll `cond` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def stop_session(proc: subprocess.Popen, timeout: float = 60, sig: int = signal.SIGINT) -> None:
    """Stop a CLI started with start_new_session=True as a user would (Ctrl-C), then kill its whole
    session's group if it has not ended after `timeout` seconds."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def kill_all(pids: list[int]) -> None:
    """Kill each process still there (what a stopped mesh may have left behind)."""
    for pid in pids:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


def tree_pids(pid: int) -> list[int]:
    try:
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def model_holders(node) -> list[int]:
    """The processes of `node`'s tree that map the default model's GGUF (its model runner's worker; the
    instruct model has a runner of its own)."""
    from mesh.steps.models import default_model
    base = str(default_model()[0].resolve())
    found = []
    for pid in tree_pids(node.proc.pid):
        try:
            if any(m.path == base for m in psutil.Process(pid).memory_maps()):
                found.append(pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="session")
def fork_node():
    """LocalNode's `launch` for the tests: a node forked from an interpreter that has imported it
    (tests/nodefork.py), not a fresh `python -m mesh node` importing it all again. One server for this
    pytest process, started by the first test that starts nodes and stopped by pid at the end. With
    MESH_TEST_EXEC_NODES=1 (to tell a fork's fault from the node's) every node is exec'd."""
    if os.environ.get("MESH_TEST_EXEC_NODES") == "1":
        yield None
        return
    servers = [ForkServer()]  # started here, in the main thread: it dies with the thread that started it

    def launch(cmd: list[str], log: Path, env: dict[str, str]) -> Forked:
        if servers[-1].proc.poll() is not None:  # (gone: a new one for the tests left)
            servers.append(ForkServer())
        return servers[-1].launch(cmd, log, env)

    yield launch
    for server in servers:
        server.stop()


class MeshStarter:
    """Starts LocalMeshes under one directory and kills all of them, and whatever they left behind, by pid."""

    def __init__(self, directory: Path, launch: Launch | None = None):
        self.directory = directory
        self.launch = launch
        self.meshes: list[LocalMesh] = []
        self.pids: list[int] = []

    def __call__(self, n: int, extra: Callable[[int], list[str]] | None = None, name: str = "mesh") -> LocalMesh:
        mesh = LocalMesh(self.directory / name, n, extra, launch=self.launch)
        self.meshes.append(mesh)
        mesh.start()
        mesh.wait_ready(timeout=120)
        for node in mesh.nodes:
            self.pids.extend(tree_pids(node.proc.pid))
        return mesh

    def stop(self) -> None:
        for mesh in self.meshes:
            mesh.stop()
        kill_all(self.pids)  # anything the nodes left behind (actors are in the nodes' process groups)


@pytest.fixture
def make_mesh(tmp_path: Path, fork_node):
    """make_mesh(n, extra=lambda i: [...]) → a started, ready LocalMesh; all of it is killed afterwards."""
    starter = MeshStarter(tmp_path, fork_node)
    yield starter
    starter.stop()


@pytest.fixture(scope="module")
def module_mesh(tmp_path_factory, fork_node):
    """Like make_mesh, for meshes shared by the tests of one module."""
    starter = MeshStarter(tmp_path_factory.mktemp("module-mesh"), fork_node)
    yield starter
    starter.stop()


@pytest.fixture(scope="module")
def mesh(module_mesh):
    """A 4-node mesh with the model, shared by one module's tests (node0 submits, three work)."""
    return module_mesh(4)


@pytest.fixture(scope="module")
def node(mesh):
    return mesh.nodes[0]


def write_job(path: Path, steps: list[dict], **extra) -> str:
    path.write_text(json.dumps({"name": path.stem, "steps": steps, **extra}))
    return str(path)
