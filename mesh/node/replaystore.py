"""Replay memory that survives a restart, for the one case the restart floor cannot cover.

After a restart a node refuses every envelope stamped before it started, which covers anything captured
earlier from a peer whose clock is behind or level with ours. An envelope stamped *ahead* of our clock
(a peer running fast, within the ±window) can be stamped after our restart although it was sent before
it; for those, and only those, the sender's sequence number is written to disk before the envelope is
acted on, and loaded back at start."""

from __future__ import annotations

import json
from pathlib import Path

from mesh.node.home import write_private


class ReplayStore:
    def __init__(self, path: Path, window_ms: int):
        self.path = path
        self.window_ms = window_ms
        self.marks: dict[str, list[int]] = {}  # sender key hex → [highest seq, its timestamp]

    def load(self, now_ms: int) -> dict[bytes, int]:
        """Marks still inside the window (older ones are refused as stale anyway)."""
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            raw = {}
        for key, mark in raw.items() if isinstance(raw, dict) else ():
            if (isinstance(mark, list) and len(mark) == 2 and all(isinstance(x, int) for x in mark)
                    and mark[1] >= now_ms - self.window_ms and len(key) == 64):
                self.marks[key] = mark
        return {bytes.fromhex(k): m[0] for k, m in self.marks.items()}

    def remember(self, sender: bytes, seq: int, ts_ms: int, now_ms: int) -> None:
        """Write-through: durable before the envelope is handled."""
        self.marks = {k: m for k, m in self.marks.items() if m[1] >= now_ms - self.window_ms}
        self.marks[sender.hex()] = [seq, ts_ms]
        write_private(self.path, json.dumps(self.marks))
