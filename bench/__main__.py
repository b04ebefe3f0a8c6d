"""Run every benchmark, each in its own process (a clean interpreter, its baseline run in that same
process), and print the ratios with their goals: a markdown table, or one JSON object with --json.

    python -m bench [--quick] [--json] [--only NAME,...] [--scale]

Each ratio alternates its baseline and subject (at least 5 pairs, bench/abab.py) on one CPU set and is
shown as its median with the min–max of the pairs; one outside its plausible range is flagged.
--quick (about 5 minutes on 2 cores, plus 4-7 for the NAT bench, which needs root) runs smaller sizes;
the 32-node scale run is in the full run, or with --scale."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Bench:
    name: str
    module: str
    quick: tuple[str, ...]
    full: tuple[str, ...]
    lift: dict[str, str]  # key in the bench's output → key in the summary


@dataclass(frozen=True)
class Goal:
    key: str
    target: float
    higher_is_better: bool
    what: str

    def met(self, value: float) -> bool:
        return value >= self.target if self.higher_is_better else value <= self.target


BENCHES = (
    Bench("envelope", "bench.envelope", ("--messages", "2000"), ("--messages", "5000"),
          {"envelope_vs_raw": "envelope_vs_raw"}),
    Bench("ledger", "bench.ledger_bench", ("--rows", "50000", "--big", "200000"), (),
          {"ledger_vs_sqlite": "ledger_vs_sqlite", "ledger_vs_same_schema": "ledger_vs_same_schema"}),
    Bench("journal", "bench.journal_bench", ("--jobs", "200"), ("--jobs", "400"),
          {"journaled_vs_memory": "journaled_vs_memory", "replay_inputs_per_s": "journal_replay_inputs_per_s"}),
    Bench("python_step", "bench.python_step", ("--runs", "10"), ("--runs", "30"),
          {"python_step_vs_bwrap": "python_step_vs_bwrap", "cold_step_vs_bwrap": "cold_step_vs_bwrap"}),
    Bench("simulator", "bench.sim_engine", ("--steps", "2000", "--micro-events", "100000"), (),
          {"engine_vs_simpy": "simulator_vs_simpy", "engine_only_vs_simpy": "simulator_queue_vs_simpy"}),
    Bench("sim_scale", "bench.sim_scale", ("--steps", "2000"), (),
          {"spread": "simulator_size_spread", "events_per_s_100000": "simulator_events_per_s_100k"}),
    Bench("llm", "bench.llm_mesh", ("--tokens", "64"), ("--tokens", "128"), {"llm_vs_direct": "llm_vs_direct"}),
    Bench("mesh_jobs", "bench.mesh_jobs", ("--jobs", "5", "--burst", "40"), ("--jobs", "20", "--burst", "200"),
          {"latency_r1_s": "latency_r1_s", "latency_r3_s": "latency_r3_s", "latency_r5_s": "latency_r5_s",
           "latency_r3_vs_direct": "latency_r3_vs_direct",
           "latency_r3_vs_slowest_replica": "latency_r3_vs_slowest_replica", "jobs_per_s_r1": "jobs_per_s_r1",
           "jobs_per_s_r3": "jobs_per_s_r3", "jobs_per_s_r3_vs_direct": "jobs_per_s_r3_vs_direct"}),
    Bench("llm_verify", "bench.llm_verify", ("--tokens", "64"), (),
          {"verify_vs_generate": "verify_vs_generate"}),
    Bench("transport", "bench.transport", (),
          ("--rounds", "5", "--pings", "2000", "--frames", "300", "--mesh-rounds", "3", "--jobs", "60",
           "--latency-jobs", "10"),
          {"rtt_libp2p_vs_tcp": "rtt_libp2p_vs_tcp", "rtt_libp2p_ms": "rtt_libp2p_ms", "rtt_tcp_ms": "rtt_tcp_ms",
           "mb_per_s_libp2p_vs_tcp": "mb_per_s_libp2p_vs_tcp", "formation_s_libp2p": "formation_s_libp2p",
           "formation_s_tcp": "formation_s_tcp", "jobs_per_s_r3_libp2p": "jobs_per_s_r3_libp2p",
           "jobs_per_s_r3_tcp": "jobs_per_s_r3_tcp", "jobs_per_s_r3_libp2p_vs_tcp": "jobs_per_s_r3_libp2p_vs_tcp"}),
    Bench("nat", "bench.nat", ("--trials", "3"), ("--trials", "6", "--jobs", "10"),
          {"punch_share_drop": "punch_share_drop", "punch_share_reset": "punch_share_reset",
           "latency_relayed_s": "latency_relayed_s", "latency_punched_s": "latency_punched_s",
           "latency_relayed_vs_punched": "latency_relayed_vs_punched"}),
    Bench("node_memory", "bench.node_memory", ("--idle", "5"), ("--idle", "10"),
          {"libp2p_node_uss_mib": "idle_node_uss_mib", "tcp_node_uss_mib": "idle_node_uss_mib_tcp"}),
    Bench("owner_cap", "bench.owner_cap", ("--spin", "1"), ("--spin", "2"),
          {"cpu_50%_vs_none_1p": "max_cpu_50_vs_none_1p", "cpu_50%_vs_none_2p": "max_cpu_50_vs_none_2p"}),
    Bench("scale", "bench.scale", (), (), {"job_s": "scale_32_nodes_100_steps_s",
                                           "rss_mib_per_node_mean": "scale_rss_mib_per_node",
                                           "uss_mib_per_node_mean": "scale_uss_mib_per_node"}),
)
SPREAD = ("", "_min", "_max", "_pairs", "_flag")  # what bench.abab reports of each ratio
GOALS = (
    Goal("llm_vs_direct", 0.95, True, "llm tokens/s at r=1 through the mesh ÷ llama-cpp-python direct"),
    Goal("envelope_vs_raw", 0.9, True, "signed envelopes/s (seal, frame, every check) ÷ Ed25519 sign+verify"),
    Goal("ledger_vs_sqlite", 0.5, True, "ledger rows/s (hash chain, batched) ÷ raw sqlite3 inserts"),
    Goal("python_step_vs_bwrap", 1.3, False, "python step time (warm sandbox) ÷ a bare bwrap start"),
    Goal("simulator_vs_simpy", 2.0, True, "simulated events/s, whole run ÷ the same run on SimPy"),
    Goal("simulator_size_spread", 2.0, False, "simulated events/s at the fastest network size ÷ the slowest (100 → 100,000 nodes)"),
    Goal("verify_vs_generate", 0.15, False, "scoring a claim of llm tokens in one pass ÷ generating them"),
    Goal("latency_r3_vs_slowest_replica", 2.0, False,
         "a one-step python job at r=3, submit to result ÷ its slowest replica's own step time"),
    Goal("jobs_per_s_r3", 30, True, "one-step python jobs at r=3 a second, one submitting node, a burst at once"),
    Goal("idle_node_uss_mib", 40, False, "MiB no other process shares, summed over an idle node's tree (no model)"),
)


def run_one(bench: Bench, quick: bool) -> dict:
    cmd = [sys.executable, "-m", bench.module, *(bench.quick if quick else bench.full), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def shown(summary: dict, key: str) -> str:
    """A figure with its spread (median (min–max) over N pairs) and its flag, when it has them."""
    v = summary.get(key)
    if v is None:
        return "not run"
    if f"{key}_min" in summary:
        v = f"{v} ({summary[f'{key}_min']}–{summary[f'{key}_max']}, {summary[f'{key}_pairs']} pairs)"
    flag = summary.get(f"{key}_flag")
    return f"{v} **{flag}**" if flag else str(v)


def table(summary: dict) -> str:
    rows = ["| figure | value | goal | met |", "| --- | ---: | --- | --- |"]
    for g in GOALS:
        v = summary.get(g.key)
        met = "—" if v is None else ("flagged" if summary.get(f"{g.key}_flag") else "yes" if g.met(v) else "no")
        rows.append(f"| `{g.key}` ({g.what}) | {shown(summary, g.key)} | "
                    f"{'≥' if g.higher_is_better else '≤'} {g.target} | {met} |")
    spread = {k for k in summary for suffix in SPREAD[1:] if k.endswith(suffix)}
    for key, v in summary.items():
        if key not in {g.key for g in GOALS} | spread and not isinstance(v, dict | list | bool) and key != "seconds":
            rows.append(f"| `{key}` | {shown(summary, key)} | | |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, about 5 minutes; skips the scale run")
    ap.add_argument("--scale", action="store_true", help="also the 32-node scale run when --quick")
    ap.add_argument("--only", help="comma-separated names: " + ", ".join(b.name for b in BENCHES))
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    chosen = [b for b in BENCHES if (not args.only or b.name in args.only.split(","))
              and (b.name != "scale" or not args.quick or args.scale or args.only)]
    unknown = set(args.only.split(",")) - {b.name for b in BENCHES} if args.only else set()
    if unknown:
        ap.error(f"unknown benchmark {sorted(unknown)[0]!r}")
    summary: dict = {"quick": args.quick}
    details: dict = {}
    failed = []
    t0 = time.monotonic()
    for i, bench in enumerate(chosen, 1):
        print(f"bench {i}/{len(chosen)}: {bench.name} …", file=sys.stderr, flush=True)
        t1 = time.monotonic()
        res = details[bench.name] = run_one(bench, args.quick)
        if "error" in res:
            failed.append(bench.name)
            print(f"bench {bench.name} FAILED: {res['error']}", file=sys.stderr, flush=True)
            continue
        for src, dst in bench.lift.items():
            for suffix in SPREAD:  # a ratio's median, then its min, max, pairs and flag when it has them
                if src + suffix in res:
                    summary[dst + suffix] = res[src + suffix]
        print(f"bench {bench.name}: done in {time.monotonic() - t1:.0f} s", file=sys.stderr, flush=True)
    # a flagged ratio is not a goal met: its baseline was slowed by something else
    summary["goals_met"] = {g.key: g.met(summary[g.key]) and f"{g.key}_flag" not in summary
                            for g in GOALS if g.key in summary}
    summary["seconds"] = round(time.monotonic() - t0, 1)
    summary["details"] = details
    print(json.dumps(summary) if args.json else table(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
