"""What an idle node costs its owner in memory: one node without a model, started as `mesh up` starts it,
left idle, then every process of its tree measured (RSS, and USS: the pages no other process shares,
which is what the node really adds) and named by what it runs. The baseline, in the same run, is a bare
`python -c pass` of the same interpreter, so `node_uss_vs_bare_python` says how many interpreters' worth
the node costs. Issue 23's goal is 40 MiB USS for the whole tree.

    python -m bench.node_memory [--idle 10] [--json]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from mesh.cli.local import LocalMesh

from .report import emit

ROLES = {"hm-ledger": "ledger actor (SQLite)", "hm-model": "model process (llama.cpp, confined)",
         "hm-model-actor": "model runner actor", "hm-node-actor": "node actor",
         "hm-step": "step actor (keeps a warm sandbox)", "bwrap": "bwrap (a warm sandbox)"}


def role(proc: psutil.Process, root: int) -> str:
    """A short name for what a process of the node's tree runs: actors name themselves (actors/procname.py);
    the rest are the node itself, Thespian's own processes (forked from the node, unnamed) and sandboxes."""
    try:
        name, cmd = proc.name(), proc.cmdline()
    except psutil.Error:
        return "?"
    if proc.pid == root:
        return "node (asyncio gateway, HTTP API, libp2p thread)"
    if name in ROLES:
        return ROLES[name]
    if cmd and cmd[0] == sys.executable and " node --home " in " ".join(cmd):
        return "thespian admin or logger (forked from the node)"
    return (Path(cmd[0]).name + " " + " ".join(cmd[1:3]))[:60] if cmd else name


def measure(pid: int) -> list[dict]:
    procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    out = []
    for p in procs:
        try:
            info = p.memory_full_info()
            out.append({"pid": p.pid, "role": role(p, pid), "rss_mib": round(info.rss / 2**20, 1),
                        "uss_mib": round(info.uss / 2**20, 1), "threads": p.num_threads()})
        except psutil.Error:
            continue
    return sorted(out, key=lambda r: -r["uss_mib"])


def bare_python_uss() -> float:
    """USS of an interpreter that has imported nothing of ours: what one more process costs at least."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        time.sleep(0.5)
        return psutil.Process(proc.pid).memory_full_info().uss / 2**20
    finally:
        proc.communicate(b"")


def imports_uss(module: str) -> float:
    """USS of an interpreter once `module` is imported: the share of the node's own process that is code."""
    code = f"import {module}, sys; sys.stdout.write('ok\\n'); sys.stdout.flush(); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        proc.stdout.readline()
        return psutil.Process(proc.pid).memory_full_info().uss / 2**20
    finally:
        proc.communicate(b"")


def idle_node(idle: float, transport: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        mesh = LocalMesh(Path(d), 1, lambda i: ["--no-model", "--transport", transport])
        mesh.start()
        try:
            mesh.wait_ready()
            time.sleep(idle)  # let start-up garbage go and the idle loops settle
            return measure(mesh.nodes[0].proc.pid)
        finally:
            mesh.stop()


def run(idle: float) -> dict:
    bare = bare_python_uss()
    res: dict = {"bare_python_uss_mib": round(bare, 1), "goal_uss_mib": 40}
    for transport in ("libp2p", "tcp"):
        procs = idle_node(idle, transport)
        total = sum(p["uss_mib"] for p in procs)
        res[f"{transport}_node_uss_mib"] = round(total, 1)
        res[f"{transport}_node_rss_mib"] = round(sum(p["rss_mib"] for p in procs), 1)
        res[f"{transport}_processes"] = len(procs)
        res[f"{transport}_by_process"] = procs
    res["node_uss_vs_bare_python"] = round(res["libp2p_node_uss_mib"] / bare, 2)
    # what importing costs an interpreter, with nothing run: the code's share of the node's own process
    res["import_mesh_node_uss_mib"] = round(imports_uss("mesh.node.lifecycle"), 1)
    res["import_libp2p_uss_mib"] = round(imports_uss("libp2p"), 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=float, default=10.0, help="seconds the node idles before it is measured")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    emit(run(args.idle), args.json)


if __name__ == "__main__":
    main()
