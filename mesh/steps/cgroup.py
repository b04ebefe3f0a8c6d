"""Per-step control groups for the python sandbox: a cap on processes (a fork bomb) and on memory across
all of a step's processes, and the step's CPU time and peak memory as the kernel counted them (what the
node is paid for: never a figure the step reports itself). rlimits alone fall short: RLIMIT_AS is per
process. Used when the node may create cgroups (root, cgroup v1 or v2 with the pids and memory
controllers); otherwise the rlimits and the child's rusage are all there is, and `available()` says so."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PIDS_MAX = 64
NAME = "homemesh-step-"


def _dirs() -> dict[str, Path]:
    """controller → the directory new groups go in; empty when none can be created here."""
    if (ROOT / "cgroup.controllers").exists():  # v2: one tree
        ctrls = (ROOT / "cgroup.controllers").read_text().split()
        if {"pids", "memory"} <= set(ctrls) and os.access(ROOT, os.W_OK):
            return {"pids": ROOT, "memory": ROOT}
        return {}
    found = {c: ROOT / c for c in ("pids", "memory", "cpuacct") if (ROOT / c / "cgroup.procs").exists()}
    found = {c: d for c, d in found.items() if os.access(d, os.W_OK)}
    return found if {"pids", "memory"} <= set(found) else {}


def available() -> list[str]:
    return sorted(_dirs())


STALE_AFTER_S = 300.0


def sweep_stale(min_age_s: float = STALE_AFTER_S) -> int:
    """Remove empty step groups older than `min_age_s`: a node killed with SIGKILL (or a power cut) never
    closed its warm sandboxes' groups, and each leaves an empty group in every controller. Only empty
    ones go (rmdir refuses a group with processes), and only old ones, so another node's group made a
    moment ago and not yet entered is left alone. Returns how many were removed."""
    removed, now = 0, time.time()
    places = [(base, NAME) for base in {*_dirs().values()}] + [(ROOT / "cpu", CAP_NAME)]  # (and --max-cpu's)
    for base, prefix in places:
        for path in base.glob(prefix + "*"):
            try:
                if now - path.stat().st_ctime < min_age_s or (path / "cgroup.procs").read_text().strip() \
                        or (prefix == CAP_NAME and _owner_alive(path.name)):
                    continue
                path.rmdir()
                removed += 1
            except OSError:
                continue  # gone meanwhile, or entered by a process after all
    return removed


CPU_PERIOD_US = 100_000
CAP_NAME = "homemesh-node-"


class CpuCapError(Exception):
    """The owner's CPU cap cannot be enforced here (what is missing is in the message)."""


class CpuCap:
    """The owner's `--max-cpu`: one group in the cpu hierarchy (cgroup v1) whose CFS quota is that share of
    the machine's CPUs, for all of the node's python steps and model runners together. Every step's
    sandbox and every model runner joins it; the node removes it when it stops. On cgroup v2 a process
    sits in one group only, and the step's own group would have to nest under this one: not done yet,
    so there the cap is refused with the reason rather than silently not enforced."""

    def __init__(self, share: float, name: str):
        if not 0 < share <= 1:
            raise CpuCapError(f"a CPU share must be above 0 and at most 100%, not {share:g}")
        base = ROOT / "cpu"
        if (ROOT / "cgroup.controllers").exists():
            raise CpuCapError("cgroup v2 is not supported for --max-cpu yet (cgroup v1's cpu controller is)")
        if not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
            raise CpuCapError(f"no writable cpu cgroup at {base} (run the node as root on cgroup v1)")
        self.share, self.cpus = share, os.cpu_count() or 1
        self.path = base / (CAP_NAME + name)
        try:
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        except OSError as exc:
            raise CpuCapError(f"cannot set up {self.path}: {exc}") from None

    @property
    def quota_us(self) -> int:
        """CPU microseconds the group may use per period: the share of every CPU (1 ms at least)."""
        return max(1000, int(self.share * self.cpus * CPU_PERIOD_US))

    @property
    def threads(self) -> int:
        """Threads worth running under the cap (a model runner's): more only wait for quota."""
        return max(1, int(self.share * self.cpus))

    def close(self) -> None:
        """Remove the group once its processes are gone (the node's actors stop with it)."""
        for _ in range(100):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)


def join_cpu_cap(path: str, pid: int = 0) -> None:
    """Put a process (default: this one) under the node's CPU cap; nothing when there is no cap."""
    if path:
        (Path(path) / "cgroup.procs").write_text(str(pid or os.getpid()))


def _owner_alive(name: str) -> bool:
    """Whether the node that made CpuCap group `name` (…-PID) still runs: an idle node's cap may be empty."""
    try:
        os.kill(int(name.rsplit("-", 1)[1]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


class StepGroup:
    """One step's groups. `enter()` runs in the child before exec (preexec_fn); `close()` kills whatever
    is left in them and removes them. `cpu_cap`: the node's CpuCap group, joined too (never removed here)."""

    def __init__(self, memory_bytes: int, pids: int = PIDS_MAX, cpu_cap: str = ""):
        self.cpu_cap = cpu_cap
        self.paths: list[Path] = []
        self.cpu_file: Path | None = None  # cumulative CPU time of every process in the group
        self.peak_file: Path | None = None  # the group's peak memory
        name = NAME + uuid.uuid4().hex[:12]
        for ctrl, base in _dirs().items():
            path = base / name
            if path in self.paths:
                continue
            try:
                path.mkdir()
            except OSError:
                continue
            self.paths.append(path)
            try:
                if ctrl == "pids" or base == ROOT:
                    (path / "pids.max").write_text(str(pids))
                if ctrl == "memory":
                    limit = "memory.max" if base == ROOT else "memory.limit_in_bytes"
                    (path / limit).write_text(str(memory_bytes))
            except OSError:
                pass  # the group still counts processes; the rlimits stay in force
        for path in self.paths:
            v2 = path.parent == ROOT
            for attr, name in (("cpu_file", "cpu.stat" if v2 else "cpuacct.usage"),
                               ("peak_file", "memory.peak" if v2 else "memory.max_usage_in_bytes")):
                if (path / name).exists():
                    setattr(self, attr, path / name)

    def limit_memory(self, memory_bytes: int) -> None:
        """Lower (or raise) the groups' memory limit: a stranger's step gets less than a warm sandbox was
        started with."""
        for path in self.paths:
            name = "memory.max" if path.parent == ROOT else "memory.limit_in_bytes"
            if (path / name).exists():
                try:
                    (path / name).write_text(str(memory_bytes))
                except OSError:
                    pass  # the rlimit on the address space still holds

    def cpu_s(self) -> float | None:
        """CPU seconds used so far by the group's processes, living and dead (None: not counted here)."""
        if self.cpu_file is None:
            return None
        try:
            text = self.cpu_file.read_text()
        except OSError:
            return None
        if self.cpu_file.name == "cpu.stat":  # v2: "usage_usec N" among other lines
            usec = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("usage_usec ")), None)
            return None if usec is None else usec / 1e6
        return int(text) / 1e9  # v1 cpuacct.usage: nanoseconds

    def peak_bytes(self) -> int | None:
        if self.peak_file is None:
            return None
        try:
            return int(self.peak_file.read_text())
        except (OSError, ValueError):
            return None

    def enter(self) -> None:
        for path in self.paths:
            (path / "cgroup.procs").write_text(str(os.getpid()))
        join_cpu_cap(self.cpu_cap)

    def close(self) -> None:
        for path in self.paths:
            pause, waited = 0.0005, 0.0
            while waited < 5.0:
                try:
                    pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
                except OSError:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    path.rmdir()
                    break
                except OSError:  # still emptying: killed or exiting processes take a moment to go
                    time.sleep(pause)
                    waited += pause
                    pause = min(pause * 2, 0.05)
