"""A scrape step's extraction (mesh.steps.extract) in a child process, held to what is left of the step's
time limit and to EXTRACT_MEMORY. In a thread of the node it ran past the limit, in the node's memory: a
5 MB page of 100 nested divs with the selector "div" took 16.35 s and selected 500 million characters. A
child that runs out of time is killed and the step fails.

    python -m mesh.steps.extract_proc   (reads {"html", "url", "params", "cpu_s"} as JSON on stdin, writes
                                         {"output": ...} or {"error": "..."} on stdout)"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import signal
import sys
from collections.abc import Callable

from mesh.errors import StepFailed

EXTRACT_MEMORY = 1 << 30  # bytes of address space the child may map: a 5 MiB page parses in a few hundred MB
MAX_EXTRACTED = 4 << 20  # bytes of JSON the child may hand back (a result must fit in one 1 MiB frame anyway)
MIN_TIME_S = 1.0  # a page fetched at the very end of its time still gets this long to be read


async def extract_within(html: str, base_url: str, params: dict, seconds: float,
                         started: Callable[[int], None] = lambda pid: None) -> dict:
    """extract(html, base_url, params) in a child given `seconds` (at least MIN_TIME_S); StepFailed when it
    runs out of time or memory, says a selector is bad, or hands back more than MAX_EXTRACTED. `started`
    is told the child's pid (the node puts it under the owner's caps)."""
    seconds = max(seconds, MIN_TIME_S)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.steps.extract_proc", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        started(proc.pid)
        request = json.dumps({"html": html, "url": base_url, "params": params, "cpu_s": math.ceil(seconds)})
        out, err = await asyncio.wait_for(proc.communicate(request.encode()), seconds)
    except asyncio.TimeoutError:
        raise StepFailed(f"reading the page took longer than the {seconds:.3g} s left of the step") from None
    finally:
        if proc.returncode is None:  # (out of time, or cancelled: the child goes with the step)
            proc.kill()
            await proc.wait()
    if proc.returncode == -signal.SIGXCPU:  # its CPU limit (the seconds it was given), met before the clock's
        raise StepFailed(f"reading the page took longer than the {seconds:.3g} s left of the step")
    if proc.returncode != 0 or not out:
        why = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise StepFailed(f"reading the page failed: {why[0][:300]}")
    answer = json.loads(out)
    if "error" in answer:
        raise StepFailed(answer["error"])
    return answer["output"]


def _main() -> None:
    """The child: its limits first, then the page."""
    request = json.loads(sys.stdin.buffer.read())
    resource.setrlimit(resource.RLIMIT_AS, (EXTRACT_MEMORY, EXTRACT_MEMORY))
    cpu = int(request["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    from mesh.steps.extract import extract  # (imported under the limits: bs4 counts too)

    try:
        out = json.dumps({"output": extract(request["html"], request["url"], request["params"])})
    except StepFailed as exc:
        out = json.dumps({"error": str(exc)})
    except MemoryError:
        out = json.dumps({"error": f"reading the page took more than {EXTRACT_MEMORY >> 20} MiB of memory"})
    if len(out) > MAX_EXTRACTED:
        out = json.dumps({"error": f"what the step asked of the page is {len(out):,} bytes, over {MAX_EXTRACTED:,}"})
    sys.stdout.write(out)


if __name__ == "__main__":
    _main()
