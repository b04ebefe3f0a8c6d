"""The one byte encoding everything signed or digested goes through."""

from __future__ import annotations

import hashlib
import json
from typing import Any

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8, NaN refused (it has no single spelling). One
    encoder for every call: json.dumps with options builds a new one each time."""
    return _ENCODER.encode(obj).encode()


def digest(obj: Any) -> str:
    """SHA-256 hex of the canonical encoding: what replicas compare."""
    return hashlib.sha256(canonical(obj)).hexdigest()
