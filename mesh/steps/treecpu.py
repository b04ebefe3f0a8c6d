"""CPU time of a sandbox's process tree, sampled from /proc, for nodes that cannot make cgroups (a node
run by a normal user). The rusage of bwrap says nothing: its pid-namespace init never passes its
children's time up. So a thread reads the tree's CPU every SAMPLE_S while the step runs; a step that
exits between samples can only be under-counted (what it spent after the last sample), never credited
with time it did not use — the figures come from the kernel, not from the step."""

from __future__ import annotations

import threading

import psutil

SAMPLE_S = 0.05


class TreeCPU:
    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.seen: dict[int, float] = {}  # pid → the highest user+system seconds read for it
        self.peak_rss = 0  # the most resident memory the tree held at one sample, in bytes
        self.start = self._read()  # what the tree had used before the step's request (start-up)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tree-cpu", daemon=True)

    def _read(self) -> dict[int, float]:
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return {}
        out, rss = {}, 0
        for proc in procs:
            try:
                t = proc.cpu_times()
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
            out[proc.pid] = t.user + t.system
        self.peak_rss = max(self.peak_rss, rss)
        for pid, secs in out.items():
            self.seen[pid] = max(self.seen.get(pid, 0.0), secs)
        return out

    def _run(self) -> None:
        while not self.stopped.wait(SAMPLE_S):
            self._read()

    def begin(self) -> None:
        self.start = self._read()
        self.thread.start()

    def end(self) -> float:
        """Stop sampling; the CPU seconds the tree used since begin()."""
        self._read()
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(1.0)
        return sum(max(0.0, secs - self.start.get(pid, 0.0)) for pid, secs in self.seen.items())
