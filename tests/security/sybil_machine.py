"""One machine running many colluding ids (tests/security/test_sybil_netns.py starts it inside a network
namespace of its own). Each id is a HostilePeer linked to the node at ADDR that introduces itself with a
signed hello whose record advertises a /24 of its own (what it claims is not what counts) and offers
python; every step the node gives any of them is answered at once with the group's one wrong answer.
OUT (JSON, rewritten whole at each change) holds the ids and every (id, job, step) answered; it runs
until killed, or for `--for` seconds.

    python -m tests.security.sybil_machine ADDR OUT --source IP [--ids 20] [--for 600]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from mesh.wire.canonical import digest
from mesh.wire.envelope import ANYONE
from mesh.wire.messages import Hello, StepResult, Work
from mesh.wire.records import make_record

from .hostile import HostilePeer, asked_of, now_ms

WRONG = "pwned"


def write(out: Path, state: dict) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("addr")
    ap.add_argument("out", type=Path)
    ap.add_argument("--source", required=True, help="this machine's address: the links connect from it")
    ap.add_argument("--ids", type=int, default=20)
    ap.add_argument("--for", dest="seconds", type=float, default=600.0)
    args = ap.parse_args()
    deadline = time.monotonic() + args.seconds
    sybils = [HostilePeer(args.addr, timeout=30, source=args.source) for _ in range(args.ids)]
    for i, s in enumerate(sybils):
        rec = make_record(s.identity, s.network, f"10.{i + 1}.0.1:4750", ["python"], [], True, now_ms())
        s.send(s.seal("hello", ANYONE, Hello(rec, [])))
    state = {"ids": [s.node_id for s in sybils], "answered": []}
    write(args.out, state)
    seen = [0] * len(sybils)
    while time.monotonic() < deadline:
        changed = False
        for k, s in enumerate(sybils):
            s.expect(lambda f: False, 0.01)  # read what arrived
            for f in s.received[seen[k]:]:
                if f["kind"] != "step":
                    continue
                job, step = f["payload"]["job"], f["payload"]["step"]
                s.send(s.seal("result", bytes.fromhex(f["from"]),  # to whoever asked: the node
                              StepResult(job, step, True, WRONG, digest(WRONG), "python:bwrap", Work(cpu_s=0.01),
                                         asked=asked_of(f))))
                state["answered"].append([s.node_id, job, step])
                changed = True
            seen[k] = len(s.received)
        if changed:
            write(args.out, state)


if __name__ == "__main__":
    main()
