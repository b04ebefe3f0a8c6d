"""mesh.steps.confine, from the inside: a process confined as the model worker confines itself (dropped to
a step user when root) tries what code run by a llama.cpp bug would try first — the node's key, its home,
exec, sockets of every family, mount, ptrace, namespaces, signals to its parent, setuid(0) — from its main
thread and from a thread started after confinement. Every attempt must fail; the model file, open before,
stays readable. The test's parent reads the child's status from the outside meanwhile."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.steps.confine import landlock_abi
from mesh.steps.stepuser import running_as_root

from ..conftest import ROOT

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(sys.platform != "linux", reason="confinement is Linux's (seccomp, Landlock)")]

ATTACKS = r'''
import ctypes, errno, json, os, socket, sys, threading
from mesh.steps.confine import confine
from mesh.steps.stepuser import StepUser

key, model = sys.argv[1], sys.argv[2]
fd = os.open(model, os.O_RDONLY)
done = confine(StepUser(65534, 65534) if os.geteuid() == 0 else None, [fd])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def attempt(fn):
    try:
        fn()
        return "ALLOWED"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

def call(fn, *args):
    ctypes.set_errno(0)
    return "ALLOWED" if fn(*args) != -1 else errno.errorcode.get(ctypes.get_errno(), "?")

def read(path):
    with open(path, "rb") as f:
        return f.read(4)

def attacks():
    res = {}
    res["read_key"] = attempt(lambda: read(key))
    res["write_home"] = attempt(lambda: open(os.path.join(os.path.dirname(key), "planted"), "wb").close())
    res["exec"] = attempt(lambda: os.execv("/bin/true", ["true"]))
    for name in ("AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK", "AF_PACKET"):
        res["socket_" + name] = attempt(lambda: socket.socket(getattr(socket, name), socket.SOCK_RAW
                                                              if name in ("AF_NETLINK", "AF_PACKET") else socket.SOCK_STREAM))
    res["mount"] = call(libc.mount, b"none", b"/tmp", b"tmpfs", ctypes.c_ulong(0), None)
    res["ptrace_parent"] = call(libc.ptrace, ctypes.c_long(16), ctypes.c_long(os.getppid()), None, None)
    res["unshare_user"] = call(libc.unshare, ctypes.c_int(0x10000000))
    res["signal_parent"] = attempt(lambda: os.kill(os.getppid(), 0))
    res["setuid_root"] = call(libc.setuid, ctypes.c_int(0))
    res["model_through_fd"] = "read" if read(f"/proc/self/fd/{fd}") == b"GGUF" else "not read"
    if done.landlock:
        res["read_etc"] = attempt(lambda: read("/etc/hostname"))
        res["proc_parent_mem"] = attempt(lambda: read(f"/proc/{os.getppid()}/mem"))
    return res

out = {"main": attacks(), "landlock": done.landlock, "notes": done.notes}
later = threading.Thread(target=lambda: out.__setitem__("thread", attacks()))
later.start()
later.join()
print(json.dumps(out), flush=True)
sys.stdin.readline()  # (held while the parent reads this process's status)
'''


def _status(path: str) -> dict[str, str]:
    with open(path) as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _threads(pid: int) -> list[dict[str, str]]:
    """The status of each thread of `pid` still running when read (one ended between the listing and its
    read in CI: FileNotFoundError; a thread gone holds nothing to check)."""
    out = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            out.append(_status(f"/proc/{pid}/task/{tid}/status"))
    return out


def test_code_in_a_confined_process_cannot_reach_the_home_exec_open_sockets_or_escape(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    key = home / "node.key"
    key.write_bytes(b"secret")
    key.chmod(0o600)
    model = tmp_path / "model.gguf"  # (a GGUF's first bytes are enough here)
    model.write_bytes(b"GGUF" + bytes(60))
    model.chmod(0o644)
    proc = subprocess.Popen([sys.executable, "-c", ATTACKS, str(key), str(model)], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        status = _status(f"/proc/{proc.pid}/status")
        threads = _threads(proc.pid)
    finally:
        proc.communicate("\n", timeout=30)
    res = json.loads(line)
    for where in ("main", "thread"):
        got = res[where]
        assert got.pop("model_through_fd") == "read", where
        allowed = [what for what, answer in got.items() if answer == "ALLOWED"]
        assert not allowed, f"{where}: {allowed} ({got})"
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert all(t["Seccomp"] == "2" for t in threads)
    if running_as_root():
        assert all(int(i) != 0 for i in status["Uid"].split() + status["Gid"].split()) and not status["Groups"].strip()
        assert int(status["CapEff"], 16) == 0
    else:  # an ordinary user's home is kept from it by Landlock alone
        assert res["landlock"] or pytest.skip("no Landlock in this kernel: the node's user reads its own home")
    assert res["landlock"] == landlock_abi()


def test_a_process_already_running_a_second_thread_is_confined_without_landlock_and_says_so():
    """Landlock binds the calling thread and those it starts later: a thread already running would stay
    outside, so it is left out (and noted); the uid, no_new_privs and seccomp (TSYNC) reach every thread."""
    code = ("import json, os, threading\n"
            "from mesh.steps.confine import confine\n"
            "from mesh.steps.stepuser import NOBODY\n"
            "stop = threading.Event()\n"
            "t = threading.Thread(target=stop.wait)\n"
            "t.start()\n"
            "done = confine(NOBODY if os.geteuid() == 0 else None)\n"
            "print(json.dumps({'landlock': done.landlock, 'notes': done.notes}), flush=True)\n"
            "input()\n"
            "stop.set()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        statuses = _threads(proc.pid)
    finally:
        proc.communicate("\n", timeout=30)
    res = json.loads(line)
    assert res["landlock"] == 0 and "2 threads were running" in res["notes"][0]
    assert len(statuses) == 2
    for st in statuses:  # the thread started before is covered all the same
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2"
        if running_as_root():
            assert all(int(i) != 0 for i in st["Uid"].split())


def test_a_model_file_the_step_user_cannot_read_is_told_apart():
    """Such a file is loaded before the process confines itself (and the runner says so): the check must
    not take a root-only file for a readable one, nor refuse one the step user may read."""
    from mesh.steps.model_worker import _readable_by
    from mesh.steps.stepuser import StepUser

    user = StepUser(2_000_000_001, 2_000_000_001)

    def st(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
        return os.stat_result((0o100000 | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))

    assert _readable_by(st(0o644), user) and _readable_by(st(0o604), user)
    assert not _readable_by(st(0o600), user) and not _readable_by(st(0o640), user)
    assert _readable_by(st(0o640, gid=user.gid), user) and _readable_by(st(0o400, uid=user.uid), user)
    assert not _readable_by(st(0o044, uid=user.uid), user)  # (the owner's bits are the owner's)
