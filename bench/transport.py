"""The peer transport: libp2p (TCP + Noise + Yamux, bytes crossing to a trio thread) against plain asyncio
TCP, the old path, as the baseline, both measured in this one run, in alternating rounds (tcp, libp2p,
tcp, libp2p, …) so drift on a shared machine hits both alike. Every figure is reported as min / median /
max over the rounds, and the ratios libp2p ÷ tcp.

1. In-process, two `Gateway`s on loopback in one asyncio loop: the dial (connect, and for libp2p the Noise
   handshake and stream), the round trip of a signed `bye` envelope (sealed, sent, every receiver check,
   echoed by the other gateway's handler: median and p90), and one-way throughput of ~64 KiB envelopes
   (sealed ahead; the receiver's checks are counted).
2. Real node processes: a 4-node mesh (`--no-model`) per round, started with `--transport tcp` or
   `--transport libp2p`: formation time (processes started until every node sees the 3 others; also
   the part of it until the first node is up and listening, mostly interpreter start and imports), the
   latency of a one-step python job at r=3, and jobs per second for a burst of such jobs submitted at once.

    python -m bench.transport [--rounds 3] [--pings 500] [--frames 100] [--mesh-rounds 2] [--jobs 24]
                              [--latency-jobs 5] [--nodes 4] [--json]

The defaults are the quick sizes (`python -m bench --quick`, 55-65 s here); the full run takes more
rounds and jobs. Nothing here is asserted: timings on a shared machine are for reading, not for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

from mesh.cli.local import LocalMesh
from mesh.node.flow import Limits
from mesh.node.gateway import Gateway, TcpTransport
from mesh.node.p2p.transport import Libp2pTransport
from mesh.wire.envelope import Receiver, Sealer
from mesh.wire.identity import Identity
from mesh.wire.messages import Bye

from .mesh_jobs import burst, one_job
from .report import emit
from .scale import tree_memory

NET = "bench-transport"
KINDS = ("tcp", "libp2p")  # baseline first in every round
BIG = 64_000  # characters of a throughput envelope's payload: a frame of ~64 KiB
# the node's per-connection rates (200 envelopes/s, 4 MiB/s) would measure the limits, not the transport
OPEN = Limits(msg_rate=1e9, msg_burst=1e9, byte_rate=1e12, byte_burst=1e12, max_debt_s=1e9)


def now_ms() -> int:
    return int(time.time() * 1000)


def spread(xs: list[float], digits: int = 3) -> dict:
    return {"min": round(min(xs), digits), "median": round(statistics.median(xs), digits),
            "max": round(max(xs), digits)}


def p90(xs: list[float]) -> float:
    return sorted(xs)[min(len(xs) - 1, int(0.9 * len(xs)))]


# -- 1. two gateways in one process ---------------------------------------------------------------------

class Echo:
    """The far side: answers every small `bye` with one back; counts big ones and acks the last."""

    def __init__(self, frames: int) -> None:
        self.gw: Gateway | None = None
        self.frames, self.big = frames, 0

    def on_envelope(self, env, conn) -> None:
        if len(env.payload.reason) < 100:
            self.gw.send(conn, "bye", env.sender, Bye(env.payload.reason))
            return
        self.big += 1
        if self.big == self.frames:
            self.big = 0
            self.gw.send(conn, "bye", env.sender, Bye("done"))

    def on_disconnect(self, conn) -> None:
        pass

    def on_abuse(self, conn, reason: str) -> None:
        raise RuntimeError(f"bench peer reported for {reason}")


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    def on_envelope(self, env, conn) -> None:
        self.queue.put_nowait(env)

    def on_disconnect(self, conn) -> None:
        pass

    def on_abuse(self, conn, reason: str) -> None:
        raise RuntimeError(f"bench server reported for {reason}")


def listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    return sock


def gateway(kind: str, ident: Identity, handler) -> Gateway:
    transport = TcpTransport() if kind == "tcp" else Libp2pTransport(ident, OPEN)
    return Gateway(Sealer(ident, NET), Receiver(ident.public_key, NET), handler, now_ms, 1 << 20, OPEN, transport)


async def gateway_round(kind: str, pings: int, frames: int) -> dict:
    server_id, client_id = Identity.generate(), Identity.generate()
    echo, inbox = Echo(frames), Inbox()
    server = echo.gw = gateway(kind, server_id, echo)
    client = gateway(kind, client_id, inbox)
    try:
        await server.start(listening_socket())  # libp2p closes this socket and binds its host there
        await client.start(listening_socket())
        t0 = time.perf_counter()
        conn = await client.dial(server.addresses[0], server_id.public_key)
        client.send(conn, "bye", server_id.public_key, Bye("ping"))  # the first envelope proves the key
        await asyncio.wait_for(inbox.queue.get(), 10)
        dial_s = time.perf_counter() - t0
        for _ in range(20):  # warm
            client.send(conn, "bye", server_id.public_key, Bye("warm"))
            await asyncio.wait_for(inbox.queue.get(), 10)
        rtts = []
        for _ in range(pings):
            t0 = time.perf_counter()
            client.send(conn, "bye", server_id.public_key, Bye("ping"))
            await asyncio.wait_for(inbox.queue.get(), 10)
            rtts.append(time.perf_counter() - t0)
        big = [client.sealer.seal("bye", server_id.public_key, Bye("x" * BIG), now_ms()) for _ in range(frames)]
        t0 = time.perf_counter()
        for frame in big:
            conn.write(frame)
        await asyncio.wait_for(inbox.queue.get(), 60)
        mb_s = sum(map(len, big)) / (time.perf_counter() - t0) / 1e6
        return {"dial_ms": dial_s * 1e3, "rtts_ms": [r * 1e3 for r in rtts], "mb_s": mb_s,
                "frame_bytes": len(big[0])}
    finally:
        await client.close()
        await server.close()


async def gateways(rounds: int, pings: int, frames: int) -> dict:
    # py-libp2p's AutoConnector logs its state at INFO every few seconds on every host: keep stderr readable
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.WARNING)
    by_kind: dict[str, list[dict]] = {k: [] for k in KINDS}
    for _ in range(rounds):
        for kind in KINDS:
            by_kind[kind].append(await gateway_round(kind, pings, frames))
    res: dict = {}
    for kind, runs in by_kind.items():
        pooled = [r for run in runs for r in run["rtts_ms"]]
        res[f"rtt_{kind}_ms"] = round(statistics.median(pooled), 4)
        res[f"rtt_p90_{kind}_ms"] = round(p90(pooled), 4)
        res[f"rtt_{kind}_ms_rounds"] = spread([statistics.median(r["rtts_ms"]) for r in runs], 4)
        res[f"rtt_p90_{kind}_ms_rounds"] = spread([p90(r["rtts_ms"]) for r in runs], 4)
        res[f"dial_{kind}_ms_rounds"] = spread([r["dial_ms"] for r in runs], 2)
        res[f"mb_per_s_{kind}"] = round(statistics.median(r["mb_s"] for r in runs), 1)
        res[f"mb_per_s_{kind}_rounds"] = spread([r["mb_s"] for r in runs], 1)
    t, p = by_kind["tcp"], by_kind["libp2p"]
    res["frame_bytes"] = t[0]["frame_bytes"]
    res["rtt_libp2p_vs_tcp"] = round(res["rtt_libp2p_ms"] / res["rtt_tcp_ms"], 2)
    res["rtt_p90_libp2p_vs_tcp"] = round(res["rtt_p90_libp2p_ms"] / res["rtt_p90_tcp_ms"], 2)
    res["rtt_libp2p_vs_tcp_rounds"] = spread(
        [statistics.median(b["rtts_ms"]) / statistics.median(a["rtts_ms"]) for a, b in zip(t, p, strict=True)], 2)
    res["mb_per_s_libp2p_vs_tcp"] = round(res["mb_per_s_libp2p"] / res["mb_per_s_tcp"], 3)
    res["mb_per_s_libp2p_vs_tcp_rounds"] = spread([b["mb_s"] / a["mb_s"] for a, b in zip(t, p, strict=True)], 3)
    return res


# -- 2. node processes -----------------------------------------------------------------------------------

def mesh_round(kind: str, nodes: int, jobs: int, latency_jobs: int) -> dict:
    with tempfile.TemporaryDirectory() as d, \
            LocalMesh(Path(d), nodes, lambda i: ["--no-model", "--transport", kind]) as mesh:
        t0 = time.perf_counter()
        mesh.start()  # returns once the first node is up (it publishes its address) and the others are spawned
        first_up = time.perf_counter() - t0
        mesh.wait_ready(120)
        formed = time.perf_counter() - t0
        client = mesh.nodes[0].client
        one_job(client, 3)  # warm: connections, warm sandboxes
        latency = statistics.median(one_job(client, 3) for _ in range(latency_jobs))
        rate = burst(client, jobs, 3, threads=4)
        rss = [tree_memory(n.proc.pid)[0] for n in mesh.nodes]
        transports = {n.client.request("GET", "/status", timeout=5)["transport"] for n in mesh.nodes}
    if transports != {kind}:
        raise RuntimeError(f"asked for --transport {kind}, nodes report {sorted(transports)}")
    return {"first_up_s": first_up, "formed_s": formed, "latency_s": latency, "jobs_per_s": rate, "rss_mib": statistics.mean(rss)}


def meshes(rounds: int, nodes: int, jobs: int, latency_jobs: int) -> dict:
    by_kind: dict[str, list[dict]] = {k: [] for k in KINDS}
    for _ in range(rounds):
        for kind in KINDS:
            by_kind[kind].append(mesh_round(kind, nodes, jobs, latency_jobs))
    res: dict = {}
    for kind, runs in by_kind.items():
        for key, digits in (("first_up_s", 2), ("formed_s", 2), ("latency_s", 4), ("jobs_per_s", 2), ("rss_mib", 1)):
            vals = [r[key] for r in runs]
            res[f"{_name(key)}_{kind}"] = round(statistics.median(vals), digits)
            res[f"{_name(key)}_{kind}_rounds"] = spread(vals, digits)
    t, p = by_kind["tcp"], by_kind["libp2p"]
    for key, digits in (("formed_s", 2), ("latency_s", 2), ("jobs_per_s", 3)):
        name = _name(key)
        res[f"{name}_libp2p_vs_tcp"] = round(res[f"{name}_libp2p"] / res[f"{name}_tcp"], digits)
        res[f"{name}_libp2p_vs_tcp_rounds"] = spread([b[key] / a[key] for a, b in zip(t, p, strict=True)], digits)
    return res


def _name(key: str) -> str:
    return {"first_up_s": "first_node_up_s", "formed_s": "formation_s", "latency_s": "latency_r3_s", "jobs_per_s": "jobs_per_s_r3",
            "rss_mib": "rss_mib_per_node"}[key]


def run(rounds: int = 3, pings: int = 500, frames: int = 100, mesh_rounds: int = 2, nodes: int = 4,
        jobs: int = 24, latency_jobs: int = 5) -> dict:
    t0 = time.monotonic()
    load = os.getloadavg()[0]
    res: dict = {"rounds": rounds, "pings": pings, "frames": frames, "mesh_rounds": mesh_rounds, "nodes": nodes,
                 "jobs": jobs, "latency_jobs": latency_jobs}
    res.update(asyncio.run(gateways(rounds, pings, frames)))
    if mesh_rounds:
        res.update(meshes(mesh_rounds, nodes, jobs, latency_jobs))
    res["seconds"] = round(time.monotonic() - t0, 1)
    # this machine is shared: other work running at the same time moves every figure (cores: os.cpu_count())
    res["loadavg_1m_start"], res["loadavg_1m_end"] = round(load, 2), round(os.getloadavg()[0], 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="in-process rounds per transport (alternating)")
    ap.add_argument("--pings", type=int, default=500, help="round trips per in-process round")
    ap.add_argument("--frames", type=int, default=100, help="~64 KiB envelopes per throughput round")
    ap.add_argument("--mesh-rounds", type=int, default=2, help="meshes per transport (alternating); 0 skips")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=24, help="jobs in each burst (a multiple of 4: 4 submitters)")
    ap.add_argument("--latency-jobs", type=int, default=5, help="sequential jobs per mesh (median kept)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.jobs % 4 or args.jobs < 4:
        ap.error("--jobs must be a positive multiple of 4 (the burst has 4 submitting threads)")
    emit(run(args.rounds, args.pings, args.frames, args.mesh_rounds, args.nodes, args.jobs, args.latency_jobs),
         args.json)


if __name__ == "__main__":
    main()
