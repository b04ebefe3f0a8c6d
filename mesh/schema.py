"""Strict conversion of untrusted JSON objects into typed dataclasses: exact keys, exact types, bounded
sizes. Everything a peer sends passes through `parse` before any code looks at it."""

from __future__ import annotations

import dataclasses
import functools
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
    fields = _fields(cls)
    extra = data.keys() - fields.keys()
    if extra:
        raise Rejected("bad-schema", f"{where} has unknown field {sorted(extra)[0]!r}")
    values = {}
    for name, (hint, optional) in fields.items():
        if name not in data:
            if optional:
                continue
            raise Rejected("bad-schema", f"{where}.{name} is missing")
        values[name] = _check(hint, data[name], f"{where}.{name}")
    return cls(**values)


@functools.cache
def _fields(cls: type) -> dict[str, tuple[Any, bool]]:
    """name → (type, has a default), worked out once per class: resolving string annotations on every
    message was a third of the time an envelope took to check (bench/envelope.py)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
            for f in dataclasses.fields(cls)}


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
    """Dataclass → plain JSON-able dict (the inverse of parse). Unlike dataclasses.asdict it does not
    deep-copy every leaf, which cost as much as the rest of sealing an envelope."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {name: dump(getattr(obj, name)) for name in _fields(type(obj))}
    if isinstance(obj, list | tuple):
        return [dump(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    return obj
