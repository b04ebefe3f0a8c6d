"""The one byte encoding everything signed or digested goes through, and the decoder frames go through.

The bytes are those of `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)` encoded as UTF-8. orjson writes the same bytes ten times faster except in a few places,
so it goes first and the standard library decides wherever they could differ: a float below 1e-4 (orjson
spells 1e-05 as 0.00001 and 1.5e-07 as 1.5e-7), a NaN or infinity (orjson writes null, the standard
library refuses), an integer past 64 bits, a key that is not a string, a subclass of a JSON type. The
checks are on orjson's output, so a string that merely contains "null" or "0.0000" only costs the slow
path. tests/wire/test_canonical.py holds the two to identical bytes over generated values."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import orjson

_OPTIONS = {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}
_ENCODER = json.JSONEncoder(**_OPTIONS)
# Types the standard library refuses stay refused: orjson would write dataclasses, datetimes and subclasses.
_FAST = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
         | orjson.OPT_PASSTHROUGH_SUBCLASS)
# Where orjson's bytes may differ: null (NaN and infinities become null), a float below 1e-4 written in
# fixed notation (0.0000…) or with a one-digit exponent (e-7, where Python writes e-07). Substring tests
# first: a regular expression over a whole frame cost more than orjson's encoding.
_SHORT_EXPONENT = re.compile(rb"e-\d(?!\d)")
_SHORT_EXPONENT_TEXT = re.compile(r"e-[0-9](?![0-9])")  # the same on text (\d would match any Unicode digit)
# An integer of 19 digits or more may be outside 64 bits, which orjson decodes to a float: found as a run
# of 19 zeros once every digit is mapped to 0 (a regular expression took 7 µs a frame, this 1 µs).
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_INT = b"0" * 19


def _to_json(value: object) -> object:
    to_json = getattr(value, "to_json", None)
    if to_json is None:
        raise TypeError(f"{type(value).__name__} has no to_json(): it has no canonical JSON form")
    return to_json()


_TYPED = json.JSONEncoder(**_OPTIONS, default=_to_json)


def _orjson(obj: Any, default: Callable[[object], object] | None = None) -> bytes | None:
    """orjson's canonical bytes of `obj`, or None where they could differ from the standard library's."""
    try:
        out = orjson.dumps(obj, default=default, option=_FAST)
    except TypeError:  # orjson.JSONEncodeError: big integers, non-string keys, passed-through types
        return None
    # (bytes.find, not `in`: `x in bytes` first tries x as an integer and clears the TypeError, ~150 ns each)
    if out.find(b"null") >= 0 or out.find(b"0.0000") >= 0 or (out.find(b"e-") >= 0 and _SHORT_EXPONENT.search(out)):
        return None
    return out


def canonical(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8, NaN refused (it has no single spelling). Raises
    ValueError (NaN, a lone surrogate) or TypeError (no JSON form) as json.dumps does."""
    out = _orjson(obj)
    return _ENCODER.encode(obj).encode() if out is None else out


def loads(data: bytes) -> Any:
    """JSON bytes → Python values, exactly as json.loads gives them: orjson first, and the standard
    library wherever orjson refuses (NaN, 1e999, lone surrogates, UTF-16, nesting past 1024) or could
    give another value (an integer outside 64 bits). Raises what json.loads raises."""
    if _LONG_INT not in data.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data)


def canonical_text(obj: Any) -> str:
    """The same encoding as text, where typed values (a Receipt, a StepEvidence) may stand in for the
    JSON their `to_json()` gives: the bytes are those of that plain JSON. For stored detail, on the
    ledger's hot path."""
    try:
        out = orjson.dumps(obj, default=_to_json, option=_FAST).decode()
    except TypeError:
        return _TYPED.encode(obj)
    # _orjson's checks, on the text: an ASCII run is in the UTF-8 bytes exactly when it is in their text
    if "null" in out or "0.0000" in out or ("e-" in out and _SHORT_EXPONENT_TEXT.search(out)):
        return _TYPED.encode(obj)
    return out


def digest(obj: Any) -> str:
    """SHA-256 hex of the canonical encoding: what replicas compare."""
    return hashlib.sha256(canonical(obj)).hexdigest()
