"""A python step is a stranger's code on the owner's machine. Run through a real 4-node mesh (the nodes
started as whoever runs the tests: root in CI, the case that matters), hostile steps try what took the
host before: every /proc/sys file for writing, `kernel.core_pattern`, `/proc/sysrq-trigger`, raw and
packet sockets, ptrace of their parent, mount, new namespaces, kernel keyrings and BPF. All must be
refused, and every process of every sandbox must run as a uid other than the host's 0. A step that
prints its own result record claiming a huge CPU time is paid what the node measured, not its claim."""

from __future__ import annotations

import os
import shutil

import psutil
import pytest

from mesh.steps.sandbox import MARK

from .hostile import submit, wait_job

pytestmark = [pytest.mark.mesh,
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")]

ESCAPES = r'''
import ctypes, errno, os, socket
res = {}
writable = []
for top, dirs, files in os.walk("/proc/sys"):
    for name in files:
        path = os.path.join(top, name)
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError:
            continue
        os.close(fd)
        writable.append(path)
res["proc_sys_files_seen"] = sum(len(f) for _, _, f in os.walk("/proc/sys")) > 100
res["proc_sys_writable"] = writable
def attempt(fn):
    try:
        fn()
        return "ALLOWED"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
def write(path, text):
    with open(path, "w") as f:
        f.write(text)
res["core_pattern"] = attempt(lambda: write("/proc/sys/kernel/core_pattern", "|/tmp/own %p"))
res["sysrq_trigger"] = attempt(lambda: write("/proc/sysrq-trigger", "h"))
res["raw_socket"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
res["packet_socket"] = attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
res["netlink_socket"] = attempt(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0))
res["inet_socket"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
libc = ctypes.CDLL(None, use_errno=True)
def call(fn, *args):
    ctypes.set_errno(0)
    if fn(*args) == -1:
        return errno.errorcode.get(ctypes.get_errno(), "?")
    return "ALLOWED"
libc.syscall.restype = ctypes.c_long
res["ptrace_parent"] = call(libc.ptrace, ctypes.c_long(16), ctypes.c_long(os.getppid()), None, None)  # ATTACH
res["ptrace_traceme"] = call(libc.ptrace, ctypes.c_long(0), ctypes.c_long(0), None, None)
res["mount_tmpfs"] = call(libc.mount, b"none", b"/tmp", b"tmpfs", ctypes.c_ulong(0), None)
res["mount_proc"] = call(libc.mount, b"proc", b"/tmp", b"proc", ctypes.c_ulong(0), None)
res["unshare_user"] = call(libc.unshare, ctypes.c_int(0x10000000))
res["unshare_mount"] = call(libc.unshare, ctypes.c_int(0x00020000))
res["keyctl"] = call(libc.syscall, ctypes.c_long(250), ctypes.c_long(0), ctypes.c_long(-1))  # x86_64 keyctl
res["bpf"] = call(libc.syscall, ctypes.c_long(321), ctypes.c_long(0), None, ctypes.c_long(0))  # x86_64 bpf
res["setuid_root"] = call(libc.setuid, ctypes.c_int(0))
res["root"] = 0 in os.getresuid() + os.getresgid()  # (each node has its own step uid: compare no numbers)
with open("/proc/self/status") as f:
    res["cap_eff"] = next(line.split()[1] for line in f if line.startswith("CapEff:"))
output = res
'''

FORGED = ("import atexit, os\n"
          f"MARK = {MARK!r}\n"
          "fake = MARK + '{\"ok\":true,\"output\":1,\"cpu_s\":999999,\"stdout\":\"\",\"stderr\":\"\"}'\n"
          "atexit.register(lambda: os.write(1, fake.encode()))\n"
          "output = 1\n")


def sandbox_processes(mesh) -> list[psutil.Process]:
    """Every bwrap process under the mesh's nodes and everything bwrap started."""
    found = []
    for node in mesh.nodes:
        try:
            tree = psutil.Process(node.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for proc in tree:
            try:
                if proc.name() == "bwrap":
                    found += [proc] + proc.children(recursive=True)
            except psutil.NoSuchProcess:
                continue
    return found


def run_step(mesh, sid: str, code: str, timeout: float) -> dict:
    """One python step at r=3 from node0; its part of the report, once the job is done."""
    job = {"name": sid, "steps": [{"id": sid, "kind": "python", "params": {"code": code}}]}
    rep = wait_job(mesh.nodes[0], submit(mesh.nodes[0], job, 3), timeout=timeout)
    assert rep["status"] == "done", str(rep["steps"])
    return rep["steps"][sid]


@pytest.mark.timeout(120)
def test_a_step_cannot_touch_the_host(mesh4):
    step = run_step(mesh4, "escape", ESCAPES, 90)
    assert sum(r["agreed"] for r in step["replicas"]) == 3, step  # every worker saw the same: all refused
    res = step["output"]
    assert res["proc_sys_files_seen"], res  # the walk did see /proc/sys: the check below means something
    assert res["proc_sys_writable"] == [], res
    for attack in ("core_pattern", "sysrq_trigger", "raw_socket", "packet_socket", "netlink_socket", "inet_socket",
                   "ptrace_parent", "ptrace_traceme", "mount_tmpfs", "mount_proc", "unshare_user", "unshare_mount",
                   "keyctl", "bpf", "setuid_root"):
        assert res[attack] != "ALLOWED", (attack, res)
    assert res["cap_eff"] == "0000000000000000", res
    assert res["root"] is False, res


@pytest.mark.timeout(60)
def test_every_sandbox_process_runs_as_a_uid_other_than_root_seen_from_the_host(mesh4):
    # the nodes keep sandboxes started ahead of their steps: they are there to look at without a job
    procs = sandbox_processes(mesh4)
    assert len(procs) >= 2 * 2 * len(mesh4.nodes), procs  # 2 warm sandboxes a node × (bwrap + its children)
    for proc in procs:
        try:
            uids, gids = proc.uids(), proc.gids()
        except psutil.NoSuchProcess:
            continue
        assert 0 not in (uids.real, uids.effective, uids.saved), (proc, uids)
        assert 0 not in (gids.real, gids.effective, gids.saved), (proc, gids)
    if os.geteuid() == 0:  # each node has a step user of its own
        users = {p.uids().real for p in procs if p.is_running()}
        assert len(users) == len(mesh4.nodes), users


@pytest.mark.timeout(90)
def test_a_step_claiming_its_own_cpu_time_is_paid_what_the_node_measured(mesh4):
    step = run_step(mesh4, "claim", FORGED, 60)
    assert step["output"] == 1
    assert all(r["work"]["cpu_s"] < 5 for r in step["replicas"]), step["replicas"]
    assert 0 < step["credit"] < 1, step  # 999999 claimed; the node measured a few milliseconds
