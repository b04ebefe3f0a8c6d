"""Discovery through the Kademlia DHT on real nodes: with gossip allowed to link no more than one peer
(--max-links 1), a node still finds workers for its jobs by looking up who provides what in the DHT,
and every node's record and offers are in it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from aiohttp import web

from mesh.cli.local import LocalMesh
from mesh.node.lifecycle import FIND_WAIT_S
from mesh.steps.models import default_model_sha

from ..conftest import cli_json, run_cli, wait_for, write_job
from ..websites import ThreadedSite

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]
PY_STEP = {"id": "sum", "kind": "python", "params": {"code": "output = sum(range(10)) * 2"}}


def test_workers_are_found_in_the_dht_when_gossip_links_one_peer(make_mesh, tmp_path: Path):
    t0 = time.monotonic()
    mesh = make_mesh(5, lambda i: ["--no-model", "--no-scrape", "--max-links", "1"])  # ready = all linked
    formed = time.monotonic() - t0
    last = mesh.nodes[4]
    st = cli_json("status", "--home", str(last.home))
    assert st["discovery"]["routing_table"] >= 1 and "python" in st["discovery"]["capabilities"]
    assert not st["discovery"]["refused"]
    rep = cli_json("submit", write_job(tmp_path / "job.json", [PY_STEP]), "--home", str(last.home),
                   "--redundancy", "3", "--wait")
    assert rep["status"] == "done" and rep["steps"]["sum"]["output"] == 90
    assert len({r["node"] for r in rep["steps"]["sum"]["replicas"] if r["agreed"]}) == 3
    print(f"5 nodes with --max-links 1 linked up through the DHT in {formed:.1f} s")


class Page(ThreadedSite):
    def app(self) -> web.Application:
        async def page(request: web.Request) -> web.Response:
            return web.Response(content_type="text/html", text="<html><head><title>found</title></head>"
                                "<body><p>scraped by a worker the DHT named</p></body></html>")

        app = web.Application()
        app.router.add_get("/", page)
        return app


def test_a_job_needing_scrape_or_llm_makes_its_node_look_those_up_in_the_dht(make_mesh, tmp_path: Path):
    """Nodes search the DHT for python workers from the start and for other capabilities only while a
    job of theirs needs them: a scrape job makes the submitter walk for `scrape` providers (two of five
    nodes offer it) and runs on them; an llm job, which no node here can run, makes it walk for the
    default model's `llm:<sha256>` before the job gives up (at once when the walk named nobody)."""
    site = Page()
    site.start()
    try:
        scrapers = (2, 3)
        mesh = make_mesh(5, lambda i: ["--no-model", "--max-links", "1",
                                       *(["--scrape-allow", "127.0.0.1"] if i in scrapers else ["--no-scrape"])])
        home = str(mesh.nodes[4].home)

        def looked_up() -> dict:
            return cli_json("status", "--home", home)["discovery"]["looked_up"]

        wait_for(lambda: looked_up().get("python"), 60, "the submitter's first walk for python workers")
        assert "scrape" not in looked_up() and not any(c.startswith("llm:") for c in looked_up())
        step = {"id": "page", "kind": "scrape", "params": {"url": site.url("/")}}
        rep = cli_json("submit", write_job(tmp_path / "scrape.json", [step]), "--home", home,
                       "--redundancy", "2", "--wait")
        assert rep["status"] == "done", rep
        assert rep["steps"]["page"]["output"]["title"] == "found"
        want = {cli_json("status", "--home", str(mesh.nodes[i].home))["node"] for i in scrapers}
        assert {r["node"] for r in rep["steps"]["page"]["replicas"] if r["agreed"]} == want
        assert looked_up()["scrape"] >= 1

        llm = f"llm:{default_model_sha()}"
        step = {"id": "say", "kind": "llm", "params": {"prompt": "The capital of France is", "max_tokens": 4}}
        t0 = time.monotonic()
        res = run_cli("submit", write_job(tmp_path / "llm.json", [step]), "--home", home, "--wait")
        waited = time.monotonic() - t0
        assert res.returncode == 2, res.stderr  # nobody here has a model: refused before it is submitted...
        assert "the mesh offers 0" in res.stderr
        assert looked_up().get(llm, 0) >= 1  # ...which the node made sure of, in the DHT, before giving up
        assert waited < FIND_WAIT_S, waited  # and once the DHT named nobody, it did not wait for links
    finally:
        site.stop()


def test_gossip_alone_links_no_more_than_max_links(tmp_path: Path):
    """The control: plain TCP has no DHT, so with --max-links 1 the last node stays linked to its
    bootstrap alone while the heartbeats pass records around (which is what made the test above pass)."""
    mesh = LocalMesh(tmp_path / "tcp", 5, lambda i: ["--no-model", "--no-scrape", "--transport", "tcp",
                                                     "--max-links", "1"])
    try:
        mesh.start()
        last = mesh.nodes[4]
        wait_for(lambda: linked(last) == 1, 60, "the last node to link its bootstrap")
        counts = []
        deadline = time.monotonic() + 3 * 2.0 + 2  # three heartbeats of gossip
        while time.monotonic() < deadline:
            counts.append(linked(last))
            time.sleep(0.5)
        assert max(counts) == 1, counts
        known = len(cli_json("status", "--home", str(last.home))["peers"])
        assert known >= 2, "gossip did not even pass records around: the control shows nothing"
    finally:
        mesh.stop()


def linked(node) -> int:
    try:
        st = cli_json("status", "--home", str(node.home), timeout=20)
    except AssertionError:
        return 0
    return sum(p["connected"] and p["state"] == "up" for p in st["peers"])
