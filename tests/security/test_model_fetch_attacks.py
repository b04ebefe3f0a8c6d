"""Attacks on the model fetch (mesh/core/modelfetch.py, its driver and server mesh/node/modelshare.py), by
this project's red team of 2026-12-07, who had not read the other tests.

Driven through the real ModelFetcher with fake links: `send` hands each ask to a scripted peer, which
answers through ModelFetcher.on_answer, as the node's envelope handler does."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from pathlib import Path

import pytest

from mesh.core import modelfetch
from mesh.core.modelfetch import ModelFetch, parts_of
from mesh.node import modelshare
from mesh.node.modelshare import MANIFEST_RULE, ModelFetcher, ModelServer
from mesh.wire.messages import MODEL_PART, ModelAsk, ModelManifest, ModelPart

from ..tinygguf import tiny_gguf

A = "a" * 64  # the first source
B = "b" * 64  # the second source


class Peer:
    """A scripted source: `data` its file, answering asks by `answer(ask)` (None: silence)."""

    def __init__(self, name: str, data: bytes, size: int | None = None, delay: float = 0.0):
        self.name, self.data, self.delay = name, data, delay
        self.size = len(data) if size is None else size
        self.linked = True
        self.served = 0  # parts answered
        self.drop_after: int | None = None  # parts answered before its link drops
        self.only: set[int] | None = None  # parts it answers (None: all)

    def manifest(self, sha: str) -> ModelManifest:
        return ModelManifest(sha, self.size, list(parts_of(self.data)))

    def part(self, sha: str, p: int) -> ModelPart:
        return ModelPart(sha, p, base64.b64encode(self.data[p * MODEL_PART:(p + 1) * MODEL_PART]).decode())


class Harness:
    def __init__(self, home: Path, peers: dict[str, Peer]):
        self.peers = peers
        self.penalised: list[tuple[str, str]] = []
        self.asks: list[tuple[str, int]] = []
        self.fetcher = ModelFetcher(home, self.send, lambda sha: list(peers), self.penalise, self.install,
                                    asyncio.ensure_future)

    def penalise(self, peer: str, reason: str) -> None:
        self.penalised.append((peer, reason))

    async def install(self, sha: str, path: Path, name: str) -> str:
        return name or "fetched"

    def send(self, peer: str, kind: str, ask: ModelAsk) -> bool:
        p = self.peers[peer]
        if not p.linked:
            return False
        self.asks.append((peer, ask.part))
        asyncio.get_running_loop().create_task(self._answer(p, ask))
        return True

    async def _answer(self, p: Peer, ask: ModelAsk) -> None:
        if ask.part < 0:
            self.fetcher.on_answer(p.name, "model-manifest", p.manifest(ask.sha))
            return
        if p.only is not None and ask.part not in p.only:
            return
        if p.delay:
            # parts go out one after another at the peer's pace (one uplink)
            p._next = max(getattr(p, "_next", 0.0), asyncio.get_running_loop().time()) + p.delay
            await asyncio.sleep(p._next - asyncio.get_running_loop().time())
        if not p.linked:
            return
        self.fetcher.on_answer(p.name, "model-part", p.part(ask.sha, ask.part))
        p.served += 1
        if p.drop_after is not None and p.served >= p.drop_after:
            p.linked = False


def _model(tmp_path: Path, parts: int, seed: int = 1) -> tuple[bytes, str]:
    path = tmp_path / f"model{seed}.gguf"
    tiny_gguf(path, pad=0, seed=seed)
    base = path.stat().st_size
    tiny_gguf(path, pad=parts * MODEL_PART - base - MODEL_PART // 2, seed=seed)  # ends mid-part
    data = path.read_bytes()
    assert -(-len(data) // MODEL_PART) == parts
    return data, hashlib.sha256(data).hexdigest()


@pytest.mark.timeout(120)
def test_liars_voided_parts_do_not_make_the_honest_source_too_slow(tmp_path, monkeypatch):
    """A hostile source A sends a made-up manifest and 10 parts matching it at once, then drops its link.
    The honest source B sends the real manifest (A's parts are voided: Restart) and its parts at twice
    MIN_RATE_BPS. B must not be judged 'slow': yet the rate window that began when B was asked started
    from A's 10 parts, which the Restart took away, so B's first window counts negative bytes.
    (Timing scaled: RATE_WINDOW_S 60 s -> 1.5 s, MIN_RATE_BPS 256 KiB/s -> 1 MiB/s; same logic.)"""
    monkeypatch.setattr(modelshare, "RATE_WINDOW_S", 1.5)
    monkeypatch.setattr(modelshare, "MIN_RATE_BPS", 2 * MODEL_PART)
    home = tmp_path / "home"
    home.mkdir()
    real, sha = _model(tmp_path, 12)
    liar = Peer(A, os.urandom(20 * MODEL_PART))  # its own 'file', of 20 parts
    liar.drop_after = 10
    honest = Peer(B, real, delay=0.25)  # 4 parts/s = 2 MiB/s: twice the least rate
    h = Harness(home, {A: liar, B: honest})

    async def go():
        h.fetcher.start(sha, max_bytes=64 << 20)
        return await h.fetcher.wait(sha)

    st = asyncio.run(go())
    assert st.state == "done", (f"the honest source was dropped: {st.error!r} "
                                f"(B sent {honest.served} parts of {len(list(parts_of(real)))})")
    assert not [p for p, _ in h.penalised if p == B]


@pytest.mark.timeout(120)
def test_a_second_source_claiming_another_size_does_not_get_the_first_one_penalised(tmp_path, monkeypatch):
    """Honest source A sends the true manifest and the model's last part, then goes silent (its link
    dropped). Hostile B sends a manifest with the *same part hashes* but a size a few bytes shorter (the
    same count of parts, so it passes ModelManifest's checks). on_manifest compares only the part hashes,
    so A's part is kept and B's size adopted; B then serves part 0 truthfully. The file is cut to B's size,
    its SHA-256 does not match, and every 'voucher' -- honest A included -- is penalised and spurned."""
    monkeypatch.setattr(modelshare, "ASK_TIMEOUT_S", 1.0)
    home = tmp_path / "home"
    home.mkdir()
    real, sha = _model(tmp_path, 2)
    honest = Peer(A, real)
    honest.only = {1}  # answers the last part; part 0's answer was lost with its link
    liar = Peer(B, real, size=len(real) - 7)  # same part hashes, another size
    h = Harness(home, {A: honest, B: liar})

    async def go():
        h.fetcher.start(sha, max_bytes=64 << 20)
        return await h.fetcher.wait(sha)

    st = asyncio.run(go())
    assert A not in [p for p, _ in h.penalised], (
        f"honest source A penalised: {h.penalised} (fetch {st.state}: {st.error})")


def test_sans_io_same_parts_other_size_keeps_parts_under_a_new_size():
    """The same flaw, in the sans-I/O core alone: a manifest with the same part hashes and another size
    is taken over the one the parts in hand were checked by, without a Restart."""
    data = os.urandom(MODEL_PART + 1000)
    sha = hashlib.sha256(data).hexdigest()
    parts = list(parts_of(data))
    f = ModelFetch(sha, 64 << 20, [A, B])
    f.start()
    f.on_manifest(A, ModelManifest(sha, len(data), parts))
    out = f.on_part(A, 1, data[MODEL_PART:])
    assert out and isinstance(out[0], modelfetch.WritePart)
    f.on_lost(A, "sent nothing for 30 s")
    out = f.on_manifest(B, ModelManifest(sha, len(data) - 7, parts))
    assert any(isinstance(e, modelfetch.Restart) for e in out) or f.size == len(data), (
        f"B's size {f.size} taken with A's part kept (have={sorted(f.have)}, vouchers={sorted(f.vouchers)})")


@pytest.mark.timeout(120)
def test_control_the_honest_source_alone_at_that_pace_completes(tmp_path, monkeypatch):
    """(Control for the harness and the scaled rate: the same honest source and pace, no liar first: done.)"""
    monkeypatch.setattr(modelshare, "RATE_WINDOW_S", 1.5)
    monkeypatch.setattr(modelshare, "MIN_RATE_BPS", 2 * MODEL_PART)
    home = tmp_path / "home"
    home.mkdir()
    real, sha = _model(tmp_path, 12)
    h = Harness(home, {B: Peer(B, real, delay=0.25)})

    async def go():
        h.fetcher.start(sha, max_bytes=64 << 20)
        return await h.fetcher.wait(sha)

    st = asyncio.run(go())
    assert st.state == "done", st.error


@pytest.mark.timeout(60)
def test_asks_for_a_model_not_served_are_held_to_the_manifest_rule():
    """MANIFEST_RULE holds one peer to 4 manifests, then 0.1 a second (its asks screened before their
    signature is checked: Node.screen -> admits). A peer asking *part 0* of models this node does not serve
    passed admits (only part < 0 is held to the rule) and was sent a signed 'not served here' manifest for
    every ask, at once, outside the turns and the SERVE_BPS budget."""
    sent = []
    server = ModelServer(lambda: {}, lambda peer, kind, obj: sent.append((peer, kind)) or True)

    async def go():
        for i in range(1000):
            ask = ModelAsk(os.urandom(32).hex(), -1 if i % 2 else 0)
            if server.admits("hostile", ask.part):
                await server.serve("hostile", ask)

    asyncio.run(go())
    burst, rate = MANIFEST_RULE
    assert len(sent) <= burst + 1, f"{len(sent)} manifests sent to one peer for 1000 asks in well under a second"
