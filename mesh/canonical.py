"""The one byte encoding everything signed or digested goes through."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8, NaN refused (it has no single spelling)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def digest(obj: Any) -> str:
    """SHA-256 hex of the canonical encoding: what replicas compare."""
    return hashlib.sha256(canonical(obj)).hexdigest()
