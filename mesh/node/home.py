"""A node's home directory: key, ledger, API token and the running node's addresses."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import ConfigError

TOKEN_FILE = "api-token"
RUNTIME_FILE = "node.json"
LEDGER_FILE = "ledger.db"
PEERS_FILE = "peers.json"
REPLAY_FILE = "replay.json"
CANCEL_DIR = "cancel"  # a file named for a running step's request id here tells its actor to stop it


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
    path = home / TOKEN_FILE
    if path.exists():
        return read_token(home)
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    return token


def read_token(home: Path) -> str:
    try:
        return (home / TOKEN_FILE).read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"no API token at {home / TOKEN_FILE}: is {home} a node's home?") from None


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
        try:
            data = json.loads(path.read_text())
            return cls(str(data["node"]), int(data["pid"]), str(data["api"]), str(data["listen"]))
        except FileNotFoundError:
            raise ConfigError(f"no running node found in {home} (no {RUNTIME_FILE}); start one with "
                              f"`mesh node --home {home}`") from None
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{path} is damaged; restart the node") from None


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
