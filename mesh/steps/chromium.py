"""The node's Chromium process: started by the node itself (not by pyppeteer's launcher, whose default
flags turn the popup blocker off), never as root and never with `--no-sandbox` when it can be avoided.
A root node runs it as its step user (uid/gid/groups dropped by Popen before exec) with Chromium's own
namespace sandbox on (measured: renderers get new user/pid/net namespaces and seccomp-bpf); a normal
user's node keeps the sandbox on too and drops it only if this machine cannot give it one. Its profile,
HOME and TMPDIR live in a fresh directory owned by that user, and its environment holds nothing of the
node's. It is driven over `--remote-debugging-pipe` (fds 3 and 4, NUL-terminated JSON), never a DevTools
port: any local user could connect to a port on 127.0.0.1 and drive the browser (list and read the steps'
pages, run JS in them, use its network; measured as uid 65534), while the pipes are held by the node
alone. It has a session of its own (a Ctrl-C meant for the node does not reach it) and dies with the
node all the same: `setpriv --pdeathsig KILL` (Popen's preexec_fn is not safe in a
process with threads), so a node killed outright leaves no browser behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
# bytes of one DevTools message read from the browser: one past it is read past and dropped, not parsed. A
# page's console.log of 34 MB (under the 256 MiB this was) grew the node from 34 to 651 MiB, and one of 40 MB of
# escapes closed the connection, failing every other step on the browser (red team, 2026-12-06). A page's
# HTML crosses as one message: MAX_HTML (5M characters) is at most 30 MB even with every one escaped as \uXXXX
MAX_MESSAGE = 48 << 20
# Popen places only stdin and stdout; the shell moves them to the fds `--remote-debugging-pipe` reads and
# writes (3 and 4) and execs the browser in its place (preexec_fn is not safe in a process with threads)
PIPE_FDS = 'exec 3<&0 4>&1 </dev/null >/dev/null; exec "$@"'
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


class PipeClosed(ConnectionError):
    """The browser's end of the DevTools pipe is gone."""


class DevToolsPipe:
    """The browser's DevTools connection: two pipes, whose other ends only the browser process holds."""

    def __init__(self, reading: asyncio.ReadTransport, reader: asyncio.StreamReader,
                 writer: asyncio.WriteTransport):
        self.reading = reading
        self.reader = reader
        self.writer = writer
        self.received = 0  # bytes read from the browser, dropped messages included

    @classmethod
    async def open(cls, proc: subprocess.Popen) -> DevToolsPipe:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_MESSAGE)
        reading, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol, proc.stdin)
        return cls(reading, reader, writer)

    def send(self, message: str) -> None:
        """Written at once (buffered by the transport): the caller awaits the reply, not the write."""
        if self.writer.is_closing():
            raise PipeClosed("the browser's DevTools pipe is closed")
        self.writer.write(message.encode() + b"\0")

    async def recv(self) -> str:
        """The next message under MAX_MESSAGE; one over it (a page's console.log, say) is read past and
        dropped, however many reads that takes, and the connection, which every step on the browser shares,
        goes on."""
        skipping = False  # (the rest of a message that overran the limit comes first)
        while True:
            try:
                message = await self.reader.readuntil(b"\0")
            except asyncio.IncompleteReadError:
                raise PipeClosed("the browser closed its DevTools pipe") from None
            except asyncio.LimitOverrunError as exc:
                if not skipping:
                    log.warning("dropped a DevTools message over %d MiB", MAX_MESSAGE >> 20)
                await self.reader.readexactly(exc.consumed)  # (all buffered, so this cannot fall short)
                self.received += exc.consumed
                skipping = True
                continue
            self.received += len(message)
            if not skipping:
                return message[:-1].decode("utf-8", "replace")
            skipping = False

    async def handshake(self) -> None:
        """Returns once the browser answers on the pipe (it reads it only when DevTools is up)."""
        self.send(json.dumps({"id": 0, "method": "Browser.getVersion"}))
        while json.loads(await self.recv()).get("id") != 0:
            continue

    def close(self) -> None:
        if not self.writer.is_closing():  # (it closes itself when the browser's end goes)
            self.writer.abort()  # the browser is gone or going: nothing buffered is still worth writing
        self.reading.close()


class Chromium:
    """One browser process (and its helpers) for the node; `start` returns its DevTools pipe."""

    def __init__(self, path: str, user: StepUser | None, flags: list[str]):
        if user is None and running_as_root():
            raise StepFailed("refusing to run Chromium as root: the node has no step user")
        self.path = path
        self.user = user
        self.flags = flags
        self.proc: subprocess.Popen | None = None
        self.home: Path | None = None
        self.pipe: DevToolsPipe | None = None
        self.sandboxed = True

    async def start(self) -> DevToolsPipe:
        try:
            return await self._launch(sandbox=True)
        except StepFailed as exc:
            if self.user is not None or NO_SANDBOX not in str(exc):
                raise
        log.warning("Chromium has no usable sandbox on this machine; it runs without one, as %d", os.getuid())
        self.sandboxed = False
        return await self._launch(sandbox=False)

    async def _launch(self, sandbox: bool) -> DevToolsPipe:
        self.home = Path(tempfile.mkdtemp(prefix="homemesh-chromium-"))
        if self.user is not None:
            self.user.own(self.home)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "TMPDIR": str(self.home), "XDG_CONFIG_HOME": str(self.home / ".config"), "XDG_CACHE_HOME": str(self.home / ".cache"),
               "LANG": "C.UTF-8"}
        reaper = shutil.which("setpriv")
        args = ["/bin/sh", "-c", PIPE_FDS, "sh", *([reaper, "--pdeathsig", "KILL", "--"] if reaper else []),
                self.path, *self.flags, *([] if sandbox else ["--no-sandbox"]),
                f"--user-data-dir={self.home / 'profile'}", "--remote-debugging-pipe", "about:blank"]
        who = {} if self.user is None else {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}
        with open(self.home / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(args, env=env, cwd=self.home, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err, start_new_session=True, **who)
        self.pipe = await DevToolsPipe.open(self.proc)
        try:
            await asyncio.wait_for(self.pipe.handshake(), START_S)
        except (PipeClosed, ValueError, asyncio.TimeoutError):  # (ValueError: not JSON, so not DevTools)
            tail = (self.home / "stderr.log").read_bytes()[-600:].decode("utf-8", "replace")
            await self.stop()
            raise StepFailed(f"Chromium did not start: {tail.strip() or 'no output'}") from None
        log.info("chromium started (%s, pid %d, %s)", self.path, self.proc.pid,
                 f"uid {self.user.uid}" if self.user else "the node's uid")
        return self.pipe

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def processes(self) -> list[psutil.Process]:
        """The browser and every helper it started, crashpad's included (those leave the process
        tree and the process group, but name the profile on their command line: such a process counts
        only when it runs as the browser's user, or any local user's process naming the profile, whose
        path anyone can see, was put in the step's cgroups and killed with the browser by the node: this
        project's red team, 2026-12-07)."""
        if self.proc is None or self.home is None:
            return []
        found: dict[int, psutil.Process] = {}
        try:
            main = psutil.Process(self.proc.pid)
            found = {p.pid: p for p in [main, *main.children(recursive=True)]}
        except psutil.NoSuchProcess:
            pass
        mark, uid = str(self.home), self.user.uid if self.user is not None else os.getuid()
        for proc in psutil.process_iter(["uids"]):  # (the command line read only for the browser user's)
            if proc.info["uids"] and proc.info["uids"].real == uid and proc.pid not in found:
                with contextlib.suppress(psutil.Error):
                    if any(mark in arg for arg in proc.cmdline()):
                        found[proc.pid] = proc
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
        """SIGTERM, then SIGKILL to its process group and to whatever of it is left after STOP_S; its pipe
        and profile go too."""
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
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None
