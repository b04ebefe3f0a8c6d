"""Worker behaviours, pluggable: a strategy maps the right answer of a step (which the worker cannot
tell from a spot check) to the answer it returns. Name one in a scenario, or give `package.module:Class`
for your own subclass of Strategy."""

from __future__ import annotations

import importlib
import random
import zlib
from typing import Any

from mesh.wire.canonical import canonical


class Strategy:
    """Honest: always the right answer."""

    name = "honest"
    adversary = False

    def __init__(self, rng: random.Random, rate: float = 1.0, group: str = "", good_steps: int = 0):
        self.rng = rng
        self.rate = rate
        self.group = group
        self.good_steps = good_steps
        self.answered = 0

    def answer(self, truth: Any) -> Any:
        self.answered += 1
        return truth


class RandomWrong(Strategy):
    """A saboteur (Sarmenta): with probability `rate`, a random wrong answer no one else will match."""

    name = "random-wrong"
    adversary = True

    def answer(self, truth: Any) -> Any:
        self.answered += 1
        if self.rng.random() < self.rate:
            return ["wrong", self.rng.getrandbits(48)]
        return truth


class Colluding(Strategy):
    """Colluders of one group return the same wrong answer, and agree on when to cheat (a function of
    the step, so every member makes the same choice without talking)."""

    name = "colluding"
    adversary = True

    def answer(self, truth: Any) -> Any:
        self.answered += 1
        token = zlib.crc32(canonical([self.group, truth]))
        if token / 2**32 < self.rate:
            return ["collude", self.group, token]
        return truth


class Sybil(Colluding):
    """One operator's many ids (sharing network prefixes): colluding answers from all of them."""

    name = "sybil"


class OnOff(RandomWrong):
    """Behaves for `good_steps` answers (building a reputation and a streak), then cheats."""

    name = "on-off"

    def answer(self, truth: Any) -> Any:
        if self.answered < self.good_steps:
            self.answered += 1
            return truth
        return super().answer(truth)


BUILTIN: dict[str, type[Strategy]] = {c.name: c for c in (Strategy, RandomWrong, Colluding, Sybil, OnOff)}


def strategy_class(name: str) -> type[Strategy]:
    """A built-in strategy by name, or `package.module:Class` (a Strategy subclass)."""
    if name in BUILTIN:
        return BUILTIN[name]
    module, sep, attr = name.partition(":")
    if not sep:
        raise ValueError(f"unknown adversary strategy {name!r}: use one of {', '.join(sorted(BUILTIN))} "
                         "or package.module:Class")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"adversary strategy {name!r} cannot be loaded: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ValueError(f"adversary strategy {name!r} is not a subclass of simulations.adversaries.Strategy")
    return cls
