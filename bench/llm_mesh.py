"""llm step tokens/s through a real 2-node mesh at r=1, against llama-cpp-python called directly on the
same prompt, model, threads and greedy settings, in the same run.

    python -m bench.llm_mesh [--tokens 128] [--threads 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mesh.cli.local import LocalMesh
from mesh.steps.llm import Model
from mesh.steps.models import default_model

REPEAT = 3  # runs of each side; the best is kept
PROMPT = "Here is a short story about a lighthouse keeper who finds a message in a bottle.\n\n"


def direct(tokens: int, threads: int) -> tuple[float, str]:
    path, sha = default_model()
    model = Model(path, sha, threads)
    model.generate(PROMPT, 8)  # warm-up, as the mesh's runner is warm by the time a step arrives
    best = max((model.generate(PROMPT, tokens) for _ in range(REPEAT)), key=lambda g: g.tokens / g.seconds)
    return best.tokens / best.seconds, best.text


def through_mesh(tokens: int, threads: int) -> dict:
    job = {"name": "bench", "redundancy": 1,
           "steps": [{"id": "gen", "kind": "llm", "params": {"prompt": PROMPT, "max_tokens": tokens}}]}
    warm = {"name": "warm", "redundancy": 1,
            "steps": [{"id": "gen", "kind": "llm", "params": {"prompt": PROMPT, "max_tokens": 8}}]}
    with tempfile.TemporaryDirectory() as d, LocalMesh(
            Path(d), 2, lambda i: ["--no-model"] if i == 0 else [], threads=threads) as mesh:
        # node0 only submits: no model of its own loading on the same cores during the measurement
        t0 = time.monotonic()
        mesh.start()
        ready_s = mesh.wait_ready(120)
        client = mesh.nodes[0].client
        best: tuple[float, dict] | None = None
        for body in (warm, *[job] * REPEAT):  # the best of REPEAT runs, as for the direct baseline
            t1 = time.monotonic()
            job_id = client.request("POST", "/jobs", {"job": body})["job_id"]
            while (rep := client.request("GET", f"/jobs/{job_id}?wait=5"))["status"] == "running":
                pass
            took = time.monotonic() - t1
            if body is job and (best is None or took < best[0]):
                best = (took, rep)
        assert best is not None
        wall, rep = best
        step = rep["steps"]["gen"]
        work = step["replicas"][0]["work"]
        return {"ready_s": ready_s, "startup_s": time.monotonic() - t0, "wall_s": wall, "tokens": work["tokens"],
                "runner_tps": work["tokens"] / work["seconds"], "end_to_end_tps": work["tokens"] / wall,
                "text": step["output"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base_tps, base_text = direct(args.tokens, args.threads)
    m = through_mesh(args.tokens, args.threads)
    res = {"direct_tps": round(base_tps, 2), "mesh_runner_tps": round(m["runner_tps"], 2),
           "mesh_end_to_end_tps": round(m["end_to_end_tps"], 2),
           "llm_vs_direct": round(m["end_to_end_tps"] / base_tps, 3),
           "runner_vs_direct": round(m["runner_tps"] / base_tps, 3),
           "same_text": m["text"] == base_text, "tokens": m["tokens"], "mesh_ready_s": round(m["ready_s"], 2)}
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
