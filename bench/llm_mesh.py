"""llm step tokens/s through a real 2-node mesh at r=1, against llama-cpp-python called directly on the
same prompt, model, threads and greedy settings, alternating in the same run (median of the pairs'
ratios, with its min–max).

    python -m bench.llm_mesh [--tokens 128] [--threads 2] [--pairs 5] [--cpus 0,1] [--json]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.abab import abab, pin
from bench.report import emit
from mesh.cli.local import LocalMesh
from mesh.steps.llm import Model
from mesh.steps.models import default_model

PROMPT = "Here is a short story about a lighthouse keeper who finds a message in a bottle.\n\n"


def run(tokens: int, threads: int, pairs: int) -> dict:
    """Direct and through-the-mesh generations alternating: the direct model loaded in this process, the
    mesh's one worker in its own (node0 only submits: no model of its own loading on the same cores)."""
    path, sha = default_model()
    model = Model(path, sha, threads)
    model.generate(PROMPT, 8)  # warm-up, as the mesh's runner is warm by the time a step arrives
    job = {"name": "bench", "redundancy": 1,
           "steps": [{"id": "gen", "kind": "llm", "params": {"prompt": PROMPT, "max_tokens": tokens}}]}
    warm = {"name": "warm", "redundancy": 1,
            "steps": [{"id": "gen", "kind": "llm", "params": {"prompt": PROMPT, "max_tokens": 8}}]}
    texts: dict[str, set] = {"direct": set(), "mesh": set()}
    runner_tps: list[float] = []
    with tempfile.TemporaryDirectory() as d, LocalMesh(
            Path(d), 2, lambda i: ["--no-model"] if i == 0 else [], threads=threads) as mesh:
        mesh.start()
        ready_s = mesh.wait_ready(120)
        client = mesh.nodes[0].client

        def submit(body: dict) -> tuple[float, dict]:
            t1 = time.monotonic()
            job_id = client.request("POST", "/jobs", {"job": body})["job_id"]
            while (rep := client.request("GET", f"/jobs/{job_id}?wait=5"))["status"] == "running":
                pass
            return time.monotonic() - t1, rep

        def direct() -> float:
            g = model.generate(PROMPT, tokens)
            texts["direct"].add(g.text)
            return g.tokens / g.seconds

        def through_mesh() -> float:
            wall, rep = submit(job)
            step = rep["steps"]["gen"]
            work = step["replicas"][0]["work"]
            texts["mesh"].add(step["output"])
            runner_tps.append(work["tokens"] / work["seconds"])
            return work["tokens"] / wall

        submit(warm)
        # the mesh wraps the same llama.cpp call: faster than it means the direct run was slowed
        r = abab("llm_vs_direct", direct, through_mesh, pairs, plausible=(0.0, 1.02))
    med = statistics.median
    return {"direct_tps": round(med(b for b, _ in r.pairs), 2), "mesh_end_to_end_tps": round(med(m for _, m in r.pairs), 2),
            "mesh_runner_tps": round(med(runner_tps), 2), **r.fields(),
            "runner_vs_direct": round(med(runner_tps) / med(b for b, _ in r.pairs), 3),
            "same_text": len(texts["direct"] | texts["mesh"]) == 1, "mesh_ready_s": round(ready_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=5, help="direct/mesh runs, alternating (at least 5)")
    ap.add_argument("--cpus", default="", help="CPU set both run on, the mesh's nodes too (default: as started)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cpus = pin(args.cpus)
    emit({**run(args.tokens, args.threads, args.pairs), "tokens": args.tokens, "cpus": cpus}, args.json)


if __name__ == "__main__":
    main()
