"""How often a node dials addresses that strangers named. A signed peer record proves that its key
wrote it, not that the key lives at the address it names: 32 hellos of fresh keys all naming one victim
made a node open 1,118 connections to it in 30 s (tests/security/test_gossip_weapon.py). So an address
is *proven* for a key only once that key answered there (our dial's Noise handshake reached it) or
connected in from that host; a proven (address, key) pair is dialled as its peer's backoff allows.
Any other dial spends from a budget (`Gate.admit`, every swarm dial passes it):

- an address that failed (no connect, a handshake refused or another key answering) waits, for any key
  that names it: BACKOFF_S, doubling to BACKOFF_MAX_S;
- a host where no key ever answered or connected in from gets one such dial per HOST_GAP_S, whatever
  port is named;
- all of them together: UNPROVEN_BURST at once, then UNPROVEN_RATE a second.

Sans-I/O, with the time passed in; one lock, since the libp2p thread dials and the node's loop tells
who connected in."""

from __future__ import annotations

import threading
from collections import OrderedDict

UNPROVEN_BURST = 64  # a new node links to a 32-node mesh and walks its DHT in one go
UNPROVEN_RATE = 1.0  # dials a second, after the burst
HOST_GAP_S = 5.0
BACKOFF_S, BACKOFF_MAX_S = 15.0, 3600.0
MEMORY = 4096  # pairs, hosts and failures remembered each (least recently used forgotten first)

Hop = tuple[str, str]  # (host, port) of an address's first hop


class _Lru(OrderedDict):
    def put(self, key, value=None) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > MEMORY:
            self.popitem(last=False)


class DialBudget:
    def __init__(self) -> None:
        self.proven: _Lru = _Lru()  # (hop, key) → None
        self.vouched: _Lru = _Lru()  # host → None: a peer connected in from it
        self.failures: _Lru = _Lru()  # hop → (failures in a row, not before)
        self.host_last: _Lru = _Lru()  # unvouched host → when it was last dialled unproven
        self.tokens, self.stamp = float(UNPROVEN_BURST), None
        self._lock = threading.Lock()

    def admit(self, hop: Hop, key: bytes, now: float, gap: bool = True) -> str:
        """'' when `key` may be dialled at `hop` now (and the dial is counted), else why not. `gap`:
        whether the host gap applies."""
        with self._lock:
            if (hop, key) in self.proven:
                return ""
            failed = self.failures.get(hop)
            if failed is not None and now < failed[1]:
                return "dial-backoff"
            host = hop[0]
            if gap and host not in self.vouched and now < self.host_last.get(host, -HOST_GAP_S) + HOST_GAP_S:
                return "dial-host-gap"
            if self.stamp is not None:
                self.tokens = min(UNPROVEN_BURST, self.tokens + (now - self.stamp) * UNPROVEN_RATE)
            self.stamp = now
            if self.tokens < 1:
                return "dial-budget"
            self.tokens -= 1
            if host not in self.vouched:
                self.host_last.put(host, now)
            return ""

    def succeeded(self, hop: Hop, key: bytes) -> None:
        """`key` answered at `hop`: proven, the address no longer failing, and its host one where peers
        live (a loopback mesh, or a LAN box running several nodes, is dialled without the host gap)."""
        with self._lock:
            self.proven.put((hop, key))
            self.failures.pop(hop, None)
            self.vouched.put(hop[0])

    def failed(self, hop: Hop, key: bytes, now: float) -> None:
        """A dial of `key` at `hop` failed. A proven pair stays proven (a laptop asleep at its address
        is still that key there: its peer's own backoff spaces the retries); any other makes the
        address wait before any key may be dialled there unproven again."""
        with self._lock:
            if (hop, key) not in self.proven:
                self._back_off(hop, now)

    def silent(self, hop: Hop, key: bytes, now: float) -> float:
        """The link to `key` at `hop` opened but never carried a valid hello: no longer proven, and the
        address backs off as after a failed connect (a peer that completes the handshake and says
        nothing was redialled every 20 s). Returns the seconds to wait: the link the handshake opened
        may still stand, and a stream on it passes no dial."""
        with self._lock:
            self.proven.pop((hop, key), None)
            return self._back_off(hop, now) - now

    def _back_off(self, hop: Hop, now: float) -> float:
        count = self.failures.get(hop, (0, 0.0))[0] + 1
        until = now + min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (count - 1))
        self.failures.put(hop, (count, until))
        return until

    def connected_in(self, host: str, hop: Hop | None, key: bytes) -> None:
        """`key` connected in from `host` with a valid hello: the host is vouched for, and the address
        its record names is proven when it lies on that host."""
        with self._lock:
            self.vouched.put(host)
            if hop is not None and hop[0] == host:
                self.proven.put((hop, key))
                self.failures.pop(hop, None)
