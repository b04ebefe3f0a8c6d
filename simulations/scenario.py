"""Scenario files (TOML): the network, the jobs, the policy under test, churn and the adversaries. Parsed
strictly (unknown keys and wrong types are errors naming the field), then range-checked."""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from mesh.errors import Rejected, UserError
from mesh.userfiles import read_text
from mesh.wire.schema import parse

SCENARIOS = Path(__file__).parent / "scenarios"


MAX_SCENARIO = 1 << 20  # bytes of a scenario file (the built-in ones are a few KiB)


class ScenarioError(UserError):
    """A scenario file that cannot be run; the message names the file and the field."""


@dataclass
class NetworkSpec:
    nodes: int = 100
    submitters: int = 5  # honest nodes that submit the jobs
    submitters_work: bool = True  # and also work for the others, as every node of a real mesh does
    prefixes: int = 0  # distinct network prefixes among honest nodes; 0 → one each
    latency_ms: float = 30.0  # median one-way access latency of a node
    latency_sigma: float = 0.5  # lognormal spread of access latencies
    bandwidth_mbps: float = 50.0
    loss: float = 0.0  # probability a message is lost
    peer_sample: int = 32  # workers a submitter meets afresh for each job (new to it, or not)
    known_peers: int = 0  # and, of the workers it has a good record of, this many more (large meshes)
    partitions: list[PartitionSpec] = field(default_factory=list)


@dataclass
class PartitionSpec:
    start_s: float
    end_s: float
    fraction: float  # of the nodes, cut off from the rest during [start_s, end_s)


@dataclass
class JobSpec:
    rate_per_s: float = 5.0  # job arrivals (Poisson) across all submitters
    steps_min: int = 1
    steps_max: int = 1  # each job is a chain of steps_min..steps_max steps (python, or llm: llm_share)
    cost_s: float = 1.0  # mean CPU-seconds of a step on a speed-1 node (exponential)
    redundancy: int = 3
    quorum: str = "majority"
    adaptive: int = 0
    timeout_s: float = 120.0
    max_replicas: int = 0
    llm_share: float = 0.0  # of the steps, greedy llm steps (their truth: the honest greedy text)
    llm_compare: str = "exact"  # how llm steps are cross-checked: exact (every replica generates) | score


@dataclass
class PolicySpec:
    margin: bool = True  # a majority under dissent must outvote every dissenting answer (quorum.MARGIN_EXTRA)
    spot_rate: float = 0.0
    blacklist_s: float = 86400.0
    recheck: bool = True  # rerun what a caught cheater vouched for
    reputation: bool = True  # placement weighted by reputation (False: every worker counts as new, 0.5)
    shared: bool = True  # submitters exchange testimony (mesh.core.trust) and weigh it by verified work
    share_delay_s: float = 30.0  # how long a testimony takes to reach the others
    share_every_s: float = 30.0  # how often a submitter reads new testimony and re-weighs its issuers


@dataclass
class SpeedSpec:
    sigma: float = 0.5  # lognormal spread of node speeds (median 1)


@dataclass
class ChurnSpec:
    mean_uptime_s: float = 0.0  # 0 → nodes never leave
    mean_downtime_s: float = 300.0
    crash_fraction: float = 0.5  # of leaves that are crashes (work in hand lost) rather than goodbyes
    join_fraction: float = 0.0  # of workers that are not there at the start and join during the run
    join_window_s: float = 3600.0  # they join at uniformly random times within this window


@dataclass
class AdversarySpec:
    strategy: str  # random-wrong | colluding | on-off | sybil | check-aware | steering | trust-builder | side-channel | side-channel-all | evader | package.module:Class
    fraction: float
    rate: float = 1.0  # probability of cheating on an answer
    group: str = ""  # colluders sharing a group return the same wrong answer
    good_steps: int = 0  # on-off: answers given honestly before cheating starts
    prefixes: int = 0  # network prefixes the group's ids share; 0 → spread like honest nodes


@dataclass
class Scenario:
    name: str
    steps: int  # steps submitted; the run ends when every one has settled
    description: str = ""
    network: NetworkSpec = field(default_factory=NetworkSpec)
    jobs: JobSpec = field(default_factory=JobSpec)
    policy: PolicySpec = field(default_factory=PolicySpec)
    speed: SpeedSpec = field(default_factory=SpeedSpec)
    churn: ChurnSpec = field(default_factory=ChurnSpec)
    adversaries: list[AdversarySpec] = field(default_factory=list)

    def replace(self, **changes: object) -> Scenario:
        """A copy with `section.field` (or top-level) values changed, e.g. {'jobs.redundancy': 2}."""
        out = copy.deepcopy(self)
        for key, value in changes.items():
            section, _, name = key.rpartition(".")
            target = getattr(out, section, None) if section else out
            if target is None or not dataclasses.is_dataclass(target) or name not in {
                    f.name for f in dataclasses.fields(target)}:
                raise ScenarioError(f"no scenario setting {key!r} (e.g. jobs.redundancy, policy.spot_rate)")
            setattr(target, name, value)
        try:
            out = parse(Scenario, dataclasses.asdict(out), "scenario")  # types checked as in a file
        except Rejected as exc:
            raise ScenarioError(f"override: {exc.detail}") from None
        check(out, "override")
        return out


def resolve(name: str) -> Path:
    """A scenario path, or a name from simulations/scenarios/ (with or without .toml)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (SCENARIOS / name, SCENARIOS / f"{name}.toml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.toml")))
    raise ScenarioError(f"no scenario file {name!r} (built-in scenarios: {known})")


def load(name: str) -> tuple[Scenario, str]:
    """(scenario, its TOML text) from a path or a built-in name."""
    path = resolve(name)
    text = read_text(path, "scenario file", MAX_SCENARIO, ScenarioError)  # (a binary file raised a traceback)
    return parse_text(text, str(path)), text


def parse_text(text: str, source: str = "scenario") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(f"{source}: nested too deeply") from None
    try:
        scenario = parse(Scenario, data, "scenario")
    except Rejected as exc:
        raise ScenarioError(f"{source}: {exc.detail}") from None
    except RecursionError:
        raise ScenarioError(f"{source}: nested too deeply") from None
    check(scenario, source)
    return scenario


def _not_finite(value: object, at: str = "") -> str:
    """The first setting under `value` that is an infinite or NaN float ('' when none is)."""
    if isinstance(value, float):
        return "" if math.isfinite(value) else at or "a value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((bad for k, v in items if (bad := _not_finite(v, f"{at}.{k}" if at else str(k)))), "")


def check(s: Scenario, source: str) -> None:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ScenarioError(f"{source}: {what}")

    bad = _not_finite(dataclasses.asdict(s))
    need(not bad, f"{bad} must be a finite number")  # (inf divided by zero, or ran on without end)
    need(s.policy.share_every_s > 0, "policy.share_every_s must be > 0")  # (0 rescheduled itself forever)
    n = s.network
    need(1 <= s.steps <= 100_000_000, "steps must be from 1 to 100000000")
    need(1 <= n.submitters and n.nodes - n.submitters >= max(1, s.jobs.redundancy),
         "network.nodes must leave at least `jobs.redundancy` workers besides the submitters")
    need(n.nodes <= 2_000_000, "network.nodes must be at most 2000000")
    need(n.prefixes >= 0 and n.latency_ms >= 0 and n.latency_sigma >= 0 and n.bandwidth_mbps > 0,
         "network: prefixes, latency_ms and latency_sigma must be >= 0, bandwidth_mbps > 0")
    need(0 <= n.loss < 1 and n.peer_sample >= s.jobs.redundancy and n.known_peers >= 0, "network.loss must be in [0, 1) and "
         "network.peer_sample at least jobs.redundancy, network.known_peers at least 0")
    for p in n.partitions:
        need(0 <= p.start_s < p.end_s and 0 < p.fraction < 1, "a partition needs 0 <= start_s < end_s and "
             "0 < fraction < 1")
    j = s.jobs
    need(j.rate_per_s > 0 and j.cost_s > 0 and j.timeout_s > 0, "jobs: rate_per_s, cost_s and timeout_s must "
         "be > 0")
    need(1 <= j.steps_min <= j.steps_max <= 100, "jobs: need 1 <= steps_min <= steps_max <= 100")
    need(0 <= j.llm_share <= 1 and j.llm_compare in ("exact", "score"), "jobs: llm_share in [0, 1], llm_compare "
         "'exact' or 'score'")
    need(0 <= s.policy.spot_rate <= 1 and s.policy.blacklist_s >= 0, "policy: spot_rate in [0, 1], "
         "blacklist_s >= 0")
    need(s.speed.sigma >= 0, "speed.sigma must be >= 0")
    c = s.churn
    need(c.mean_uptime_s >= 0 and c.mean_downtime_s > 0 and 0 <= c.crash_fraction <= 1,
         "churn: mean_uptime_s >= 0, mean_downtime_s > 0, crash_fraction in [0, 1]")
    need(0 <= c.join_fraction < 1 and c.join_window_s > 0, "churn: join_fraction in [0, 1), join_window_s > 0")
    for a in s.adversaries:
        need(0 < a.fraction < 1 and 0 <= a.rate <= 1 and a.good_steps >= 0 and a.prefixes >= 0,
             f"adversary {a.strategy!r}: fraction in (0, 1), rate in [0, 1], good_steps and prefixes >= 0")
    need(sum(a.fraction for a in s.adversaries) < 1, "adversary fractions must add up to less than 1")
    from .adversaries import strategy_class  # names are checked here, so a bad one fails before the run

    for a in s.adversaries:
        try:
            strategy_class(a.strategy)
        except ValueError as exc:
            raise ScenarioError(f"{source}: {exc}") from None
    from mesh.core.dag import parse_job

    try:
        parse_job({"redundancy": j.redundancy, "quorum": j.quorum, "adaptive": j.adaptive,
                   "max_replicas": j.max_replicas, "timeout": j.timeout_s,
                   "steps": [{"id": "s", "kind": "python", "params": {"code": "x"}}]}, f"{source} [jobs]")
    except UserError as exc:
        raise ScenarioError(str(exc)) from None
