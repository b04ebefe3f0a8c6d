"""Signed peer records: what a node says about itself (address, capabilities, protocol version), signed
with its own key so that gossip can carry it through untrusted peers without letting them change it."""

from __future__ import annotations

import dataclasses
import math
import re

from mesh import PROTOCOL_VERSION
from mesh.wire.canonical import canonical
from mesh.wire.identity import Identity, verify
from mesh.wire.idwork import required_bits, work_bits
from mesh.wire.messages import Offer, PeerRecord, RateCard, sha256_hex

RECORD_TTL_MS = 30 * 60_000  # re-issued every 10 min; the DHT re-announces every 7.5 min (each round is
# ~5 DHT walks a node: every 150 s, as with 10 min, they kept a 32-node mesh on 2 cores busy)
MAX_LIFETIME_MS = 2 * RECORD_TTL_MS  # a record valid longer is refused: a stolen or lying one lives an hour
MAX_AHEAD_MS = 120_000  # a record issued further in the future than the envelope window is refused
MAX_ALT = 2  # addresses beyond `addr`: a node behind NAT holds up to three relay slots
MAX_ADDR = 300  # characters
MAX_RATE = 1e6  # credits per unit of work: a rate card above this is refused
MAX_FETCH_MODELS = 1 << 40  # bytes: an allowance above a terabyte is refused as nonsense
MAX_STEPS = 1024  # an offer of more steps at once than this is refused as nonsense
MAX_MEMORY = 1 << 50  # bytes
DEFAULT_RATES = RateCard()
DEFAULT_OFFER = Offer()
_TAG = b"homemesh/v1/record\x00"


def record_bytes(network: str, rec: PeerRecord) -> bytes:
    body = {k: v for k, v in dataclasses.asdict(rec).items() if k != "sig"}
    return _TAG + network.encode() + b"\x00" + canonical(body)


def next_issued(last: int | None, now: int) -> int | None:
    """When a node's next own record is issued, or None while the last (issued at `last`) still serves: a
    third of its lifetime on, and always newer than the last, unless the last was issued further ahead
    than any peer takes (MAX_AHEAD_MS: a clock that jumped forward and was set back). Newer than that one
    always, a node whose clock jumped 10 minutes ahead and back had every hello refused for 7 minutes more
    (found by this project's attack round on sleep and clocks, 2026-12-06); no peer holds such a record, so
    one issued now is newer than any they do."""
    if last is not None and last > now + MAX_AHEAD_MS:
        return now
    if last is not None and last + RECORD_TTL_MS // 3 >= now:
        return None
    return now if last is None else max(now, last + 1)


def make_record(identity: Identity, network: str, addr: str, kinds: list[str], models: list[str], sandbox: bool,
                now_ms: int, ttl_ms: int = RECORD_TTL_MS, alt: list[str] = (), rates: RateCard = DEFAULT_RATES,
                fetch_models: int = 0, offer: Offer = DEFAULT_OFFER) -> PeerRecord:
    rec = PeerRecord(identity.public_key.hex(), addr, list(kinds), list(models), sandbox, PROTOCOL_VERSION,
                     now_ms, now_ms + ttl_ms, "", list(alt), rates, identity.work, fetch_models, offer)
    rec.sig = identity.sign(record_bytes(network, rec)).hex()
    return rec


def check_record(rec: PeerRecord, network: str, now_ms: int) -> str:
    """'' when the record can be used, else the rejection reason (a counter key). The signature is
    checked last: it is the one costly check, and a flood of records stale, over-long, badly formed or
    of ids without their work should cost the receiver nothing but a comparison or one hash each."""
    try:
        key, sig = bytes.fromhex(rec.key), bytes.fromhex(rec.sig)
    except ValueError:
        return "bad-record"
    if len(key) != 32:
        return "bad-record"
    if work_bits(key, rec.work) < required_bits():
        return "weak-id"
    if rec.version != PROTOCOL_VERSION:
        return "bad-version"
    if rec.expires <= now_ms:
        return "expired-record"
    if rec.issued > now_ms + MAX_AHEAD_MS or rec.expires - rec.issued > MAX_LIFETIME_MS:
        return "bad-record"
    if len(rec.alt) > MAX_ALT or not all(_address(a) for a in (rec.addr, *rec.alt)) or not _names(rec):
        return "bad-record"
    if not 0 <= rec.fetch_models <= MAX_FETCH_MODELS:
        return "bad-record"
    if card_problem(rec.rates):
        return "bad-rates"
    if offer_problem(rec.offer):
        return "bad-offer"
    if not verify(key, sig, record_bytes(network, rec)):
        return "bad-record"
    return ""


def card_problem(card: RateCard) -> str:
    """'' when every rate is a finite number in (0, MAX_RATE], else what is wrong."""
    for f in dataclasses.fields(card):
        value = getattr(card, f.name)
        if not (isinstance(value, float) and math.isfinite(value) and 0 < value <= MAX_RATE):
            return f"rate {f.name} must be above 0 and at most {MAX_RATE:g}"
    return ""


def offer_problem(offer: Offer) -> str:
    """'' when an owner's limits make sense (a step slot at least, one requester's share within all of
    them, a CPU share in [0, 1]), else what is wrong: a record claiming otherwise would mislead placement."""
    if not 1 <= offer.steps <= MAX_STEPS:
        return f"steps must be 1 to {MAX_STEPS}"
    if not 1 <= offer.per_peer <= offer.steps:
        return "per_peer must be 1 to steps"
    if not 0 <= offer.memory <= MAX_MEMORY:
        return "memory out of range"
    if not (math.isfinite(offer.cpu) and 0 <= offer.cpu <= 1):
        return "cpu must be a share in [0, 1]"
    return ""


def _address(addr: str) -> bool:
    return len(addr) <= MAX_ADDR and (_hostport(addr) or _multiaddr(addr))


_HOST = re.compile(r"[0-9A-Za-z.:\[\]-]{1,253}")  # a name or an address: what people read in logs and status
_KIND = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")  # a step kind's name (python, ask-model, ...)


def _hostport(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    # (ASCII digits: str.isdigit() takes '²', which int() refuses; raised here, before the signature, a hello
    # carrying such a record ended its link with a traceback, uncounted: found 2026-12-06)
    return _HOST.fullmatch(host) is not None and port.isascii() and port.isdigit() and 0 < int(port) < 65536


def _names(rec: PeerRecord) -> bool:
    """Kinds are names and models SHA-256 digests: nothing else (a newline, an ESC) for logs to carry."""
    return all(_KIND.fullmatch(k) for k in rec.kinds) and all(sha256_hex(m) for m in rec.models)


_MULTIADDR = re.compile(r"/(ip4|ip6|dns|dns4|dns6)/[0-9A-Za-z.:-]{1,253}/tcp/\d{1,5}(/p2p/[1-9A-HJ-NP-Za-km-z]{30,60})?"
                        r"(/p2p-circuit/p2p/[1-9A-HJ-NP-Za-km-z]{30,60})?")


def _multiaddr(addr: str) -> bool:
    """The shape of a TCP multiaddr, maybe through one relay (the node parses it fully before dialling)."""
    return _MULTIADDR.fullmatch(addr) is not None
