"""The run's trace: every decision as one record, folded into a SHA-256 (the trace hash) and, when a
file is given, written as JSON lines after a header holding the scenario text and seed. Replaying a
trace re-runs it and compares record by record, naming the first that differs."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any

from mesh.errors import UserError
from mesh.userfiles import open_regular

FORMAT = "homemesh-sim-trace/1"


class TraceError(UserError):
    """A trace file that is not one (or is damaged)."""


class Diverged(Exception):
    """A replay made a different decision from the recorded one."""

    def __init__(self, line: int, expected: str, got: str):
        super().__init__(f"trace differs at record {line}: recorded {expected}, replay made {got}")
        self.line, self.expected, self.got = line, expected, got


class Trace:
    def __init__(self, engine_now: Any, out: IO[str] | None = None, expect: IO[str] | None = None):
        self._now = engine_now  # callable → virtual seconds
        self._hash = hashlib.sha256()
        self._out = out
        self._expect = expect
        self.records = 0

    def add(self, kind: str, *fields: Any) -> None:
        line = json.dumps([round(self._now() * 1e6), kind, *fields], separators=(",", ":"))
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self.records += 1
        if self._out is not None:
            self._out.write(line + "\n")
        if self._expect is not None:
            try:  # (no longer than the line it must equal: a record of gigabytes is not read whole)
                want = self._expect.readline(len(line) + 1).rstrip("\n")
            except UnicodeDecodeError:  # (a damaged byte raised a traceback)
                want = "<a line that is not UTF-8>"
            if want != line:
                raise Diverged(self.records, want or "<end of trace>", line)

    @property
    def hash(self) -> str:
        return self._hash.hexdigest()


def header(scenario_text: str, source: str, seed: int, overrides: dict) -> str:
    return json.dumps({"format": FORMAT, "scenario": scenario_text, "source": source, "seed": seed,
                       "overrides": overrides})


MAX_HEADER = 2 << 20  # bytes of a trace's header line: the scenario's text (MAX_SCENARIO) and the run's settings


def read_header(path: Path) -> tuple[dict, IO[str]]:
    """The header of a trace file and the file, positioned at its first record. Only a regular file is
    read (/dev/zero's one endless line filled memory, a FIFO hung), and its header's fields are checked: a
    header without a scenario or with a seed that is not a whole number raised a traceback."""
    f = os.fdopen(open_regular(path, "trace", TraceError), encoding="utf-8")
    try:
        line = f.readline(MAX_HEADER + 1)
        if len(line) > MAX_HEADER:
            raise ValueError
        head = json.loads(line)
        if not isinstance(head, dict) or head.get("format") != FORMAT or not isinstance(head.get("scenario"), str) \
                or type(head.get("seed")) is not int or not isinstance(head.get("source", ""), str) \
                or not isinstance(head.get("overrides") or {}, dict):
            raise ValueError
    except (ValueError, RecursionError, OSError):  # (UnicodeDecodeError is a ValueError)
        f.close()
        raise TraceError(f"{path} is not a homemesh simulator trace (written by `mesh simulate --trace`)") from None
    return head, f


def footer(trace_hash: str, records: int) -> str:
    return json.dumps({"trace_hash": trace_hash, "records": records})
