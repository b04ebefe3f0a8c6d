"""When the owner lets peers' work start (issue 24): `--hours 22:00-07:00` (local time) and `--when-idle
MINUTES` (nobody at the keyboard or mouse, and no heavy load of the owner's own, for that long). The rules
(Hours, IdleRule) are pure: they take the time and samples and say why the node should take no new step
('' when it may), so tests feed them numbers. Probe reads this machine: keyboard and mouse interrupts from
/proc/interrupts, logind's idle hint where a desktop session sets one, and the CPU time of every process
that is not this node's. A headless machine has no input to watch: there only the load counts, and the
node says so."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

import psutil

BUSY_SHARE = 0.5  # others using more than this share of all CPUs: the machine is in use
INPUT_WORDS = ("i8042", "keyboard", "mouse", "touchpad", "hid")  # /proc/interrupts lines of input devices
_CLOCK = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class Hours:
    """A daily window in local time, [start, end) in minutes of the day; it may wrap past midnight."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> Hours:
        """`22:00-07:00`; ValueError says what is wrong."""
        parts = text.strip().split("-")
        clocks = [_CLOCK.fullmatch(p.strip()) for p in parts]
        if len(parts) != 2 or not all(clocks):
            raise ValueError(f"{text!r} is not a daily window like 22:00-07:00")
        start, end = (int(m.group(1)) * 60 + int(m.group(2)) for m in clocks)
        if start == end:
            raise ValueError(f"{text!r} is empty: give different start and end times (or no --hours for always)")
        return cls(start, end)

    def contains(self, minute: int) -> bool:
        return self.start <= minute < self.end if self.start < self.end else minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


def outside(hours: Hours | None, local: time.struct_time) -> str:
    """Why the node takes no new step now by its hours ('' when it may, or when it has none)."""
    if hours is None or hours.contains(local.tm_hour * 60 + local.tm_min):
        return ""
    return f"outside its hours ({hours})"


@dataclass(frozen=True)
class Sample:
    """One look at the machine: input interrupts so far (None: no input device seen), the desktop's idle
    hint (None: none), and the share of all CPUs other programs used since the last look (None: first)."""

    now: float
    inputs: int | None = None
    desktop_idle: bool | None = None
    others_cpu: float | None = None


class IdleRule:
    """Idle = no input and no load above `busy_share` for `minutes`; what was last seen busy is the reason."""

    def __init__(self, minutes: float, busy_share: float = BUSY_SHARE):
        self.minutes, self.busy_share = minutes, busy_share
        self.last_inputs: int | None = None
        self.active_at: float | None = None  # when the machine was last seen in use
        self.why = ""

    def observe(self, s: Sample) -> str:
        """Why the machine is in use ('' once it has been idle for `minutes`)."""
        used = ""
        if s.inputs is not None and self.last_inputs is not None and s.inputs != self.last_inputs:
            used = "its owner is using the keyboard or mouse"
        elif s.desktop_idle is False:
            used = "its owner's desktop session is active"
        elif s.others_cpu is not None and s.others_cpu > self.busy_share:
            used = f"other programs use {s.others_cpu:.0%} of its CPUs"
        self.last_inputs = s.inputs if s.inputs is not None else self.last_inputs
        if used or self.active_at is None:  # (at start: idle only once `minutes` have passed)
            self.active_at, self.why = s.now, used or "it has just started watching for idleness"
        quiet = s.now - self.active_at
        if quiet >= self.minutes * 60:
            return ""
        return f"waiting for the machine to be idle: {self.why} ({quiet:.0f} s ago, needs {self.minutes * 60:.0f} s)"


def input_interrupts(text: str) -> int | None:
    """The sum of /proc/interrupts' counts on input devices' lines (None: no such line)."""
    total, seen = 0, False
    for line in text.splitlines()[1:]:
        if any(w in line.lower() for w in INPUT_WORDS):
            seen = True
            total += sum(int(f) for f in line.split()[1:] if f.isdigit())
    return total if seen else None


class Probe:
    """This machine's input activity and others' CPU use, sampled each time `sample()` is called."""

    def __init__(self, own_pid: int | None = None):
        self.own = psutil.Process(own_pid or os.getpid())
        self.cpus = psutil.cpu_count() or 1
        self.times: dict[tuple[int, float], float] = {}  # (pid, start time) → CPU seconds at the last look
        self.at: float | None = None
        self.loginctl = shutil.which("loginctl")

    def sources(self) -> list[str]:
        """What it can watch here, in words (mesh status): honest about a headless machine."""
        out = ["other programs' CPU load"]
        if self._inputs() is not None:
            out.append("keyboard and mouse interrupts")
        if self._desktop_idle() is not None:
            out.append("the desktop's idle hint")
        return out

    def sample(self) -> Sample:
        now = time.monotonic()
        return Sample(now, self._inputs(), self._desktop_idle(), self._others_cpu(now))

    def _inputs(self) -> int | None:
        try:
            with open("/proc/interrupts") as f:
                return input_interrupts(f.read())
        except OSError:
            return None

    def _desktop_idle(self) -> bool | None:
        """logind's IdleHint of the graphical sessions (None: none, or no logind)."""
        if self.loginctl is None:
            return None
        try:
            out = subprocess.run([self.loginctl, "list-sessions", "--no-legend"], capture_output=True, text=True,
                                 timeout=2).stdout
            hints = []
            for sid in (line.split()[0] for line in out.splitlines() if line.split()):
                props = subprocess.run([self.loginctl, "show-session", sid, "-p", "Type", "-p", "IdleHint"],
                                       capture_output=True, text=True, timeout=2).stdout
                if re.search(r"^Type=(x11|wayland)$", props, re.M):
                    hints.append("IdleHint=yes" in props)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return all(hints) if hints else None

    def _others_cpu(self, now: float) -> float | None:
        """Share of all CPUs used since the last look by processes other than this node and its children
        (both looks' processes only: one started or gone meanwhile is counted from its next look)."""
        try:
            mine = {self.own.pid} | {c.pid for c in self.own.children(recursive=True)}
        except psutil.Error:
            mine = {self.own.pid}
        times: dict[tuple[int, float], float] = {}
        used = 0.0
        for p in psutil.process_iter(["pid", "create_time", "cpu_times"]):
            info = p.info
            if info["pid"] in mine or info["cpu_times"] is None or info["create_time"] is None:
                continue
            key = (info["pid"], info["create_time"])
            times[key] = info["cpu_times"].user + info["cpu_times"].system
            if key in self.times:
                used += max(0.0, times[key] - self.times[key])
        # (at most 1: the scan reads each process's times a little after `now`, and under load that read 1.01)
        share = None if self.at is None or now <= self.at else min(1.0, used / ((now - self.at) * self.cpus))
        self.times, self.at = times, now
        return share
