"""The canonical encoding and the frame decoder are orjson with a fallback to the standard library: they
must give exactly the bytes and values the standard library gives, for every JSON value a peer could send
or a node could sign, and raise where it raises. Signatures, digests and the ledger's hash chain are
over these bytes, so one differing byte would split honest nodes."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mesh.wire.canonical import canonical, canonical_text, loads

STD = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def std(obj) -> bytes:
    return STD.encode(obj).encode()


def outcome(fn, *args):
    """What fn(*args) gave, or the class of what it raised, to compare two encoders' behaviour."""
    try:
        return fn(*args)
    except (ValueError, TypeError, RecursionError) as exc:
        return type(exc)


# floats of every magnitude: the spelling switches at 1e-4 and 1e16 and orjson's differs below 1e-4
def floats():
    exponents = st.integers(-330, 310)
    scaled = st.builds(lambda m, e: m * 10.0 ** e if -308 < e < 308 else m, st.floats(-10, 10), exponents)
    return st.one_of(st.floats(allow_nan=True, allow_infinity=True), scaled)


ints = st.one_of(st.integers(), st.integers(-2**70, 2**70), st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -2**63 - 1]))
texts = st.text(alphabet=st.characters(exclude_categories=[]), max_size=30)  # lone surrogates included
leaves = st.one_of(st.none(), st.booleans(), ints, floats(), texts, st.sampled_from(["null", "0.00001", "e-5", "1e-07"]))
values = st.recursive(leaves, lambda kids: st.one_of(st.lists(kids, max_size=5),
                                                     st.dictionaries(texts, kids, max_size=5)), max_leaves=20)


@pytest.mark.mesh  # 5 s on its own: out of the fast suite (`-m "not mesh"`), in the full one
@settings(max_examples=500, deadline=None)
@given(values)
@example(1e-05)
@example(1.5e-07)
@example(1e16)
@example(9999999999999998.0)
@example(float("nan"))
@example({"a": float("inf")})
@example(2**64)
@example("\ud800")
@example({"é": 1, "e": 2, "\U0001f600": 3, "\uffff": 4})
def test_canonical_is_byte_identical_to_the_standard_library(value):
    assert outcome(canonical, value) == outcome(std, value)


@pytest.mark.mesh  # 4 s on its own: out of the fast suite (`-m "not mesh"`), in the full one
@settings(max_examples=500, deadline=None)
@given(values)
def test_loads_gives_the_standard_librarys_values(value):
    text = json.dumps(value, ensure_ascii=False)  # NaN and Infinity included, as a hostile peer may send
    escaped = json.dumps(value)  # lone surrogates as \ud800 escapes
    for data in (text.encode("utf-8", "surrogatepass"), escaped.encode(), escaped.encode("utf-16")):
        got, want = outcome(loads, data), outcome(json.loads, data)
        assert type(got) is type(want)
        if isinstance(want, type):  # both raised: the same class of error
            assert got is want
        else:
            assert std_or_repr(got) == std_or_repr(want)


def std_or_repr(value) -> str:
    """A comparable form of a decoded value: its JSON, NaN included (NaN != NaN)."""
    return json.dumps(value, sort_keys=True)


@pytest.mark.parametrize("data, want", [
    (b"18446744073709551616", 18446744073709551616),  # past 64 bits: orjson would give a float
    (b"-99999999999999999999999", -99999999999999999999999),
    (b"1e999", math.inf),
    (b"NaN", None),
    (b'"\\ud800"', "\ud800"),
    (b"[" * 2000 + b"]" * 2000, RecursionError),
])
def test_loads_edge_cases(data, want):
    got = outcome(loads, data)
    if want is None:
        assert math.isnan(got)
    elif isinstance(want, type):
        assert got is want
    else:
        assert got == want and type(got) is type(want)


def test_types_the_standard_library_refuses_stay_refused():
    @dataclasses.dataclass
    class Point:
        x: int

    class Text(str):
        pass

    for value in (Point(1), {"p": Point(1)}, {1: 2}, {(1, 2): 3}, b"bytes", {"s": {1, 2}}):
        assert outcome(canonical, value) == outcome(std, value)
    assert canonical(Text("a")) == std(Text("a")) == b'"a"'


@dataclasses.dataclass
class Typed:
    """A stored value with a plain JSON form, as a Receipt or a StepEvidence in ledger detail."""

    inner: object

    def to_json(self) -> object:
        return {"typed": self.inner}


STD_TYPED = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                             default=lambda v: v.to_json())


@pytest.mark.mesh  # 3 s on its own: out of the fast suite (`-m "not mesh"`), in the full one
@settings(max_examples=300, deadline=None)
@given(st.recursive(values, lambda kids: st.builds(Typed, kids) | st.dictionaries(texts, kids, max_size=3),
                    max_leaves=10))
def test_canonical_text_with_typed_values_is_the_standard_librarys(value):
    assert outcome(canonical_text, value) == outcome(STD_TYPED.encode, value)
