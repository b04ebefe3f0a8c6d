"""Replay memory that survives a restart, for the one case the restart floor cannot cover.

After a restart a node refuses every envelope stamped before it started, which covers anything captured
earlier from a peer whose clock is behind or level with ours. An envelope stamped *ahead* of our clock
(a peer running fast, within the ±window) can be stamped after our restart although it was sent before
it; for those, and only those, the sender's sequence number is written to disk before the envelope is
acted on, and loaded back at start.

The file is append-only: one JSON object per line, `{sender key hex: [seq, its timestamp]}`, later lines
winning (the first line may be a whole snapshot, as older nodes wrote it). Per envelope the event loop
pays one small write(2), no rewrite and no fsync: once write(2) returns, the mark is in the kernel and
survives the node being killed. Against a power cut the file is fsynced off the loop, at most SYNC_S
after the first unsynced mark, and at close; so a power cut can lose at most the last SYNC_S of marks.
When the log has grown well past the live marks it is compacted: the marks still inside the window are
written to a new file, which is fsynced, renamed over the log, and the directory fsynced."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from mesh.errors import UserError
from mesh.userfiles import open_regular

log = logging.getLogger("mesh.node.replaystore")
SYNC_S = 0.2  # longest a mark stays written but not yet fsynced
COMPACT_MIN_LINES = 1024  # compact once the log has this many lines and 4× the live marks
# bytes of the log read at start, from its end: compaction keeps it to a few MB (20,000 senders' marks, 4× over);
# a larger one is not this node's writing, and later lines win, so its newest marks are what counts
MAX_READ = 64 << 20


class ReplayStore:
    def __init__(self, path: Path, window_ms: int, sync_s: float = SYNC_S):
        self.path = path
        self.window_ms = window_ms
        self.sync_s = sync_s
        self.marks: dict[str, list[int]] = {}  # sender key hex → [highest seq, its timestamp]
        self._fd: int | None = None
        self._lines = 0  # lines in the log, snapshot included
        self._sync_pending: asyncio.TimerHandle | None = None
        self._unsynced = False

    def load(self, now_ms: int) -> dict[bytes, int]:
        """Marks still inside the window (older ones are refused as stale anyway). The log is compacted
        to them at once, so it starts each run small."""
        text = _tail(self.path, MAX_READ).decode("utf-8", "replace")  # damage spoils a line, not the file
        for line in text.splitlines():
            self._merge(line, now_ms)
        self._compact(now_ms)
        return {bytes.fromhex(k): m[0] for k, m in self.marks.items()}

    def _merge(self, line: str, now_ms: int) -> None:
        """Fold one line into the marks; a torn last line (the node died mid-write) is skipped."""
        try:
            raw = json.loads(line)
        except (ValueError, RecursionError):
            return
        for key, mark in raw.items() if isinstance(raw, dict) else ():
            if (isinstance(mark, list) and len(mark) == 2 and all(type(x) is int for x in mark)
                    and mark[1] >= now_ms - self.window_ms and len(key) == 64
                    and mark[0] > self.marks.get(key, [-1, 0])[0]):
                self.marks[key] = mark

    def remember(self, sender: bytes, seq: int, ts_ms: int, now_ms: int) -> None:
        """Write-through: in the kernel before the envelope is handled, on the disk within SYNC_S."""
        key = sender.hex()
        self.marks[key] = [seq, ts_ms]
        if self._fd is None:  # (load() not called, or closed)
            self._compact(now_ms)
            return
        os.write(self._fd, (json.dumps({key: [seq, ts_ms]}) + "\n").encode())
        self._lines += 1
        if self._lines >= max(COMPACT_MIN_LINES, 4 * len(self.marks)):
            self._compact(now_ms)
        else:
            self._unsynced = True
            self._schedule_sync()

    def _schedule_sync(self) -> None:
        if self._sync_pending is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a tool, a test): sync in place
            self.sync()
            return
        self._sync_pending = loop.call_later(self.sync_s, self._sync_off_loop, loop)

    def _sync_off_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """fsync in a worker thread, on a duplicate descriptor: a compaction or close on the loop
        meanwhile cannot pull the descriptor from under it."""
        self._sync_pending = None
        if self._fd is None or not self._unsynced:
            return
        self._unsynced = False
        loop.run_in_executor(None, _fsync_and_close, os.dup(self._fd), self.path)

    def sync(self) -> None:
        """fsync the log now."""
        if self._fd is not None and self._unsynced:
            self._unsynced = False
            _fsync_and_close(os.dup(self._fd), self.path)

    def close(self) -> None:
        """At shutdown: everything remembered is on the disk."""
        if self._sync_pending is not None:
            self._sync_pending.cancel()
            self._sync_pending = None
        self.sync()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _compact(self, now_ms: int) -> None:
        """Replace the log by one snapshot line of the marks inside the window: written to a temporary
        file, fsynced, renamed over the log, the directory fsynced (else the rename itself may not
        survive a power cut), and reopened for appending."""
        self.marks = {k: m for k, m in self.marks.items() if m[1] >= now_ms - self.window_ms}
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (json.dumps(self.marks) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._lines, self._unsynced = 1, False


def _fsync_and_close(fd: int, path: Path) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:  # the marks are still in the kernel; only a power cut could lose them
        log.error("cannot fsync the replay marks in %s: %s", path, exc)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tail(path: Path, limit: int) -> bytes:
    """The last `limit` bytes of a regular file at `path`, from a line's start (b"" when there is none):
    read whole, a log linked to /dev/zero filled memory at the node's start."""
    if not os.path.lexists(path):
        return b""
    try:
        fd = open_regular(path, "the replay log")
    except UserError as exc:
        log.warning("%s: starting without its replay marks", exc)
        return b""
    with os.fdopen(fd, "rb") as f:
        try:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - limit))
            data = f.read(limit)
        except OSError as exc:
            log.warning("cannot read %s (%s): starting without its replay marks", path, exc.strerror)
            return b""
    return data if size <= limit else data[data.find(b"\n") + 1:]
