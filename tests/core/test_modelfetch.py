"""The model fetch core against honest and lying servers joined by an in-memory wire: parts are checked
as they come, a source whose part contradicts its own manifest is penalised and dropped at once, a
source whose manifest describes another file is caught by the whole-file SHA-256 and every part it
vouched for thrown away, sizes over the limit are never fetched, and a resumed fetch keeps only parts of
the same manifest."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import pytest

from mesh.core.modelfetch import (
    AskManifest,
    AskPart,
    CheckFile,
    Finished,
    ModelFetch,
    Penalise,
    Restart,
    WritePart,
    parts_of,
)
from mesh.wire.messages import MODEL_PART, ModelManifest

pytestmark = pytest.mark.timeout(30)

MODEL = os.urandom(3 * MODEL_PART + 1234)  # four parts, the last short
SHA = hashlib.sha256(MODEL).hexdigest()


@dataclass
class Server:
    """A peer serving `data` as model SHA: honest, or flipping a byte of `bad_part`, or `data` being
    another file altogether (its manifest true to it), or saying `error`."""

    data: bytes = MODEL
    bad_part: int = -1
    error: str = ""
    asks: int = 0

    def manifest(self) -> ModelManifest:
        if self.error:
            return ModelManifest(SHA, 0, [], self.error)
        return ModelManifest(SHA, len(self.data), list(parts_of(self.data)))

    def part(self, i: int) -> bytes:
        self.asks += 1
        chunk = self.data[i * MODEL_PART:(i + 1) * MODEL_PART]
        return bytes([chunk[0] ^ 1]) + chunk[1:] if i == self.bad_part else chunk


def run(fetch: ModelFetch, servers: dict[str, Server], file: bytearray | None = None) -> tuple[Finished, list[Penalise]]:
    """Drive `fetch` to its end over an in-memory wire; the 'disk' is `file`."""
    file = bytearray() if file is None else file
    penalties: list[Penalise] = []
    queue = list(fetch.start())
    while queue:
        eff = queue.pop(0)
        if isinstance(eff, AskManifest):
            queue += fetch.on_manifest(eff.peer, servers[eff.peer].manifest())
        elif isinstance(eff, AskPart):
            queue += fetch.on_part(eff.peer, eff.part, servers[eff.peer].part(eff.part))
        elif isinstance(eff, WritePart):
            file[eff.offset:eff.offset + len(eff.data)] = eff.data
        elif isinstance(eff, Restart):
            file.clear()
        elif isinstance(eff, CheckFile):
            queue += fetch.on_checked(hashlib.sha256(bytes(file[:eff.size])).hexdigest())
        elif isinstance(eff, Penalise):
            penalties.append(eff)
        elif isinstance(eff, Finished):
            assert not queue
            return eff, penalties
    raise AssertionError("the fetch never finished")


def test_an_honest_source_delivers_the_file_part_by_part():
    file = bytearray()
    done, penalties = run(ModelFetch(SHA, 1 << 30, ["a"]), {"a": Server()}, file)
    assert done == Finished(True) and not penalties and bytes(file) == MODEL


def test_a_source_whose_part_contradicts_its_manifest_is_penalised_and_the_next_finishes():
    fetch = ModelFetch(SHA, 1 << 30, ["liar", "honest"])
    file = bytearray()
    done, penalties = run(fetch, {"liar": Server(bad_part=2), "honest": Server()}, file)
    assert done.ok and bytes(file) == MODEL
    assert penalties == [Penalise("liar", "model-part does not match its manifest")]


def test_a_manifest_of_another_file_is_caught_by_the_whole_files_sha_and_its_parts_thrown_away():
    fake = os.urandom(len(MODEL))  # consistent with its own manifest: only the whole-file hash tells
    file = bytearray()
    done, penalties = run(ModelFetch(SHA, 1 << 30, ["fake", "honest"]), {"fake": Server(fake), "honest": Server()}, file)
    assert done.ok and bytes(file) == MODEL
    assert [p.peer for p in penalties] == ["fake"] and "SHA-256" in penalties[0].reason


def test_with_only_liars_the_fetch_fails_saying_why_and_nothing_is_kept():
    done, penalties = run(ModelFetch(SHA, 1 << 30, ["x", "y"]), {"x": Server(os.urandom(99)), "y": Server(bad_part=0)})
    assert not done.ok and "tried: x, y" in done.why and "does not match its own manifest" in done.why
    assert sorted(p.peer for p in penalties) == ["x", "y"]


def test_a_model_over_the_size_limit_is_never_fetched():
    servers = {"a": Server(), "b": Server()}
    done, penalties = run(ModelFetch(SHA, len(MODEL) - 1, ["a", "b"]), servers)
    assert not done.ok and "over the limit" in done.why and not penalties
    assert servers["a"].asks == servers["b"].asks == 0


def test_a_refusing_or_lost_source_hands_over_without_penalty():
    fetch = ModelFetch(SHA, 1 << 30, ["busy", "gone", "ok"])
    assert fetch.start() == [AskManifest("busy")]
    assert fetch.on_manifest("busy", Server(error="not served here").manifest()) == [AskManifest("gone")]
    assert fetch.on_manifest("busy", Server().manifest()) == []  # late: not the source any more
    assert fetch.on_lost("gone", "timeout") == [AskManifest("ok")]
    out = fetch.on_manifest("ok", Server().manifest())
    assert [type(e) for e in out] == [AskPart] * 4


def test_parts_nobody_asked_for_are_ignored():
    fetch = ModelFetch(SHA, 1 << 30, ["a"])
    fetch.start()
    fetch.on_manifest("a", Server().manifest())
    assert fetch.on_part("b", 0, MODEL[:MODEL_PART]) == []  # not the source
    fetch.asked.discard(1)
    assert fetch.on_part("a", 1, MODEL[MODEL_PART:2 * MODEL_PART]) == []  # not asked
    assert 1 not in fetch.have


def test_a_resumed_fetch_keeps_parts_only_under_the_same_manifest():
    manifest = Server().manifest()
    fetch = ModelFetch(SHA, 1 << 30, ["a"], manifest, {0, 1})
    assert fetch.start() == [AskManifest("a")]
    asked = fetch.on_manifest("a", manifest)
    assert [e.part for e in asked if isinstance(e, AskPart)] == [2, 3] and fetch.done_bytes == 2 * MODEL_PART
    other = ModelFetch(SHA, 1 << 30, ["b"], ModelManifest(SHA, manifest.size, ["0" * 64] * 4), {0, 1})
    other.start()
    out = other.on_manifest("b", manifest)
    assert isinstance(out[0], Restart) and [e.part for e in out if isinstance(e, AskPart)] == [0, 1, 2, 3]


def test_a_source_gone_quiet_after_sending_parts_is_asked_again_after_the_others_while_each_try_brings_parts():
    """A link that drops takes the asks on it: the one source that held the model was given up at once and
    the fetch failed with most of the file in hand (CI: 11 of 94 parts). Now a quiet source that sent parts
    is asked again once the others were tried; a try that brings nothing ends it, and a source judged too
    slow (not quiet) is not asked again."""
    fetch = ModelFetch(SHA, 1 << 30, ["a", "b"])
    fetch.start()
    out = fetch.on_manifest("a", Server().manifest())
    assert [e.part for e in out] == [0, 1, 2, 3]
    fetch.on_part("a", 0, MODEL[:MODEL_PART])  # then the link drops: parts 1-4 are lost
    assert fetch.on_lost("a", "sent nothing for 30 s", quiet=True) == [AskManifest("b")]  # the others first
    assert fetch.on_lost("b", "sent nothing for 30 s", quiet=True) == [AskManifest("a")]  # b sent nothing
    out = fetch.on_manifest("a", Server().manifest())
    assert [e.part for e in out] == [1, 2, 3] and fetch.have == {0}  # its part kept, the rest asked again
    done = fetch.on_lost("a", "sent nothing for 30 s", quiet=True)  # this try brought nothing
    assert done == [Finished(False, "no peer served it (tried: b, a; last: a: sent nothing for 30 s)")]

    slow = ModelFetch(SHA, 1 << 30, ["a"])
    slow.start()
    slow.on_manifest("a", Server().manifest())
    slow.on_part("a", 0, MODEL[:MODEL_PART])
    out = slow.on_lost("a", "sent 1,048,576 bytes in 60 s, under 256 KiB/s")
    assert len(out) == 1 and isinstance(out[0], Finished) and not out[0].ok


def test_a_source_gone_quiet_again_and_again_still_finishes_while_it_brings_parts():
    fetch = ModelFetch(SHA, 1 << 30, ["a"])
    queue, file, tries, through = list(fetch.start()), bytearray(), 0, False
    while queue:
        eff = queue.pop(0)
        if isinstance(eff, AskManifest):
            tries, through = tries + 1, False
            queue += fetch.on_manifest("a", Server().manifest())
        elif isinstance(eff, AskPart):
            if not through:  # one part a try gets through, the link drops with the others
                through = True
                queue += fetch.on_part("a", eff.part, Server().part(eff.part))
        elif isinstance(eff, WritePart):
            file[eff.offset:eff.offset + len(eff.data)] = eff.data
        elif isinstance(eff, CheckFile):
            queue += fetch.on_checked(hashlib.sha256(bytes(file[:eff.size])).hexdigest())
        elif isinstance(eff, Finished):
            assert eff.ok, eff
            break
        if not queue and fetch.state == "parts":
            queue += fetch.on_lost("a", "sent nothing for 30 s", quiet=True)
    assert fetch.state == "done" and bytes(file) == MODEL and tries == 4
