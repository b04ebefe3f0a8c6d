"""Runs untrusted Python in bubblewrap: no network (not even loopback), no home, the key nowhere in
sight, a tmpfs /tmp, rlimits on CPU, memory, file size and processes, a wall-clock timeout and capped
output. The step's code sees `inputs` and sets `output`."""

from __future__ import annotations

import json
import marshal
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from .cgroup import StepGroup
from .errors import StepFailed

OUTPUT_CAP = 1 << 20
STREAM_CAP = 64 * 1024
MEMORY_LIMIT = 1 << 30
TMP_SIZE = 64 << 20  # the sandbox's /tmp is a tmpfs in RAM: a step filling it must not fill the host's
MARK = "\x1ehomemesh-result\x1e"

# Runs inside the sandbox. It is the only code here that executes a peer's text, and only there. It reads
# its request as marshal (written by this node, never by a peer) and writes JSON with its own small
# encoder: importing json pulls in `re`, which took longer than starting the interpreter itself.
_RUNNER = r"""
import io, marshal, sys, time
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
t0 = time.process_time()
try:
    exec(compile(code, "<step>", "exec"), scope)
    res = '"ok":true,"output":' + enc(scope.get("output"))
except BaseException as e:
    res = '"ok":false,"error":' + s("%s: %s" % (type(e).__name__, e))
res += ',"cpu_s":%r,"stdout":%s,"stderr":%s' % (time.process_time() - t0, s(out.getvalue()[:CAP]),
                                                s(err.getvalue()[:CAP]))
real.write(MARK + "{" + res + "}")
real.flush()
""".replace("CAP", str(STREAM_CAP)).replace("MARK", repr(MARK))


@dataclass(frozen=True)
class PythonResult:
    output: object
    stdout: str
    stderr: str
    cpu_s: float


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _interpreter() -> tuple[str, str]:
    prefix = os.path.realpath(sys.base_prefix)
    for name in (f"python{sys.version_info.major}.{sys.version_info.minor}", "python3"):
        exe = os.path.join(prefix, "bin", name)
        if os.path.exists(exe):
            return prefix, exe
    raise StepFailed(f"no python interpreter under {prefix}")


def bwrap_command(bwrap: str) -> list[str]:
    prefix, exe = _interpreter()
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
    for d in ("/lib", "/lib64", "/bin"):
        cmd += ["--ro-bind-try", d, d]
    if not prefix.startswith("/usr/"):
        cmd += ["--ro-bind", prefix, prefix]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_SIZE), "--tmpfs", "/tmp", "--chdir", "/tmp",
            exe, "-I", "-S", "-c", _RUNNER]
    return cmd


def _limits(cpu_s: int) -> list[tuple[int, int]]:
    """The rlimits the runner sets on itself before the step's code runs (so no preexec hook is needed,
    which would force a slower fork of this process)."""
    return [(resource.RLIMIT_CPU, cpu_s), (resource.RLIMIT_AS, MEMORY_LIMIT), (resource.RLIMIT_FSIZE, 16 << 20),
            (resource.RLIMIT_NPROC, 256), (resource.RLIMIT_CORE, 0)]


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
    set by the runner before the step's code runs."""

    def __init__(self, sandboxed: bool = True):
        self.sandboxed = sandboxed
        self.cwd: str | None = None
        if sandboxed:
            bwrap = bwrap_path()
            if bwrap is None:
                raise StepFailed("bubblewrap (bwrap) is not installed; refusing to run python without a sandbox")
            cmd = bwrap_command(bwrap)
        else:
            _, exe = _interpreter()
            cmd = [exe, "-I", "-S", "-c", _RUNNER]
            self.cwd = tempfile.mkdtemp(prefix="mesh-step-")
        self.group = StepGroup(MEMORY_LIMIT)
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd=self.cwd,
                preexec_fn=self.group.enter if self.group.paths else None)  # joined before exec: nothing escapes
        except OSError as exc:
            self.close()
            raise StepFailed(f"cannot start the sandbox: {exc}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, code: str, inputs: dict, timeout: float) -> PythonResult:
        """Run the step (once: a sandbox serves one step, then is gone)."""
        try:
            stdout, stderr = self.proc.communicate(marshal.dumps((code, inputs, _limits(max(1, int(timeout) + 1)))),
                                                   timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StepFailed(f"python step timed out after {timeout:g} s") from None
        finally:
            self.close()  # whatever the step left running (a fork bomb's children) dies here
        return _result(stdout, stderr, self.proc.returncode)

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.communicate()
        self.group.close()
        if self.cwd:
            shutil.rmtree(self.cwd, ignore_errors=True)


def run_python(code: str, inputs: dict, timeout: float, sandboxed: bool = True) -> PythonResult:
    """Run one python step in a fresh sandbox. `sandboxed=False` (operator opt-in only) skips bwrap but
    keeps the limits."""
    return Sandbox(sandboxed).run(code, inputs, timeout)


def _result(stdout: bytes, stderr: bytes, returncode: int | None) -> PythonResult:
    if len(stdout) > OUTPUT_CAP + 2 * STREAM_CAP:
        raise StepFailed(f"python step output over {OUTPUT_CAP} bytes")
    text = stdout.decode("utf-8", "replace")
    if MARK not in text:
        tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit code {returncode}"]
        raise StepFailed(f"python step died: {tail[0][:300]}")
    try:  # the step's code can write here too (e.g. from atexit): trust no field of it
        res = json.loads(text.rsplit(MARK, 1)[1], parse_float=_finite, parse_constant=_finite)
        ok, cpu, error = bool(res["ok"]), _finite(res["cpu_s"]), str(res.get("error", "python step failed"))
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        raise StepFailed("python step produced an unreadable result") from None
    if not ok:
        raise StepFailed(error[:500])
    return PythonResult(res.get("output"), str(res.get("stdout", "")), str(res.get("stderr", "")), cpu)
