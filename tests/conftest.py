"""Shared fixtures: real node processes on loopback, stopped by pid (process group) after each test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import psutil
import pytest

from mesh.local import LocalMesh

ROOT = Path(__file__).resolve().parent.parent


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


def tree_pids(pid: int) -> list[int]:
    try:
        p = psutil.Process(pid)
        return [pid] + [c.pid for c in p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.fixture
def make_mesh(tmp_path: Path):
    """make_mesh(n, extra=lambda i: [...]) → a started, ready LocalMesh; all of it is killed afterwards."""
    meshes: list[LocalMesh] = []
    pids: list[int] = []

    def make(n: int, extra: Callable[[int], list[str]] | None = None, name: str = "mesh") -> LocalMesh:
        mesh = LocalMesh(tmp_path / name, n, extra)
        meshes.append(mesh)
        mesh.start()
        mesh.wait_ready(timeout=120)
        for node in mesh.nodes:
            pids.extend(tree_pids(node.proc.pid))
        return mesh

    yield make
    for mesh in meshes:
        mesh.stop()
    for pid in pids:  # anything the nodes left behind (actors are in the nodes' process groups)
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


def write_job(path: Path, steps: list[dict], **extra) -> str:
    path.write_text(json.dumps({"name": path.stem, "steps": steps, **extra}))
    return str(path)
