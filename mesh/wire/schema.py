"""Strict conversion of untrusted JSON objects into typed dataclasses: exact keys, exact types, bounded
sizes. Everything a peer sends passes through `parse` before any code looks at it."""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from mesh.errors import Rejected

T = TypeVar("T")

MAX_STR = 1 << 20
MAX_LIST = 4096
FLOAT_INT = 2 ** 1023  # integers of at most this size convert to a float (the largest is just under 2**1024)


def parse(cls: type[T], data: Any, where: str = "payload") -> T:
    """Build `cls` from `data` or raise Rejected('bad-schema', ...) naming the first bad field."""
    try:
        return _parser(cls)(data)
    except _Bad as bad:
        raise Rejected("bad-schema", f"{where}{bad.path} {bad.what}") from None


class _Bad(Exception):
    """A field that does not fit, on its way up: each level adds its name (only on this error path, so
    a good message costs no string building)."""

    def __init__(self, what: str, path: str = ""):
        super().__init__(what)
        self.what, self.path = what, path


_SCALARS: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}


@functools.cache
def _parser(cls: type) -> Callable[[Any], Any]:
    """A checker for `cls`, built once per class from its type hints: resolving string annotations and
    walking typing objects on every message was most of the time an envelope took to check. Scalars
    (decoded JSON has exact types, so `type(v) in` also keeps booleans out of ints) are checked inline."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        optional = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        most = f.metadata.get("max_items")  # a list field held to fewer items than MAX_LIST, before they are parsed
        check = _list_checker(_checker(typing.get_args(tp)[0]), most) if most else _checker(tp)
        fields.append((f.name, _SCALARS.get(tp), tp, None if tp in _SCALARS else check, optional))
    names = frozenset(f[0] for f in fields)

    def check(data: Any) -> Any:
        if type(data) is not dict:
            raise _Bad("is not an object")
        extra = data.keys() - names
        if extra:
            raise _Bad(f"has unknown field {sorted(extra)[0]!r}")
        values = {}
        for name, types, tp, field_check, optional in fields:
            if name not in data:
                if optional:
                    continue
                raise _Bad("is missing", f".{name}")
            value = data[name]
            if types is not None:
                if type(value) not in types or (tp is str and len(value) > MAX_STR):
                    raise _Bad(f"is not {tp.__name__}", f".{name}")
                values[name] = _float(value) if tp is float else value
                continue
            try:
                values[name] = field_check(value)
            except _Bad as bad:
                raise _Bad(bad.what, f".{name}{bad.path}") from None
        return cls(**values)

    return check


def _checker(tp: Any) -> Callable[[Any], Any]:
    """A checker for a field of type `tp` (anything, a dataclass, a list, a dict or a scalar)."""
    if tp is Any or tp is object:
        return lambda value: value
    if dataclasses.is_dataclass(tp):
        return _parser(tp)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return _list_checker(_checker(item))
    if typing.get_origin(tp) is dict or tp is dict:
        return _check_dict
    if tp in _SCALARS:
        return _scalar_checker(tp)
    raise TypeError(f"schema type {tp!r} not supported")


def _list_checker(item_check: Callable[[Any], Any], most: int = MAX_LIST) -> Callable[[Any], list]:
    def check_list(value: Any) -> list:
        if type(value) is not list or len(value) > most:
            raise _Bad(f"is not a list of at most {most}")
        out = []
        for i, v in enumerate(value):
            try:
                out.append(item_check(v))
            except _Bad as bad:
                raise _Bad(bad.what, f"[{i}]{bad.path}") from None
        return out
    return check_list


def _check_dict(value: Any) -> dict:
    if type(value) is not dict or not all(type(k) is str for k in value):
        raise _Bad("is not an object")
    return value


def _scalar_checker(tp: type) -> Callable[[Any], Any]:
    types = _SCALARS[tp]

    def check_scalar(value: Any) -> Any:
        if type(value) not in types or (tp is str and len(value) > MAX_STR):
            raise _Bad(f"is not {tp.__name__}")
        return _float(value) if tp is float else value
    return check_scalar


def _float(value: int | float) -> float:
    """A JSON number as a float field holds it: an integer past a float's range is refused (float() raised
    OverflowError out of the receiver on a signed 10**400)."""
    if type(value) is int and not -FLOAT_INT <= value <= FLOAT_INT:
        raise _Bad("is a number too large")
    return float(value)


_LEAVES = (str, int, float, bool, type(None))
_LEAF_TYPES = frozenset(_LEAVES)
_FIELDS: dict[type, tuple[str, ...]] = {}  # a dataclass's field names, looked up once per class


def dump(obj: Any) -> Any:
    """Dataclass → plain JSON-able dict (the inverse of parse). Unlike dataclasses.asdict it does not
    deep-copy every leaf, which cost as much as the rest of sealing an envelope; field names are looked
    up once per class, and a leaf field is taken as it is."""
    tp = type(obj)
    if tp in _LEAF_TYPES:
        return obj
    names = _FIELDS.get(tp)
    if names is None:
        if isinstance(obj, _LEAVES):
            return obj
        if isinstance(obj, list | tuple):
            return [dump(v) for v in obj]
        if isinstance(obj, dict):
            return {k: dump(v) for k, v in obj.items()}
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            return obj
        names = _FIELDS[tp] = tuple(f.name for f in dataclasses.fields(obj))
    out = {}
    for name in names:
        value = getattr(obj, name)
        out[name] = value if type(value) in _LEAF_TYPES else dump(value)
    return out
