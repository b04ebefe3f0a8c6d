"""Each part of a node's clean stop is bounded (mesh.node.lifecycle._bounded): a part that hangs is cut
short and named in the log, so the stop ends before whoever stopped the node kills it (which would leave
its cgroups behind); a quick part logs nothing."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from mesh.node.lifecycle import _bounded

pytestmark = pytest.mark.timeout(10)


def test_a_part_that_hangs_is_cut_short_and_named(caplog):
    caplog.set_level(logging.INFO, "mesh.node.lifecycle")
    t0 = time.monotonic()
    asyncio.run(_bounded("closing the browser", asyncio.sleep(60), 0.2))
    assert time.monotonic() - t0 < 5
    assert [r.getMessage() for r in caplog.records] == [
        "stopping: closing the browser did not end within 0.2 s; stopping without it"]


def test_a_quick_part_logs_nothing(caplog):
    caplog.set_level(logging.INFO, "mesh.node.lifecycle")
    asyncio.run(_bounded("sharing the ledger's head", asyncio.sleep(0), 3))
    assert not caplog.records
