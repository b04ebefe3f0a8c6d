"""The unprivileged user a node's untrusted work runs as: python steps and Chromium. A node started as
root must never let a stranger's code run as the host's uid 0 (inside bubblewrap, uid 0 maps to the
host's uid 0, and /proc/sys then lets it take the machine), so each home gets a uid and gid of its own,
outside the range of real accounts, chosen once and kept in `HOME/step-user.json`. Its processes run
with no supplementary groups and no capabilities; the node keeps its own files 0600/0700 so that uid can
read none of them. A node started as a normal user has nothing to drop: its steps run as that user,
inside bubblewrap's user namespace, as before."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ConfigError
from mesh.userfiles import read_text

FILE = "step-user.json"
FIRST_UID = 2_000_000_000  # far above any account (login uids start at 1000, systemd's dynamic ones end at 65519)
SPAN = 100_000_000  # and below 2**31, which some tools still read as negative


@dataclass(frozen=True)
class StepUser:
    """Who untrusted work runs as: `uid`/`gid` on the host (never 0)."""

    uid: int
    gid: int

    def __post_init__(self) -> None:
        if self.uid <= 0 or self.gid <= 0:
            raise ConfigError("the step user must not be root")

    def demote(self) -> None:
        """In a forked child before exec: give up root for good (groups, then gid, then uid, all three
        of real/effective/saved, so there is no way back)."""
        os.setgroups([])
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)

    def own(self, path: Path) -> None:
        """Make a directory the step user's own (Chromium's profile, for one)."""
        os.chown(path, self.uid, self.gid)
        os.chmod(path, 0o700)


NOBODY = StepUser(65534, 65534)  # for root's sandboxes started outside a node (tests, benchmarks)


def running_as_root() -> bool:
    return os.geteuid() == 0


def _taken(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


def step_user(home: Path, node_id: str) -> StepUser | None:
    """This home's step user when the node runs as root (created on first use), else None: a normal
    user's node has no privilege to give up."""
    if not running_as_root():
        return None
    path = home / FILE
    try:
        if os.path.lexists(path):  # (read bounded, a regular file: see mesh.userfiles)
            data = json.loads(read_text(path, "the step user file", 4096, ConfigError))
            return StepUser(int(data["uid"]), int(data["gid"]))
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ConfigError(f"{path} is damaged ({exc}); delete it to choose a new step user") from None
    start = int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:8], "big") % SPAN
    uid = next(FIRST_UID + (start + i) % SPAN for i in range(SPAN) if not _taken(FIRST_UID + (start + i) % SPAN))
    user = StepUser(uid, uid)
    tmp = path.with_name(FILE + ".tmp")
    tmp.write_text(json.dumps({"uid": user.uid, "gid": user.gid}) + "\n")
    os.replace(tmp, path)
    return user
