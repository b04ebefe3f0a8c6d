"""The owner's limits (issue 24), on real nodes. `--max-cpu` puts every python step of peers under one CPU
quota: a step that spins for a fixed wall time gets at most the cap's CPU-seconds, as the kernel counted them
in the step's own group; the cap's group exists while the node runs and is gone after. `--max-memory` holds
all python steps in one memory group; `--max-steps` and `mesh pause` are signed in the node's record, so
submitters queue for it or place elsewhere instead of being refused; HOME/node.toml is re-read on SIGHUP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from mesh.steps.cgroup import CAP_NAME, NAME, ROOT
from mesh.steps.scrape import find_browser

from ..conftest import run_cli, tree_pids, wait_for
from ..websites import ThreadedSite

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(240)]

SPIN_S = 2.0
SPIN = {"id": "spin", "kind": "python", "params": {"code": (
    "import time\nt = time.time()\nn = 0\n"
    f"while time.time() - t < {SPIN_S}:\n    n += 1\n"
    "output = n")}}
CPU_V1 = (ROOT / "cpu" / "cgroup.procs").exists() and not (ROOT / "cgroup.controllers").exists()
needs_cpu_cgroup = pytest.mark.skipif(not (CPU_V1 and os.geteuid() == 0), reason="needs root and cgroup v1's cpu controller")


def spin_on(mesh) -> dict:
    return run_job(mesh, [SPIN])["steps"]["spin"]


def run_job(mesh, steps: list[dict], redundancy: int = 1, status: str = "done") -> dict:
    client = mesh.nodes[0].client
    job = client.request("POST", "/jobs", {"job": {"name": "owner", "redundancy": redundancy, "steps": steps}})["job_id"]
    rep = wait_for(lambda: (r := client.request("GET", f"/jobs/{job}?wait=30", timeout=60))["status"] != "running"
                   and r, 120, "the job to end")
    assert rep["status"] == status, rep
    return rep


def caps(ctrl: str = "cpu") -> list[Path]:
    return sorted((ROOT / ctrl).glob(CAP_NAME + "*"))


def offer_of(mesh, i: int, seen_by: int = 0) -> dict | None:
    """Node i's offer as node `seen_by` holds it from its signed record."""
    peers = mesh.nodes[seen_by].client.request("GET", "/status")["peers"]
    return next((p["offer"] for p in peers if p["node"] == mesh.nodes[i].client.request("GET", "/status")["node"]), None)


def timed(i: int) -> dict:
    """A python step that sleeps a second and says when it ran (wall clock, seconds)."""
    return {"id": f"s{i}", "kind": "python", "params": {"code": (
        "import time\nt = time.time()\ntime.sleep(1.0)\noutput = [t, time.time()]")}}


@needs_cpu_cgroup
def test_max_cpu_holds_a_spinning_step_to_its_share_and_goes_with_the_node(make_mesh):
    before = set(caps())
    # 25% of this machine: on 2 CPUs, half a CPU for everything peers run here
    mesh = make_mesh(2, lambda i: ["--no-model", "--transport", "tcp"] + (["--max-cpu", "25%"] if i == 1 else []))
    worker = mesh.nodes[1]
    status = worker.client.request("GET", "/status")
    assert status["max_cpu"] == 0.25
    mine = [p for p in caps() if p not in before]
    assert len(mine) == 1, mine
    quota = int((mine[0] / "cpu.cfs_quota_us").read_text())
    period = int((mine[0] / "cpu.cfs_period_us").read_text())
    allowed = quota / period  # CPUs' worth per second
    assert allowed == pytest.approx(0.25 * (os.cpu_count() or 1))

    step = spin_on(mesh)
    (replica,) = step["replicas"]
    # the kernel held the cap's group back (the sandbox sees its own cgroup namespace, so this is read here)
    stat = dict(line.split() for line in (mine[0] / "cpu.stat").read_text().splitlines())
    cpu_s = replica["work"]["cpu_s"]
    if cpu_s > 0.8 * allowed * SPIN_S:  # (on a machine loaded past the cap the step never reaches its quota)
        assert int(stat["nr_throttled"]) > 0, stat
    # the kernel's count for the step's group: at most the quota over the spin (10% for the period's edges)
    assert 0 < cpu_s <= allowed * SPIN_S * 1.1 + 0.05, (cpu_s, allowed)
    print(f"--max-cpu 25%: a {SPIN_S:g} s spin used {cpu_s:.3f} CPU-s (cap {allowed * SPIN_S:.2f})")

    mesh.stop()
    wait_for(lambda: mine[0] not in caps(), 15, "the node's CPU cap group to be removed")


def test_max_cpu_refuses_a_bad_share_before_starting(tmp_path):
    for bad in ("0", "101%", "half"):
        res = run_cli("node", "--home", str(tmp_path / "h"), "--max-cpu", bad, timeout=30)
        assert res.returncode == 2 and "--max-cpu" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_max_steps_is_signed_in_the_record_and_submitters_queue_for_it(make_mesh):
    """--max-steps 1: the worker's record says so, and a submitter with three steps for it sends them one
    at a time (none refused as busy, no two overlapping) rather than three and two refusals."""
    mesh = make_mesh(2, lambda i: ["--no-model", "--transport", "tcp"] + (["--max-steps", "1"] if i == 1 else []))
    offer = wait_for(lambda: offer_of(mesh, 1), 30, "node1's record at node0")
    assert (offer["steps"], offer["per_peer"], offer["paused"]) == (1, 1, False)
    assert mesh.nodes[1].client.request("GET", "/status")["max_steps"] == 1
    rep = run_job(mesh, [timed(i) for i in range(3)])
    spans = []
    for sid, step in rep["steps"].items():
        assert [("error" in r, r["agreed"]) for r in step["replicas"]] == [(False, True)], (sid, step["replicas"])
        spans.append(step["output"])
    assert mesh.nodes[1].client.request("GET", "/status")["rejected"].get("busy", 0) == 0  # none sent to be refused
    spans.sort()
    assert all(a[1] <= b[0] + 0.05 for a, b in zip(spans, spans[1:], strict=False)), spans  # one at a time


@needs_cpu_cgroup
def test_max_memory_holds_every_python_step_in_one_group(make_mesh):
    """--max-memory 200MiB: one memory group with that limit, each step's own group inside it; a step
    that wants more fails with its own MemoryError (its limit is cut to the cap), one within it runs."""
    before = set(caps("memory"))
    mesh = make_mesh(2, lambda i: ["--no-model", "--transport", "tcp"] + (["--max-memory", "200MiB"] if i == 1 else []))
    mine = [p for p in caps("memory") if p not in before]
    assert len(mine) == 1 and int((mine[0] / "memory.limit_in_bytes").read_text()) == 200 << 20, mine
    assert not [p for p in caps() if p.name == mine[0].name]  # no CPU cap was asked for: no CPU group
    assert wait_for(lambda: offer_of(mesh, 1), 30, "node1's record")["memory"] == 200 << 20
    big = {"id": "big", "kind": "python", "params": {"code": "x = bytearray(300 << 20)\noutput = len(x)"}}
    rep = run_job(mesh, [big], status="failed")
    assert "MemoryError" in str(rep["steps"]["big"]), rep["steps"]["big"]
    fits = {"id": "fits", "kind": "python", "params": {"code": "x = bytearray(100 << 20)\noutput = len(x)"}}
    assert run_job(mesh, [fits])["steps"]["fits"]["output"] == 100 << 20
    # the warm sandbox waiting for the next step has its memory group inside the cap's
    wait_for(lambda: list(mine[0].glob(NAME + "*")), 30, "a step's memory group inside the cap")
    mesh.stop()
    wait_for(lambda: mine[0] not in caps("memory"), 15, "the node's memory cap group to be removed")


@needs_cpu_cgroup
def test_a_process_lingering_in_the_cap_is_killed_when_the_node_stops_and_the_groups_go(make_mesh):
    """What is still in the owner's cap groups once the node's actors have stopped (a sandbox slow to die
    under load, a straggler of a runner) is the node's own leftover: the stop kills it and removes the
    groups. The node used to wait 5 s for it to leave, then leave the groups behind."""
    before = set(caps("memory")) | set(caps("cpu"))
    mesh = make_mesh(1, lambda i: ["--no-model", "--transport", "tcp", "--max-memory", "200MiB", "--max-cpu", "50%"])
    mine = [p for p in caps("memory") + caps("cpu") if p not in before]
    assert len(mine) == 2, mine
    straggler = subprocess.Popen(["sleep", "120"], start_new_session=True)  # out of the node's process group
    try:
        for group in mine:
            (group / "cgroup.procs").write_text(str(straggler.pid))
        node = mesh.nodes[0]
        node.kill(signal.SIGTERM)
        node.proc.wait(30)
        assert straggler.wait(5) == -signal.SIGKILL
        assert not [p for p in mine if p.exists()], mine
        assert "stopped: signal TERM" in (node.home / "stdout.log").read_text()
    finally:
        straggler.kill()
        straggler.wait()


def test_a_paused_node_is_skipped_unpunished_and_takes_work_again_once_resumed(make_mesh):
    """mesh pause: the node's record says so at once, node0 places every replica on the other worker and
    the paused one's reputation there does not move; mesh resume puts it back in the running."""
    mesh = make_mesh(3, lambda i: ["--no-model", "--transport", "tcp"])
    home = str(mesh.nodes[1].home)
    wait_for(lambda: offer_of(mesh, 1) and offer_of(mesh, 2), 30, "both workers' records at node0")
    res = run_cli("pause", "--home", home, "--reason", "gaming tonight", timeout=30)
    assert res.returncode == 0 and "paused (gaming tonight)" in res.stdout, res.stdout + res.stderr
    wait_for(lambda: (offer_of(mesh, 1) or {}).get("paused"), 20, "node0 to see node1 paused")
    status = run_cli("status", "--home", home, timeout=30).stdout
    assert "PAUSED: gaming tonight" in status, status
    paused_id = mesh.nodes[1].client.request("GET", "/status")["node"]
    rep_before = {p["node"]: p["reputation"] for p in mesh.nodes[0].client.request("GET", "/status")["peers"]}
    rep = run_job(mesh, [timed(i) for i in range(4)])
    workers = {r["node"] for s in rep["steps"].values() for r in s["replicas"]}
    assert paused_id not in workers and len(workers) == 1, workers
    rep_after = {p["node"]: p["reputation"] for p in mesh.nodes[0].client.request("GET", "/status")["peers"]}
    assert rep_after[paused_id] == rep_before[paused_id]
    assert (mesh.nodes[1].home / "paused").exists()  # kept across a restart

    assert run_cli("resume", "--home", home, timeout=30).returncode == 0
    wait_for(lambda: (offer_of(mesh, 1) or {}).get("paused") is False, 20, "node0 to see node1 resumed")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # placement is weighted at random: some job lands on it soon
        rep = run_job(mesh, [timed(i) for i in range(4)])
        if paused_id in {r["node"] for s in rep["steps"].values() for r in s["replicas"]}:
            break
    else:
        raise AssertionError("the resumed node got no work in 60 s")


@needs_cpu_cgroup
def test_node_toml_is_reread_on_sighup_and_a_bad_one_changes_nothing(make_mesh, tmp_path):
    """Limits from HOME/node.toml; SIGHUP applies a new file at once (the CPU quota, the slots, the
    record peers place by); a file with a wrong value is refused with the reason and nothing changes."""
    toml = tmp_path / "mesh" / "node1" / "node.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text('max_cpu = "50%"\nmax_steps = 3\n')
    before = set(caps())
    mesh = make_mesh(2, lambda i: ["--no-model", "--transport", "tcp"])
    worker = mesh.nodes[1]
    st = worker.client.request("GET", "/status")
    assert (st["max_cpu"], st["max_steps"]) == (0.5, 3)
    (mine,) = [p for p in caps() if p not in before]
    cpus = os.cpu_count() or 1
    assert int((mine / "cpu.cfs_quota_us").read_text()) == int(0.5 * cpus * 100_000)

    toml.write_text('max_cpu = "25%"\nmax_steps = 1\n')
    worker.kill(signal.SIGHUP)
    wait_for(lambda: worker.client.request("GET", "/status")["max_steps"] == 1, 20, "the new limits")
    assert worker.client.request("GET", "/status")["max_cpu"] == 0.25
    assert int((mine / "cpu.cfs_quota_us").read_text()) == int(0.25 * cpus * 100_000)
    wait_for(lambda: (offer_of(mesh, 1) or {}).get("steps") == 1, 20, "node0 to see the new offer")

    toml.write_text('max_steps = 0\n')
    worker.kill(signal.SIGHUP)
    wait_for(lambda: "node.toml not applied" in (worker.home / "stdout.log").read_text(), 20, "the refusal")
    assert "max_steps" in (worker.home / "stdout.log").read_text().split("node.toml not applied")[-1]
    assert worker.client.request("GET", "/status")["max_steps"] == 1
    assert worker.proc.poll() is None


def test_owner_flags_refuse_bad_values_before_starting(tmp_path):
    for flag, bad in (("--max-memory", "10MB"), ("--max-memory", "lots"), ("--max-steps", "0"), ("--max-steps", "x")):
        res = run_cli("node", "--home", str(tmp_path / "h"), flag, bad, timeout=30)
        assert res.returncode == 2 and flag in res.stderr and "Traceback" not in res.stderr, res.stderr
    (tmp_path / "h").mkdir(exist_ok=True)
    (tmp_path / "h" / "node.toml").write_text("max_memroy = '1GB'\n")
    res = run_cli("node", "--home", str(tmp_path / "h"), "--no-model", timeout=60)
    assert res.returncode == 2 and "unknown key 'max_memroy'" in res.stderr and "Traceback" not in res.stderr, res.stderr


def window(start_in_h: int, length_h: int) -> str:
    """A daily window starting `start_in_h` hours from now (local time)."""
    lt = time.localtime()
    start = (lt.tm_hour + start_in_h) % 24
    return f"{start:02d}:00-{(start + length_h) % 24:02d}:00"


def test_outside_its_hours_a_node_is_paused_and_resume_says_why_it_still_is(make_mesh):
    """--hours with a window that excludes now (two hours from now on): paused from the start, peers see it,
    and `mesh resume` (which clears only the owner's own pause) says the hours still hold it."""
    hours = window(2, 3)
    mesh = make_mesh(2, lambda i: ["--no-model", "--transport", "tcp"] + (["--hours", hours] if i == 1 else []))
    st = wait_for(lambda: (s := mesh.nodes[1].client.request("GET", "/status"))["paused"] and s, 20, "the pause")
    assert st["paused"] == f"outside its hours ({hours})" and st["hours"] == hours
    wait_for(lambda: (offer_of(mesh, 1) or {}).get("paused"), 20, "node0 to see node1 paused")
    res = run_cli("resume", "--home", str(mesh.nodes[1].home), timeout=30)
    assert res.returncode == 0 and f"still paused: outside its hours ({hours})" in res.stdout, res.stdout
    inside = make_mesh(1, lambda i: ["--no-model", "--transport", "tcp", "--hours", window(-1, 3)], name="inside")
    assert inside.nodes[0].client.request("GET", "/status")["paused"] is None


def test_when_idle_pauses_a_node_while_other_programs_load_the_machine(make_mesh):
    """--when-idle: two processes spinning on this machine (every CPU busy, none of them the node's) keep
    the node paused, saying so; peers see the pause. (Idleness coming back is the rule's business:
    tests/node/test_schedule.py; a shared CI machine is never reliably idle.)"""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
    try:
        mesh = make_mesh(2, lambda i: ["--no-model", "--transport", "tcp"] + (["--when-idle", "0.05"] if i == 1 else []))
        st = wait_for(lambda: "other programs use" in ((s := mesh.nodes[1].client.request("GET", "/status"))["paused"]
                                                       or "") and s, 30, "the pause for the load")
        assert st["when_idle"] == 0.05 and "other programs' CPU load" in st["idle_watch"], st
        wait_for(lambda: (offer_of(mesh, 1) or {}).get("paused"), 20, "node0 to see node1 paused")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(10)


class Page(ThreadedSite):
    def app(self) -> web.Application:
        async def page(request: web.Request) -> web.Response:
            return web.Response(content_type="text/html", text="<html><body><p>capped page</p></body></html>")

        app = web.Application()
        app.add_routes([web.get("/", page)])
        return app


@needs_cpu_cgroup
@pytest.mark.skipif(find_browser() is None, reason="no Chromium here")
def test_chromium_runs_under_the_owners_caps(make_mesh):
    """--max-cpu and --max-memory hold the node's Chromium too: every browser process of the capped worker
    sits in both cap groups (the memory cap's, or the browser's own group inside it) once a scrape step
    has started it."""
    site = Page()
    site.start()
    try:
        before = set(caps())
        mesh = make_mesh(2, lambda i: ["--no-model", "--transport", "tcp", "--scrape-allow", "127.0.0.1"]
                         + (["--max-cpu", "50%", "--max-memory", "1GiB"] if i == 1 else []))
        (cpu,) = [p for p in caps() if p not in before]
        memory = ROOT / "memory" / cpu.name
        rep = run_job(mesh, [{"id": "page", "kind": "scrape", "params": {"url": site.url("/")}}])
        assert "capped page" in rep["steps"]["page"]["output"]["text"]
        ours = set(tree_pids(mesh.nodes[1].proc.pid))  # (not another test's browser, running beside this one)
        browser = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid in ours
                   and any("homemesh-chromium-" in a for a in p.info["cmdline"] or ()) and p.is_running()]
        assert browser, "no Chromium process found"
        in_cpu = {int(x) for x in (cpu / "cgroup.procs").read_text().split()}
        # (the browser's own memory group, BROWSER_MEMORY, is made inside the cap's: its members count there)
        in_memory = {int(x) for procs in memory.rglob("cgroup.procs") for x in procs.read_text().split()}
        assert {p.pid for p in browser} <= in_cpu and {p.pid for p in browser} <= in_memory, (
            [(p.pid, p.info["cmdline"][:1]) for p in browser], in_cpu, in_memory)
    finally:
        site.stop()
