"""Flow control, sans-I/O: token buckets that say how long a peer must be slowed, and the limits a
node holds every connection to. The gateway applies them; the simulator can too."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    msg_rate: float = 200.0  # envelopes per second, per connection
    msg_burst: float = 400.0
    byte_rate: float = 4 << 20  # bytes per second, per connection
    byte_burst: float = 8 << 20
    max_debt_s: float = 5.0  # a connection that would have to wait longer than this is dropped
    handshake_s: float = 5.0  # a verified envelope must arrive this soon after connecting
    # ... on a link whose transport already proved the peer's key (Noise): no stranger holds it, and on a
    # loaded machine (32 nodes on 2 cores) 5 s dropped ~1,200 libp2p links in one formation, each redialled
    handshake_authenticated_s: float = 20.0
    frame_s: float = 10.0  # a started frame must complete this soon
    idle_s: float = 60.0  # peers heartbeat every few seconds; silence this long ends the connection
    max_unverified: int = 64  # connections that have not yet shown a valid envelope
    max_connections: int = 512
    max_rejections: int = 20  # rejected envelopes on one connection before it is dropped
    # envelopes of its rate a frame refused unread (Refused: an ask over its sender's rate) costs its link, so a
    # flood of asks the node would drop is read at a tenth of the rate, and dropped past max_debt_s like any
    refused_cost: float = 10.0
    max_inflight_per_peer: int = 4  # steps one peer may have running here at once
    max_running: int = 16  # steps running here in all


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = now
        self.credit = 0.0  # what this end asked the peer to send (model parts): spent before the rate

    def grant(self, amount: float, cap: float) -> None:
        """Let `amount` more arrive without waiting: this end asked for it. The link's rate keeps a peer from
        costing this node more than it allows; what the node asked for it has already allowed (a model
        fetch ran at 3.2 MB/s, the rate, with the CPU idle). Held to `cap`: a peer asked often that sends
        nothing is not owed a flood later."""
        self.credit = min(cap, self.credit + amount)

    def take(self, amount: float, now: float) -> float:
        """Spend `amount`, the grant first; return the seconds the caller must wait to be back within the
        rate (0 when it is within it). Debt accumulates, so a sender that keeps pushing waits longer and longer."""
        if self.credit:
            used = min(self.credit, amount)
            self.credit -= used
            amount -= used
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class KeyedBuckets:
    """Token buckets by name, each by a rule (burst, then per second): a refusal costs nothing (no debt),
    and past MEMORY names the least recently used is forgotten first. Sans-I/O."""

    MEMORY = 4096

    def __init__(self) -> None:
        self.buckets: dict[object, list[float]] = {}  # name → [tokens, stamp], least recently used first

    def allows(self, name: object, rule: tuple[float, float], now: float) -> bool:
        """Whether `name` has a token under `rule` now, spending nothing (a screen asks this, the handler spends)."""
        return self.level(name, rule, now) >= 1

    def spend(self, name: object, rule: tuple[float, float], now: float) -> bool:
        """Whether `name` has a token under `rule` now; spends it if so."""
        if not self.allows(name, rule, now):
            return False
        self.buckets[name][0] -= 1
        return True

    def level(self, name: object, rule: tuple[float, float], now: float) -> float:
        """`name`'s tokens now (refilled since its last use; a new name starts full)."""
        burst, rate = rule
        bucket = self.buckets.pop(name, None) or [float(burst), now]
        bucket[0] = min(burst, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        self.buckets[name] = bucket  # re-inserted: the dict's order is least recently used first
        while len(self.buckets) > self.MEMORY:
            del self.buckets[next(iter(self.buckets))]
        return bucket[0]
