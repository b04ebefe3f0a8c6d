"""What a node knows of its peers: addresses, capabilities, liveness. Plain bookkeeping, no I/O."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .identity import node_id_of
from .messages import Hello


@dataclass
class Peer:
    key: bytes
    addr: str = ""
    kinds: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    sandbox: bool = False
    last_seen: float = 0.0
    state: str = "new"  # new | up | down | left
    conns: set = field(default_factory=set)
    next_dial: float = 0.0
    failures: int = 0

    @property
    def node(self) -> str:
        return node_id_of(self.key)

    @property
    def connected(self) -> bool:
        return any(c.open for c in self.conns)

    def update(self, hello: Hello, now: float) -> None:
        self.addr, self.kinds, self.models, self.sandbox = hello.listen, hello.kinds, hello.models, hello.sandbox
        self.last_seen, self.state, self.failures = now, "up", 0

    def capabilities(self, default_model: str) -> list[str]:
        """What this peer offers, in Step.needs terms."""
        caps = [k for k in self.kinds if k != "llm"]
        if "llm" in self.kinds:
            caps += [f"llm:{m}" for m in self.models] + (["llm:default"] if default_model in self.models else [])
        return caps


def prefix_of(addr: str) -> str:
    """Network prefix used to spread replicas: the /24 of an IPv4 address, the /48 of IPv6, else the host."""
    host = addr.rpartition(":")[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
