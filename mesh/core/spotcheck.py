"""Spot checks (Sarmenta): now and then the submitter sends a worker a step whose answer it already knows.
A wrong answer costs a lot of reputation, blacklists the worker for a while and voids its answers in
steps not yet settled, and steps it agreed on wait for its check before they are accepted. Anything that
is not an answer (busy, a step error, a timeout, a lost link) is no answer: dropped, never punished.

A check must look like real work, or a worker answers checks right and real steps wrong: it replays a
step this submitter accepted earlier (its params, step id and timeout as they were; the job id is a fresh
one, made as real ones are), and only when nothing is known, a synthetic python step drawn from several
templates. When it goes out is the submitter's to pick (mesh.core.submission): at a random moment, not
with a replica. Pure: the randomness comes from the RNG handed in, the time from the caller."""

from __future__ import annotations

import dataclasses
import random
import string
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh.core.compare import Comparator
from mesh.core.pricing import DEFAULT_RATES, RateCard

MODEL_PARAM = "model"  # llm kinds: a check must ask for the model the worker was placed for
# accepted steps remembered per worker, to rerun if it is caught (the oldest forgotten first). A proven worker
# takes the first seat and may vouch alone for a hundred steps between two audits: with 32 remembered, the
# early lone answers of an evader caught later were forgotten and stayed wrong (evader-20, seed 1: 8 of them)
VOUCHED = 256
# accepted steps kept per kind until replayed once (the oldest forgotten first): drawn from the last 32
# alone, most were never replayed, and a table of colluders that held every seat of a step was seen by no one
UNCHECKED = 1024
UNCHECKED_TRIES = 8  # random draws among those before looking through all of them
# A passed check is paid the worker's own figures, at most this many times what the step it replays took
# (a slower machine honestly takes longer): paid its claim alone, a check answered right and claimed at the
# whole timeout earned 300 CPU-seconds for a step that took 0.01
WORTH_SLACK = 4.0
SYNTHETIC_WORTH = 0.25  # CPU-seconds: every template runs in milliseconds
REPLAYABLE = ("python", "llm", "ask-model")  # deterministic given their params (llm: greedy, same model)
# not scrape: a page may change between the accepted run and the check, and an honest worker would fail it


@dataclass(frozen=True)
class Challenge:
    """A step whose answer the submitter knows. `kind`, `step`, `params` and `timeout` go on the wire,
    exactly as a replica's would; the rest never leaves the submitter."""

    kind: str
    params: dict
    expected: Any
    step: str = ""  # the step id it is sent as: the replayed step's, or a real step's
    timeout: float = 0.0  # seconds the worker is given: the replayed (or triggering) job's timeout
    compare: str = "exact"  # how its answer is judged: the replayed step's comparator
    source: tuple[str, str] | None = None  # (job, step) it replays; None: synthetic
    seen: tuple[str, ...] = ()  # workers that were asked the original step (sorted)
    prefixes: tuple[str, ...] = ()  # their network prefixes (sybils of one operator share theirs)
    rates: RateCard = DEFAULT_RATES  # the checked worker's card: a passed check is paid like a replica
    # the work the step took, in its kind's unit (mesh.core.pricing.quantity): the lower median of its agreeing
    # replicas' figures, or SYNTHETIC_WORTH; a passed check is paid at most WORTH_SLACK times it
    worth: float = 0.0
    sent: float | None = None  # when it went out (the caller's clock; None: planned, not sent): bounds the claim

    def right(self, output: Any) -> bool:
        """Whether `output` is the known answer, under the step's own comparator."""
        cmp = Comparator(self.compare)
        return cmp.key(output) == cmp.key(self.expected)


# -- synthetic python challenges: several shapes, names and sizes, each answer computed here ------------
_NAMES = ("data", "values", "items", "rows", "xs", "nums", "samples", "records", "batch", "entries")
_WORDS = ("alpha", "beta", "gamma", "delta", "river", "stone", "cloud", "maple", "cedar", "ember", "frost",
          "harbor", "meadow", "orbit", "pixel", "quartz", "raven", "solar", "tundra", "violet")


def _name(rng: random.Random) -> str:
    return _NAMES[rng.randrange(len(_NAMES))]


def _modsum(rng: random.Random) -> tuple[str, Any]:
    n, a, m = rng.randrange(2000, 60000), rng.randrange(3, 9973), rng.randrange(97, 100003)
    total = _name(rng)
    code = f"{total} = 0\nfor i in range({n}):\n    {total} += (i * {a}) % {m}\noutput = {total}\n"
    return code, sum((i * a) % m for i in range(n))


def _wordcount(rng: random.Random) -> tuple[str, Any]:
    words = [rng.choice(_WORDS) for _ in range(rng.randrange(20, 80))]
    k = rng.randrange(3, 8)
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    code = (f"text = {' '.join(words)!r}\ncounts = {{}}\nfor word in text.split():\n"
            f"    counts[word] = counts.get(word, 0) + 1\n"
            f"output = [[w, c] for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:{k}]]\n")
    return code, [[w, c] for w, c in top]


def _primes(rng: random.Random) -> tuple[str, Any]:
    lo = rng.randrange(2, 50000)
    hi = lo + rng.randrange(200, 3000)

    def is_prime(n: int) -> bool:
        if n < 2:
            return False
        f = 2
        while f * f <= n:
            if n % f == 0:
                return False
            f += 1
        return True

    found = [n for n in range(lo, hi) if is_prime(n)]
    fn = rng.choice(("is_prime", "prime", "prime_test"))
    code = (f"def {fn}(n):\n    if n < 2:\n        return False\n    f = 2\n    while f * f <= n:\n"
            f"        if n % f == 0:\n            return False\n        f += 1\n    return True\n\n"
            f"found = [n for n in range({lo}, {hi}) if {fn}(n)]\n"
            f"output = {{'count': len(found), 'last': found[-5:]}}\n")
    return code, {"count": len(found), "last": found[-5:]}


def _orders(rng: random.Random) -> tuple[str, Any]:
    rows = [{"name": "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randrange(4, 9))),
             "qty": rng.randrange(1, 50), "price": rng.randrange(100, 10000)} for _ in range(rng.randrange(5, 15))]
    var = _name(rng)
    total = sum(r["qty"] * r["price"] for r in rows)
    best = max(rows, key=lambda r: r["qty"] * r["price"])["name"]
    code = (f"{var} = {rows!r}\n"
            f"output = {{'total': sum(r['qty'] * r['price'] for r in {var}), "
            f"'top': max({var}, key=lambda r: r['qty'] * r['price'])['name'], 'n': len({var})}}\n")
    return code, {"total": total, "top": best, "n": len(rows)}


def _collatz(rng: random.Random) -> tuple[str, Any]:
    starts = sorted(rng.sample(range(2, 100000), rng.randrange(3, 9)))

    def steps(n: int) -> int:
        count = 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            count += 1
        return count

    var = _name(rng)
    code = (f"def steps(n):\n    count = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n"
            f"        count += 1\n    return count\n\n{var} = {starts!r}\n"
            f"output = {{str(n): steps(n) for n in {var}}}\n")
    return code, {str(n): steps(n) for n in starts}


def _stats(rng: random.Random) -> tuple[str, Any]:
    var = _name(rng)
    xs = [rng.randrange(-1000, 1000) for _ in range(rng.randrange(10, 60))]
    ordered = sorted(xs)
    code = (f"{var} = {xs!r}\nordered = sorted({var})\n"
            f"output = {{'min': ordered[0], 'max': ordered[-1], 'median': ordered[len(ordered) // 2], "
            f"'sum': sum({var}), 'evens': len([x for x in {var} if x % 2 == 0])}}\n")
    return code, {"min": ordered[0], "max": ordered[-1], "median": ordered[len(ordered) // 2], "sum": sum(xs),
                  "evens": len([x for x in xs if x % 2 == 0])}


TEMPLATES: tuple[Callable[[random.Random], tuple[str, Any]], ...] = (
    _modsum, _wordcount, _primes, _orders, _collatz, _stats)


def python_challenge(rng: random.Random, step: str = "", timeout: float = 0.0) -> Challenge:
    """A fresh python step whose answer the submitter computes without running anything: one of several
    templates with its own names and sizes, shaped like the code people submit (not one fixed line)."""
    code, expected = TEMPLATES[rng.randrange(len(TEMPLATES))](rng)
    return Challenge("python", {"code": code, "inputs": {}}, expected, step, timeout, worth=SYNTHETIC_WORTH)


class SpotChecker:
    def __init__(self, rate: float, blacklist_s: float, rng: random.Random, memory: int = 32):
        self.rate = rate
        self.blacklist_s = blacklist_s
        self.rng = rng
        self.known: dict[str, deque[Challenge]] = {}  # kind → earlier accepted steps, replayable as checks
        self.memory = memory
        self.unchecked: dict[str, deque[Challenge]] = {}  # kind → accepted steps not replayed yet (UNCHECKED)
        self.banned: dict[str, float] = {}  # node → until (seconds, caller's clock)
        # node → its recent (job, step, alone) agreements, for rechecks: plain lists, oldest first, at most
        # VOUCHED (a deque(maxlen=...) costs 760 bytes even holding one, and a submitter of a big mesh keeps
        # one for every worker it ever accepted an answer from)
        self.vouched: dict[str, list[tuple[str, str, bool]]] = {}
        self.planned: dict[str, tuple[str, Challenge, float]] = {}  # check id → (worker, challenge, due)
        self.out: dict[str, tuple[str, Challenge, float]] = {}  # check id → (worker, challenge, deadline)

    def plan(self, check_id: str, node: str, challenge: Challenge, due: float) -> None:
        """A check for `node`, to go out at `due` (or once a slot is free after that)."""
        self.planned[check_id] = (node, challenge, due)

    def due(self, now: float) -> list[str]:
        """The planned checks whose moment has come, in the order they were planned."""
        return [c for c, (_, _, due) in self.planned.items() if due <= now]

    def issue(self, check_id: str, deadline: float, now: float) -> tuple[str, Challenge]:
        """A planned check goes out `now`: it is outstanding until answered or `deadline`."""
        node, challenge, _ = self.planned.pop(check_id)
        challenge = dataclasses.replace(challenge, sent=now)
        self.out[check_id] = (node, challenge, deadline)
        return node, challenge

    def take(self, check_id: str, node: str) -> Challenge | None:
        """The challenge of an outstanding check answered by `node`, now closed; None if it is not one."""
        got = self.out.get(check_id)
        if got is None or got[0] != node:
            return None
        del self.out[check_id]
        return got[1]

    def withdraw(self, check_id: str) -> str | None:
        """Drop a check, planned or outstanding, unpunished (it never reached its worker, or its worker
        is gone); returns its worker, None if there was no such check."""
        got = self.planned.pop(check_id, None) or self.out.pop(check_id, None)
        return got[0] if got is not None else None

    def drop_node(self, node: str) -> list[str]:
        """A worker is gone: its checks, planned and outstanding, are dropped unpunished (their ids)."""
        gone = [c for c, (n, _, _) in (*self.planned.items(), *self.out.items()) if n == node]
        for c in gone:
            self.withdraw(c)
        return gone

    def expire(self, now: float) -> list[tuple[str, str]]:
        """Drop the outstanding checks past their deadline, unpunished (a worker may be slow or gone);
        returns (check id, worker), in the order the checks went out."""
        gone = [c for c, (_, _, deadline) in self.out.items() if deadline <= now]
        return [(c, self.out.pop(c)[0]) for c in gone]

    def held(self, now: float) -> frozenset[str]:
        """Workers with a check outstanding and not yet past its deadline: a step they agreed on waits for
        it. Pure: expired checks are dropped only by `expire` (the core's Alarm), which also wakes the
        steps they held — dropping them here, on any tick, left those steps waiting forever."""
        if not self.out:
            return frozenset()
        return frozenset(node for node, _, deadline in self.out.values() if deadline > now)

    def vouch(self, nodes: tuple[str, ...], job: str, step: str) -> None:
        """These workers agreed on an accepted answer: if one is caught cheating later, recheck it."""
        alone = len(nodes) == 1
        for node in nodes:
            held = self.vouched.setdefault(node, [])
            held.append((job, step, alone))
            if len(held) > VOUCHED:  # the oldest forgotten, as a full deque(maxlen=VOUCHED) would
                del held[0]

    def to_recheck(self, node: str) -> list[tuple[str, str]]:
        """The accepted steps a worker just caught cheating had vouched for (each returned once)."""
        return [(job, step) for job, step, _ in self.vouched.pop(node, ())]

    def to_recheck_alone(self, node: str, sample: int = 0) -> list[tuple[str, str]]:
        """The accepted steps a worker answered alone, nobody cross-checking it (each returned once; the
        steps it agreed on with others stay for `to_recheck`). `sample` > 0: only that many of them, drawn
        at random; the rest stay."""
        held = self.vouched.get(node)
        if not held:
            return []
        alone = [i for i, v in enumerate(held) if v[2]]
        if sample > 0 and len(alone) > sample:
            alone = sorted(self.rng.sample(alone, sample))
        picked = [held[i][:2] for i in alone]
        if alone:
            taken = set(alone)
            rest = [v for i, v in enumerate(held) if i not in taken]
            if rest:
                self.vouched[node] = rest
            else:  # nothing left of it: its entry goes too (an empty one told `ran_alone` no all the same)
                del self.vouched[node]
        return picked

    def remember(self, kind: str, params: dict, output: Any, step: str = "", timeout: float = 0.0,
                 compare: str = "exact", source: tuple[str, str] | None = None,
                 seen: tuple[str, ...] = (), prefixes: tuple[str, ...] = (), worth: float = 0.0) -> None:
        """An accepted answer becomes a known answer for later checks. Only kinds whose answer follows
        from their params (python; llm greedy on the same model) and exact or text comparison: a check
        judged by a looser rule than the worker could meet would punish honest workers."""
        if kind in REPLAYABLE and Comparator(compare).strict:
            challenge = Challenge(kind, params, output, step, timeout, compare, source, seen, prefixes, worth=worth)
            self.known.setdefault(kind, deque(maxlen=self.memory)).append(challenge)
            self.unchecked.setdefault(kind, deque(maxlen=UNCHECKED)).append(challenge)

    def forget(self, source: tuple[str, str]) -> None:
        """A recheck overturned this accepted answer: it is not known any more."""
        for kind, known in self.known.items():
            self.known[kind] = deque((c for c in known if c.source != source), maxlen=self.memory)
        for kind, waiting in self.unchecked.items():
            self.unchecked[kind] = deque((c for c in waiting if c.source != source), maxlen=UNCHECKED)

    def _unchecked(self, kind: str, ok: Callable[[Challenge], bool]) -> Challenge | None:
        """An accepted step of `kind` not replayed yet that `ok` allows, taken out (it is replayed once
        from here; later only if still among the recent `known`). A few random draws first, then a look
        through all of them, so a check costs little while most are allowed."""
        waiting = self.unchecked.get(kind)
        if not waiting:
            return None
        for _ in range(UNCHECKED_TRIES):
            i = self.rng.randrange(len(waiting))
            if ok(waiting[i]):
                break
        else:
            allowed = [j for j, c in enumerate(waiting) if ok(c)]
            if not allowed:
                return None
            i = allowed[self.rng.randrange(len(allowed))]
        picked = waiting[i]
        del waiting[i]
        return picked

    def challenge(self, kind: str, node: str, step: str, timeout: float, model: Any = None,
                  prefix: str = "") -> Challenge | None:
        """A check for `node` (on network `prefix`), just placed on a `kind` step (`step` its id, `model`
        its llm model), or None (not this time / nothing known). An earlier accepted step first,
        preferably one neither `node` nor anyone on its prefix was asked (a cheater that decides by the
        content, as colluders do, was honest on the steps its group helped accept); a synthetic python
        step only when no python step is known. Of the earlier ones, one never replayed first (_unchecked)."""
        if self.rate <= 0 or self.rng.random() >= self.rate:
            return None
        def unseen(c: Challenge) -> bool:  # neither `node` nor anyone on its prefix was asked it
            return node not in c.seen and prefix not in c.prefixes

        first = self._unchecked(kind, lambda c: c.params.get(MODEL_PARAM) == model and unseen(c))
        if first is not None:
            return first
        known = [c for c in self.known.get(kind, ()) if c.params.get(MODEL_PARAM) == model]
        fresh = [c for c in known if unseen(c)]
        pool = fresh or known
        if pool:
            return pool[self.rng.randrange(len(pool))]
        if kind == "python":
            return python_challenge(self.rng, step, timeout)
        return None

    def ban(self, node: str, now: float) -> None:
        """A worker that failed a check gets no work until now + blacklist_s."""
        for gone in [n for n, until in self.banned.items() if until <= now]:
            del self.banned[gone]  # bans that ran out, forgotten here so the map stays small
        self.banned[node] = now + self.blacklist_s

    def blacklisted(self, node: str, now: float) -> bool:
        """Whether `node` is banned at `now`. Pure (asking changes nothing), so a driver may ask outside
        the core's recorded inputs without a replay deciding differently."""
        until = self.banned.get(node)
        return until is not None and until > now
