"""Strict conversion of untrusted JSON objects into typed dataclasses: exact keys, exact types, bounded
sizes. Everything a peer sends passes through `parse` before any code looks at it."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

from .errors import Rejected

T = TypeVar("T")

MAX_STR = 1 << 20
MAX_LIST = 4096


def parse(cls: type[T], data: Any, where: str = "payload") -> T:
    """Build `cls` from `data` or raise Rejected('bad-schema', ...) naming the first bad field."""
    if not isinstance(data, dict):
        raise Rejected("bad-schema", f"{where} is not an object")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = set(data) - set(fields)
    if extra:
        raise Rejected("bad-schema", f"{where} has unknown field {sorted(extra)[0]!r}")
    values = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING:
                continue
            raise Rejected("bad-schema", f"{where}.{name} is missing")
        values[name] = _check(hints[name], data[name], f"{where}.{name}")
    return cls(**values)


def _check(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, where)
    if origin is list:
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise Rejected("bad-schema", f"{where} is not a list of at most {MAX_LIST}")
        (item,) = typing.get_args(tp)
        return [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise Rejected("bad-schema", f"{where} is not an object")
        return value
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str) and len(value) <= MAX_STR
    else:
        raise TypeError(f"schema type {tp!r} not supported at {where}")
    if not ok:
        raise Rejected("bad-schema", f"{where} is not {tp.__name__}")
    return float(value) if tp is float else value


def dump(obj: Any) -> Any:
    """Dataclass → plain JSON-able dict (the inverse of parse)."""
    return dataclasses.asdict(obj)
