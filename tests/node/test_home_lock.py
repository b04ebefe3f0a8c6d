"""One node per home: a second `mesh node` on a home in use refuses at once, in one line, and touches
nothing of the first (it used to start, say "ready", and on exit delete the first one's node.json); a
node killed with -9 leaves the home free for the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.cli.local import LocalNode

from ..conftest import ROOT, cli_json, stop_session, wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120)]

KEPT = ("node.json", "node.key", "node.work", "api-token")  # what a second node must leave byte for byte


def second_node(home: Path, timeout: float = 30) -> tuple[int | None, str, str]:
    """Run `mesh node` on `home`; (exit code, stdout, stderr), exit code None if it still ran after
    `timeout` seconds (then it is stopped, by its process group)."""
    proc = subprocess.Popen([sys.executable, "-m", "mesh", "node", "--home", str(home), "--no-model",
                             "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        return None, out, err


def test_a_second_node_on_a_home_in_use_refuses_and_leaves_the_first_alone(tmp_path: Path):
    home = tmp_path / "h"
    first = LocalNode(home, ["--no-model"])
    try:
        first.start([])
        first.wait_started(60)
        kept = {name: (home / name).read_bytes() for name in KEPT}
        t0 = time.monotonic()
        code, out, err = second_node(home)
        took = time.monotonic() - t0
        assert code == 2, (code, out, err)
        assert err.strip() == f"mesh: error: home {home} is in use by pid {first.proc.pid}", err
        assert "ready" not in out, out
        assert took < 20, f"the second node took {took:.1f} s to refuse"
        assert {name: (home / name).read_bytes() for name in KEPT} == kept
        assert first.alive()
        assert cli_json("status", "--home", str(home))["node"] == first.node_id

        first.kill(signal.SIGKILL)  # the node and its actors: no clean-up, node.json left behind
        first.proc.wait(30)
        again = LocalNode(home, ["--no-model"])
        try:
            again.start([])
            again.wait_started(60)
            assert again.runtime().pid == again.proc.pid
            assert cli_json("status", "--home", str(home))["node"] == first.node_id  # same key, same id
        finally:
            again.stop()
    finally:
        first.stop()


def test_mesh_up_twice_on_one_directory_refuses_and_keeps_the_first_mesh(tmp_path: Path):
    """`mesh up` starts its nodes in homes of its own: a second `mesh up` on the same --dir must fail
    with the first's nodes untouched (it used to delete their node.json before starting its own)."""
    up = [sys.executable, "-m", "mesh", "up", "--nodes", "2", "--dir", str(tmp_path / "up"), "--no-model",
          "--timeout", "60"]
    proc = subprocess.Popen(up, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        assert "mesh of 2 nodes ready" in proc.stdout.readline()
        homes = [tmp_path / "up" / f"node{i}" for i in range(2)]
        kept = [(h / "node.json").read_bytes() for h in homes]
        res = subprocess.run(up, capture_output=True, text=True, cwd=ROOT, timeout=90, stdin=subprocess.DEVNULL)
        assert res.returncode != 0, res.stdout
        assert "is in use by pid" in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert [(h / "node.json").read_bytes() for h in homes] == kept
        for h in homes:
            wait_for(lambda h=h: cli_json("status", "--home", str(h))["node"], 10, "the first mesh to answer")
    finally:

        stop_session(proc)
