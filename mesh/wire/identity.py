"""A node's Ed25519 identity. The private key lives in the node's home, mode 0600; the node id is the
SHA-256 of the raw public key, so an id cannot be claimed without the key."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from mesh.errors import ConfigError

KEY_FILE = "node.key"


def node_id_of(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is `public_key`'s signature of `message`; never raises on bad input."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey
    public_key: bytes

    @classmethod
    def generate(cls) -> "Identity":
        key = Ed25519PrivateKey.generate()
        return cls(key, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @classmethod
    def from_seed(cls, seed: bytes) -> "Identity":
        key = Ed25519PrivateKey.from_private_bytes(seed)
        return cls(key, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    @property
    def node_id(self) -> str:
        return node_id_of(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def seed(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )


def load_or_create(home: Path) -> tuple[Identity, bool]:
    """Load `home/node.key`, creating home and key (0600) when absent. Returns (identity, created)."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / KEY_FILE
    if path.exists():
        return load(home), False
    ident = Identity.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ident.seed().hex().encode() + b"\n")
    return ident, True


def load(home: Path) -> Identity:
    path = home / KEY_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"no node key at {path}: run `mesh init --home {home}` first") from None
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} is readable by others; run `chmod 600 {path}`")
    try:
        seed = bytes.fromhex(text)
        if len(seed) != 32:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{path} is not a homemesh key (64 hex characters)") from None
    return Identity.from_seed(seed)
