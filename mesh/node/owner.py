"""The owner's say over what peers may use of this node (issue 24): `--max-cpu`, `--max-memory`,
`--max-steps` from the command line or HOME/node.toml (re-read on SIGHUP; a flag given on the command line
wins over the file), and `mesh pause` (kept in HOME/paused, so a paused node stays paused across a
restart). They become the cgroups' figures (mesh.steps.cgroup.OwnerCap), the worker's slots and the offer
signed in the node's record, so that placement does not send work the node would refuse."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mesh.errors import ConfigError
from mesh.node.flow import Limits
from mesh.wire.messages import Offer
from mesh.wire.records import MAX_MEMORY, MAX_STEPS

CONFIG_FILE = "node.toml"
PAUSED_FILE = "paused"
MIN_MEMORY = 64 << 20  # bytes (mesh.steps.cgroup.MIN_MEMORY): less leaves no room for one python step
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
              "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


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
    return int(float(m.group(1)) * SIZE_UNITS[unit])


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


@dataclass(frozen=True)
class OwnerLimits:
    """What the owner lets peers use here (0: no cap). `steps`: how many of their steps run at once."""

    cpu: float = 0.0
    memory: int = 0
    steps: int = Limits.max_running

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
        return f"{cpu}, {memory}, {self.steps} steps at once"


_KEYS = {"max_cpu": ("cpu", parse_share), "max_memory": ("memory", parse_memory), "max_steps": ("steps", parse_steps)}


def read_file(home: Path) -> dict[str, Any]:
    """HOME/node.toml's limits as OwnerLimits fields ({} when there is no file); ConfigError names the file,
    the key and what is wrong."""
    path = home / CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
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
    try:
        return (home / PAUSED_FILE).read_text().strip() or "paused by its owner"
    except FileNotFoundError:
        return ""


def set_paused(home: Path, reason: str) -> None:
    """Pause (a reason) or resume (''), kept across restarts."""
    if reason:
        (home / PAUSED_FILE).write_text(reason + "\n")
    else:
        (home / PAUSED_FILE).unlink(missing_ok=True)
