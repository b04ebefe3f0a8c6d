"""A node's Ed25519 identity. The private key lives in the node's home, mode 0600; the node id is the
SHA-256 of the raw public key, so an id cannot be claimed without the key. Beside it, `node.work` holds
the nonce that proves the id's work (mesh.wire.idwork), found once and kept."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_core_ed25519_is_valid_point

from mesh.errors import ConfigError
from mesh.userfiles import read_text
from mesh.wire.idwork import required_bits, solve, work_bits

KEY_FILE = "node.key"
WORK_FILE = "node.work"


def node_id_of(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()


@lru_cache(maxsize=1 << 16)
def sound_key(public_key: bytes) -> bool:
    """Whether a public key is one an honest node can hold: a canonical encoding of a point of the prime-order
    subgroup, not of small order (libsodium's check). Under the identity point (01 00…00) the signature
    R = identity, S = 0 passes a cofactorless check (OpenSSL's) for every message, so anyone could sign as
    that node id (red team H, 2026-12-08); an honest key is a scalar times the base point, never such a point."""
    return isinstance(public_key, bytes) and len(public_key) == 32 and crypto_core_ed25519_is_valid_point(public_key)


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is `public_key`'s signature of `message` and the key is sound (`sound_key`);
    never raises on bad input."""
    if not sound_key(public_key):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey
    public_key: bytes
    work: int = 0  # the nonce proving this key's work (mesh.wire.idwork); signed into every record

    @classmethod
    def generate(cls, bits: int | None = None) -> "Identity":
        """A new key with its work done: `bits` of it, the network's requirement by default."""
        return cls._of(Ed25519PrivateKey.generate()).with_work(required_bits() if bits is None else bits)

    @classmethod
    def from_seed(cls, seed: bytes, work: int | None = None) -> "Identity":
        """The identity of a stored key, with its stored nonce (or, without one, its work done now)."""
        ident = cls._of(Ed25519PrivateKey.from_private_bytes(seed))
        return ident.with_work(required_bits()) if work is None else replace(ident, work=work)

    @classmethod
    def _of(cls, key: Ed25519PrivateKey) -> "Identity":
        return cls(key, key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def work_bits(self) -> int:
        return work_bits(self.public_key, self.work)

    def with_work(self, bits: int, progress: Callable[[int], None] | None = None) -> "Identity":
        """This identity with a nonce proving at least `bits` (the one it has, when that is enough)."""
        if self.work_bits() >= bits:
            return self
        return replace(self, work=solve(self.public_key, bits, progress))

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
    """Load `home/node.key`, creating home and key (0600) when absent. Returns (identity, created). The
    id's work is not done here (see ensure_work): commands that only read the home must not wait for it."""
    if home.exists() and not home.is_dir():  # (mkdir said only "File exists")
        raise ConfigError(f"{home} is not a directory: a node's home is one (give another --home)")
    home.mkdir(parents=True, exist_ok=True)
    path = home / KEY_FILE
    if path.exists():
        return load(home), False
    ident = Identity.generate(bits=0)
    # written whole beside it, then linked into place (never over one): a disk that filled mid-write left a
    # 0-byte node.key that no later `mesh init` would replace (found by this project's attack round)
    tmp = home / (KEY_FILE + ".new")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(ident.seed().hex().encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:  # another init won the race: its key is the home's
        return load(home), False
    except OSError as exc:
        raise ConfigError(f"cannot write the node key {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return ident, True


def ensure_work(home: Path, ident: Identity, say: Callable[[str], None] = print) -> Identity:
    """`ident` with the work the network requires, found now (and kept in `home/node.work`) when the
    home has none or too little: once per key, about 2 s at 20 bits."""
    bits = required_bits()
    if ident.work_bits() >= bits:
        return ident
    say(f"proving this node id's work ({bits} bits, once; about {2 ** bits * 1.8e-6:.0f} s)")
    done = ident.with_work(bits, lambda tries: say(f"  {tries:,} tries so far"))
    tmp = home / (WORK_FILE + ".tmp")
    tmp.write_text(f"{done.work}\n")
    os.replace(tmp, home / WORK_FILE)
    return done


def load(home: Path) -> Identity:
    path = home / KEY_FILE
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"no node key at {path}: run `mesh init --home {home}` first")
    text = read_text(path, "node key", 4096, ConfigError).strip()
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} is readable by others; run `chmod 600 {path}`")
    try:
        seed = bytes.fromhex(text)
        if len(seed) != 32:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{path} is not a homemesh key (64 hex characters)") from None
    return Identity.from_seed(seed, _work(home))


def _work(home: Path) -> int:
    """The nonce in `home/node.work`; 0 when missing or unreadable (ensure_work then finds it again). Read as
    the home's other files are, a regular file of bounded size: a FIFO there hung every command."""
    path = home / WORK_FILE
    if not path.exists() and not path.is_symlink():
        return 0
    try:
        return int(read_text(path, "the node id's work", 64, ConfigError).strip())
    except ValueError:
        return 0
