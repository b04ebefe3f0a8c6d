"""Fetching a model file from peers, sans-I/O (h11 style): events in (a manifest, a part, a peer lost, the
whole file's hash), effects out (ask, write, check, penalise, finish). The node's driver
(mesh.node.modelshare) sends and writes; tests join a fetch to honest and lying servers directly.

Why this shape: the job names a model by the SHA-256 of its whole file, which says nothing about a part
until every byte is in. So the first source sends a manifest (the SHA-256 of each MODEL_PART-byte part),
each part is checked against it as it comes (a source whose part does not match its own manifest is
caught at once, penalised, and dropped), and the whole file is checked against the job's SHA-256 at the
end (a source whose manifest described another file is caught then: every part it vouched for is
thrown away). Parts are fetched from one source at a time, WINDOW in flight; a source that fails (gone,
timed out, refuses) hands over to the next, which must send the same manifest for the parts already in
to be kept. A source that went quiet (its asks or its answers lost with a dropped link, a sleep) after
sending parts, at the least rate until then as the driver judges it, is asked again once the others were
tried: a fetch from one source survives links that drop. A fetch resumes from the parts a crashed one had
written and checked."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from mesh.wire.messages import MODEL_PART, ModelManifest

WINDOW = 4  # parts asked for at once from the source


@dataclass(frozen=True)
class AskManifest:
    peer: str


@dataclass(frozen=True)
class AskPart:
    peer: str
    part: int


@dataclass(frozen=True)
class WritePart:
    part: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class Restart:
    """Every part written so far is void (they came under a manifest now proven or suspected false)."""


@dataclass(frozen=True)
class CheckFile:
    """Every part is in: hash the whole file (`size` bytes) and report it with on_checked."""

    size: int


@dataclass(frozen=True)
class Penalise:
    peer: str
    reason: str


@dataclass(frozen=True)
class Finished:
    ok: bool
    why: str = ""


Effect = AskManifest | AskPart | WritePart | Restart | CheckFile | Penalise | Finished


@dataclass
class ModelFetch:
    """One model being fetched. `sources`: peers that advertise it, best first. `manifest` and `have`:
    what a fetch interrupted earlier had (its manifest and the parts it wrote, checked again by the
    driver before they are handed in)."""

    sha: str
    max_bytes: int
    sources: list[str]
    manifest: ModelManifest | None = None
    have: set[int] = field(default_factory=set)
    state: str = "new"  # new | manifest | parts | checking | done | failed
    source: str = ""
    vouchers: set[str] = field(default_factory=set)  # sources whose manifest the parts in hand were checked by
    asked: set[int] = field(default_factory=set)
    tried: list[str] = field(default_factory=list)
    why: str = ""  # the last source's failure, for the final error
    # bytes of the parts the current source sent since it was (last) asked: what the driver's rate judges
    # (done_bytes falls when a manifest voids parts)
    sent: int = 0

    @property
    def size(self) -> int:
        return self.manifest.size if self.manifest is not None else 0

    @property
    def done_bytes(self) -> int:
        if self.manifest is None:
            return 0
        last = len(self.manifest.parts) - 1
        return sum(self._part_len(p) for p in self.have if p <= last)

    def start(self) -> list[Effect]:
        return self._next_source()

    def on_manifest(self, peer: str, m: ModelManifest) -> list[Effect]:
        if self.state != "manifest" or peer != self.source or m.sha != self.sha:
            return []  # not asked (or late): nothing to act on
        if m.error:
            return self._lost(f"{peer[:12]} does not serve it: {m.error}")
        if m.size > self.max_bytes:
            return self._lost(f"{peer[:12]} says it is {m.size:,} bytes, over the limit of {self.max_bytes:,}")
        out: list[Effect] = []
        # the parts in hand were another's word: a manifest of the same part hashes and another size too (the
        # parts kept, the file cut to the new size, its SHA-256 failed and the honest first source was penalised)
        if self.manifest is not None and (m.size, m.parts) != (self.manifest.size, self.manifest.parts):
            self.have.clear()
            self.vouchers.clear()
            out.append(Restart())
        self.manifest = m
        self.vouchers.add(peer)
        self.state = "parts"
        return out + self._ask_parts()

    def on_part(self, peer: str, part: int, data: bytes) -> list[Effect]:
        if self.state != "parts" or peer != self.source or part not in self.asked:
            return []
        self.asked.discard(part)
        assert self.manifest is not None
        if len(data) != self._part_len(part) or hashlib.sha256(data).hexdigest() != self.manifest.parts[part]:
            self.why = f"{peer[:12]} sent a part that does not match its own manifest"
            return [Penalise(peer, "model-part does not match its manifest"), *self._next_source()]
        self.have.add(part)
        self.sent += len(data)
        return [WritePart(part, part * MODEL_PART, data), *self._ask_parts()]

    def on_lost(self, peer: str, why: str, quiet: bool = False) -> list[Effect]:
        """The source did not answer (gone, timed out, over its limits): the next one takes over. `quiet`:
        it went silent, as when a link drops with the asks on it, having kept to the least rate until then
        (the driver's judgement); if it sent parts since it was asked, it is asked again after the others."""
        if peer != self.source or self.state not in ("manifest", "parts"):
            return []
        if quiet and self.sent:  # (each try must bring a part: a source is asked again at most once a part)
            self.tried.remove(peer)
            self.sources = [s for s in self.sources if s != peer] + [peer]
        return self._lost(f"{peer[:12]}: {why}")

    def on_checked(self, digest: str, malformed: str = "") -> list[Effect]:
        """The whole file's SHA-256, as the driver computed it, and what is wrong with its structure when
        it is the model asked for but no well-formed GGUF file: then every source would serve the same
        bytes, so the fetch ends (the file void, its sources penalised as for a wrong file)."""
        if self.state != "checking":
            return []
        if digest == self.sha and malformed:
            self.state, self.why = "failed", f"the model is not a well-formed GGUF file: {malformed}"
            return [*(Penalise(p, "served a model file that is not a well-formed GGUF file")
                      for p in sorted(self.vouchers)), Restart(), Finished(False, self.why)]
        if digest == self.sha:
            self.state = "done"
            return [Finished(True)]
        liars = sorted(self.vouchers)
        self.why = "the file its manifest described is not the model asked for"
        self.sources = [s for s in self.sources if s not in self.vouchers]
        self.manifest, self.have, self.vouchers = None, set(), set()
        return [*(Penalise(p, "served a model file whose SHA-256 is not the one asked for") for p in liars),
                Restart(), *self._next_source()]

    # -- internals ---------------------------------------------------------------------------------
    def _part_len(self, part: int) -> int:
        assert self.manifest is not None
        return min(MODEL_PART, self.manifest.size - part * MODEL_PART)

    def _lost(self, why: str) -> list[Effect]:
        self.why = why
        return self._next_source()

    def _next_source(self) -> list[Effect]:
        self.asked.clear()
        rest = [s for s in self.sources if s not in self.tried]
        if not rest:
            self.state = "failed"
            tried = ", ".join(p[:12] for p in self.tried) or "none"
            return [Finished(False, f"no peer served it (tried: {tried}; last: {self.why or 'no peer holds it'})")]
        self.source, self.sent = rest[0], 0
        self.tried.append(self.source)
        self.state = "manifest"
        return [AskManifest(self.source)]

    def _ask_parts(self) -> list[Effect]:
        assert self.manifest is not None
        missing = (p for p in range(len(self.manifest.parts)) if p not in self.have and p not in self.asked)
        out: list[Effect] = []
        for part in missing:
            if len(self.asked) >= WINDOW:
                break
            self.asked.add(part)
            out.append(AskPart(self.source, part))
        if not self.asked and len(self.have) == len(self.manifest.parts):
            self.state = "checking"
            out.append(CheckFile(self.manifest.size))
        return out


def parts_of(data: bytes) -> Iterable[str]:
    """The manifest's part hashes of a file's bytes (servers hash their file once, tests build lies)."""
    for at in range(0, len(data), MODEL_PART):
        yield hashlib.sha256(data[at:at + MODEL_PART]).hexdigest()
