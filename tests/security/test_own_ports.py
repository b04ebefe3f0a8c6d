"""A scraped page never reaches its own node's ports, even where the operator allows loopback (found by this
project's red team, 2026-12-06). With `--scrape-allow 127.0.0.1` a scrape step's requests went through the
egress proxy to every port the worker's process tree listens on: its API answered the page
(`{"error":"Not Found"}` as the step's text), its peer port answered, and the Thespian admin and actor ports,
which unpickle whatever arrives, took the connection and held it. The proxy now refuses, on any address
only the allow-list lets through, every port a process of the node's tree listens on, looked up from the
kernel while the node runs; a page on another loopback port still loads."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from aiohttp import web

from mesh.steps.egress import EgressProxy
from mesh.steps.ownports import OwnPorts, enrol, enrolled, leave, listening_ports
from mesh.steps.scrape import find_browser
from mesh.steps.ssrf import Allow

from ..conftest import cli_json, kill_all, tree_pids, wait_for
from ..websites import ThreadedSite

ALLOW_LOCAL = Allow.parse(["127.0.0.1"])
OWN = "this node's own port"

# a process that listens on a port, prints it, and starts one child that does the same: a small node tree
LISTENER = """
import socket, subprocess, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
print(s.getsockname()[1], flush=True)
if sys.argv[1] == "parent":
    child = subprocess.Popen([sys.executable, "-c", sys.argv[2], "child", ""], stdout=sys.stdout)
time.sleep(120)
"""


@pytest.fixture
def tree():
    """(root pid, [the root's port, its child's port]) of a real two-process tree; killed by pid after."""
    proc = subprocess.Popen([sys.executable, "-c", LISTENER, "parent", LISTENER], stdout=subprocess.PIPE, text=True)
    try:
        ports = [int(proc.stdout.readline()), int(proc.stdout.readline())]
        yield proc.pid, ports
    finally:
        kill_all(tree_pids(proc.pid)[::-1])
        proc.wait(10)


async def ask(proxy: EgressProxy, request: str) -> bytes:
    """The first line of the proxy's answer to one request (CONNECT or absolute-URL GET)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(request.encode())
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


@pytest.mark.timeout(30)
def test_the_proxy_refuses_every_port_of_the_trees_processes_and_no_other(tree):
    root, ports = tree
    assert set(ports) <= listening_ports(root), (ports, listening_ports(root))

    async def go():
        other = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)  # the test's: not in the tree
        other_port = other.sockets[0].getsockname()[1]
        proxy = EgressProxy(ALLOW_LOCAL, OwnPorts(root))
        await proxy.start()
        try:
            answers = {port: [await ask(proxy, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n"),
                              await ask(proxy, f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\n\r\n")]
                       for port in [*ports, other_port]}
            return answers, other_port, list(proxy.refused)
        finally:
            await proxy.close()
            other.close()

    answers, other_port, refused = asyncio.run(go())
    for port in ports:
        assert all(b" 403 " in a for a in answers[port]), (port, answers[port])
        assert any(f"port {port} on 127.0.0.1 is {OWN}" in r for r in refused), refused
    assert b" 200 " in answers[other_port][0], answers[other_port]  # the tunnel to another loopback port opens
    assert b" 403 " not in answers[other_port][1], answers[other_port]


@pytest.mark.timeout(30)
def test_a_port_bound_after_the_first_look_is_refused_once_the_cache_has_aged():
    """Actors bind their ports after the node starts: the ports are looked up again, not fixed once."""
    own = OwnPorts(psutil.Process().pid, cache_s=0.2)
    before = own()
    late = asyncio.run(_bound_and_seen(own))
    assert late not in before


async def _bound_and_seen(own: OwnPorts) -> int:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        deadline = time.monotonic() + 5
        while port not in own():
            assert time.monotonic() < deadline, f"port {port} never seen"
            await asyncio.sleep(0.05)
        return port
    finally:
        server.close()


def on_roll(roll: Path, pid: int) -> None:
    """Enrol `pid` as its node would (ownports.enrol writes its own pid): its start time in its entry."""
    (roll / str(pid)).write_text(repr(psutil.Process(pid).create_time()))


@pytest.fixture
def other_node():
    """The pid of a process tree apart from `tree` (the test's own tree holds the fixtures' processes)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(10)


def dead_pids(n: int) -> list[int]:
    """`n` pids no process has, the lowest free ones: an entry sorts before any node started since."""
    return [p for p in range(300, 1 << 22) if not psutil.pid_exists(p)][:n]


def test_the_nodes_on_the_machines_roll_keep_each_others_ports(tree, tmp_path):
    """ownports.enrol: a node on the roll has its tree's ports kept from every enrolled node's pages; a stale
    or junk entry costs nothing but a look, and is removed."""
    root, ports = tree
    roll = tmp_path / "roll"
    node = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # (a tree of its own)
    try:
        assert not set(ports) & OwnPorts(node.pid, roll=roll)()  # (nobody enrolled: only its own)
        roll.mkdir(mode=0o700)
        on_roll(roll, root)
        (roll / "not-a-pid").write_text("")
        (roll / "4194304999").write_text("")  # (no such pid)
        (roll / str(node.pid)).write_text("1.5")  # a live pid, but not the process that enrolled: reused
        assert enrolled(roll) == [root]
        assert set(ports) <= OwnPorts(node.pid, roll=roll)()
        assert sorted(p.name for p in roll.iterdir()) == sorted([str(root), "not-a-pid", "4194304999"])
    finally:
        node.kill()
        node.wait(10)
    entry = enrol(tmp_path / "fresh")
    assert entry is not None and entry.name == str(psutil.Process().pid)
    assert (tmp_path / "fresh").stat().st_mode & 0o7777 == 0o700  # this user's alone
    assert enrolled(tmp_path / "fresh") == [psutil.Process().pid]
    leave(entry)
    assert enrolled(tmp_path / "fresh") == []


def test_entries_of_nodes_killed_outright_do_not_crowd_a_live_node_off_the_roll(tree, other_node, tmp_path):
    """A node killed with SIGKILL (or by the OOM killer) never leaves the roll. The roll was read up to 64
    entries in pid order, so 64 such entries — older nodes, lower pids — hid every node started after them:
    a CI run left 197, and a scrape by one node then read another node's API (its editor page)."""
    root, ports = tree
    roll = tmp_path / "roll"
    roll.mkdir(mode=0o700)
    for pid in dead_pids(100):
        (roll / str(pid)).write_text("1.0")
    on_roll(roll, root)
    assert not set(ports) & OwnPorts(other_node)()  # (its own tree alone)
    assert set(ports) <= OwnPorts(other_node, roll=roll)()
    assert [p.name for p in roll.iterdir()] == [str(root)]  # the dead nodes' entries are gone


def test_a_roll_others_may_write_is_not_used(tree, other_node, tmp_path):
    """A roll folder someone else could write (world-writable, or another user's) is neither read nor
    joined: there, a local user's files could take every node's place, or name any process as a node."""
    root, ports = tree
    for mode, owner in ((0o1777, os.geteuid()), (0o700, os.geteuid() + 1)):
        roll = tmp_path / f"roll-{mode:o}-{owner}"
        roll.mkdir()
        on_roll(roll, root)
        roll.chmod(mode)
        if owner != os.geteuid():
            if os.geteuid() != 0:
                continue  # (only root can give a folder away)
            os.chown(roll, owner, -1)
        assert enrolled(roll) == [], roll
        assert enrol(roll) is None, roll
        assert not set(ports) & OwnPorts(other_node, roll=roll)()


def test_a_tree_that_has_gone_has_no_ports():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    assert listening_ports(proc.pid) == frozenset()


# -- through a real node -------------------------------------------------------------------------------

class ProbeSite(ThreadedSite):
    """A page on the test's own loopback port (not the node's) that also asks for each of TARGETS."""

    targets: list[int] = []

    def app(self) -> web.Application:
        async def page(request: web.Request) -> web.Response:
            imgs = "".join(f'<img src="http://127.0.0.1:{p}/from-page">' for p in self.targets)
            return web.Response(content_type="text/html", text=f"<html><body><p>reachable page</p>{imgs}</body></html>")
        app = web.Application()
        app.router.add_get("/page", page)
        return app


def admin_ports(node_pid: int) -> set[int]:
    """The Thespian admin's ports: what the node's forked child that has children (the admin; the
    actors are its children) listens on and the node process itself does not (they share one inherited
    listener). Empty while the admin has not started its actors."""
    node = psutil.Process(node_pid)
    admin = next((p for p in node.children() if p.cmdline() == node.cmdline() and p.children()), None)
    if admin is None:
        return set()
    return set(listening_ports(admin.pid)) - {c.laddr.port for c in node.net_connections("inet")}


@pytest.mark.skipif(find_browser() is None, reason="no Chromium here: `apt-get install chromium`")
@pytest.mark.mesh
@pytest.mark.timeout(240)
def test_a_real_node_refuses_a_scrape_of_its_own_api_and_thespian_ports(make_mesh, tmp_path):
    mesh = make_mesh(2, lambda i: ["--no-model", "--scrape-allow", "127.0.0.1"])
    worker, other = mesh.nodes[1], mesh.nodes[0]  # node0 submits; the one other node runs the steps
    admin = wait_for(lambda: admin_ports(worker.proc.pid), 30, "the worker's Thespian admin port")
    api, admin_port = worker.api_port, min(admin)
    # the other node's on this machine too: a page scraped by node1 read node0's API (red team, 2026-12-07)
    other_admin = min(wait_for(lambda: admin_ports(other.proc.pid), 30, "the submitter's Thespian admin port"))
    site = ProbeSite()
    ProbeSite.targets = [api, admin_port]
    site.start()
    try:
        job = tmp_path / "own-ports.json"
        job.write_text(json.dumps({"name": "own-ports", "redundancy": 1, "timeout": 45, "steps": [
            {"id": "page", "kind": "scrape", "params": {"url": site.url("/page")}},
            {"id": "api", "kind": "scrape", "params": {"url": f"http://127.0.0.1:{api}/"}},
            {"id": "admin", "kind": "scrape", "params": {"url": f"http://127.0.0.1:{admin_port}/"}},
            {"id": "other-api", "kind": "scrape", "params": {"url": f"http://127.0.0.1:{other.api_port}/editor/"}},
            {"id": "other-admin", "kind": "scrape", "params": {"url": f"http://127.0.0.1:{other_admin}/"}}]}))
        report = cli_json("submit", str(job), "--wait", "--home", str(mesh.nodes[0].home), timeout=180)
    finally:
        site.stop()
    steps = report["steps"]
    assert steps["page"]["status"] == "done", json.dumps(steps["page"])[-1500:]  # the positive control
    assert "reachable page" in steps["page"]["output"]["text"]
    for name, port in (("api", api), ("admin", admin_port), ("other-api", other.api_port),
                       ("other-admin", other_admin)):
        assert steps[name]["status"] == "failed", (name, json.dumps(steps[name])[-1500:])
        assert f"port {port} on 127.0.0.1 is {OWN}" in steps[name]["error"], (name, steps[name]["error"])
    log = (worker.home / "node.log").read_text(errors="replace")
    for port in (api, admin_port):  # the page's own requests for them were refused too
        assert f"egress refused http://127.0.0.1:{port}/from-page" in log, port


@pytest.mark.skipif(os.geteuid() != 0 or not os.access("/run", os.W_OK), reason="root's roll is in /run")
def test_roots_roll_is_where_no_other_user_can_make_it_first(tmp_path, monkeypatch):
    """A local user who made $TMPDIR/homemesh-nodes-0 first (its own, private) turned the roll off for every
    root node, silently (this project's red team, 2026-12-07): root's roll is in /run, which only root writes."""
    from mesh.steps import ownports

    squatted = tmp_path / "homemesh-nodes-0"
    squatted.mkdir(mode=0o700)
    os.chown(squatted, 65534, 65534)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    assert ownports._roll() == Path("/run/homemesh-nodes")
    entry = enrol(ownports._roll())
    try:
        assert entry is not None and os.getpid() in enrolled(ownports._roll())
    finally:
        leave(entry)
