"""`mesh up --dir mesh` run from the folder that holds `mesh/` (issue 16, item 6): the nodes' homes must not
shadow the package in the node processes, which once started as `python -m mesh` with the working
directory first on sys.path and died with an ImportError."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mesh.cli.client import Client
from mesh.node.home import RuntimeInfo, read_token

from ..conftest import wait_for


def read_line(proc: subprocess.Popen, timeout: float) -> str:
    """The next line `proc` prints, or AssertionError (with what it said) after `timeout` seconds."""
    buf, deadline = b"", time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"no line from `mesh up` (exit {proc.poll()}): {buf!r} "
                                 f"{proc.stderr.read().decode(errors='replace') if proc.poll() is not None else ''}")
        if select.select([proc.stdout], [], [], min(left, 0.5))[0]:
            byte = os.read(proc.stdout.fileno(), 1)
            if not byte:
                continue
            buf += byte
    return buf.decode()


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.mesh
@pytest.mark.timeout(120)
def test_mesh_up_with_homes_in_a_folder_named_mesh(tmp_path: Path):
    script = shutil.which("mesh", path=str(Path(sys.executable).parent))
    # the console script, as a user runs it (`python -m mesh` would itself be shadowed by ./mesh)
    cmd = [script] if script else [sys.executable, "-P", "-m", "mesh"]
    proc = subprocess.Popen([*cmd, "up", "--nodes", "2", "--dir", "mesh", "--no-model", "--timeout", "60"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    homes = [tmp_path / "mesh" / f"node{i}" for i in range(2)]
    pids: list[int] = []
    try:
        first = read_line(proc, 90)
        assert "mesh of 2 nodes ready" in first, first
        pids = [RuntimeInfo.read(h).pid for h in homes]
        for h in homes:
            status = Client(RuntimeInfo.read(h).api, read_token(h)).request("GET", "/status", timeout=10)
            assert [p["state"] for p in status["peers"]] == ["up"], status["peers"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        wait_for(lambda: not any(map(running, pids)), 30, "every node to stop")
    finally:
        for pid in [proc.pid, *filter(running, pids)]:  # `mesh up` and each node lead their own group
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(10)
