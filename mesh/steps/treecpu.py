"""CPU time of a sandbox's process tree, sampled from /proc, for nodes that cannot make cgroups (a node
run by a normal user). The rusage of bwrap says nothing: its pid-namespace init never passes its
children's time up. So a thread reads the tree's CPU every SAMPLE_S while the step runs: each process's
own time and its reaped children's (a child that lived less than SAMPLE_S was never seen when only own
times were read: 117 children of ~30 ms spent 2.17 CPU-seconds and 0.42 was measured, found by this
project's red team, 2026-12-06), and the step's figure is the most one sample found. A step can only be
under-counted (what it spent after the last sample), never credited with time it did not use — the
figures come from the kernel, not from the step."""

from __future__ import annotations

import threading

import psutil

SAMPLE_S = 0.05


class TreeCPU:
    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        self.most = 0.0  # the most CPU seconds one sample found in the tree (see `_read`)
        self.peak_rss = 0  # the most resident memory the tree held at one sample, in bytes
        self.start = self._read()  # what the tree had used before the step's request (start-up)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="tree-cpu", daemon=True)

    def _read(self) -> float:
        """The tree's CPU seconds now: each process's own and its reaped children's. A process that ended
        is in the children time of the one that reaped it (its parent, or the sandbox's init), so nothing is
        counted twice, and a sample never finds more than the tree used."""
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total, rss = 0.0, 0
        for proc in procs:
            try:
                t = proc.cpu_times()
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
            total += t.user + t.system + t.children_user + t.children_system
        self.peak_rss = max(self.peak_rss, rss)
        self.most = max(self.most, total)
        return total

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
        return max(0.0, self.most - self.start)
