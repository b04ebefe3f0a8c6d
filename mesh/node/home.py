"""A node's home directory: key, ledger, API token and the running node's addresses."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ConfigError
from mesh.userfiles import read_text

TOKEN_FILE = "api-token"
RUNTIME_FILE = "node.json"
MAX_RUNTIME_FILE = 64 << 10  # bytes of node.json (its node id, pid and two addresses)
LEDGER_FILE = "ledger.db"
PEERS_FILE = "peers.json"
MAX_PEERS_FILE = 64 << 20  # bytes of peers.json (the peer table's signed records, at most 10,000)
REPLAY_FILE = "replay.json"
CANCEL_DIR = "cancel"  # a file named for a running step's request id here tells its actor to stop it
LOCK_FILE = "node.lock"  # flock'd by the node running on this home, for its whole life


def default_home() -> Path:
    return Path(os.environ.get("MESH_HOME", Path.home() / ".homemesh"))


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def ensure_token(home: Path) -> str:
    """The home's API token, made when absent. The file holds the token and nothing else, no newline:
    whoever reads it whole (`open(...).read()`, as the README's OpenAI example does) gets a valid HTTP
    header value. A file written with a newline (before this) is rewritten without it."""
    path = home / TOKEN_FILE
    if path.exists():
        token = read_token(home)
        if path.read_text() != token:
            write_private(path, token)
        return token
    token = secrets.token_urlsafe(32)
    write_private(path, token)
    return token


def read_token(home: Path) -> str:
    """The token, without surrounding whitespace (an editor may add a newline)."""
    path = home / TOKEN_FILE
    if not path.exists():
        raise ConfigError(f"no API token at {path}: is {home} a node's home?")
    token = read_text(path, "API token", 4096, ConfigError).strip()
    if not token.isprintable() or " " in token:  # it goes into a header: a newline in it broke every call
        raise ConfigError(f"the API token in {path} holds spaces or control characters")
    return token


def own_folder(path: Path, what: str = "this node's home") -> None:
    """Make `path` (0700) if it is missing, and refuse it unless only this user could have put anything in
    it: the folder and each one above it owned by this user or root, none writable by others unless sticky
    (as /tmp is). A root node on a home a local user made first in /tmp ran with that user's key and API
    token, and truncated the file its planted node.lock linked to (this project's red team, 2026-12-07)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        link = os.lstat(path)
    except OSError as exc:
        raise ConfigError(f"cannot use {path} as {what} ({exc.strerror}): it must be a folder this user can "
                          "write") from None
    me = os.geteuid()
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (me, 0):
        raise ConfigError(f"{path} is a link another user (uid {link.st_uid}) made: not used as {what}")
    real = path.resolve()
    for folder in (real, *real.parents):
        st = os.stat(folder)
        if st.st_uid not in (me, 0):
            raise ConfigError(f"{folder} belongs to another user (uid {st.st_uid}), who could have put files "
                              f"in {path}: not used as {what}")
        open_to_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if open_to_others and (folder == real or not st.st_mode & stat.S_ISVTX):
            raise ConfigError(f"{folder} may be written by other users, who could have put files in {path}: "
                              f"not used as {what} (chmod go-w {folder})")


def lock_home(home: Path, grace: float = 10.0) -> int:
    """Take the home's lock (an advisory flock on HOME/node.lock) before the node writes anything there,
    and return its descriptor, to be held for the node's life: a second node on one home would overwrite
    the first's node.json and delete it on exit. The kernel drops the lock when the last process holding
    it ends: the node's forked actors hold it too and die with it, so a node killed with -9 frees the home
    once they are gone (waited for up to `grace` seconds when the pid in the file is no longer running;
    that pid only names the holder)."""
    own_folder(home)
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot use {home} as this node's home ({exc.strerror}): it keeps its ledger, job "
                          "journal and logs there, so it must be writable") from None
    deadline = time.monotonic() + grace
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if _running(holder) or time.monotonic() > deadline:
                os.close(fd)
                raise ConfigError(f"home {home} is in use by pid {holder or 'unknown'}") from None
            time.sleep(0.05)  # the holder is gone; its actors are dying
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot lock {home / LOCK_FILE}: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def home_in_use(home: Path) -> bool:
    """Whether a node holds `home`'s lock now: the kernel's word, where node.json's pid may be long dead (or
    reused). The CLI sends the API token only then: a node.json left by a node that was killed sent it to
    whatever listened on the old port since (this project's red team, 2026-12-06)."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # (cannot tell: the node's own answer decides)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:  # held (BlockingIOError), or cannot tell
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _running(pid: str) -> bool:
    import psutil

    try:
        return psutil.Process(int(pid)).status() != psutil.STATUS_ZOMBIE
    except (ValueError, psutil.Error):
        return False


@dataclass(frozen=True)
class RuntimeInfo:
    """What a running node publishes in its home so the CLI can find it."""

    node: str
    pid: int
    api: str
    listen: str

    def write(self, home: Path) -> None:
        write_private(home / RUNTIME_FILE, json.dumps(self.__dict__) + "\n")

    @classmethod
    def read(cls, home: Path) -> "RuntimeInfo":
        path = home / RUNTIME_FILE
        if not os.path.lexists(path):
            raise ConfigError(f"no running node found in {home} (no {RUNTIME_FILE}); start one with "
                              f"`mesh node --home {home}`")
        # (bounded and a regular file: linked to /dev/zero it was read until memory ran out, and JSON nested
        # 100,000 deep was a RecursionError traceback)
        text = read_text(path, RUNTIME_FILE, MAX_RUNTIME_FILE, ConfigError)
        try:
            data = json.loads(text)
            return cls(str(data["node"]), int(data["pid"]), str(data["api"]), str(data["listen"]))
        except (ValueError, KeyError, TypeError, RecursionError):
            raise ConfigError(f"{path} is damaged; restart the node") from None


def read_peers(home: Path) -> list:
    """The JSON list in HOME/peers.json (the records of the peers a node knew, each still to be checked),
    [] when there is none or it is damaged: JSON nested 100,000 deep stopped the node's start with a
    RecursionError, and the file linked to /dev/zero was read until memory ran out."""
    try:
        raw = json.loads(read_text(home / PEERS_FILE, PEERS_FILE, MAX_PEERS_FILE, ConfigError))
    except (ConfigError, ValueError, RecursionError):
        return []
    return raw if isinstance(raw, list) else []


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
