"""The one byte encoding everything signed or digested goes through."""

from __future__ import annotations

import hashlib
import json
from typing import Any

_OPTIONS = {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}
_ENCODER = json.JSONEncoder(**_OPTIONS)


def _to_json(value: object) -> object:
    to_json = getattr(value, "to_json", None)
    if to_json is None:
        raise TypeError(f"{type(value).__name__} has no to_json(): it has no canonical JSON form")
    return to_json()


_TYPED = json.JSONEncoder(**_OPTIONS, default=_to_json)


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8, NaN refused (it has no single spelling). One
    encoder for every call: json.dumps with options builds a new one each time."""
    return _ENCODER.encode(obj).encode()


def canonical_text(obj: Any) -> str:
    """The same encoding as text, where typed values (a Receipt, a StepEvidence) may stand in for the
    JSON their `to_json()` gives: the bytes are those of that plain JSON. For stored detail, off the
    signing hot path."""
    return _TYPED.encode(obj)


def digest(obj: Any) -> str:
    """SHA-256 hex of the canonical encoding: what replicas compare."""
    return hashlib.sha256(canonical(obj)).hexdigest()
