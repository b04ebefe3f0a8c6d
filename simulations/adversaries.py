"""Worker behaviours, pluggable: a strategy maps the right answer of a step to the answer it returns,
seeing everything a real worker sees of the request (a `Request`: sender, job and step ids, kind, params,
deadline, when it arrived, whether a relay carried it) and what a real worker learns afterwards (whether
the submitter paid for the answer: `settled`), and gives its verdict on another worker's llm claim when
asked to score one (compare 'score'). Name one in a scenario, or give `package.module:Class` for your own
subclass of Strategy."""

from __future__ import annotations

import importlib
import random
import re
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.core.trust import Testimony
from mesh.wire.canonical import canonical

from .scoring import accepts, steered


@dataclass(frozen=True)
class Request:
    """One request as it reaches a worker: everything a real node's worker side can read of it. `deadline`
    is when the submitter stops waiting (a real request carries its timeout); `relayed` is whether it came
    through a relay (the simulated network has no relays, so always False there)."""

    src: str  # the submitter
    job: str
    step: str
    kind: str  # a step kind, or "score" (verify params["claim"])
    params: Mapping[str, Any] = field(default_factory=dict)
    deadline: float = 0.0
    arrived: float = 0.0
    relayed: bool = False


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

    def arrived(self, req: Request) -> None:
        """A request came in (before it waits for the worker's slot): a strategy may note it."""

    def respond(self, req: Request, truth: Any, now: float) -> Any:
        """The answer to one request at `now`, seeing all a real worker sees of it; most strategies look
        at the right answer only."""
        return self.answer(truth)

    def verify(self, req: Request, truth: Any, now: float) -> dict:
        """The verdict on the claim in req.params["claim"] (a 'score' request), `truth` being the step's
        honest greedy output: honest scoring accepts exactly what lies in the rule's acceptance region."""
        return {"accepted": accepts(truth, req.params.get("claim"))}

    def settled(self, job: str, step: str, paid: bool, now: float) -> None:
        """The submitter decided on this worker's answer: `paid` is what a real worker learns from the
        receipt (or its absence) — an outvoted answer and a failed spot check both earn nothing."""

    def testimony(self, me: str, now_ms: int) -> list[Testimony]:
        """What this node publishes as testimony every so often (the run posts it where submitters read
        testimony, signed by `me` as a real node's would be). Honest workers that submit nothing say
        nothing; a submitter's own ledger testifies for it (simulations.driver.SimLedger)."""
        return []


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


class Vouching(Sybil):
    """The sybil operator with a voice: every id also publishes testimony, as any node may. It vouches for
    every fellow id (a long run of agreements, never a wrong answer) and accuses every honest worker it has
    on the mesh of a wrong answer just now — to lift its own ids to running steps alone and to make the
    honest ones replicated and rechecked. `members` (the group's ids) and `others` (every other id) are
    handed in by the run: the operator knows its ids, and the DHT lists everyone's."""

    name = "vouching"
    RUN = 500  # the run of validated results it claims for each fellow id

    def __init__(self, rng: random.Random, rate: float = 1.0, group: str = "", good_steps: int = 0):
        super().__init__(rng, rate, group, good_steps)
        self.members: list[str] = []  # replaced by the group's shared list
        self.others: list[str] = []  # replaced by the run's list of every other id

    def testimony(self, me: str, now_ms: int) -> list[Testimony]:
        out = [Testimony(me, m, float(self.RUN), 0.0, self.RUN, 1, 0, now_ms) for m in self.members if m != me]
        out += [Testimony(me, w, 0.0, 20.0, 0, 0, now_ms, now_ms) for w in self.others]
        return out


class OnOff(RandomWrong):
    """Behaves for `good_steps` answers (building a reputation and a streak), then cheats."""

    name = "on-off"

    def answer(self, truth: Any) -> Any:
        if self.answered < self.good_steps:
            self.answered += 1
            return truth
        return super().answer(truth)


class TrustBuilder(Strategy):
    """Earns trust with each submitter separately, then spends it: answers a submitter's first
    `good_steps` requests right (enough, by the adaptive rule it knows, to be trusted to run alone), and
    after that cheats on that submitter's requests with probability `rate`."""

    name = "trust-builder"
    adversary = True

    def __init__(self, rng: random.Random, rate: float = 1.0, group: str = "", good_steps: int = 0):
        super().__init__(rng, rate, group, good_steps)
        self.served: dict[str, int] = {}  # submitter → requests answered for it

    def respond(self, req: Request, truth: Any, now: float) -> Any:
        self.answered += 1
        n = self.served[req.src] = self.served.get(req.src, 0) + 1
        if n > self.good_steps and self.rng.random() < self.rate:
            return ["wrong", self.rng.getrandbits(48)]
        return truth


class SideChannel(Strategy):
    """Colluders with a side channel: each member reports every request it gets to the group (`channel`,
    handed in by the run); a member cheats — with the group's one wrong answer — only on a step that
    another member holds too, so they agree with each other and are never alone in a wrong answer.
    Alone, or on a spot check (sent to one worker), they answer right."""

    name = "side-channel"
    adversary = True
    KEEP = 100_000  # requests remembered by the channel (the oldest forgotten first)
    HOLD = 2  # members that must hold a step before they cheat on it

    def __init__(self, rng: random.Random, rate: float = 1.0, group: str = "", good_steps: int = 0):
        super().__init__(rng, rate, group, good_steps)
        self.channel: dict[tuple[str, str, str], int] = {}  # replaced by the group's shared one

    def arrived(self, req: Request) -> None:
        key = (req.src, req.job, req.step)
        self.channel[key] = self.channel.pop(key, 0) + 1
        if len(self.channel) > self.KEEP:
            del self.channel[next(iter(self.channel))]

    def respond(self, req: Request, truth: Any, now: float) -> Any:
        self.answered += 1
        if self.channel.get((req.src, req.job, req.step), 0) >= self.HOLD and \
                zlib.crc32(canonical([self.group, truth])) / 2**32 < self.rate:
            return ["collude", self.group, zlib.crc32(canonical([self.group, truth]))]
        return truth


class WholeTable(SideChannel):
    """Side-channel colluders that cheat only where three members hold a step: every seat of a step placed
    at r=3 is theirs, so nobody dissents and they are never outvoted together (a bloc). Caught only when
    a wrong answer they agreed on is replayed to an honest worker as a spot check and rechecked."""

    name = "side-channel-all"
    HOLD = 3


class CheckAware(Strategy):
    """Answers right what it takes for a spot check and wrong everything else (with probability `rate`),
    from every cue a real worker sees: a job id starting `spot-`, the step id `check`, the one code
    template checks used to have, a python step whose code it never saw in real work after a warm-up of
    `good_steps` requests, or a request that came right after another from the same submitter (checks
    used to ride with a replica). `caught_by` counts the cues that fired."""

    name = "check-aware"
    adversary = True
    RIGHT_AFTER_S = 0.05  # two requests from one submitter this close: the second "is a check"
    OLD_TEMPLATE = re.compile(r"a, b, c = \d+, \d+, \d+\noutput = ")

    def __init__(self, rng: random.Random, rate: float = 1.0, group: str = "", good_steps: int = 0):
        super().__init__(rng, rate, group, good_steps)
        self.last: dict[str, float] = {}  # submitter → when its latest request came
        self.close: set[tuple[str, str]] = set()  # (job, step) that came right after another from its sender
        self.codes: set[str] = set()  # code of requests it took for real work
        self.cues: dict[str, int] = {}  # cue → requests it flagged

    def arrived(self, req: Request) -> None:
        last = self.last.get(req.src)
        if last is not None and req.arrived - last < self.RIGHT_AFTER_S:
            self.close.add((req.job, req.step))
        self.last[req.src] = req.arrived

    def cue(self, job: str, step: str, params: Mapping[str, Any]) -> str:
        """Why this request looks like a check ('' when it looks real)."""
        code = str(params.get("code", ""))
        if job.startswith("spot-"):
            return "job id prefix"
        if step == "check":
            return "step id"
        if self.OLD_TEMPLATE.match(code):
            return "code template"
        if (job, step) in self.close:
            return "right after a replica"
        if self.answered >= self.good_steps and code not in self.codes:
            return "unseen code"
        return ""

    def respond(self, req: Request, truth: Any, now: float) -> Any:
        why = self.cue(req.job, req.step, req.params)
        self.answered += 1
        self.close.discard((req.job, req.step))
        if why:
            self.cues[why] = self.cues.get(why, 0) + 1
            return truth
        self.codes.add(str(req.params.get("code", "")))
        if self.rng.random() < self.rate:
            return ["wrong", self.rng.getrandbits(48)]
        return truth


class Steering(Strategy):
    """A generator that steers greedy llm answers (bench/llm_steer.py): on an llm step (a request with a
    prompt; a worker cannot tell whether its claim will be scored or compared with other generations) it
    returns a steered claim, a wrong answer of near-ties inside the scoring rule's margin and off-top
    budget, when its group steers that step: with probability `rate`, chosen by the step's content as
    colluders choose, so every member steers the same steps to the same text. Python steps it answers
    right. As a verifier it answers honestly: its group's steered claims lie inside the region every
    honest scorer accepts anyway, and refusing an honest claim would only send the step back to
    generating, where steered answers are outvoted, and book the refusal as disagreeing."""

    name = "steering"
    adversary = True

    def __init__(self, rng: random.Random, rate: float = 1.0, group: str = "", good_steps: int = 0):
        super().__init__(rng, rate, group, good_steps)
        self.steered = 0  # claims it steered

    def respond(self, req: Request, truth: Any, now: float) -> Any:
        self.answered += 1
        if "prompt" in req.params and zlib.crc32(canonical([self.group, truth])) / 2**32 < self.rate:
            self.steered += 1
            return steered(truth, self.group)
        return truth


class Evader(Strategy):
    """A spot-check evader that learns from what it is paid: after `good_steps` honest answers it cheats
    (with probability `rate`) only on requests unlike those it was caught on. A request is reduced to what a
    real worker can read of it — kind, submitter, the params' keys and code length (to 64 bytes), the time
    it is given (deadline − arrival, to the second), whether a relay carried it — and a cheat the submitter
    did not pay for marks those features as a check's: any later request with them is answered right.
    `spared` counts such requests. Against checks that replay real steps exactly, the features of a check
    are those of work, so what it learns mostly stops it cheating at all."""

    name = "evader"
    adversary = True
    KEEP = 4096  # cheats awaiting their verdict, and caught features, remembered (the oldest forgotten first)

    def __init__(self, rng: random.Random, rate: float = 1.0, group: str = "", good_steps: int = 0):
        super().__init__(rng, rate, group, good_steps)
        self.pending: OrderedDict[tuple[str, str], tuple] = OrderedDict()  # (job, step) cheated → its features
        self.caught: OrderedDict[tuple, None] = OrderedDict()  # features of cheats that were not paid
        self.spared = 0

    @staticmethod
    def features(req: Request) -> tuple:
        code = str(req.params.get("code", ""))
        return (req.kind, req.src, tuple(sorted(req.params)), len(code) // 64,
                round(req.deadline - req.arrived), req.relayed)

    def respond(self, req: Request, truth: Any, now: float) -> Any:
        self.answered += 1
        if self.answered <= self.good_steps:
            return truth
        f = self.features(req)
        if f in self.caught:
            self.spared += 1
            return truth
        if self.rng.random() >= self.rate:
            return truth
        self.pending[(req.job, req.step)] = f
        if len(self.pending) > self.KEEP:
            self.pending.popitem(last=False)
        return ["wrong", self.rng.getrandbits(48)]

    def settled(self, job: str, step: str, paid: bool, now: float) -> None:
        f = self.pending.pop((job, step), None)
        if f is not None and not paid:
            self.caught[f] = None
            if len(self.caught) > self.KEEP:
                self.caught.popitem(last=False)


class QuietLoner(Strategy):
    """A patient lone cheater (found by this project's red team, 2026-12-06). It cheats only on a request
    that comes after a quiet gap of more than GAP_S from its submitter with nothing of that submitter's in
    hand (a spot check went out within 30 s of a replica placed on the worker, so such a request was never
    one; half the checks now wait up to Config.check_tail_s, 30 min, so some are), once its own run of paid answers there reaches `good_steps` (proven: it takes the first seat and
    runs most steps alone), with probability `rate` — and then not again there until SPACING more answers
    were paid (a worker caught has only its last VOUCHED agreed steps rerun). All of it is what a worker
    sees: arrival times, who sent each request, and whether it was paid."""

    name = "quiet-loner"
    adversary = True
    GAP_S = 31.0
    SPACING = 300

    def __init__(self, rng: random.Random, rate: float = 1.0, group: str = "", good_steps: int = 0):
        super().__init__(rng, rate, group, good_steps)
        self.last: dict[str, float] = {}  # submitter → its latest request's arrival
        self.in_hand: dict[str, int] = {}  # submitter → its requests arrived and not yet answered
        self.quiet: set[tuple[str, str]] = set()  # requests that came after a quiet gap
        self.src: dict[tuple[str, str], str] = {}  # (job, step) → its submitter, until settled
        self.run: dict[str, int] = {}  # submitter → answers paid in a row there
        self.since: dict[str, int] = {}  # submitter → answers paid there since the last cheat

    def arrived(self, req: Request) -> None:
        last = self.last.get(req.src)
        if (last is None or req.arrived - last > self.GAP_S) and not self.in_hand.get(req.src):
            self.quiet.add((req.job, req.step))
        self.last[req.src] = req.arrived
        self.in_hand[req.src] = self.in_hand.get(req.src, 0) + 1
        self.src[(req.job, req.step)] = req.src

    def respond(self, req: Request, truth: Any, now: float) -> Any:
        self.answered += 1
        self.in_hand[req.src] = max(0, self.in_hand.get(req.src, 0) - 1)
        quiet = (req.job, req.step) in self.quiet
        self.quiet.discard((req.job, req.step))
        if quiet and self.run.get(req.src, 0) >= self.good_steps and \
                self.since.get(req.src, self.SPACING) >= self.SPACING and self.rng.random() < self.rate:
            self.since[req.src] = 0
            return ["wrong", self.rng.getrandbits(48)]
        return truth

    def settled(self, job: str, step: str, paid: bool, now: float) -> None:
        src = self.src.pop((job, step), None)
        if src is None:
            return
        if paid:
            self.run[src] = self.run.get(src, 0) + 1
            if src in self.since:
                self.since[src] += 1
        else:
            self.run[src] = 0


class HonestVoucher(QuietLoner, Vouching):
    """A ring of separate machines that work honestly, so each did real, verified work for every submitter
    and is a trusted teller, and that testify: a run of RUN begun just now for every fellow, a wrong answer
    just now for every other id (found by this project's red team: with 20% of the ids it took 97% of the
    credit). Answers as QuietLoner (with rate 0: always right)."""

    name = "honest-voucher"
    RUN = 1000

    def testimony(self, me: str, now_ms: int) -> list[Testimony]:
        out = [Testimony(me, m, float(self.RUN), 0.0, self.RUN, now_ms, 0, now_ms) for m in self.members if m != me]
        out += [Testimony(me, w, 0.0, 20.0, 0, 0, now_ms, now_ms) for w in self.others]
        return out


class GreedyLoner(QuietLoner):
    """QuietLoner without its patience (red team, 2026-12-06): cheats on every request that comes after a
    quiet gap of more than GAP_S from its submitter with nothing of that submitter's in hand, once proven
    there (`good_steps` paid in a row). A spot check went out within CHECK_SPREAD_S of a placement on the
    worker (mesh/core/submission.py _plan_check), so such a request was never one (half now wait longer);
    it is caught when the step was an audit (probability ~1/run) or a check, and then its last VOUCHED
    answers there are rerun."""

    name = "greedy-loner"
    SPACING = 0


class RingLoner(QuietLoner, SideChannel):
    """Greedy quiet loners that share, over a side channel, every request they get: a quiet request that
    another member holds too is an audit (two seats, both ours): answered right. A quiet one that no other
    member holds is alone or an audit with an honest worker: cheated on as GreedyLoner does."""

    name = "ring-loner"
    SPACING = 0

    def arrived(self, req: Request) -> None:
        QuietLoner.arrived(self, req)
        SideChannel.arrived(self, req)

    def respond(self, req: Request, truth: Any, now: float) -> Any:
        if self.channel.get((req.src, req.job, req.step), 0) >= 2:
            self.answered += 1
            self.in_hand[req.src] = max(0, self.in_hand.get(req.src, 0) - 1)
            self.quiet.discard((req.job, req.step))
            return truth
        return QuietLoner.respond(self, req, truth, now)


class LendingRing(HonestVoucher):
    """Separate machines that work honestly and only lend each other runs (no slander): each publishes, for
    every fellow, a run of RUN validated results begun just now — two trusted issuers on two prefixes
    confirm a run (mesh/core/trust.py standing), so each member is proven everywhere, takes the first seat
    and runs steps alone. With rate 0 it never cheats (it measures the credit lending earns); with rate 1
    it cheats as GreedyLoner does, and every member caught is proven again after LEND_RUN agreements."""

    name = "lending-ring"
    SPACING = 0

    def testimony(self, me: str, now_ms: int) -> list[Testimony]:
        return [Testimony(me, m, float(self.RUN), 0.0, self.RUN, now_ms, 0, now_ms) for m in self.members if m != me]


class FreshParams(SideChannel):
    """Cheats (with probability `rate`, after `good_steps` answers) only on requests whose params no member of
    its ring has seen before: a spot check replays an earlier accepted step's params exactly, so a check of
    a step any member was asked is recognised. The ring shares the digests of every request's params."""

    name = "fresh-params"
    KEEP = 1_000_000

    def arrived(self, req: Request) -> None:
        key = ("params", canonical(dict(req.params)))
        self.channel[key] = self.channel.get(key, 0) + 1
        if len(self.channel) > self.KEEP:
            del self.channel[next(iter(self.channel))]

    def respond(self, req: Request, truth: Any, now: float) -> Any:
        self.answered += 1
        seen = self.channel.get(("params", canonical(dict(req.params))), 0)
        if self.answered > self.good_steps and seen <= 1 and self.rng.random() < self.rate:
            return ["wrong", self.rng.getrandbits(48)]
        return truth


class PatientLendingLoner(LendingRing):
    """LendingRing members cheating at QuietLoner's pace (one cheat per SPACING answers paid at a submitter):
    lent runs keep every member proven, so it takes the first seat and runs alone wherever it goes."""

    name = "patient-lending-loner"
    SPACING = 300


BUILTIN: dict[str, type[Strategy]] = {c.name: c for c in (Strategy, RandomWrong, Colluding, Sybil, OnOff,
                                                           CheckAware, Steering, TrustBuilder, SideChannel,
                                                           WholeTable, Vouching, Evader, QuietLoner,
                                                           HonestVoucher, GreedyLoner, RingLoner, LendingRing,
                                                           FreshParams, PatientLendingLoner)}


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
