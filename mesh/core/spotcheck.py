"""Spot checks (Sarmenta): now and then the submitter sends a worker a step whose answer it already knows.
A wrong answer costs a lot of reputation, blacklists the worker for a while and voids its answers in
steps not yet settled, and steps it agreed on wait for its check before they are accepted. Pure: the
randomness comes from the RNG handed in, the time from the caller."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from mesh.wire.canonical import digest


@dataclass(frozen=True)
class Challenge:
    kind: str
    params: dict
    expected: Any


def python_challenge(rng: random.Random) -> Challenge:
    """Fresh arithmetic whose answer the submitter computes without running anything."""
    a, b, c = rng.randrange(1, 10**9), rng.randrange(1, 10**9), rng.randrange(2, 10**6)
    code = f"a, b, c = {a}, {b}, {c}\noutput = {{'sum': a + b, 'mod': (a * b) % c, 'digits': len(str(a * b))}}"
    return Challenge("python", {"code": code, "inputs": {}}, {"sum": a + b, "mod": (a * b) % c,
                                                             "digits": len(str(a * b))})


class SpotChecker:
    def __init__(self, rate: float, blacklist_s: float, rng: random.Random, memory: int = 32):
        self.rate = rate
        self.blacklist_s = blacklist_s
        self.rng = rng
        self.known: dict[str, deque] = {}  # kind → earlier accepted (params, output), for kinds without synthetics
        self.memory = memory
        self.banned: dict[str, float] = {}  # node → until (seconds, caller's clock)
        self.vouched: dict[str, deque] = {}  # node → recent (job, step) it agreed on, for rechecks
        self.out: dict[str, tuple[str, Challenge, float]] = {}  # check id → (worker, challenge, deadline)

    def issue(self, check_id: str, node: str, challenge: Challenge, deadline: float) -> None:
        self.out[check_id] = (node, challenge, deadline)

    def take(self, check_id: str, node: str) -> Challenge | None:
        """The challenge of an outstanding check answered by `node`, now closed; None if it is not one."""
        got = self.out.get(check_id)
        if got is None or got[0] != node:
            return None
        del self.out[check_id]
        return got[1]

    def withdraw(self, check_id: str) -> None:
        """A check that never reached its worker (the replica it rode with could not be sent)."""
        self.out.pop(check_id, None)

    def expire(self, now: float) -> list[str]:
        """Drop the checks past their deadline, unpunished (a worker may be slow or gone); returns their
        workers, in the order the checks were issued."""
        gone = [c for c, (_, _, deadline) in self.out.items() if deadline <= now]
        return [self.out.pop(c)[0] for c in gone]

    def held(self, now: float) -> frozenset[str]:
        """Workers with a check outstanding: a step they agreed on waits for it. Expired checks are
        dropped, unpunished."""
        if not self.out:
            return frozenset()
        self.expire(now)
        return frozenset(node for node, _, _ in self.out.values())

    def vouch(self, nodes: tuple[str, ...], job: str, step: str) -> None:
        """These workers agreed on an accepted answer: if one is caught cheating later, recheck it."""
        for node in nodes:
            self.vouched.setdefault(node, deque(maxlen=self.memory)).append((job, step))

    def to_recheck(self, node: str) -> list[tuple[str, str]]:
        """The accepted steps a worker just caught cheating had vouched for (each returned once)."""
        return list(self.vouched.pop(node, ()))

    def remember(self, kind: str, params: dict, output: Any) -> None:
        """An accepted answer becomes a known answer for later checks (llm: same model, greedy)."""
        if kind != "python":
            self.known.setdefault(kind, deque(maxlen=self.memory)).append((params, output))

    def challenge(self, kind: str) -> Challenge | None:
        """A check for a worker about to get a `kind` replica, or None (not this time / nothing known)."""
        if self.rate <= 0 or self.rng.random() >= self.rate:
            return None
        if kind == "python":
            return python_challenge(self.rng)
        known = self.known.get(kind)
        if not known:
            return None
        params, output = known[self.rng.randrange(len(known))]
        return Challenge(kind, params, output)

    def judge(self, node: str, challenge: Challenge, ok: bool, output: Any, now: float) -> bool:
        """True when the answer is the known one; otherwise the node is blacklisted until now + blacklist_s."""
        passed = ok and digest(output) == digest(challenge.expected)
        if not passed:
            for gone in [n for n, until in self.banned.items() if until <= now]:
                del self.banned[gone]  # bans that ran out, forgotten here so the map stays small
            self.banned[node] = now + self.blacklist_s
        return passed

    def blacklisted(self, node: str, now: float) -> bool:
        """Whether `node` is banned at `now`. Pure (asking changes nothing), so a driver may ask outside
        the core's recorded inputs without a replay deciding differently."""
        until = self.banned.get(node)
        return until is not None and until > now
