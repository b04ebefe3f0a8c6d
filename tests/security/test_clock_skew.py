"""A node whose wall clock ran an hour ahead and was then set back (a dual-boot PC whose hardware clock holds
local time, before NTP corrects it). Red team G, 2026-12-07: set back, the node still refused every peer's
envelope as "stamped before this node started" (its start was read from the wrong clock); and its peers had
taken sequence numbers an hour ahead from it, so after its next restart they refused it as a replay until the
hour had passed. Here node A runs with time.time() shifted by the seconds in a file (its actors are forked
from it and share the shift), on real processes."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from mesh.cli.local import LocalMesh, LocalNode

from ..conftest import wait_for

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(300)]

SHIFTED = '''import os, sys, time
_real, _real_ns, _mono, _file, _cache = time.time, time.time_ns, time.monotonic, os.environ["SKEW_FILE"], [0.0, -1.0]
def _off():
    if _mono() - _cache[1] > 0.2:
        _cache[0], _cache[1] = float(open(_file).read().strip() or 0), _mono()
    return _cache[0]
time.time = lambda: _real() + _off()
time.time_ns = lambda: _real_ns() + int(_off() * 1e9)
sys.argv = ["mesh"] + sys.argv[1:]
from mesh.cli.main import main
sys.exit(main())
'''


def shifted_launch(script: Path, skew: Path):
    """A LocalNode launch running `mesh node …` under a clock shifted by the seconds in `skew`."""
    def launch(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        assert cmd[1:4] == ["-P", "-m", "mesh"], cmd
        with open(log, "ab") as out:
            return subprocess.Popen([cmd[0], "-P", str(script), *cmd[4:]], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    env={**env, "SKEW_FILE": str(skew)})
    return launch


def up(node: LocalNode) -> int:
    return sum(p["state"] == "up" for p in node.client.request("GET", "/status")["peers"])


def python_job(node: LocalNode, steps: int = 1) -> dict:
    """A job of `steps` python steps at r=2 from `node`, waited for: each step is a request, a result and a
    receipt between the submitter and both workers."""
    job = node.client.request("POST", "/jobs", {"job": {"name": "after", "redundancy": 2, "steps": [
        {"id": f"s{i}", "kind": "python", "params": {"code": f"output = {i}"}} for i in range(steps)]}})["job_id"]
    return wait_for(lambda: (r := node.client.request("GET", f"/jobs/{job}?wait=20", timeout=40))["status"]
                    != "running" and r, 90, "the job to end")


def test_a_node_whose_clock_ran_an_hour_ahead_links_once_it_is_set_back_and_after_its_next_restart(tmp_path):
    script, skew = tmp_path / "shifted.py", tmp_path / "skew"
    script.write_text(SHIFTED)
    skew.write_text("3600")
    mesh = LocalMesh(tmp_path / "mesh", 3, lambda i: ["--no-model", "--no-scrape"])
    a, b, c = mesh.nodes
    a.launch = shifted_launch(script, skew)
    try:
        b.start([])
        b.wait_started(60)
        c.start([b.listen])
        a.start([b.listen])
        c.wait_started(60)
        a.wait_started(60)
        wait_for(lambda: up(b) >= 1, 60, "b and c to link")
        wait_for(lambda: b.client.request("GET", "/status")["rejected"].get("future", 0) >= 2, 60,
                 "b to refuse A's hellos as an hour ahead")
        skew.write_text("0")  # NTP sets A's clock back
        wait_for(lambda: up(a) >= 2, 60, "A to link both peers once its clock is set back")
        # enough envelopes to each peer that its replay window for A moves past its first numbers
        assert python_job(a, steps=24)["status"] == "done"
        a.kill(signal.SIGKILL)  # a power cut; A comes back with its clock right
        a.proc.wait(10)
        a.start([b.listen])
        a.wait_started(60)
        wait_for(lambda: up(a) >= 2, 60, "A to link both peers again after its restart")
        rep = python_job(a)
        assert rep["status"] == "done", rep
        for peer in (b, c):
            assert not peer.client.request("GET", "/status")["rejected"].get("seq-ahead"), "honest A's numbers refused"
    finally:
        mesh.stop()
