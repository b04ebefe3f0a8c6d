"""Per-step control groups for the python sandbox: a cap on processes (a fork bomb) and on memory across
all of a step's processes. rlimits alone fall short: RLIMIT_NPROC never applies to root, and
RLIMIT_AS is per process. Used when the node may create cgroups (root, cgroup v1 or v2 with the pids
and memory controllers); otherwise the rlimits are all there is, and `available()` says so."""

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
    found = {c: ROOT / c for c in ("pids", "memory") if (ROOT / c / "cgroup.procs").exists()}
    return {c: d for c, d in found.items() if os.access(d, os.W_OK)}


def available() -> list[str]:
    return sorted(_dirs())


class StepGroup:
    """One step's groups. `enter()` runs in the child before exec (preexec_fn); `close()` kills whatever
    is left in them and removes them."""

    def __init__(self, memory_bytes: int, pids: int = PIDS_MAX):
        self.paths: list[Path] = []
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

    def enter(self) -> None:
        for path in self.paths:
            (path / "cgroup.procs").write_text(str(os.getpid()))

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
