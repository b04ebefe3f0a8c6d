"""Runs untrusted Python in bubblewrap: never as the host's root (a node started as root drops to its
step user, mesh.steps.stepuser, before bwrap starts), /proc/sys read-only, a seccomp filter (mesh.steps.seccomp), no
network (not even loopback), no home, the key nowhere in sight, a tmpfs /tmp, rlimits on CPU, memory,
file size and processes, a wall-clock timeout and capped output. The step's code sees `inputs` and sets
`output`. What it cost (CPU, memory) is measured here, from outside: the step can print anything, and
nothing it prints is read as a measurement."""

from __future__ import annotations

import contextlib
import functools
import json
import marshal
import math
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import LimitHit, StepFailed
from mesh.steps import seccomp
from mesh.steps.cgroup import StepGroup
from mesh.steps.outputs import depth_error
from mesh.steps.stepuser import NOBODY, StepUser, running_as_root
from mesh.steps.treecpu import TreeCPU

OUTPUT_CAP = 1 << 20
STREAM_CAP = 64 * 1024
PIPE_CAP = OUTPUT_CAP + 2 * STREAM_CAP  # bytes read from a step's stdout, or its stderr, before it is stopped
READ_CHUNK = 1 << 16
PIPE_BUF = 1 << 16  # bytes of the request written at a time
MEMORY_LIMIT = 1 << 30
# bwrap's /dev is a tmpfs of half the host's RAM: writable, a step held 1.5 GB in /dev/shm under a 1 GiB
# RLIMIT_AS where no cgroup counted it (red team, 2026-12-06). /dev is read-only, /dev/shm a tmpfs this big
SHM_SIZE = 16 << 20
TMP_SIZE = 64 << 20  # the sandbox's /tmp is a tmpfs in RAM: a step filling it must not fill the host's
MARK = "\x1ehomemesh-result\x1e"
CANCEL_POLL_S = 0.2  # how often a running step asks whether it was cancelled

# Runs inside the sandbox. It is the only code here that executes a peer's text, and only there. It reads
# its request as marshal (written by this node, never by a peer) and writes JSON with its own small
# encoder: importing json pulls in `re`, which took longer than starting the interpreter itself. Once the
# result is written it leaves at once (_exit): a normal exit waited for any thread the step left running
# (until the step's timeout), ran the step's exit handlers after its result (which could spoil it), and
# tore the interpreter down for nothing (1.5 of ~11 ms of CPU a warm step took here).
_RUNNER = r"""
import io, marshal, sys
from posix import _exit  # taken before the step runs: whatever it does to imports, the runner still leaves
ESC = {i: "\\u%04x" % i for i in range(32)}
ESC.update({34: '\\"', 92: "\\\\"})
def s(v):
    v = v.translate(ESC)
    if not v.isascii():
        v = "".join(c if ord(c) < 128 else "".join("\\u%04x" % u for u in (
            [ord(c)] if ord(c) < 65536 else [0xD800 + ((ord(c) - 65536) >> 10), 0xDC00 + ((ord(c) - 65536) & 1023)]))
            for c in v)
    return '"' + v + '"'
def key(k):
    if isinstance(k, str):
        return s(k)
    if k is True or k is False or k is None:
        return s({True: "true", False: "false", None: "null"}[k])
    if isinstance(k, (int, float)):
        return s(enc(k))
    raise TypeError("keys must be str, int, float, bool or None, not " + type(k).__name__)
def enc(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return s(v)
    if isinstance(v, int):
        return int.__repr__(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("Out of range float values are not JSON compliant")
        return float.__repr__(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(map(enc, v)) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(key(k) + ":" + enc(x) for k, x in v.items()) + "}"
    raise TypeError("Object of type %s is not JSON serializable" % type(v).__name__)
code, inputs, limits = marshal.loads(sys.stdin.buffer.read())
import resource
for which, value in limits:  # before any of the step's code: it cannot raise them again (no capabilities)
    resource.setrlimit(which, (value, value + (which == resource.RLIMIT_CPU)))
out, err = io.StringIO(), io.StringIO()
real = sys.stdout
sys.stdout, sys.stderr = out, err
scope = {"inputs": inputs, "__name__": "__step__"}
def failed(what, e, where="", limit=False):
    return '"ok":false,"limit":%s,"error":' % ("true" if limit else "false") + s(
        "%s %s%s: %s" % (what, type(e).__name__, where, e))
try:
    exec(compile(code, "<step>", "exec"), scope)
    try:
        res = '"ok":true,"output":' + enc(scope.get("output"))
    except BaseException as e:
        res = failed("your output cannot be sent as JSON:", e)
except BaseException as e:
    line, tb = getattr(e, "lineno", None) if isinstance(e, SyntaxError) else None, e.__traceback__
    while tb is not None:  # the step's own frame deepest in the traceback: where its code went wrong
        line = tb.tb_lineno if tb.tb_frame.f_code.co_filename == "<step>" else line
        tb = tb.tb_next
    res = failed("your code raised", e, " at line %d" % line if line else "", isinstance(e, MemoryError))
res += ',"stdout":%s,"stderr":%s' % (s(out.getvalue()[:CAP]), s(err.getvalue()[:CAP]))
real.write(MARK + "{" + res + "}")
real.flush()
_exit(0)
""".replace("CAP", str(STREAM_CAP)).replace("MARK", repr(MARK))


@dataclass(frozen=True)
class PythonResult:
    """A step's result; `cpu_s` and `peak_mb` were measured by this node (cgroup, else rusage)."""

    output: object
    stdout: str
    stderr: str
    cpu_s: float
    peak_mb: float


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def sandbox_problem() -> str:
    """Why this machine cannot sandbox python steps ('' when it can): bubblewrap is Linux-only, may be
    missing, or may be unable to make namespaces here (a container without them, user namespaces turned
    off). Tried once, with a command that does nothing, so a node says so at start instead of failing
    every step."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap, the sandbox, is Linux-only (this is {sys.platform})"
    bwrap = bwrap_path()
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed (apt install bubblewrap)"
    try:
        res = subprocess.run([bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "true"],
                             capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bubblewrap ({bwrap}) cannot make a sandbox here: {exc}"
    if res.returncode != 0:
        said = (res.stderr.strip().splitlines() or [f"exit status {res.returncode}"])[-1][:200]
        return f"bubblewrap ({bwrap}) cannot make a sandbox here: {said}"
    return ""


SYSTEM_PYTHON = "/usr/bin/python3"


@functools.lru_cache(maxsize=8)
def _interpreter(user: StepUser | None = None) -> tuple[str, str]:
    """(prefix, executable) of the python that runs steps: this node's own, unless the step user cannot
    read it (a pyenv python under /root, mode 0700): then the system's python3, which any user can. A
    bind of a directory the step user cannot reach fails inside bwrap, even from an open descriptor."""
    prefix = os.path.realpath(sys.base_prefix)
    for name in (f"python{sys.version_info.major}.{sys.version_info.minor}", "python3"):
        exe = os.path.join(prefix, "bin", name)
        if os.path.exists(exe):
            if user is None or _readable_by_others(os.path.realpath(exe)):
                return prefix, exe
            system = os.path.realpath(SYSTEM_PYTHON)
            if os.path.exists(system) and _readable_by_others(system):
                return os.path.dirname(os.path.dirname(system)), system
            raise StepFailed(f"the step user (uid {user.uid}) cannot read the python at {exe} and there is no "
                             f"{SYSTEM_PYTHON}: install python3 from the system's packages")
    raise StepFailed(f"no python interpreter under {prefix}")


def _readable_by_others(path: str) -> bool:
    """Whether a user with no relation to the file's owner can reach `path` (every parent searchable,
    the file itself readable): the step user must load the interpreter from the same place."""
    parts = path.split("/")
    for i in range(2, len(parts) + 1):
        try:
            st = os.stat("/".join(parts[:i]) or "/")
        except OSError:
            return False
        need = 0o005 if i == len(parts) else 0o001
        if st.st_mode & need != need:
            return False
    return True


@dataclass
class Launch:
    """One bwrap command line and the file descriptors it expects to inherit (closed by the caller once
    bwrap has started)."""

    cmd: list[str]
    fds: list[int]

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def bwrap_command(bwrap: str, code: str = "", user: StepUser | None = None) -> Launch:
    """The sandbox's command, with the seccomp program on an inherited pipe."""
    prefix, exe = _interpreter(user)
    fds: list[int] = []
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for d in ("/lib", "/lib64", "/bin"):
        cmd += ["--ro-bind-try", d, d]
    if prefix != "/usr" and not prefix.startswith("/usr/"):
        cmd += ["--ro-bind", prefix, prefix]
    try:
        fds.append(seccomp.pipe_fd())
    except StepFailed:
        Launch(cmd, fds).close()
        raise
    cmd += ["--seccomp", str(fds[-1]), "--proc", "/proc", "--ro-bind", "/proc/sys", "/proc/sys", "--dev", "/dev",
            "--size", str(SHM_SIZE), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
            "--size", str(TMP_SIZE), "--tmpfs", "/tmp", "--chdir", "/tmp", exe, "-I", "-S", "-c", code or _RUNNER]
    return Launch(cmd, fds)


def _limits(cpu_s: int, memory: int = MEMORY_LIMIT) -> list[tuple[int, int]]:
    """The rlimits the runner sets on itself before the step's code runs (so no preexec hook is needed,
    which would force a slower fork of this process)."""
    return [(resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, memory), (resource.RLIMIT_FSIZE, 16 << 20),
            (resource.RLIMIT_NPROC, 256), (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_RTPRIO, 0), (resource.RLIMIT_NICE, 0)]  # (no real-time class past the CPU cap)


def _finite(value: object) -> float:
    """A finite float from a JSON number (or its text); NaN, Infinity and 1e999 have no canonical form."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError("not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


class Sandbox:
    """One python interpreter in bubblewrap and its own cgroups, started before its step arrives: the
    namespaces, the cgroup moves and the interpreter's start-up are paid ahead of time, and the runner
    waits on stdin for its one request. The wall-clock limit starts with the request; the rlimits are
    set by the runner before the step's code runs. `user`: who it runs as when this process is root
    (the node passes its own step user; anything else run as root falls back to nobody): no step ever
    runs as the host's root."""

    def __init__(self, sandboxed: bool = True, user: StepUser | None = None, cap: str = ""):
        self.sandboxed = sandboxed
        self.user = user = user or (NOBODY if running_as_root() else None)
        self.cwd: str | None = None
        launch = Launch([], [])
        if sandboxed:
            bwrap = bwrap_path()
            if bwrap is None:
                raise StepFailed("bubblewrap (bwrap) is not installed; refusing to run python without a sandbox")
            launch = bwrap_command(bwrap, user=user)
        else:
            _, exe = _interpreter(user)
            launch.cmd = [exe, "-I", "-S", "-c", _RUNNER]
            self.cwd = tempfile.mkdtemp(prefix="mesh-step-")
            if user is not None:
                user.own(Path(self.cwd))
        self.group = StepGroup(MEMORY_LIMIT, cap=cap)
        self.cpu_start: float | None = None
        self.tree: TreeCPU | None = None  # without cgroups: the tree's CPU sampled from /proc
        try:
            self.proc = subprocess.Popen(
                launch.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd=self.cwd, pass_fds=launch.fds,
                preexec_fn=self._child_setup if self.group.paths or user or self.group.cpu_cap else None)
        except (OSError, subprocess.SubprocessError) as exc:  # (the latter: joining a group failed in the child)
            self.close()
            raise StepFailed(f"cannot start the sandbox: {exc}") from None
        finally:
            launch.close()

    def _child_setup(self) -> None:
        """In the forked child, before exec: join the step's cgroups while still allowed to (nothing the
        step starts can leave them), then give up root."""
        self.group.enter()
        if self.user is not None:
            self.user.demote()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, code: str, inputs: dict, timeout: float, memory: int | None = None,
            cancelled: Callable[[], bool] | None = None) -> PythonResult:
        """Run the step (once: a sandbox serves one step, then is gone). `memory`: bytes it may use, below
        MEMORY_LIMIT (None: MEMORY_LIMIT). `cancelled` is asked every CANCEL_POLL_S: once it says yes the
        sandbox and everything in it is killed and the step fails."""
        memory = MEMORY_LIMIT if memory is None else min(memory, MEMORY_LIMIT)
        if memory < MEMORY_LIMIT:
            self.group.limit_memory(memory)
        self.cpu_start = self.group.cpu_s()
        if self.cpu_start is None:
            self.tree = TreeCPU(self.proc.pid)
            self.tree.begin()
        request = marshal.dumps((code, inputs, _limits(max(1, int(timeout) + 1), memory)))
        try:
            stdout, stderr = _collect(self.proc, request, timeout, cancelled)
            cpu_s, peak_mb = self._measure()
        finally:
            self.close()  # whatever the step left running (a fork bomb's children) dies here
        return _result(stdout, stderr, self.proc.returncode, cpu_s, peak_mb)

    def _measure(self) -> tuple[float, float]:
        """CPU seconds and peak MiB of the step, as this node's kernel counted them: the cgroup's usage
        since the request was sent (the interpreter's start-up before it is not the step's work), or,
        without cgroups, the process tree's CPU sampled from /proc (mesh.steps.treecpu)."""
        cpu, peak = self.group.cpu_s(), self.group.peak_bytes()
        if cpu is not None and self.cpu_start is not None:
            cpu -= self.cpu_start
        elif self.tree is not None:
            cpu = self.tree.end()
            peak = peak if peak is not None else self.tree.peak_rss
        return max(0.0, cpu or 0.0), (peak or 0) / (1 << 20)

    def close(self) -> None:
        tree = getattr(self, "tree", None)
        if tree is not None:
            tree.stopped.set()
        proc = getattr(self, "proc", None)
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):  # closed, not read: a writer left gets EPIPE
                if pipe is not None:
                    pipe.close()
            proc.wait()
        self.group.close()
        if self.cwd:
            shutil.rmtree(self.cwd, ignore_errors=True)


def _collect(proc: subprocess.Popen, request: bytes, timeout: float,
             cancelled: Callable[[], bool] | None) -> tuple[bytes, bytes]:
    """Write the step's request and read its stdout and stderr to their end, within `timeout` seconds;
    past PIPE_CAP bytes on either, the step fails at once (the caller kills it). communicate() read every
    byte the step wrote straight to fd 1 or 2 into this process, outside the step's memory group: 3.6 GiB
    in a node's step actor within a 3 s step, before the cap was checked at the end."""
    deadline = time.monotonic() + timeout
    got: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}  # type: ignore[union-attr]
    size = dict.fromkeys(got, 0)
    todo = memoryview(request)
    with selectors.DefaultSelector() as sel:
        for fd in got:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        stdin = proc.stdin.fileno()  # type: ignore[union-attr]
        os.set_blocking(stdin, False)
        sel.register(stdin, selectors.EVENT_WRITE)
        while len(sel.get_map()) > (stdin in sel.get_map()) or todo:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LimitHit(f"python step timed out after {timeout:g} s")
            if cancelled is not None and cancelled():
                raise StepFailed("python step cancelled")
            for key, _ in sel.select(min(left, CANCEL_POLL_S)):
                fd = key.fd
                if fd == stdin:
                    try:
                        todo = todo[os.write(fd, todo[:PIPE_BUF]):]
                    except BrokenPipeError:
                        todo = todo[len(todo):]  # it is gone: its stdout says how
                    if not todo:
                        sel.unregister(fd)
                        proc.stdin.close()  # type: ignore[union-attr]
                    continue
                chunk = os.read(fd, READ_CHUNK)
                if not chunk:
                    sel.unregister(fd)
                    continue
                size[fd] += len(chunk)
                if size[fd] > PIPE_CAP:
                    raise StepFailed(f"python step output over {OUTPUT_CAP} bytes")
                got[fd].append(chunk)
    while True:  # both pipes at their end: it has exited, or closed them and goes on (a step may)
        left = deadline - time.monotonic()
        try:
            proc.wait(max(0.0, min(left, CANCEL_POLL_S)))
            break
        except subprocess.TimeoutExpired:
            if left <= CANCEL_POLL_S:
                raise LimitHit(f"python step timed out after {timeout:g} s") from None
            if cancelled is not None and cancelled():
                raise StepFailed("python step cancelled") from None
    out, err = (b"".join(parts) for parts in got.values())
    return out, err


def run_python(code: str, inputs: dict, timeout: float, sandboxed: bool = True,
               user: StepUser | None = None) -> PythonResult:
    """Run one python step in a fresh sandbox. `sandboxed=False` (operator opt-in only) skips bwrap but
    keeps the limits and the step user."""
    return Sandbox(sandboxed, user).run(code, inputs, timeout)


def _result(stdout: bytes, stderr: bytes, returncode: int | None, cpu_s: float, peak_mb: float) -> PythonResult:
    if len(stdout) > PIPE_CAP:
        raise StepFailed(f"python step output over {OUTPUT_CAP} bytes")
    text = stdout.decode("utf-8", "replace")
    if MARK not in text:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {returncode}"]
        killed = returncode in (-signal.SIGKILL, -signal.SIGXCPU)  # (its memory or CPU time ran out)
        raise (LimitHit if killed else StepFailed)(f"python step died: {tail[0][:300]}")
    try:  # the step's code can write here too (e.g. from atexit): trust no field of it
        res = json.loads(text.rsplit(MARK, 1)[1], parse_float=_finite, parse_constant=_finite)
        ok, error = bool(res["ok"]), str(res.get("error", "python step failed"))
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        raise StepFailed("python step produced an unreadable result") from None
    if not ok:
        raise (LimitHit if res.get("limit") is True else StepFailed)(error[:500])
    deep = depth_error(res.get("output"))
    if deep:
        raise StepFailed(deep)
    return PythonResult(res.get("output"), str(res.get("stdout", "")), str(res.get("stderr", "")), cpu_s, peak_mb)
