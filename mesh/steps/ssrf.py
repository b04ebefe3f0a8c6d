"""Which addresses a scrape may reach. Everything not globally routable is refused — loopback, private,
link-local (cloud metadata at 169.254.169.254 included), carrier-grade NAT, multicast, reserved, and the
IPv6 forms of each (IPv4-mapped too) — unless the operator allow-listed it with --scrape-allow. Checks
resolve first and judge every address a name resolves to; the egress proxy then connects to exactly
the address it judged, so a name cannot be re-resolved somewhere else in between (DNS rebinding)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from mesh.errors import ConfigError, StepFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METADATA_NAMES = {"metadata.google.internal", "metadata", "instance-data"}


class Refused(StepFailed):
    """A scrape target (first URL, redirect or sub-request) outside what this node may reach."""


SITE_LOCAL = ipaddress.ip_network("fec0::/10")


@dataclass(frozen=True)
class Allow:
    """The operator's --scrape-allow list: networks (CIDR or single address) and host names."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, items: list[str]) -> "Allow":
        nets, hosts = [], set()
        for item in items:
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                name = item.strip().lower().rstrip(".")
                if not name or "/" in name or " " in name:
                    raise ConfigError(f"--scrape-allow {item!r}: expected a CIDR, an address or a host name") from None
                hosts.add(name)
        return cls(tuple(nets), frozenset(hosts))

    def permits(self, host: str, ip: IPAddress) -> bool:
        return host in self.hosts or any(ip in n for n in self.networks if n.version == ip.version)


def why_refused(ip: IPAddress) -> str:
    """'' when a scrape may reach this address; otherwise what kind of address it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return why_refused(ip.ipv4_mapped)
    if isinstance(ip, ipaddress.IPv6Address) and ip.sixtofour is not None:  # 2002::/16 carries an IPv4 inside
        inner = why_refused(ip.sixtofour)
        if inner:
            return f"{ip} is a 6to4 address of another: {inner}"
    if ip in SITE_LOCAL:  # deprecated, but Python calls it global
        return f"{ip} is a site-local address"
    for test, name in ((ip.is_loopback, "a loopback"), (ip.is_link_local, "a link-local (cloud metadata)"),
                       (ip.is_private, "a private"), (ip.is_multicast, "a multicast"),
                       (ip.is_unspecified, "an unspecified"), (ip.is_reserved, "a reserved")):
        if test:
            return f"{ip} is {name} address"
    if not ip.is_global:
        return f"{ip} is not a globally routable address"
    return ""


def resolve(host: str, port: int, allow: Allow) -> IPAddress:
    """The address to connect to for host:port, or Refused. Blocking (getaddrinfo): call in a thread."""
    name = host.lower().rstrip(".")
    if name in METADATA_NAMES and name not in allow.hosts:
        raise Refused(f"refused: {host} is a cloud metadata name")
    try:
        infos = socket.getaddrinfo(name.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise StepFailed(f"cannot resolve {host}: {exc}") from None
    ips = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for ip in ips:  # every address the name has must be allowed, not just the first
        why = why_refused(ip)
        if why and not allow.permits(name, ip):
            raise Refused(f"refused: {host} resolves to {why} (allow it with --scrape-allow)")
    return ips[0]


def check_url(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) URL, or StepFailed for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StepFailed(f"refused: only http and https URLs can be scraped, got {url[:200]!r}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise StepFailed(f"refused: bad port in {url[:200]!r}") from None
    return parts.hostname, port
