"""Per-step control groups for the python sandbox: a cap on processes (a fork bomb) and on memory across
all of a step's processes, and the step's CPU time and peak memory as the kernel counted them (what the
node is paid for: never a figure the step reports itself). rlimits alone fall short: RLIMIT_AS is per
process. Used when the node may create cgroups (root, cgroup v1 or v2 with the pids and memory
controllers); otherwise the rlimits and the child's rusage are all there is, and `available()` says so."""

from __future__ import annotations

import contextlib
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
    moment ago and not yet entered is left alone. An owner's cap group (…-PID) whose node is gone, and the
    step groups in it, go whatever their age: nothing joins a dead node's cap. Returns how many were removed."""
    removed, now = 0, time.time()
    bases = {*_dirs().values()}
    places = [(base, NAME) for base in bases] \
        + [(c, NAME) for ctrl in ("memory", "cpuacct") for c in (ROOT / ctrl).glob(CAP_NAME + "*")] \
        + [(ROOT / ctrl, CAP_NAME) for ctrl in ("cpu", "cpuacct", "memory")]  # (the caps, after the steps in them)
    for base, prefix in places:
        orphaned = base.name.startswith(CAP_NAME) and not _owner_alive(base.name)
        for path in base.glob(prefix + "*"):
            try:
                if prefix == CAP_NAME and _owner_alive(path.name):
                    continue
                if not (orphaned or prefix == CAP_NAME) and now - path.stat().st_ctime < min_age_s:
                    continue
                if (path / "cgroup.procs").read_text().strip():
                    continue
                path.rmdir()
                removed += 1
            except OSError:
                continue  # gone meanwhile, or entered by a process after all
    return removed


CPU_PERIOD_US = 100_000
CAP_NAME = "homemesh-node-"
MIN_MEMORY = 64 << 20  # bytes: less than this leaves no room for one python step


class CapError(Exception):
    """The owner's cap cannot be enforced here (what is missing is in the message)."""


class OwnerCap:
    """The owner's `--max-cpu` and `--max-memory` over everything peers run here: one group named
    homemesh-node-ID-PID in cgroup v1's cpu hierarchy (CFS quota = that share of every CPU; every python
    step and model runner joins it) and one in its memory hierarchy (a limit for all python steps
    together: each step's own memory group is made inside it, so both its own limit and the sum hold).
    A group is made only for a cap asked for at start; `set()` changes the figures later (SIGHUP). On
    cgroup v2 a process sits in one group only and the step groups would have to nest: not done yet, so
    there a cap is refused with the reason rather than silently not enforced."""

    def __init__(self, name: str, cpu: float = 0.0, memory: int = 0):
        if (ROOT / "cgroup.controllers").exists():
            raise CapError("cgroup v2 is not supported for the owner's caps yet (cgroup v1's cpu and memory are)")
        self.name, self.cpus = CAP_NAME + name, os.cpu_count() or 1
        self.cpu, self.memory = 0.0, 0
        self.made: dict[str, Path] = {}
        self.last_cpu: tuple[float, float] | None = None  # (when, CPU-seconds used under the cap) at the last look
        self.growing = True  # groups are made for the caps asked for at start only
        self.set(cpu, memory)
        self.growing = False

    def set(self, cpu: float, memory: int) -> None:
        """Apply a CPU share (0: none) and a memory limit in bytes (0: none); CapError when one cannot be."""
        if not 0 <= cpu <= 1:
            raise CapError(f"a CPU share must be above 0 and at most 100%, not {cpu:g}")
        if memory and memory < MIN_MEMORY:
            raise CapError(f"a memory cap must be at least {MIN_MEMORY >> 20} MiB")
        if cpu and self.growing:  # accounting only (the dashboard's CPU use): where cpuacct cannot be had, none
            with contextlib.suppress(CapError):
                self._group("cpuacct", True)
        for ctrl, value, files in (("cpu", cpu, {"cpu.cfs_period_us": str(CPU_PERIOD_US),
                                                 "cpu.cfs_quota_us": str(self._quota(cpu))}),
                                   ("memory", memory, {"memory.limit_in_bytes": str(memory or -1)})):
            path = self._group(ctrl, bool(value))
            try:
                for name, text in files.items():
                    if path is not None:
                        (path / name).write_text(text)
            except OSError as exc:
                raise CapError(f"cannot set {path}: {exc}") from None
        self.cpu, self.memory = cpu, memory

    def _group(self, ctrl: str, wanted: bool) -> Path | None:
        """The group in `ctrl`, made when `wanted` and not yet there (None: neither)."""
        if ctrl in self.made or not wanted:
            return self.made.get(ctrl)
        base = ROOT / ctrl
        if not (base / "cgroup.procs").exists() or not os.access(base, os.W_OK):
            raise CapError(f"no writable {ctrl} cgroup at {base} (run the node as root on cgroup v1)")
        if not self.growing:  # steps and runners already running are outside it: a restart puts them in
            raise CapError(f"restart the node to add a {ctrl} cap it did not start with")
        try:
            (base / self.name).mkdir(exist_ok=True)
        except OSError as exc:
            raise CapError(f"cannot make {base / self.name}: {exc}") from None
        self.made[ctrl] = base / self.name
        return self.made[ctrl]

    def _quota(self, cpu: float) -> int:
        """CPU microseconds the group may use per period: the share of every CPU (1 ms at least; -1: none)."""
        return max(1000, int(cpu * self.cpus * CPU_PERIOD_US)) if cpu else -1

    @property
    def quota_us(self) -> int:
        return self._quota(self.cpu)

    @property
    def threads(self) -> int:
        """Threads worth running under the CPU cap (a model runner's): more only wait for quota."""
        return max(1, int(self.cpu * self.cpus)) if self.cpu else self.cpus

    @property
    def path(self) -> Path | None:
        """The CPU group (None: no CPU cap)."""
        return self.made.get("cpu")

    def memory_used(self) -> int | None:
        """Bytes the python steps and Chromium in the memory group use now, as the kernel counts them (None: there is no
        memory group, or it cannot be read: then nothing is measured, and nothing is made up)."""
        group = self.made.get("memory")
        if group is None:
            return None
        try:
            return int((group / "memory.usage_in_bytes").read_text())
        except (OSError, ValueError):
            return None

    def cpu_share(self) -> float | None:
        """The share of all CPUs used under the cap since the last call, as the kernel counted it (None:
        the first call, or no CPU accounting here)."""
        group = self.made.get("cpuacct")
        try:
            used, now = int((group / "cpuacct.usage").read_text()) / 1e9, time.monotonic()
        except (OSError, ValueError, TypeError):
            return None
        last, self.last_cpu = self.last_cpu, (now, used)
        if last is None or now <= last[0]:
            return None
        return max(0.0, used - last[1]) / ((now - last[0]) * self.cpus)

    def close(self) -> list[Path]:
        """Remove the groups, the steps' groups left inside them first (a warm sandbox dies with its actor,
        its group stays). The node is stopping and its actor system has stopped, so whatever still runs in
        them is its own leftover (a sandbox or runner slow to die under load, an actor the system did not
        stop in time): killed rather than waited for, or the groups would outlive the node. 5 s in all;
        returns the groups still there then."""
        until = time.monotonic() + 5.0
        return [group for path in self.made.values() for group in [*path.glob(NAME + "*"), path]
                if not empty_and_remove(group, until)]


def cpu_group(cap: str) -> Path | None:
    """The CPU cap's group of the owner's caps named `cap` (None: there is no CPU cap)."""
    path = ROOT / "cpu" / cap
    return path if cap and path.is_dir() else None


def cap_groups(cap: str, ctrls: tuple[str, ...] = ("cpu", "cpuacct", "memory")) -> list[Path]:
    """The groups of the owner's caps named `cap` that exist, among those controllers."""
    return [ROOT / c / cap for c in ctrls if cap and (ROOT / c / cap).is_dir()]


def join_cpu_cap(cap: str, pid: int = 0) -> None:
    """Put a process (default: this one) under the node's CPU cap `cap` (a group name), and its CPU
    accounting; nothing without one."""
    if cpu_group(cap) is not None:
        for path in cap_groups(cap, ("cpu", "cpuacct")):
            (path / "cgroup.procs").write_text(str(pid or os.getpid()))


def join_caps(cap: str, pids: list[int]) -> int:
    """Put running processes (Chromium's, just started: parents before children, so what they fork later
    is born inside) under the owner's caps `cap`; how many were moved into some group."""
    moved = 0
    for path in cap_groups(cap):
        for pid in pids:
            try:
                (path / "cgroup.procs").write_text(str(pid))
                moved += 1
            except OSError:  # gone meanwhile
                continue
    return moved


def nested_base(ctrl: str, cap: str) -> Path:
    """Where a step's group in `ctrl` is made: inside the owner's cap group there when it has one (memory:
    the sum of steps is held; cpuacct: the cap's CPU use is counted with its steps')."""
    inside = ROOT / ctrl / cap
    return inside if cap and inside.is_dir() else ROOT / ctrl


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
    is left in them and removes them. `cap`: the name of the node's OwnerCap groups: its memory group is
    made inside the owner's memory cap, and the CPU cap is joined (neither is removed here)."""

    def __init__(self, memory_bytes: int, pids: int = PIDS_MAX, cap: str = ""):
        self.cap = cap
        self.cpu_cap = cpu_group(cap)  # looked up here: in the child, a group gone meanwhile fails the start
        self.paths: list[Path] = []
        self.cpu_file: Path | None = None  # cumulative CPU time of every process in the group
        self.peak_file: Path | None = None  # the group's peak memory
        name = NAME + uuid.uuid4().hex[:12]
        for ctrl, base in _dirs().items():
            path = (nested_base(ctrl, cap) if ctrl in ("memory", "cpuacct") and base != ROOT else base) / name
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
            name = "memory.max" if path.parent == ROOT else "memory.limit_in_bytes"  # (v2 | v1)
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

    @property
    def places(self) -> list[Path]:
        """Every group a member joins: the step's own, and the owner's CPU cap."""
        return [*self.paths, *([self.cpu_cap] if self.cpu_cap is not None else [])]

    def enter(self) -> None:
        for path in self.places:
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def join(self, pids: list[int]) -> None:
        """Put running processes in the groups (a browser's, started as the step user, which cannot enter
        a group itself); one gone meanwhile is skipped."""
        for path in self.places:
            for pid in pids:
                try:
                    (path / "cgroup.procs").write_text(str(pid))
                except OSError:
                    continue

    def close(self) -> None:
        until = time.monotonic() + 5.0
        for path in self.paths:
            empty_and_remove(path, until)


def empty_and_remove(path: Path, until: float) -> bool:
    """Kill every process in group `path` and remove it, trying until `until` (monotonic): killed or
    exiting processes take a moment to leave. False when it is still there then."""
    pause = 0.0005
    while True:
        try:
            pids = [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return True
        except OSError:
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() > until:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
