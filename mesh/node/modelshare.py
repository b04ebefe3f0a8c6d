"""Models travelling between peers: serving the parts of the models this node holds (bandwidth-capped),
and fetching a model this node lacks from peers that advertise it, driving mesh.core.modelfetch (parts
checked against the source's manifest as they come, the whole file against the SHA-256 asked for at the
end, a lying source penalised). A fetch writes HOME/models/SHA.part and, after every part, its manifest
and the parts written to SHA.fetch.json, so a node that crashed or slept resumes where it was."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict, dataclass
from pathlib import Path

from mesh.core.modelfetch import (
    WINDOW,
    AskManifest,
    AskPart,
    CheckFile,
    Effect,
    Finished,
    ModelFetch,
    Penalise,
    Restart,
    WritePart,
)
from mesh.errors import ConfigError, ModelFileError, Rejected
from mesh.node.flow import KeyedBuckets
from mesh.steps.gguf import check_gguf
from mesh.steps.models import sha256_file
from mesh.steps.registry import NAME, Registry
from mesh.wire.messages import MODEL_PART, ModelAsk, ModelManifest, ModelPart

log = logging.getLogger("mesh.node.modelshare")

MODELS_DIR = "models"
SERVE_BPS = 32 << 20  # bytes per second this node serves model parts at, to all peers together
SERVE_AT_ONCE = 4  # model asks answered at once (more wait)
MAX_WAITING = 64  # model asks held at once, answered or waiting; more are dropped
# ... of them, one peer's: a fetch has WINDOW parts (or a manifest) out at once, and a node may fetch a few
# models from one source. First come, first served, one peer's part asks (reading all it was sent) held all 64
# and another peer's fetch saw its asks dropped (found by this project's third attack round, 2026-12-07). Past
# MAX_WAITING, a newcomer's ask takes the place of the newest waiting ask of the peer holding most, if it
# holds more than the newcomer would (FairTurns.bump), and turns go round the waiting peers
PEER_WAITING = 4 * WINDOW
# manifests one peer is sent (burst, then per second): a fetch asks its source for one. Answered every time, one
# peer's asks (100 bytes each) pulled 1,987 manifests of the default model (63 MiB) in 11.5 s out of a node and
# held its loop at 61% of a core (found by this project's second attack round of 2026-12-06)
MANIFEST_RULE = (4.0, 0.1)
# bytes a peer may leave unread on its link before its part asks are dropped: a fetcher asks for WINDOW parts
# at a time (each ~700 KB as a frame); one that asked and never read had 1 GB queued here at 32 MiB/s
SERVE_BACKLOG = 2 * WINDOW * MODEL_PART
MANIFEST_BYTES, PART_HASH_BYTES = 200, 67  # a manifest on the wire: about this, and this much more a part
ASK_TIMEOUT_S = 30.0  # a source that sends nothing for this long hands over to the next
# ... and one that sends less than this on average over each window: a source answering every part just
# inside ASK_TIMEOUT_S held a node's one fetch for steps for hours (2 Mbit/s: most home uplinks give more)
MIN_RATE_BPS = 256 << 10
RATE_WINDOW_S = 60.0
SPURN_S = 6 * 3600.0  # a source caught serving another file than the model asked for is not asked for it again
MAX_SPURNED = 4096
MAX_MALFORMED = 1024  # models remembered as not well-formed GGUF files (never fetched again by this process)
# what a whole fetched model counts at least against --fetch-models: the runner process it is loaded in
# (73 MiB of RSS for a 116 KB GGUF, measured 2026-12-06), so a thousand tiny models are not a small allowance
MODEL_FLOOR = 128 << 20
# a part's frame on the wire at most (its base64 and the envelope around it), and what the links of a source
# may be owed at once for parts asked of it: read past their byte rate (flow.TokenBucket.grant)
PART_FRAME = 4 * -(-MODEL_PART // 3) + 4096
ASKED_CAP = 2 * WINDOW * PART_FRAME
FETCH_LIMIT = 4 << 30  # bytes a fetch by hand may bring in unless told otherwise


@dataclass
class FetchStatus:
    """One fetch as `mesh models fetch` and GET /models/fetch show it."""

    sha256: str
    state: str  # fetching | done | failed
    done_bytes: int = 0
    size: int = 0
    source: str = ""  # the peer parts come from now
    error: str = ""
    name: str = ""  # its name in the registry once done
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


class ModelServer:
    """Answers `model-ask`s for the models this node serves: a manifest (hashed once per file, in a
    thread) or one part, all peers together held to SERVE_BPS."""

    def __init__(self, served: Callable[[], dict[str, Path]], send: Callable[[object, str, object], bool],
                 bps: int = SERVE_BPS, corrupt: bool = False, backlog: Callable[[object], int] = lambda peer: 0,
                 group: Callable[[object], object] | None = None):
        self.served, self.send, self.bps, self.backlog = served, send, bps, backlog
        # the group a peer's asks take turns in (the node: the network prefix it connects from); by default
        # each peer is its own
        self.group = group or _node_of
        self.corrupt = corrupt  # tests (--fault corrupt-model): every part sent with its first byte changed
        self._manifests: dict[str, ModelManifest] = {}
        self._turns = FairTurns(SERVE_AT_ONCE, group=lambda turn: turn[0])  # turns by (group, node id)
        self._next_free = 0.0  # monotonic time the bandwidth budget is spent until
        self._held: Counter[object] = Counter()  # asks being answered or waiting their turn, by asking peer
        self._manifests_sent = KeyedBuckets()  # per asking peer, held to MANIFEST_RULE

    def admits(self, peer: object, part: int) -> bool:
        """Whether an ask of `part` from `peer` would be taken now, spending nothing: a flood of asks that
        would be dropped can be refused before its envelope's signature is checked (Node.screen)."""
        who = _node_of(peer)
        if part < 0 and not self._manifests_sent.allows(who, MANIFEST_RULE, time.monotonic()):
            return False
        return self._held[who] < PEER_WAITING and (self._waiting < MAX_WAITING or
                                                   self._turns.most((self.group(peer), who)))

    @property
    def _waiting(self) -> int:
        return sum(self._held.values())

    async def serve(self, peer: object, ask: ModelAsk) -> None:
        who = _node_of(peer)
        if not self.admits(peer, ask.part):
            # a flood of asks, a manifest asked for again and again, or a full line where nobody holds more
            # than this peer would: dropped, as a busy link drops (the asker times out)
            return
        turn = (self.group(peer), who)  # (its group as it is now, kept for the whole ask)
        if self._waiting >= MAX_WAITING:
            self._turns.bump(turn)  # (admitted while full: some peer waiting holds more, and gives a place up)
        if ask.part < 0:
            self._manifests_sent.spend(who, MANIFEST_RULE, time.monotonic())
        self._held[who] += 1
        try:
            await self._serve(peer, turn, ask)
        except Bumped:
            return  # its place went to a peer holding fewer: dropped as above
        finally:
            self._held[who] -= 1
            if not self._held[who]:
                del self._held[who]

    async def _serve(self, peer: object, turn: tuple[object, str], ask: ModelAsk) -> None:
        path = self.served().get(ask.sha)
        if path is None:
            # a manifest too, held to MANIFEST_RULE whatever part was asked (an ask of part 0 of a made-up model
            # had one signed at once, every time; an ask of part -1 spent its token in serve())
            if ask.part < 0 or self._manifests_sent.spend(turn[1], MANIFEST_RULE, time.monotonic()):
                self.send(peer, "model-manifest", ModelManifest(ask.sha, 0, [], "not served here"))
            return
        async with self._turns.turn(turn):
            manifest = self._manifests.get(ask.sha)
            if manifest is None:
                manifest = await asyncio.to_thread(_manifest_of, path, ask.sha)
                self._manifests[ask.sha] = manifest
            if ask.part < 0 or manifest.error:  # (its bytes count against SERVE_BPS as a part's do)
                if self.backlog(peer) <= SERVE_BACKLOG:
                    await self._throttle(MANIFEST_BYTES + len(manifest.parts) * PART_HASH_BYTES)
                    self.send(peer, "model-manifest", manifest)
                return
            if ask.part >= len(manifest.parts) or self.backlog(peer) > SERVE_BACKLOG:
                return  # no such part (a confused or probing peer), or it has not read what it asked before
            data = await asyncio.to_thread(_read, path, ask.part * MODEL_PART, MODEL_PART)
            if hashlib.sha256(data).hexdigest() != manifest.parts[ask.part]:
                # the file changed since it was hashed: a model kept where another user may write was swapped
                # for a link to a root-only file, read by name again for each part and sent to the asker
                # (this project's red team, 2026-12-07). Nothing goes out that is not the model's own bytes.
                self._manifests.pop(ask.sha, None)
                log.warning("model %s: part %d of %s is not what was hashed (the file changed): not sent",
                            ask.sha[:12], ask.part, path)
                return
            if self.corrupt and data:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            await self._throttle(len(data))
            if self.backlog(peer) <= SERVE_BACKLOG:  # (again: other asks of its may have gone out meanwhile)
                self.send(peer, "model-part", ModelPart(ask.sha, ask.part, base64.b64encode(data).decode()))

    async def _throttle(self, size: int) -> None:
        now = time.monotonic()
        start = max(now, self._next_free)
        self._next_free = start + size / self.bps
        if start > now:
            await asyncio.sleep(start - now)


def _node_of(peer: object) -> object:
    """A peer's node id (tests pass plain names)."""
    return getattr(peer, "node", peer)


class Bumped(Exception):
    """A waiting ask whose place went to another peer's (FairTurns.bump): the asker times out and asks again."""


class FairTurns:
    """Turns at serving, SERVE_AT_ONCE at a time, handed round the waiting groups (network prefixes) and,
    within a group, round its waiting peers, not in the order asked: with one queue, a peer with 60 asks
    waiting ahead of another's 4 was served 60 parts first, each holding its share of the serving budget;
    and with turns by peer alone, four ids on one machine took four fifths of them, a fifth each cost only
    its proof of work. `group(who)` names who's group (by default each peer is its own)."""

    def __init__(self, at_once: int, group: Callable[[object], object] = lambda who: who):
        self.free = at_once
        self.group = group
        # group → peer → its waiting asks; the group and, within it, the peer next in turn first
        self.queues: OrderedDict[object, OrderedDict[object, deque[asyncio.Future]]] = OrderedDict()

    def _waiting(self, group: object) -> int:
        return sum(len(q) for q in self.queues.get(group, {}).values())

    def _victim(self, who: object) -> tuple[object, object] | None:
        """(group, peer) whose newest waiting ask gives way to one more of `who`'s: in the group with most
        waiting, when that is another group than who's and holds more than who's would with one more; else,
        within who's group, the peer with most waiting, when it holds more than who would. None: nobody."""
        mine = self.group(who)
        others = [g for g in self.queues if g != mine]
        if others:
            group = max(others, key=self._waiting)
            if self._waiting(group) > self._waiting(mine) + 1:
                peers = self.queues[group]
                return group, max(peers, key=lambda p: len(peers[p]))
        peers = self.queues.get(mine, {})
        rivals = [p for p in peers if p != who]
        if rivals:
            peer = max(rivals, key=lambda p: len(peers[p]))
            if len(peers[peer]) > len(peers.get(who, ())) + 1:
                return mine, peer
        return None

    def most(self, who: object) -> bool:
        """Whether another group, or another peer of who's group, has more asks waiting than who's would with
        one more."""
        return self._victim(who) is not None

    def bump(self, who: object) -> bool:
        """Make room for one more ask of `who`: the newest waiting ask of the peer `_victim` names ends
        (Bumped). False when nobody holds more."""
        victim = self._victim(who)
        if victim is None:
            return False
        group, peer = victim
        waiter = self.queues[group][peer].pop()
        self._drop_empty(group, peer)
        if not waiter.done():  # (one cancelled, its task not yet resumed to forget it, is simply gone)
            waiter.set_exception(Bumped())
        return True

    def _drop_empty(self, group: object, peer: object) -> None:
        peers = self.queues[group]
        if not peers[peer]:
            del peers[peer]
        if not peers:
            del self.queues[group]

    @contextlib.asynccontextmanager
    async def turn(self, who: object):
        if self.free > 0 and not self.queues:
            self.free -= 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            self.queues.setdefault(self.group(who), OrderedDict()).setdefault(who, deque()).append(waiter)
            try:
                await waiter
            except BaseException:
                self._forget(who, waiter)
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._next()  # given a turn as it was cancelled: handed on
                raise
        try:
            yield
        finally:
            self._next()

    def _forget(self, who: object, waiter: asyncio.Future) -> None:
        group = self.group(who)
        q = self.queues.get(group, {}).get(who)
        if q is not None and waiter in q:
            q.remove(waiter)
            self._drop_empty(group, who)

    def _next(self) -> None:
        """A turn ended: the group first in line gets it, for its peer first in line, and both go to the back
        of their lines."""
        while self.queues:
            group, peers = next(iter(self.queues.items()))
            who, q = next(iter(peers.items()))
            waiter = q.popleft()
            del peers[who]
            if q:
                peers[who] = q  # (re-inserted last: its next ask waits for its group's others)
            del self.queues[group]
            if peers:
                self.queues[group] = peers  # (and the group's next waits for the other groups)
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


def _manifest_of(path: Path, sha: str) -> ModelManifest:
    """The manifest of the file at `path`, or an error when it is no longer the model registered."""
    whole, parts, size = hashlib.sha256(), [], 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MODEL_PART), b""):
            whole.update(block)
            parts.append(hashlib.sha256(block).hexdigest())
            size += len(block)
    if whole.hexdigest() != sha:
        return ModelManifest(sha, 0, [], "its file changed since it was registered")
    return ModelManifest(sha, size, parts)


def _check_file(path: Path, sha: str) -> tuple[str, str]:
    """A fetched file's SHA-256 and, when it is the model asked for, what is wrong with its GGUF structure
    ('' : nothing): it is checked before it is registered, loaded or served (its namer may be its server)."""
    digest = sha256_file(path)
    if digest != sha:
        return digest, ""
    try:
        check_gguf(path)
    except ModelFileError as exc:
        return digest, str(exc).replace(str(path), path.name)
    return digest, ""


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


class ModelFetcher:
    """Fetches models this node lacks: one task per model, owned by the node (`spawn`: cancelled at its
    shutdown; the fetch resumes at the next start when asked again)."""

    def __init__(self, home: Path, send: Callable[[str, str, object], bool], holders: Callable[[str], list[str]],
                 penalise: Callable[[str, str], None], install: Callable[[str, Path, str], Awaitable[str]],
                 spawn: Callable[[Coroutine], asyncio.Task], expect: Callable[[str, int, int], None] | None = None):
        self.dir = home / MODELS_DIR
        self.registry = Registry(home)
        self.send, self.holders, self.penalise, self.install, self.spawn = send, holders, penalise, install, spawn
        # (peer, bytes, cap): a part was asked of the peer; its links may send that much past their byte rate
        self.expect = expect or (lambda peer, n, cap: None)
        self.status: dict[str, FetchStatus] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._inbox: dict[str, asyncio.Queue] = {}
        self._spurned: dict[tuple[str, str], float] = {}  # (model, source) → when it was caught lying about it
        self._malformed: dict[str, str] = {}  # model → what is wrong with its file (it had the SHA-256 asked for)

    def start(self, sha: str, max_bytes: int = FETCH_LIMIT, sources: list[str] | None = None,
              name: str = "") -> FetchStatus:
        """Start fetching `sha` (or report the fetch under way). ConfigError when there is nothing to do."""
        if name and not NAME.match(name):
            raise ConfigError(f"model name {name!r}: use 1-64 letters, digits, '.', '-' or '_'")
        if any(e.sha256 == sha for e in self.registry.entries()):
            raise ConfigError(f"model {sha[:12]} is already in this node's registry")
        if sha in self._tasks and not self._tasks[sha].done():
            return self.status[sha]
        if sha in self._malformed:
            raise ConfigError(f"model {sha[:12]} is not a well-formed GGUF file (found when it was fetched: "
                              f"{self._malformed[sha]})")
        holders = self.holders(sha)
        peers = holders if sources is None else [p for p in sources if p in holders]  # (in the order named)
        if not peers:
            raise ConfigError(f"no peer linked now serves model {sha[:12]}" + (" (of those named)" if sources else ""))
        now = time.monotonic()
        peers = [p for p in peers if now - self._spurned.get((sha, p), -SPURN_S) >= SPURN_S]
        if not peers:
            raise ConfigError(f"the peers serving model {sha[:12]} were caught serving another file for it in "
                              f"the last {SPURN_S / 3600:g} hours")
        self.status[sha] = FetchStatus(sha, "fetching", name=name)
        self._inbox[sha] = asyncio.Queue(maxsize=4 * WINDOW)
        self._tasks[sha] = self.spawn(self._run(sha, max_bytes, peers, name))
        return self.status[sha]

    def under_way(self) -> list[str]:
        """The models being fetched now."""
        return [sha for sha, task in self._tasks.items() if not task.done()]

    async def wait(self, sha: str) -> FetchStatus:
        """The fetch of `sha` once it has ended. Shielded: a step that stops waiting (cancelled, its
        submitter gone) does not stop the fetch other steps may wait for."""
        task = self._tasks[sha]
        await asyncio.shield(task)
        return self.status[sha]

    def bytes_held(self, sha: str = "") -> int:
        """Bytes of model files this node fetched (whole or in part; a whole one at least MODEL_FLOOR), less
        the part of `sha` a fetch would resume from: what counts against the --fetch-models allowance."""
        if not self.dir.is_dir():
            return 0
        total = 0
        for f in self.dir.iterdir():
            if f.suffix in (".gguf", ".part") and f.name != f"{sha}.part":
                with contextlib.suppress(OSError):
                    size = f.stat().st_size
                    total += max(size, MODEL_FLOOR) if f.suffix == ".gguf" else size
        return total

    def reclaim(self, keep: str) -> int:
        """Delete what fetches no longer under way left, but `keep`'s (a part file and its record); the bytes
        freed. A fetch for a step makes room this way: a source that served most of the allowance and went
        silent left a part that held it for good, and no step could fetch a model again."""
        if not self.dir.is_dir():
            return 0
        busy, freed = set(self.under_way()) | {keep}, 0
        for f in self.dir.iterdir():
            sha, _, rest = f.name.partition(".")
            if rest in ("part", "fetch.json") and sha not in busy:
                with contextlib.suppress(OSError):
                    size = f.stat().st_size
                    f.unlink()
                    freed += size if rest == "part" else 0
        return freed

    def on_answer(self, peer: str, kind: str, payload: ModelManifest | ModelPart) -> None:
        """A manifest or part for a fetch: queued only from the peer it is asked of now (anyone else's
        filled the queue ahead of the source's parts; full, it is a source sending what was not asked)."""
        inbox = self._inbox.get(payload.sha)
        st = self.status.get(payload.sha)
        if inbox is not None and st is not None and peer == st.source and not inbox.full():
            inbox.put_nowait((peer, kind, payload))

    async def _run(self, sha: str, max_bytes: int, peers: list[str], name: str) -> None:
        st, t0 = self.status[sha], time.monotonic()
        try:
            await self._fetch(sha, max_bytes, peers, name, st)
        except (OSError, ConfigError) as exc:
            st.state, st.error = "failed", str(exc)
        finally:
            st.seconds = round(time.monotonic() - t0, 3)
            self._inbox.pop(sha, None)
            part = self.dir / f"{sha}.part"
            with contextlib.suppress(OSError):
                if st.state == "failed" and part.stat().st_size == 0:  # nothing to resume: no litter
                    part.unlink()
            log.info("model fetch %s: %s %s", sha[:12], st.state, st.error)

    async def _fetch(self, sha: str, max_bytes: int, peers: list[str], name: str, st: FetchStatus) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        part, state = self.dir / f"{sha}.part", self.dir / f"{sha}.fetch.json"
        manifest, have = await asyncio.to_thread(_resume, part, state, sha)
        fetch = ModelFetch(sha, max_bytes, peers, manifest, have)
        queue: list[Effect] = fetch.start()
        with open(part, "r+b" if part.exists() else "w+b") as f:
            deadline = time.monotonic() + ASK_TIMEOUT_S  # moved on only by what the fetch acts on
            # judged by the bytes the source itself sent: done_bytes falls when its manifest voids a liar's parts
            # (read as a negative rate, it dropped the honest source that followed a liar)
            rate = _Rate(fetch.sent)
            tried = (time.monotonic(), fetch.sent)  # when the source's current try began, and its bytes then
            while True:
                while queue:
                    eff = queue.pop(0)
                    if isinstance(eff, AskManifest):  # (every try of a source begins with its manifest)
                        tried = (time.monotonic(), fetch.sent)
                    if isinstance(eff, Finished):
                        # (the parts of the last batch count too: a done fetch shows all its bytes)
                        st.done_bytes, st.size, st.source = fetch.done_bytes, fetch.size, fetch.source
                        if not eff.ok:
                            st.state, st.error = "failed", eff.why
                            return
                        f.close()
                        final = self.dir / f"{sha}.gguf"
                        # readable by the step user, whom the model process drops to before llama.cpp parses
                        # it (mesh/steps/model_worker.py); the node's home (0700) keeps it from anyone else
                        os.chmod(part, 0o644)
                        os.replace(part, final)
                        state.unlink(missing_ok=True)
                        st.name = await self.install(sha, final, name)
                        st.state = "done"
                        return
                    queue += await self._apply(eff, fetch, f, state, sha)
                if fetch.source != st.source:
                    deadline = time.monotonic() + ASK_TIMEOUT_S  # a new source's time starts
                    rate = _Rate(fetch.sent)
                st.done_bytes, st.size, st.source = fetch.done_bytes, fetch.size, fetch.source
                slow = rate.slow(fetch.sent)
                if slow:
                    queue += fetch.on_lost(fetch.source, slow)
                    deadline, rate = time.monotonic() + ASK_TIMEOUT_S, _Rate(fetch.sent)
                    continue
                try:
                    peer, kind, payload = await asyncio.wait_for(
                        self._inbox[sha].get(), max(0.0, min(deadline, rate.ends) - time.monotonic()))
                except asyncio.TimeoutError:
                    if time.monotonic() >= deadline:
                        # asked again later only if this try, its silence counted, kept to the least rate: two
                        # sources taking turns at a part and a silence each would hold the fetch for days
                        kept_up = fetch.sent - tried[1] >= MIN_RATE_BPS * (time.monotonic() - tried[0])
                        why = f"sent nothing for {ASK_TIMEOUT_S:g} s"
                        queue += fetch.on_lost(fetch.source, why, quiet=kept_up)
                        deadline = time.monotonic() + ASK_TIMEOUT_S
                    continue  # (else the rate's window ended: judged at the top)
                if kind == "model-manifest":
                    acted = fetch.on_manifest(peer, payload)
                else:
                    try:
                        data = base64.b64decode(payload.data, validate=True)
                    except (binascii.Error, ValueError):
                        data = b""  # not base64: it cannot match its manifest, and is penalised as such
                    acted = fetch.on_part(peer, payload.part, data)
                if acted:  # a manifest repeated or a part not asked for is no sign of life: it waited forever
                    deadline = time.monotonic() + ASK_TIMEOUT_S
                queue += acted

    async def _apply(self, eff: Effect, fetch: ModelFetch, f, state: Path, sha: str) -> list[Effect]:
        if isinstance(eff, AskManifest | AskPart):
            part = -1 if isinstance(eff, AskManifest) else eff.part
            if not self.send(eff.peer, "model-ask", ModelAsk(sha, part)):
                return fetch.on_lost(eff.peer, "not linked")
            if part >= 0:
                self.expect(eff.peer, PART_FRAME, ASKED_CAP)
        elif isinstance(eff, WritePart):
            f.seek(eff.offset)
            f.write(eff.data)
            f.flush()
            _save(state, fetch)
        elif isinstance(eff, Restart):
            f.truncate(0)
            state.unlink(missing_ok=True)
        elif isinstance(eff, CheckFile):
            f.flush()
            os.fsync(f.fileno())
            f.truncate(eff.size)
            digest, malformed = await asyncio.to_thread(_check_file, Path(f.name), sha)
            if malformed:
                log.warning("model fetch %s: the file has the SHA-256 asked for but is not a well-formed GGUF "
                            "file; deleted, its sources penalised: %s", sha[:12], malformed)
                self._malformed[sha] = malformed
                while len(self._malformed) > MAX_MALFORMED:
                    del self._malformed[next(iter(self._malformed))]
            return fetch.on_checked(digest, malformed)
        elif isinstance(eff, Penalise):
            log.warning("model fetch %s: peer %s penalised: %s", sha[:12], eff.peer[:12], eff.reason)
            self.penalise(eff.peer, eff.reason)
            self._spurned.pop((sha, eff.peer), None)
            self._spurned[(sha, eff.peer)] = time.monotonic()  # (the newest last)
            while len(self._spurned) > MAX_SPURNED:
                del self._spurned[next(iter(self._spurned))]
        return []


class _Rate:
    """One source's bytes over the current window of RATE_WINDOW_S: under MIN_RATE_BPS on average, it is slow."""

    def __init__(self, done: int) -> None:
        self.ends, self.done = time.monotonic() + RATE_WINDOW_S, done

    def slow(self, done: int) -> str:
        """Why the source is too slow, once a window has ended ('' if it is not; a new window begins)."""
        if time.monotonic() < self.ends:
            return ""
        got, self.ends, self.done = done - self.done, time.monotonic() + RATE_WINDOW_S, done
        if got >= MIN_RATE_BPS * RATE_WINDOW_S:
            return ""
        return f"sent {got:,} bytes in {RATE_WINDOW_S:g} s, under {MIN_RATE_BPS >> 10} KiB/s"


def _save(state: Path, fetch: ModelFetch) -> None:
    """The manifest and the parts written, replaced atomically: a crash leaves the last whole record."""
    assert fetch.manifest is not None
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps({"size": fetch.manifest.size, "parts": fetch.manifest.parts, "have": sorted(fetch.have)}))
    os.replace(tmp, state)


def _resume(part: Path, state: Path, sha: str) -> tuple[ModelManifest | None, set[int]]:
    """What an interrupted fetch left: its manifest, and the parts on disk that still match it (each is
    hashed again: the record is written after the part, but a disk may lie)."""
    try:
        saved = json.loads(state.read_text())
        manifest = ModelManifest(sha, int(saved["size"]), list(saved["parts"]))
        claimed = {int(p) for p in saved["have"]}
    except (OSError, ValueError, KeyError, TypeError, Rejected):
        return None, set()
    if not part.exists():
        return manifest, set()
    have = set()
    with open(part, "rb") as f:
        for p in sorted(claimed):
            if 0 <= p < len(manifest.parts):
                f.seek(p * MODEL_PART)
                if hashlib.sha256(f.read(MODEL_PART)).hexdigest() == manifest.parts[p]:
                    have.add(p)
    return manifest, have
