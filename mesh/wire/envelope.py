"""Signed envelopes and length-prefixed frames, sans-I/O (h11 style): bytes go in, typed envelopes or a
`Rejected` come out; no socket, no clock read (callers pass `now_ms`). The gateway and the simulator
drive the same objects.

Signed bytes = tag `homemesh/v1/<kind>` ‖ network id ‖ sender key ‖ recipient key ‖ seq ‖ timestamp ‖
SHA-256(canonical payload), each part fixed-size or length-prefixed so no two messages share bytes."""

from __future__ import annotations

import hashlib
import heapq
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from mesh import PROTOCOL_VERSION
from mesh.errors import Rejected
from mesh.wire.canonical import canonical, loads
from mesh.wire.identity import Identity, node_id_of, verify
from mesh.wire.messages import KINDS
from mesh.wire.schema import dump, parse

DEFAULT_FRAME_CAP = 1 << 20
DEFAULT_WINDOW_MS = 120_000
ANYONE = bytes(32)  # recipient of a first `hello`, before the dialler knows who listens
# Sequence numbers a receiver remembers per sender below the highest: a sender's frames on two links (a
# relayed one and the hole-punched one replacing it, or two links dialled at once) arrive out of order.
REORDER_KEEP = 32
# Replay windows are kept for two kinds of senders, each least recently heard forgotten first past its
# bound (each window ~3 KB; unbounded, a key-churning peer grew them without end). Peers (`promote`: the
# node took a hello or other work from them) up to MAX_SENDERS: whatever a forgotten peer stamped up to
# its newest envelope, but never past the moment it was forgotten, is refused from every sender not in
# memory. Strangers (every other key that signed something) up to MAX_STRANGERS: forgetting one raises
# nothing, since nothing a never-promoted key sent was acted on but a hello, which changes nothing twice.
# Before, one pool did both: fresh keys cost nothing to make, and 10,400 of them, each with one envelope
# stamped 115 s ahead, pushed every linked peer out and had every newcomer refused as a replay for two minutes.
MAX_SENDERS = 10_000
MAX_STRANGERS = 10_000
_HEADER = struct.Struct(">I")
_SEQ_TS = struct.Struct(">QQ")
_VERSION = str(PROTOCOL_VERSION).encode()
_ENVELOPE_KEYS = {"v", "kind", "net", "from", "to", "seq", "ts", "payload", "sig"}


def signed_bytes(kind: str, network: str, sender: bytes, recipient: bytes, seq: int, ts_ms: int,
                 payload: Any) -> bytes:
    return signed_bytes_of_hash(kind, network, sender, recipient, seq, ts_ms,
                                hashlib.sha256(canonical(payload)).digest())


def signed_bytes_of_hash(kind: str, network: str, sender: bytes, recipient: bytes, seq: int, ts_ms: int,
                         payload_sha256: bytes) -> bytes:
    """What is signed, given the SHA-256 of the canonical payload: lets a third party holding only the
    envelope's header fields, its signature and the payload check an answer (see mesh.wire.attest)."""
    return b"".join((signed_prefix(kind, network, sender), recipient, _SEQ_TS.pack(seq, ts_ms), payload_sha256))


def signed_prefix(kind: str, network: str, sender: bytes) -> bytes:
    """The signed bytes' first parts, the same for every envelope of one kind from one sender: a sealer
    builds them once per kind."""
    net = network.encode()
    return b"".join((b"homemesh/v1/", kind.encode(), b"\x00", bytes([len(net)]), net, sender))


@dataclass(frozen=True)
class Envelope:
    kind: str
    network: str
    sender: bytes
    recipient: bytes
    seq: int
    ts_ms: int
    payload: Any  # the typed dataclass of messages.KINDS[kind]
    sig: bytes = b""  # kept so an answer can be shown to others as signed (see mesh.wire.attest)
    payload_sha256: bytes = b""

    @property
    def sender_id(self) -> str:
        return node_id_of(self.sender)


class Sealer:
    """Signs outgoing envelopes. Sequence numbers are max(last + 1, microseconds since the epoch), so
    they keep rising across restarts without a file: a restart never reopens a replay window. A clock
    set back by more than a window (it ran ahead) numbers from the clock again: receivers refuse a number
    that far ahead of its stamp, and took none of those numbers while its stamps were ahead of their clocks."""

    def __init__(self, identity: Identity, network: str):
        self.identity = identity
        self.network = network
        self._last_seq = 0
        self._from = identity.public_key.hex()
        self._net_json = canonical(network)  # a network id is the operator's: escaped as JSON, once
        self._prefix: dict[str, tuple[bytes, bytes]] = {}  # kind → (signed-bytes prefix, JSON of the kind)

    def seal(self, kind: str, recipient: bytes, payload_obj: Any, now_ms: int) -> bytes:
        """Return the framed bytes of one envelope."""
        return self.seal_encoded(kind, recipient, self.encode(payload_obj), now_ms)

    @staticmethod
    def encode(payload_obj: Any) -> bytes:
        """A payload's canonical bytes: encode once, seal to many recipients (a hello each beat)."""
        return canonical(dump(payload_obj))

    def seal_encoded(self, kind: str, recipient: bytes, encoded: bytes, now_ms: int) -> bytes:
        """`seal` of a payload already `encode`d: hashed for the signature and spliced into the body."""
        seq = max(self._last_seq + 1, now_ms * 1000)
        if seq > (now_ms + DEFAULT_WINDOW_MS) * 1000:
            seq = now_ms * 1000
        self._last_seq = seq
        known = self._prefix.get(kind)
        if known is None:
            known = self._prefix[kind] = (signed_prefix(kind, self.network, self.identity.public_key), canonical(kind))
        prefix, kind_json = known
        sig = self.identity.sign(b"".join((prefix, recipient, _SEQ_TS.pack(seq, now_ms),
                                           hashlib.sha256(encoded).digest())))
        # canonical() of the envelope object, written out: its keys in sorted order, the strings that are
        # not hex (kind, network) escaped once; tests/wire/test_envelope.py holds the two byte-identical
        body = b"".join((b'{"from":"', self._from.encode(), b'","kind":', kind_json, b',"net":', self._net_json,
                         b',"payload":', encoded, b',"seq":', str(seq).encode(), b',"sig":"', sig.hex().encode(),
                         b'","to":"', recipient.hex().encode(), b'","ts":', str(now_ms).encode(),
                         b',"v":', _VERSION, b"}"))
        return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies; refuses a declared length over the cap before buffering."""

    def __init__(self, cap: int = DEFAULT_FRAME_CAP):
        self.cap = cap
        self._buf = bytearray()
        self.error: Rejected | None = None  # sticky: once framing is lost, nothing after it aligns

    def feed(self, data: bytes) -> list[bytes]:
        """Complete frame bodies in `data` (plus what was buffered). A header over the cap raises
        Rejected('frame-too-large'); frames that came before it are returned first and the error is
        kept in `error` (and raised by the next call)."""
        if self.error:
            raise self.error
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buf)
            if length > self.cap:
                self.error = Rejected("frame-too-large", f"{length} bytes > cap {self.cap}")
                if not out:
                    raise self.error
                break
            if len(self._buf) < _HEADER.size + length:
                break
            out.append(bytes(self._buf[_HEADER.size:_HEADER.size + length]))
            del self._buf[:_HEADER.size + length]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame: non-zero at EOF means a truncated frame."""
        return len(self._buf)


def _hexkey(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise Rejected("bad-envelope", f"{field} is not a 32-byte hex key")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise Rejected("bad-envelope", f"{field} is not hex") from None


def _decode(body: bytes) -> dict:
    """The envelope object of a frame, with exactly the envelope's fields."""
    try:
        obj = loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Rejected("bad-json", "frame is not UTF-8 JSON") from None
    if not isinstance(obj, dict) or set(obj) != _ENVELOPE_KEYS:
        raise Rejected("bad-envelope", "envelope fields are wrong")
    return obj


class WrongSender(Rejected):
    """A frame signed by a key other than the one its link carries (Receiver.receive's `expect`)."""

    def __init__(self, sender: bytes):
        super().__init__("wrong-sender", node_id_of(sender)[:12])
        self.sender = sender


class Refused(Rejected):
    """A frame refused before its signature was checked, by the receiver's caller (`screen`): the link's own
    key asks for more than the node answers (a manifest again and again). Counted by reason; not held against
    the link as a broken rule, since nothing was proven wrong."""


Screen = Callable[[str, Any], str]  # (kind, the payload as decoded) → why it is refused unread ('' : read it)


class _Seen:
    """The sequence numbers accepted from one sender, as an anti-replay window (IPsec's, RFC 4303
    3.4.3, by count): each seq above `floor` is taken once, every one at or below it is refused, and
    the floor rises as the window lets go of its lowest. DESIGN.md section 2 refused anything at or
    below the highest seq; with more than one link per peer that dropped honest frames: a step's result
    sent just before a newer hello on the other link was refused as a replay, and its replica waited
    out the job's timeout."""

    __slots__ = ("floor", "seqs", "heap", "newest_ts")

    def __init__(self, floor: int):
        self.floor = floor
        self.seqs: set[int] = set()
        self.heap: list[int] = []
        self.newest_ts = 0

    def fresh(self, seq: int) -> bool:
        return seq > self.floor and seq not in self.seqs

    def take(self, seq: int) -> None:
        self.seqs.add(seq)
        heapq.heappush(self.heap, seq)
        if len(self.heap) > REORDER_KEEP:
            self.floor = heapq.heappop(self.heap)
            self.seqs.discard(self.floor)


class Receiver:
    """Checks incoming frame bodies for one node: network, recipient, time window, signature, replay,
    schema. Every rejection is counted by reason in `rejected`."""

    def __init__(self, public_key: bytes, network: str, window_ms: int = DEFAULT_WINDOW_MS, floor_ms: int = 0):
        self.public_key = public_key
        self.network = network
        self.window_ms = window_ms
        # Envelopes stamped before this node (re)started are refused: the replay memory below is lost
        # with a restart, and anything captured earlier was necessarily stamped earlier.
        self.floor_ms = floor_ms
        self.highest_seq: dict[bytes, int] = {}  # per sender; a floor for senders not yet heard (restarts)
        self._seen: dict[bytes, _Seen] = {}  # peers' windows, least recently heard first (MAX_SENDERS)
        self._strangers: dict[bytes, _Seen] = {}  # every other sender's, the same way (MAX_STRANGERS)
        self.forgotten_ts = 0  # newest stamp of a forgotten peer's, at most when it was forgotten
        self.rejected: Counter[str] = Counter()

    def count(self, reason: str) -> None:
        self.rejected[reason] += 1

    def receive(self, body: bytes, now_ms: int, expect: bytes | None = None, screen: Screen | None = None) -> Envelope:
        """The checked envelope of a frame body; raises Rejected (counted by reason). `expect`: the only
        sender this link may carry (the key its handshake proved, or its first envelope's): another
        sender's frame raises WrongSender, uncounted (the link's owner broke the rules: the caller drops
        it), before anything of that sender's is remembered. `screen`, asked of a frame naming `expect` once
        its header checks and before the signature and payload are: a reason raises Refused (counted)."""
        try:
            return self._check(body, now_ms, expect, screen)
        except WrongSender:
            raise
        except Rejected as exc:
            self.count(exc.reason)
            raise

    def _check(self, body: bytes, now_ms: int, expect: bytes | None, screen: Screen | None = None) -> Envelope:
        """Every check, cheapest first: the frame's shape and header, then the screen, then the signature,
        then replay, then the payload's schema (so an unsigned flood costs a JSON decode, not an Ed25519 verify,
        and so does a signed one of asks the node would drop)."""
        obj = _decode(body)
        kind, sender, recipient, seq, ts = self._header(obj, now_ms)
        if screen is not None and sender == expect and (why := screen(kind, obj["payload"])):
            raise Refused(why, f"from {node_id_of(sender)[:12]}, before its signature was checked")
        sig, payload_sha256 = self._authenticate(obj, kind, sender, recipient, seq, ts)
        if expect is not None and sender != expect:
            raise WrongSender(sender)
        if ts < self.floor_ms:
            raise Rejected("replay", f"stamped {self.floor_ms - ts} ms before this node started")
        pool = self._seen if sender in self._seen else self._strangers
        seen = pool.get(sender)
        if seen is None:
            if ts <= self.forgotten_ts:
                raise Rejected("replay", "stamped before the newest envelope of a peer no longer in memory")
            seen = _Seen(self.highest_seq.get(sender, -1))
        if not seen.fresh(seq):
            raise Rejected("replay", f"seq {seq} from {node_id_of(sender)[:12]} already seen or too old")
        payload = parse(KINDS[kind], obj["payload"], kind)
        pool.pop(sender, None)
        pool[sender] = seen  # now the most recently heard
        seen.take(seq)
        seen.newest_ts = max(seen.newest_ts, ts)
        self.highest_seq[sender] = max(seq, self.highest_seq.get(sender, -1))
        self._bound(now_ms)
        return Envelope(kind, self.network, sender, recipient, seq, ts, payload, sig, payload_sha256)

    def promote(self, sender: bytes, now_ms: int) -> None:
        """The node took this sender as a peer (a hello it accepted, or work from a peer it holds): its
        window moves to the peers' pool, where flooding strangers cannot push it out."""
        window = self._strangers.pop(sender, None)
        if window is not None:
            self._seen[sender] = window
            self._bound(now_ms)

    def _bound(self, now_ms: int) -> None:
        """Forget the least recently heard past each pool's bound (see MAX_SENDERS)."""
        while len(self._strangers) > MAX_STRANGERS:  # (a sender is in one pool at most)
            old = next(iter(self._strangers))
            del self._strangers[old]
            self.highest_seq.pop(old, None)
        while len(self._seen) > MAX_SENDERS:
            old, window = next(iter(self._seen.items()))
            del self._seen[old]
            self.highest_seq.pop(old, None)
            # capped at now: stamps ahead of this node's clock, a sender's to choose, must not close the
            # door on everyone new until they pass
            self.forgotten_ts = max(self.forgotten_ts, min(window.newest_ts, now_ms))

    def _header(self, obj: dict, now_ms: int) -> tuple[str, bytes, bytes, int, int]:
        if type(obj["v"]) is not int or obj["v"] != PROTOCOL_VERSION:
            raise Rejected("bad-version", f"protocol version {obj['v']!r}, this node speaks {PROTOCOL_VERSION}")
        kind = obj["kind"]
        if not isinstance(kind, str) or kind not in KINDS:
            raise Rejected("unknown-kind", f"kind {str(kind)[:40]!r}")
        if obj["net"] != self.network:
            raise Rejected("wrong-network", f"network {str(obj['net'])[:40]!r}")
        sender = _hexkey(obj["from"], "from")
        recipient = _hexkey(obj["to"], "to")
        if recipient != self.public_key and not (kind == "hello" and recipient == ANYONE):
            raise Rejected("wrong-recipient", "envelope is for another node")
        seq, ts = obj["seq"], obj["ts"]
        for name, val in (("seq", seq), ("ts", ts)):
            if not isinstance(val, int) or isinstance(val, bool) or not 0 <= val < 2**63:
                raise Rejected("bad-envelope", f"{name} is not a non-negative integer")
        if ts < now_ms - self.window_ms:
            raise Rejected("stale", f"timestamp {now_ms - ts} ms old")
        if ts > now_ms + self.window_ms:
            raise Rejected("future", f"timestamp {ts - now_ms} ms ahead")
        if seq > (ts + self.window_ms) * 1000:  # (honest numbers follow the sender's clock: Sealer)
            raise Rejected("seq-ahead", f"seq {seq} is {seq // 1000 - ts} ms ahead of its own timestamp")
        return kind, sender, recipient, seq, ts

    def _authenticate(self, obj: dict, kind: str, sender: bytes, recipient: bytes, seq: int,
                      ts: int) -> tuple[bytes, bytes]:
        """(signature, payload hash) once the sender's signature over the header and payload checks."""
        try:
            sig = bytes.fromhex(obj["sig"]) if isinstance(obj["sig"], str) else b""
        except ValueError:
            sig = b""
        try:  # NaN, Infinity, 1e999 or deep nesting decode but have no canonical form to check
            payload_sha256 = hashlib.sha256(canonical(obj["payload"])).digest()
        except (ValueError, RecursionError):
            raise Rejected("bad-json", "payload has no canonical JSON form") from None
        message = signed_bytes_of_hash(kind, self.network, sender, recipient, seq, ts, payload_sha256)
        if not verify(sender, sig, message):
            raise Rejected("bad-signature", f"from {node_id_of(sender)[:12]}")
        return sig, payload_sha256
