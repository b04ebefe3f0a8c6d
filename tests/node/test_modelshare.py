"""Model files between peers, the node's side: ModelServer answering from a real file, ModelFetcher writing
HOME/models and resuming after an interruption, joined by an in-memory wire (the real mesh is
tests/steps/test_models.py). A fetch cut off mid-way (a crash, a sleeping laptop) is asked again and
picks up the parts it had written and that still check out."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from mesh.errors import ConfigError
from mesh.node.modelshare import MODEL_FLOOR, ModelFetcher, ModelServer, _manifest_of, _resume
from mesh.wire.messages import MODEL_PART, ModelAsk, ModelManifest, ModelPart

from ..tinygguf import tiny_gguf

pytestmark = pytest.mark.timeout(60)


def model_file(tmp_path: Path, parts: float = 6.5) -> tuple[Path, str]:
    """A well-formed GGUF file (a fetched one is checked as such) `parts` parts long, random bytes after
    its tensors giving it its own SHA-256."""
    path = tmp_path / "served.gguf"
    tiny_gguf(path)
    with open(path, "ab") as f:
        f.write(os.urandom(int(parts * MODEL_PART) - path.stat().st_size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


class Wire:
    """Peers 'a' (serving) and the fetcher, joined in memory; `stall_after` parts, 'a' goes silent."""

    def __init__(self, tmp_path: Path, served: Path, sha: str, stall_after: int = 10**9):
        self.installed: list[tuple[str, Path, str]] = []
        self.tasks: set[asyncio.Task] = set()
        self.sent_parts = 0
        self.stall_after = stall_after
        self.server = ModelServer(lambda: {sha: served}, self._to_fetcher)
        self.fetcher = ModelFetcher(tmp_path / "home", self._to_server, lambda s: ["a"] if s == sha else [],
                                    lambda node, why: None, self._install, self._spawn)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        return task

    def _to_server(self, node: str, kind: str, payload: ModelAsk) -> bool:
        self._spawn(self.server.serve("fetcher", payload))
        return True

    def _to_fetcher(self, peer: object, kind: str, payload) -> bool:
        if kind == "model-part":
            self.sent_parts += 1
            if self.sent_parts > self.stall_after:
                return True  # lost on the way
        self.fetcher.on_answer("a", kind, payload)
        return True

    async def _install(self, sha: str, path: Path, name: str) -> str:
        self.installed.append((sha, path, name))
        return name or "fetched"


async def _until(cond, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_fetch_cut_off_mid_way_resumes_from_the_parts_it_wrote(tmp_path, monkeypatch):
    served, sha = model_file(tmp_path)
    monkeypatch.setattr("mesh.node.modelshare.ASK_TIMEOUT_S", 0.3)

    async def main() -> None:
        first = Wire(tmp_path, served, sha, stall_after=3)  # the source goes quiet after 3 parts: a sleep
        st = first.fetcher.start(sha)
        await _until(lambda: st.state != "fetching")
        assert st.state == "failed" and "sent nothing" in st.error and st.done_bytes == 3 * MODEL_PART
        saved = json.loads((tmp_path / "home" / "models" / f"{sha}.fetch.json").read_text())
        assert len(saved["have"]) == 3  # (whichever three came first)
        again = Wire(tmp_path, served, sha)  # a new process: asked again
        st = again.fetcher.start(sha, name="mine")
        await _until(lambda: st.state != "fetching")
        assert st.state == "done" and st.name == "mine", st
        assert again.sent_parts == 7 - 3  # only the missing parts came
        final = tmp_path / "home" / "models" / f"{sha}.gguf"
        assert final.read_bytes() == served.read_bytes() and again.installed == [(sha, final, "mine")]
        assert not (tmp_path / "home" / "models" / f"{sha}.fetch.json").exists()

    asyncio.run(main())


class Dropped(Wire):
    """The link drops once, after the source sent 3 parts: the parts on it (the asks' answers) are lost."""

    def _to_fetcher(self, peer: object, kind: str, payload) -> bool:
        if kind == "model-part" and 3 <= self.sent_parts < 3 + 4:
            self.sent_parts += 1
            return True  # lost with the link
        return super()._to_fetcher(peer, kind, payload)


def test_a_link_dropped_mid_fetch_costs_a_wait_not_the_fetch(tmp_path, monkeypatch):
    """Its only source's link dropped with 4 parts on it: the fetch waited ASK_TIMEOUT_S and failed with the
    3 parts it had (CI: 11 MiB of a 98 MB model). The source had sent parts, so it is asked again."""
    served, sha = model_file(tmp_path)
    monkeypatch.setattr("mesh.node.modelshare.ASK_TIMEOUT_S", 0.3)

    async def main() -> None:
        wire = Dropped(tmp_path, served, sha)
        st = wire.fetcher.start(sha)
        await _until(lambda: st.state != "fetching")
        assert st.state == "done", st
        final = tmp_path / "home" / "models" / f"{sha}.gguf"
        assert final.read_bytes() == served.read_bytes() and wire.sent_parts == 7 + 4

    asyncio.run(main())


class Turns(Wire):
    """Two colluding sources, 'a' and 'b' (one server behind both): each try of either sends one part, then
    nothing until it is asked for its manifest again."""

    def __init__(self, tmp_path: Path, served: Path, sha: str):
        super().__init__(tmp_path, served, sha)
        self.fetcher.holders = lambda s: ["a", "b"] if s == sha else []
        self.source, self.sent_this_try, self.tries = "", 0, []

    def _to_server(self, node: str, kind: str, payload: ModelAsk) -> bool:
        if payload.part < 0:
            self.source, self.sent_this_try = node, 0
            self.tries.append(node)
        self._spawn(self.server.serve("fetcher", payload))
        return True

    def _to_fetcher(self, peer: object, kind: str, payload) -> bool:
        if kind == "model-part":
            self.sent_this_try += 1
            if self.sent_this_try > 1:
                return True  # the rest of the try is silence
        self.fetcher.on_answer(self.source, kind, payload)
        return True


def test_two_sources_taking_turns_at_a_part_and_a_silence_do_not_hold_the_fetch(tmp_path, monkeypatch):
    """Asked again whenever it went quiet after a part, a pair of sources could take turns at one part and
    ASK_TIMEOUT_S of silence, each try shorter than the rate's window: a 4 GiB model held the fetch for days.
    A quiet source is asked again only if its try, silence and all, kept to MIN_RATE_BPS."""
    served, sha = model_file(tmp_path)
    monkeypatch.setattr("mesh.node.modelshare.ASK_TIMEOUT_S", 0.3)
    monkeypatch.setattr("mesh.node.modelshare.MIN_RATE_BPS", 4 << 20)  # a part a try of ~0.3 s is under it

    async def main() -> None:
        wire = Turns(tmp_path, served, sha)
        st = wire.fetcher.start(sha)
        await _until(lambda: st.state != "fetching")
        assert st.state == "failed" and "sent nothing" in st.error, st
        assert wire.tries == ["a", "b"] and st.done_bytes == 2 * MODEL_PART, (wire.tries, st)

    asyncio.run(main())


def test_resuming_keeps_only_parts_that_still_match_the_manifest(tmp_path):
    served, sha = model_file(tmp_path, 3)
    manifest = _manifest_of(served, sha)
    part, state = tmp_path / "x.part", tmp_path / "x.fetch.json"
    data = bytearray(served.read_bytes())
    data[MODEL_PART + 7] ^= 1  # part 1 damaged on disk after it was recorded
    part.write_bytes(bytes(data))
    state.write_text(json.dumps({"size": manifest.size, "parts": manifest.parts, "have": [0, 1, 2, 99]}))
    got, have = _resume(part, state, sha)
    assert got == manifest and have == {0, 2}
    state.write_text('{"size": -1, "parts": [], "have": [0]}')  # a record that does not hold together
    assert _resume(part, state, sha) == (None, set())


def test_the_server_refuses_what_it_does_not_serve_and_a_file_changed_since_it_was_registered(tmp_path):
    served, sha = model_file(tmp_path, 1.2)
    sent: list[tuple[str, object]] = []
    server = ModelServer(lambda: {sha: served}, lambda peer, kind, payload: sent.append((kind, payload)))
    asyncio.run(server.serve("p", ModelAsk("0" * 64, -1)))
    asyncio.run(server.serve("p", ModelAsk(sha, 1)))
    asyncio.run(server.serve("p", ModelAsk(sha, 5)))  # no such part: nothing
    (kind0, m0), (kind1, p1) = sent
    assert kind0 == "model-manifest" and m0.error == "not served here"
    assert kind1 == "model-part" and len(p1.data) > 0
    with open(served, "r+b") as f:
        f.write(b"XXXX")
    assert _manifest_of(served, sha).error == "its file changed since it was registered"


def test_a_model_file_swapped_for_a_link_after_it_was_hashed_sends_nothing_of_what_it_points_at(tmp_path):
    """The server hashed the model for its manifest, then read each part by the file's name again: a model
    kept where another user may write, swapped for a link to a root-only file, had that file's bytes sent
    to the asking peer (this project's red team, 2026-12-07). A part that is not what was hashed is not sent."""
    served, sha = model_file(tmp_path, 1.2)
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$only-root-may-read-this\n" * 100)
    sent: list[tuple[str, object]] = []
    server = ModelServer(lambda: {sha: served}, lambda peer, kind, payload: sent.append((kind, payload)))
    asyncio.run(server.serve("p", ModelAsk(sha, -1)))  # the manifest: hashed from the real file
    served.unlink()
    served.symlink_to(secret)
    for part in (0, 1):
        asyncio.run(server.serve("p", ModelAsk(sha, part)))
    assert "model-part" not in [kind for kind, _ in sent], sent
    # the manifest is dropped: hashed again, the file is not the model any more, and the asker is told so
    assert [m.error for _, m in sent[1:]] == ["its file changed since it was registered"]


def test_a_fetch_with_nothing_to_do_is_a_clear_error(tmp_path):
    served, sha = model_file(tmp_path, 1)

    async def main() -> None:
        wire = Wire(tmp_path, served, sha)
        with pytest.raises(ConfigError, match="no peer linked now serves"):
            wire.fetcher.start("1" * 64)
        with pytest.raises(ConfigError, match="of those named"):
            wire.fetcher.start(sha, sources=["b"])
        with pytest.raises(ConfigError, match="model name"):
            wire.fetcher.start(sha, name="bad name!")

    asyncio.run(main())


def test_what_fetched_models_hold_counts_against_the_allowance_and_a_waiter_sees_the_end(tmp_path):
    """--fetch-models: a node fetching for peers' steps counts every model file it fetched (whole, or in part
    but for the one a fetch resumes) against its allowance, and a step waiting on the fetch hears how it
    ended; a model over what is left of the allowance is not fetched at all."""
    served, sha = model_file(tmp_path, parts=2.5)
    size = served.stat().st_size

    async def main() -> None:
        wire = Wire(tmp_path, served, sha)
        assert wire.fetcher.bytes_held() == 0
        over = wire.fetcher.start(sha, size - 1)
        st = await wire.fetcher.wait(sha)
        assert st is over and st.state == "failed" and "limit" in st.error and wire.installed == []
        assert wire.fetcher.under_way() == []
        wire.fetcher.start(sha, size)
        assert wire.fetcher.under_way() == [sha]
        st = await wire.fetcher.wait(sha)
        # a whole model counts at least MODEL_FLOOR: its runner's memory, however small the file (a stranger's
        # steps on a thousand 115 KB models fit a 200 MB allowance, and started a thousand runners of 73 MiB)
        held = max(size, MODEL_FLOOR)
        assert st.state == "done" and wire.fetcher.bytes_held() == held and wire.fetcher.bytes_held(sha) == held
        (tmp_path / "home" / "models" / ("b" * 64 + ".part")).write_bytes(b"x" * 100)  # another, cut off
        assert wire.fetcher.bytes_held() == held + 100 and wire.fetcher.bytes_held("b" * 64) == held

    asyncio.run(main())


class Peers:
    """Several serving peers and one fetcher, joined in memory: `serves` maps each peer to the models it
    serves and whether it changes a byte of every part it sends (--fault corrupt-model)."""

    def __init__(self, tmp_path: Path, serves: dict[str, tuple[dict[str, Path], bool]]):
        self.tasks: set[asyncio.Task] = set()
        self.penalised: list[tuple[str, str]] = []
        self.parts_sent: dict[tuple[str, str], int] = {}  # (peer, sha) → parts it sent
        self.servers = {peer: ModelServer(lambda files=files: files, self._answer(peer), corrupt=bad)
                        for peer, (files, bad) in serves.items()}
        self.serves = serves
        self.fetcher = ModelFetcher(tmp_path / "home", self._ask, self._holders,
                                    lambda node, why: self.penalised.append((node, why)), self._install, self._spawn)

    def _holders(self, sha: str) -> list[str]:
        return [peer for peer, (files, _) in self.serves.items() if sha in files]

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        return task

    def _ask(self, node: str, kind: str, payload: ModelAsk) -> bool:
        self._spawn(self.servers[node].serve("fetcher", payload))
        return True

    def _answer(self, peer: str):
        def send(_to: object, kind: str, payload) -> bool:
            if kind == "model-part":
                self.parts_sent[(peer, payload.sha)] = self.parts_sent.get((peer, payload.sha), 0) + 1
            self.fetcher.on_answer(peer, kind, payload)
            return True
        return send

    async def _install(self, sha: str, path: Path, name: str) -> str:
        return name or f"fetched-{sha[:12]}"


def test_two_models_fetched_at_once_each_checked_and_a_corrupt_source_of_one_spoils_nothing_of_the_other(tmp_path):
    """One node fetches models A and B concurrently: A first from a peer that corrupts every part (caught
    at its first part, penalised, dropped; the honest peer finishes A), B from the honest peer all along.
    Both end as their own files, each whole file matching its own SHA-256, and what they hold together
    counts against the --fetch-models allowance."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, sha_a = model_file(tmp_path / "a", parts=6.5)
    b, sha_b = model_file(tmp_path / "b", parts=4.25)
    peers = Peers(tmp_path, {"liar": ({sha_a: a}, True), "honest": ({sha_a: a, sha_b: b}, False)})

    async def main() -> None:
        st_a = peers.fetcher.start(sha_a, sources=["liar", "honest"], name="a")
        st_b = peers.fetcher.start(sha_b, name="b")
        assert sorted(peers.fetcher.under_way()) == sorted([sha_a, sha_b])  # both under way at once
        assert await peers.fetcher.wait(sha_a) is st_a and await peers.fetcher.wait(sha_b) is st_b
        assert (st_a.state, st_a.name, st_a.size, st_a.done_bytes) == ("done", "a", a.stat().st_size, st_a.size), st_a
        assert (st_b.state, st_b.name, st_b.size, st_b.done_bytes) == ("done", "b", b.stat().st_size, st_b.size), st_b

    asyncio.run(main())
    models = tmp_path / "home" / "models"
    assert hashlib.sha256((models / f"{sha_a}.gguf").read_bytes()).hexdigest() == sha_a
    assert hashlib.sha256((models / f"{sha_b}.gguf").read_bytes()).hexdigest() == sha_b
    assert peers.penalised == [("liar", "model-part does not match its manifest")]
    assert peers.parts_sent[("honest", sha_b)] == 5  # B's parts came once each, none thrown away
    assert sorted(f.name for f in models.iterdir()) == sorted([f"{sha_a}.gguf", f"{sha_b}.gguf"])
    held = max(a.stat().st_size, MODEL_FLOOR) + max(b.stat().st_size, MODEL_FLOOR)
    assert peers.fetcher.bytes_held() == held and peers.fetcher.bytes_held("c" * 64) == held


class Stalling:
    """A fetcher and a hostile world joined in memory: the source answers the manifest, never a part, and
    then repeats its manifest now and then, while a peer that is not the source sends parts nobody asked of it."""

    def __init__(self, tmp_path: Path, sha: str, manifest):
        self.sha, self.manifest, self.asked = sha, manifest, 0
        self.tasks: set[asyncio.Task] = set()
        self.fetcher = ModelFetcher(tmp_path / "home", self._ask, lambda s: ["src"], lambda node, why: None,
                                    self._install, self._spawn)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        return task

    def _ask(self, node: str, kind: str, payload: ModelAsk) -> bool:
        self.asked += 1
        if payload.part < 0:
            asyncio.get_running_loop().call_soon(self.fetcher.on_answer, "src", "model-manifest", self.manifest)
        return True

    async def _install(self, sha: str, path: Path, name: str) -> str:
        return name

    async def keep_alive(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            self.fetcher.on_answer("src", "model-manifest", self.manifest)  # said again: nothing new
            self.fetcher.on_answer("other", "model-part", ModelPart(self.sha, 0, ""))  # not the source


def test_a_source_that_only_repeats_itself_or_a_stranger_sending_junk_cannot_hold_a_fetch_open(tmp_path, monkeypatch):
    """The attack: a source answers the manifest and never a part, and repeats the manifest every 20 s; or
    another peer sends junk parts for the model. Each message restarted the 30 s 'sent nothing' clock, so the
    fetch stayed 'fetching' with 0 bytes for as long as they liked (and with --fetch-models, fetching one
    model at a time, no step could fetch any model again). Only what the fetch acts on counts as life now."""
    monkeypatch.setattr("mesh.node.modelshare.ASK_TIMEOUT_S", 0.4)
    sha = "f" * 64
    manifest = ModelManifest(sha, 4 * MODEL_PART, [hashlib.sha256(bytes([i])).hexdigest() for i in range(4)])

    async def main() -> None:
        world = Stalling(tmp_path, sha, manifest)
        st = world.fetcher.start(sha)
        noise = asyncio.get_running_loop().create_task(world.keep_alive(0.1))
        try:
            await _until(lambda: st.state != "fetching", timeout=5.0)
        finally:
            noise.cancel()
        assert st.state == "failed" and "sent nothing" in st.error and st.done_bytes == 0

    asyncio.run(main())


def test_a_step_fetch_deletes_what_failed_fetches_left_so_the_allowance_frees_again(tmp_path):
    """The attack: a source advertises a model near the whole --fetch-models allowance, serves most of it and
    goes silent. The failed fetch's part stayed on disk, counted against the allowance, and every later
    fetch for a step was refused ('allowance used up') for good. A step's fetch now deletes the leftovers
    of fetches not under way (its own model's part is kept, to resume from)."""
    served, sha = model_file(tmp_path, parts=1.5)

    async def main() -> None:
        wire = Wire(tmp_path, served, sha)
        models = tmp_path / "home" / "models"
        models.mkdir(parents=True)
        for name, size in (("a" * 64 + ".part", 3000), ("a" * 64 + ".fetch.json", 10), (sha + ".part", 700)):
            (models / name).write_bytes(b"x" * size)
        (models / ("c" * 64 + ".gguf")).write_bytes(b"GGUF")  # a whole model: never a leftover
        assert wire.fetcher.bytes_held(sha) == 3000 + MODEL_FLOOR
        assert wire.fetcher.reclaim(sha) == 3000
        assert sorted(p.name for p in models.iterdir()) == sorted(["c" * 64 + ".gguf", sha + ".part"])
        assert wire.fetcher.bytes_held(sha) == MODEL_FLOOR

    asyncio.run(main())


class Slow(Wire):
    """The source answers every ask `delay` seconds late: slow enough to hold a fetch for hours, never
    silent for ASK_TIMEOUT_S."""

    delay = 0.25

    def _to_server(self, node: str, kind: str, payload: ModelAsk) -> bool:
        async def late() -> None:
            await asyncio.sleep(self.delay)
            await self.server.serve("fetcher", payload)
        self._spawn(late())
        return True


def test_a_source_slower_than_the_least_rate_hands_over(tmp_path, monkeypatch):
    """The attack (2026-12-06): a holder that answers each part 20 s late, under the 30 s silence limit,
    took 125 s for a 10.6 MB model, and held the one fetch for steps a node runs at a time meanwhile: a
    4 GiB model would take 11 hours. A source must send MIN_RATE_BPS on average over each RATE_WINDOW_S."""
    served, sha = model_file(tmp_path)
    monkeypatch.setattr("mesh.node.modelshare.RATE_WINDOW_S", 0.3)
    monkeypatch.setattr("mesh.node.modelshare.MIN_RATE_BPS", 1 << 40)  # no source is that fast

    async def main() -> None:
        wire = Slow(tmp_path, served, sha)
        st = wire.fetcher.start(sha)
        await _until(lambda: st.state != "fetching", timeout=10.0)
        assert st.state == "failed" and "in 0.3 s, under" in st.error, st.error
        assert wire.installed == []

    asyncio.run(main())


def test_a_source_caught_lying_about_a_model_is_not_asked_for_it_again(tmp_path):
    """The attack (2026-12-06): a holder advertises model A and serves 25 MB of another file, whose parts
    match its own manifest; the whole file's SHA-256 gives it away at the end, it is penalised, and the
    next step on A fetched the same 25 MB from it again: 75 MB in 23 s against a 30 MB allowance."""
    served, sha = model_file(tmp_path, parts=2.5)

    async def main() -> None:
        peers = Peers(tmp_path, {"liar": ({sha: served}, True)})  # (a byte of every part changed)
        peers.fetcher.start(sha)
        st = await peers.fetcher.wait(sha)
        assert st.state == "failed" and [p for p, _ in peers.penalised] == ["liar"]
        await asyncio.sleep(0.1)  # (the parts asked at once come in after it was caught)
        sent = peers.parts_sent[("liar", sha)]
        with pytest.raises(ConfigError, match="caught serving another file"):
            peers.fetcher.start(sha)
        await asyncio.sleep(0.1)
        assert peers.parts_sent[("liar", sha)] == sent  # nothing asked of it again

    asyncio.run(main())


def test_a_model_with_the_sha256_asked_for_but_a_malformed_gguf_header_is_deleted_not_installed(tmp_path):
    """The attack (2026-12-06): a stranger names in its step the SHA-256 of a file it crafted and serves it
    itself; the hash checks out, and llama.cpp's GGUF parser (heap overflows on malformed headers) would
    have parsed it as the node's user. Its structure is checked first: the file is deleted, never
    installed (registered, loaded, served), its source penalised as one serving a wrong file, and the
    model is not fetched again, from it or anyone."""
    served, _ = model_file(tmp_path, parts=1.5)
    data = bytearray(served.read_bytes())
    data[24:32] = (1 << 60).to_bytes(8, "little")  # the first key's length: 2^60 bytes
    served.write_bytes(bytes(data))
    sha = hashlib.sha256(bytes(data)).hexdigest()
    peers = Peers(tmp_path, {"stranger": ({sha: served}, False), "other": ({sha: served}, False)})
    installed: list[str] = []

    async def install(sha: str, path: Path, name: str) -> str:
        installed.append(sha)
        return "fetched"
    peers.fetcher.install = install

    async def main() -> None:
        peers.fetcher.start(sha, sources=["stranger"])
        st = await peers.fetcher.wait(sha)
        assert st.state == "failed" and "not a well-formed GGUF file" in st.error, st
        assert "at byte 24" in st.error and str(tmp_path) not in st.error, st.error
        with pytest.raises(ConfigError, match="not a well-formed GGUF file"):
            peers.fetcher.start(sha, sources=["other"])

    asyncio.run(main())
    assert installed == []
    assert peers.penalised == [("stranger", "served a model file that is not a well-formed GGUF file")]
    assert peers.parts_sent.get(("other", sha), 0) == 0
    assert list((tmp_path / "home" / "models").iterdir()) == []  # nothing left: no .gguf, .part or record
