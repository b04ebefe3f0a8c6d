"""Envelopes against raw Ed25519: messages per second through seal → frame → decode → receive (every
check a node makes) ÷ signing and verifying the same payload bytes with `cryptography` alone.

Goal: envelope_vs_raw ≥ 0.9 — the envelope's JSON, framing, replay and schema checks should cost little
next to the signature itself."""

from __future__ import annotations

import argparse
import statistics
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesh.wire.canonical import canonical
from mesh.wire.envelope import FrameDecoder, Receiver, Sealer
from mesh.wire.identity import Identity
from mesh.wire.messages import StepResult, Work
from mesh.wire.schema import dump

from .abab import abab, pin
from .report import emit


def payload() -> StepResult:
    text = "The capital of France is Paris. " * 8  # a typical llm answer, ~260 characters
    return StepResult("a" * 20, "answer", True, text, "d" * 64, "gguf:" + "e" * 64, Work(tokens=64, seconds=1.0))


def raw(n: int) -> float:
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    body = canonical(dump(payload()))
    t0 = time.perf_counter()
    for _ in range(n):
        sig = key.sign(body)
        pub.verify(sig, body)
    return n / (time.perf_counter() - t0)


def enveloped(n: int) -> float:
    sender, receiver_id = Identity.generate(), Identity.generate()
    sealer = Sealer(sender, "bench")
    receiver = Receiver(receiver_id.public_key, "bench", window_ms=10**12)
    decoder = FrameDecoder()
    msg = payload()
    now = int(time.time() * 1000)
    t0 = time.perf_counter()
    for _ in range(n):
        frame = sealer.seal("result", receiver_id.public_key, msg, now)
        for body in decoder.feed(frame):
            receiver.receive(body, now)
    return n / (time.perf_counter() - t0)


def run(n: int = 5000, pairs: int = 5) -> dict:
    # an envelope is a sign + verify and more: faster than the bare pair means the bare pair was slowed
    r = abab("envelope_vs_raw", lambda: raw(n), lambda: enveloped(n), pairs, plausible=(0.0, 1.02))
    return {"messages": n, "raw_sign_verify_per_s": round(statistics.median(b for b, _ in r.pairs)),
            "envelope_per_s": round(statistics.median(s for _, s in r.pairs)), **r.fields()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--pairs", type=int, default=5, help="baseline/subject runs, alternating (at least 5)")
    ap.add_argument("--cpus", default="0", help="CPU set both sides run on (default 0)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cpus = pin(args.cpus)
    emit({**run(args.messages, args.pairs), "cpus": cpus}, args.json)


if __name__ == "__main__":
    main()
