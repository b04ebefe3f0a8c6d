"""The actor bridge's daemon pool: bounded, answers every submission (results and exceptions alike), and
its threads never hold the interpreter's exit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from mesh.node.bridge import DaemonPool

pytestmark = pytest.mark.timeout(30)


def test_jobs_beyond_the_limit_wait_their_turn_and_all_are_answered():
    pool = DaemonPool(2, "t")
    gate = threading.Event()
    blocked = [pool.submit(gate.wait, 10) for _ in range(2)]
    third = pool.submit(lambda: "third")
    time.sleep(0.2)
    assert not third.done() and len(pool.threads) == 2  # never more threads than the limit
    gate.set()
    assert [f.result(5) for f in blocked] == [True, True] and third.result(5) == "third"
    assert pool.submit(lambda: 1 / 0).exception(5).__class__ is ZeroDivisionError
    pool.close()
    with pytest.raises(RuntimeError):
        pool.submit(lambda: None)


def test_a_thread_stuck_in_a_call_does_not_hold_the_process_exit():
    code = ("import threading, time\nfrom mesh.node.bridge import DaemonPool\n"
            "p = DaemonPool(1, 't')\np.submit(time.sleep, 60)\ntime.sleep(0.1)\np.close()\nprint('bye')\n")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.stdout.strip() == "bye" and time.monotonic() - t0 < 10
