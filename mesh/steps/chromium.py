"""The node's Chromium process: started by the node itself (not by pyppeteer's launcher, whose default
flags turn the popup blocker off), never as root and never with `--no-sandbox` when it can be avoided.
A root node runs it as its step user (uid/gid/groups dropped by Popen before exec) with Chromium's own
namespace sandbox on (measured: renderers get new user/pid/net namespaces and seccomp-bpf); a normal
user's node keeps the sandbox on too and drops it only if this machine cannot give it one. Its profile,
HOME and TMPDIR live in a fresh directory owned by that user, its environment holds nothing of the
node's, and the DevTools port (127.0.0.1, chosen by Chromium) is read from the profile's
DevToolsActivePort file. It has a session of its own (a Ctrl-C meant for the node does not reach it) and
dies with the node all the same: `setpriv --pdeathsig KILL` (Popen's preexec_fn is not safe in a
process with threads), so a node killed outright leaves no browser behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from mesh.errors import StepFailed
from mesh.steps.stepuser import StepUser, running_as_root

log = logging.getLogger("mesh.steps.chromium")
START_S = 30.0
STOP_S = 5.0
NO_SANDBOX = "No usable sandbox"  # what Chromium prints when the machine cannot give it one
FLAGS = [
    "--headless", "--disable-gpu", "--disable-dev-shm-usage", "--disable-extensions", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-breakpad",
    "--disable-default-apps", "--password-store=basic", "--log-level=3", "--mute-audio", "--hide-scrollbars",
    # WebRTC may not send UDP around the proxy (measured: without it, a page's STUN requests reach a
    # UDP listener on loopback; `--force-webrtc-ip-handling-policy` does not exist in this Chromium)
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--proxy-bypass-list=<-loopback>",  # no implicit bypass: loopback goes through the proxy too
]


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a dead helper its parent has not reaped yet)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Chromium:
    """One browser process (and its helpers) for the node; `start` returns the DevTools endpoint."""

    def __init__(self, path: str, user: StepUser | None, flags: list[str]):
        if user is None and running_as_root():
            raise StepFailed("refusing to run Chromium as root: the node has no step user")
        self.path = path
        self.user = user
        self.flags = flags
        self.proc: subprocess.Popen | None = None
        self.home: Path | None = None
        self.port = 0  # DevTools, on 127.0.0.1
        self.sandboxed = True

    async def start(self) -> str:
        try:
            return await self._launch(sandbox=True)
        except StepFailed as exc:
            if self.user is not None or NO_SANDBOX not in str(exc):
                raise
        log.warning("Chromium has no usable sandbox on this machine; it runs without one, as %d", os.getuid())
        self.sandboxed = False
        return await self._launch(sandbox=False)

    async def _launch(self, sandbox: bool) -> str:
        self.home = Path(tempfile.mkdtemp(prefix="homemesh-chromium-"))
        if self.user is not None:
            self.user.own(self.home)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "TMPDIR": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config"), "XDG_CACHE_HOME": str(self.home / ".cache"),
               "LANG": "C.UTF-8"}
        reaper = shutil.which("setpriv")
        args = [*([reaper, "--pdeathsig", "KILL", "--"] if reaper else []), self.path, *self.flags,
                *([] if sandbox else ["--no-sandbox"]), f"--user-data-dir={self.home / 'profile'}",
                "--remote-debugging-port=0", "about:blank"]
        who = {} if self.user is None else {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}
        with open(self.home / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(args, env=env, cwd=self.home, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True, **who)
        active = self.home / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + START_S
        while not active.exists() or len(active.read_text().split()) < 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.home / "stderr.log").read_bytes()[-600:].decode("utf-8", "replace")
                await self.stop()
                raise StepFailed(f"Chromium did not start: {tail.strip() or 'no output'}")
            await asyncio.sleep(0.02)
        port, path = active.read_text().split()[:2]
        self.port = int(port)
        log.info("chromium started (%s, pid %d, %s)", self.path, self.proc.pid,
                 f"uid {self.user.uid}" if self.user else "the node's uid")
        return f"ws://127.0.0.1:{port}{path}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> list[psutil.Process]:
        """The browser and every helper it started, crashpad's included (those leave the process
        tree and the process group, but name the profile on their command line)."""
        if self.proc is None or self.home is None:
            return []
        found: dict[int, psutil.Process] = {}
        try:
            main = psutil.Process(self.proc.pid)
            found = {p.pid: p for p in [main, *main.children(recursive=True)]}
        except psutil.NoSuchProcess:
            pass
        mark = str(self.home)
        for proc in psutil.process_iter(["cmdline"]):
            if any(mark in arg for arg in proc.info["cmdline"] or ()):
                found.setdefault(proc.pid, proc)
        return [p for p in found.values() if _running(p)]

    def pids(self) -> list[int]:
        """The browser's processes, oldest first (a parent before the children it started)."""
        born = []
        for proc in self.processes():
            try:
                born.append((proc.create_time(), proc.pid))
            except psutil.NoSuchProcess:
                continue
        return [pid for _, pid in sorted(born)]

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL to its process group and to whatever of it is left after STOP_S; the
        profile goes too."""
        if self.proc is not None:
            procs = self.processes()
            if self.proc.poll() is None:
                self.proc.terminate()
            deadline = time.monotonic() + STOP_S
            while self.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):  # its own session: the group is its pid
                os.killpg(self.proc.pid, signal.SIGKILL)
            for proc in procs:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGKILL)  # psutil checks the pid was not reused since
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(1)
            self.proc = None
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None
