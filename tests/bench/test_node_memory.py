"""The idle-node memory bench tells a node's processes apart by the names its actors give themselves."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from bench.node_memory import role

from ..conftest import wait_for

pytestmark = pytest.mark.timeout(30)


def test_an_actor_process_names_itself_and_the_bench_reads_the_name():
    code = "from actors.procname import name_process; import sys; name_process('hm-ledger'); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    try:
        p = psutil.Process(proc.pid)
        wait_for(lambda: p.name() == "hm-ledger", 10, "the process to take its name")
        assert role(p, root=0) == "ledger actor (SQLite)"
        assert role(p, root=proc.pid).startswith("node ")  # the tree's root is the node, whatever its name
    finally:
        proc.communicate(b"")
