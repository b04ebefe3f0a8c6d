"""Strict conversion of untrusted JSON objects into typed dataclasses: exact keys, exact types, bounded
sizes. Everything a peer sends passes through `parse` before any code looks at it."""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import Rejected

T = TypeVar("T")

MAX_STR = 1 << 20
MAX_LIST = 4096


def parse(cls: type[T], data: Any, where: str = "payload") -> T:
    """Build `cls` from `data` or raise Rejected('bad-schema', ...) naming the first bad field."""
    return _parser(cls)(data, where)


@functools.cache
def _parser(cls: type) -> Callable[[Any, str], Any]:
    """A checker for `cls`, built once per class from its type hints: resolving string annotations and
    walking typing objects on every message was most of the time an envelope took to check."""
    hints = typing.get_type_hints(cls)
    fields = [(f.name, _checker(hints[f.name]),
               f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)
              for f in dataclasses.fields(cls)]
    names = frozenset(name for name, _, _ in fields)

    def check(data: Any, where: str) -> Any:
        if not isinstance(data, dict):
            raise Rejected("bad-schema", f"{where} is not an object")
        extra = data.keys() - names
        if extra:
            raise Rejected("bad-schema", f"{where} has unknown field {sorted(extra)[0]!r}")
        values = {}
        for name, field_check, optional in fields:
            if name not in data:
                if optional:
                    continue
                raise Rejected("bad-schema", f"{where}.{name} is missing")
            values[name] = field_check(data[name], f"{where}.{name}")
        return cls(**values)

    return check


def _checker(tp: Any) -> Callable[[Any, str], Any]:
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return lambda value, where: value
    if dataclasses.is_dataclass(tp):
        return lambda value, where: _parser(tp)(value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        item_check = _checker(item)

        def check_list(value: Any, where: str) -> list:
            if not isinstance(value, list) or len(value) > MAX_LIST:
                raise Rejected("bad-schema", f"{where} is not a list of at most {MAX_LIST}")
            return [item_check(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return check_list
    if origin is dict or tp is dict:
        def check_dict(value: Any, where: str) -> dict:
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise Rejected("bad-schema", f"{where} is not an object")
            return value
        return check_dict
    tests: dict[Any, Callable[[Any], bool]] = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str) and len(v) <= MAX_STR,
    }
    if tp not in tests:
        raise TypeError(f"schema type {tp!r} not supported")
    ok, convert = tests[tp], (float if tp is float else None)

    def check_scalar(value: Any, where: str) -> Any:
        if not ok(value):
            raise Rejected("bad-schema", f"{where} is not {tp.__name__}")
        return convert(value) if convert else value
    return check_scalar


_LEAVES = (str, int, float, bool, type(None))


def dump(obj: Any) -> Any:
    """Dataclass → plain JSON-able dict (the inverse of parse). Unlike dataclasses.asdict it does not
    deep-copy every leaf, which cost as much as the rest of sealing an envelope."""
    if isinstance(obj, _LEAVES):
        return obj
    if isinstance(obj, list | tuple):
        return [dump(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    return obj
