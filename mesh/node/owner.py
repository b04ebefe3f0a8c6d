"""The owner's say over what peers may use of this node (issue 24): `--max-cpu`, `--max-memory`,
`--max-steps` from the command line or HOME/node.toml (re-read on SIGHUP; a flag given on the command line
wins over the file), and `mesh pause` (kept in HOME/paused, so a paused node stays paused across a
restart). They become the cgroups' figures (mesh.steps.cgroup.OwnerCap), the worker's slots and the offer
signed in the node's record, so that placement does not send work the node would refuse."""

from __future__ import annotations

import dataclasses
import os
import re
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError, UserError
from mesh.node.flow import Limits
from mesh.node.schedule import Hours, IdleRule, Probe, outside
from mesh.steps import cgroup
from mesh.userfiles import read_text
from mesh.wire.messages import Offer
from mesh.wire.records import MAX_MEMORY, MAX_STEPS

CONFIG_FILE = "node.toml"
PAUSED_FILE = "paused"
MIN_MEMORY = 64 << 20  # bytes (mesh.steps.cgroup.MIN_MEMORY): less leaves no room for one python step
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
MAX_SIZE = 1 << 60  # bytes: a size past this is a typo, not a disk


def parse_share(text: str | float) -> float:
    """`50%`, `50` or (in node.toml) 0.5: a CPU share above 0 and at most 1; ValueError says what is wrong."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text) * (100 if 0 < text <= 1 and isinstance(text, float) else 1)
    else:
        try:
            value = float(str(text).strip().removesuffix("%"))
        except ValueError:
            raise ValueError(f"{text!r} is not a percentage like 50%") from None
    if not 0 < value <= 100:
        raise ValueError(f"{text!r} must be above 0% and at most 100%")
    return value / 100


def size_bytes(text: str) -> int:
    """'2GB' (10^9 bytes each), '512MiB' (2^20), '1000000' → bytes; ValueError says what is wrong."""
    m = _SIZE.fullmatch(text)
    unit = m.group(2).upper() if m else ""
    if m is None or unit not in SIZE_UNITS or float(m.group(1)) * SIZE_UNITS[unit] < 1:
        raise ValueError(f"size {text!r}: a number with an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, "
                         "TiB), e.g. 2GB")
    value = float(m.group(1)) * SIZE_UNITS[unit]
    if value > MAX_SIZE:  # (309 digits are a float's infinity: int() of it was a traceback, not this line)
        raise ValueError(f"size {text[:40]!r}{'...' if len(text) > 40 else ''}: at most {MAX_SIZE >> 60} EiB")
    return int(value)


def parse_memory(text: str | int) -> int:
    """A memory cap: a size (or, in node.toml, a number of bytes) of 64 MiB at least."""
    value = text if isinstance(text, int) and not isinstance(text, bool) else size_bytes(str(text))
    if not MIN_MEMORY <= value <= MAX_MEMORY:
        raise ValueError(f"{text!r} must be at least {MIN_MEMORY >> 20} MiB")
    return value


def parse_steps(text: str | int) -> int:
    """How many steps at once: 1 to MAX_STEPS."""
    try:
        value = int(text) if not isinstance(text, (bool, float)) else -1
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number of steps") from None
    if not 1 <= value <= MAX_STEPS:
        raise ValueError(f"{text!r} must be from 1 to {MAX_STEPS}")
    return value


def parse_hours(text: str) -> str:
    """`22:00-07:00`: the daily window (local time) peers' steps may start in."""
    return str(Hours.parse(str(text)))


def parse_idle(text: str | float) -> float:
    """Minutes the machine must be idle before peers' steps start: above 0, at most a day."""
    try:
        value = float(text) if not isinstance(text, bool) else -1.0
    except ValueError:
        raise ValueError(f"{text!r} is not a number of minutes") from None
    if not 0 < value <= 1440:
        raise ValueError(f"{text!r} must be above 0 and at most 1440 minutes")
    return value


@dataclass(frozen=True)
class OwnerLimits:
    """What the owner lets peers use here (0: no cap). `steps`: how many of their steps run at once;
    `hours`: when they may start ('' always); `idle`: minutes the machine must be idle first (0: never wait)."""

    cpu: float = 0.0
    memory: int = 0
    steps: int = Limits.max_running
    hours: str = ""
    idle: float = 0.0

    def offer(self, paused: bool) -> Offer:
        """These limits as the node's record says them."""
        return Offer(self.steps, min(Limits.max_inflight_per_peer, self.steps), self.memory, self.cpu, paused)

    def limits(self, base: Limits) -> Limits:
        """The worker's slots under these limits."""
        return dataclasses.replace(base, max_running=self.steps,
                                   max_inflight_per_peer=min(base.max_inflight_per_peer, self.steps))

    def describe(self) -> str:
        cpu = f"{self.cpu:.0%} of the CPUs" if self.cpu else "no CPU cap"
        memory = f"{self.memory / (1 << 20):.0f} MiB for steps" if self.memory else "no memory cap"
        when = (f", only {self.hours}" if self.hours else "") + (f", after {self.idle:g} min idle" if self.idle else "")
        return f"{cpu}, {memory}, {self.steps} steps at once{when}"


_KEYS = {"max_cpu": ("cpu", parse_share), "max_memory": ("memory", parse_memory), "max_steps": ("steps", parse_steps),
         "hours": ("hours", parse_hours), "when_idle": ("idle", parse_idle)}


def read_file(home: Path) -> dict[str, Any]:
    """HOME/node.toml's limits as OwnerLimits fields ({} when there is no file); ConfigError names the file,
    the key and what is wrong."""
    path = home / CONFIG_FILE
    if not os.path.lexists(path):
        return {}
    try:  # (bounded, a regular file: linked to /dev/zero, the node's start and every SIGHUP filled memory)
        data = tomllib.loads(read_text(path, "the owner's limits", 1 << 20, ConfigError))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except RecursionError:  # (an array nested 100,000 deep stopped the node's start with a traceback)
        raise ConfigError(f"{path}: nested too deep") from None
    unknown = sorted(set(data) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    out = {}
    for key, value in data.items():
        field, parse = _KEYS[key]
        try:
            out[field] = parse(value)
        except ValueError as exc:
            raise ConfigError(f"{path}: {key}: {exc}") from None
    return out


def resolve(home: Path, flags: dict[str, Any]) -> OwnerLimits:
    """The limits in force: each flag given on the command line (`flags`: OwnerLimits fields, None when
    not given), else node.toml's, else none."""
    given = {k: v for k, v in flags.items() if v is not None}
    return OwnerLimits(**{**read_file(home), **given})


def paused_reason(home: Path) -> str:
    """Why the owner paused this node ('' when not paused)."""
    path = home / PAUSED_FILE
    if not os.path.lexists(path):
        return ""
    try:  # (bounded: the reason is shown by `mesh status` and in the node's record)
        return read_text(path, "the pause file", 4096).strip() or "paused by its owner"
    except UserError:  # over 4 KiB, not a regular file, not UTF-8: still the owner's pause
        return "paused by its owner"


def set_paused(home: Path, reason: str) -> None:
    """Pause (a reason) or resume (''), kept across restarts."""
    if reason:
        (home / PAUSED_FILE).write_text(reason + "\n")
    else:
        (home / PAUSED_FILE).unlink(missing_ok=True)


class Owner:
    """The owner's say over this node as it runs: the limits in force (and the cgroups enforcing them),
    their pause (`mesh pause`, kept in HOME/paused) and the pause their hours or idleness call for. The
    node asks `paused` before each step and re-issues its record whenever a method says it changed."""

    def __init__(self, home: Path, flags: dict[str, Any], limits: OwnerLimits, cap: cgroup.OwnerCap | None,
                 probe: Probe | None = None):
        self.home, self.flags, self.limits, self.cap = home, flags, limits, cap
        self.asked = paused_reason(home)  # the owner's own pause ('' when none)
        self.auto = ""  # the pause the hours or idleness call for ('' when none)
        self.probe = probe
        self.watching: list[str] | None = None  # what idleness is judged by, in words (looked up once, if asked)
        self.idle_rule = IdleRule(limits.idle) if limits.idle else None

    @property
    def paused(self) -> str:
        """Why no new step starts here ('' when they do)."""
        return "; ".join(r for r in (self.asked, self.auto) if r)

    def pause(self, reason: str) -> bool:
        """Pause (a reason) or resume (''), kept across restarts; whether `paused` changed."""
        before = self.paused
        set_paused(self.home, reason)
        self.asked = reason
        return self.paused != before

    def reload(self) -> OwnerLimits:
        """node.toml read again and applied (where no flag overrides it): the cgroups' figures at once.
        ConfigError (nothing changed) when the file is wrong or asks a cap this node did not start with."""
        new = resolve(self.home, self.flags)
        if (new.cpu, new.memory) != (self.limits.cpu, self.limits.memory):
            if self.cap is None:
                raise ConfigError("restart the node to add a cap it did not start with")
            try:
                self.cap.set(new.cpu, new.memory)
            except cgroup.CapError as exc:
                raise ConfigError(str(exc)) from None
        if new.idle != self.limits.idle:
            self.idle_rule = IdleRule(new.idle) if new.idle else None
        self.limits = new
        return new

    def tick(self, local: time.struct_time) -> bool:
        """Look at the clock and the machine (--hours, --when-idle); whether `paused` changed."""
        before = self.paused
        hours = Hours.parse(self.limits.hours) if self.limits.hours else None
        why = outside(hours, local)
        if self.idle_rule is not None and self.probe is not None:
            self._watching()  # (here, in the watcher's thread, rather than in a status call on the loop)
            idle_why = self.idle_rule.observe(self.probe.sample())  # (sampled even outside the hours: a fresh baseline)
            why = why or idle_why
        self.auto = why
        return self.paused != before

    def _watching(self) -> list[str]:
        """The probe's sources, asked the first time only (it may ask logind): not at every start."""
        if self.watching is None:
            self.watching = self.probe.sources() if self.probe is not None else []
        return self.watching

    def status(self) -> dict[str, Any]:
        """The limits in force and the pause (mesh status, mesh pause/resume)."""
        return {"max_cpu": self.limits.cpu, "max_memory": self.limits.memory, "max_steps": self.limits.steps,
                "hours": self.limits.hours or None, "when_idle": self.limits.idle or None,
                "idle_watch": self._watching() if self.limits.idle else None,
                "paused": self.paused or None}
