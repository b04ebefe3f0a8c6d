"""This project's attack round, 2026-12-06, second pass, against real nodes (two, no model):

- a job body whose json_schema llama.cpp's converter trips over (`"properties": [1]`, `"pattern": 5`)
  and a chat request whose response_format.json_schema is a string were a 500 from the node's API;
- a peer's `testimony` of 256 items that fail their check wrote one log line an item: at 40 such
  messages a second (a fifth of the envelope rate a link may send) 25,000 lines in 8 s, each written to
  node.log and node.jsonl in the event loop, held /health at 200 ms a request (6 ms when the same items
  were only counted), and rotated the owner's logs away within minutes. It is one line a message;
- a home whose peers.json, held-heads.json or replay.json was nested 100,000 deep (damaged) stopped
  `mesh node` with a traceback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from mesh.cli.local import LocalNode

from ..conftest import wait_for
from .conftest import local_mesh
from .hostile import HostilePeer, log_lines, now_ms, status

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def mesh2(tmp_path_factory):
    yield from local_mesh(tmp_path_factory, [], nodes=2)


def post(node, path: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(node.api + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {node.client.token}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw.startswith(b"{") else {"raw": raw.decode(errors="replace")}


@pytest.mark.parametrize("schema", [{"type": "object", "properties": [1]}, {"type": "string", "pattern": 5}])
def test_a_schema_the_converter_trips_over_is_a_400_from_a_real_node(mesh2, schema):
    node = mesh2.nodes[0]
    job = {"steps": [{"id": "a", "kind": "llm", "params": {"prompt": "p", "json_schema": schema}}]}
    status_code, body = post(node, "/jobs", {"job": job})
    assert status_code == 400, body
    assert "json_schema: llama.cpp cannot build a grammar from it" in body["error"]
    assert node.alive()


def test_a_response_format_that_is_not_an_object_is_a_400_from_a_real_node(mesh2):
    node = mesh2.nodes[0]
    status_code, body = post(node, "/v1/chat/completions", {
        "model": "default", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_schema", "json_schema": "x"}})
    assert status_code == 400, body
    assert body["error"]["param"] == "response_format"


def test_a_testimony_of_bad_items_is_one_log_line_a_message_not_one_an_item(mesh2):
    node, other = mesh2.nodes
    key = bytes.fromhex(status(node)["key"])
    with HostilePeer(node.listen) as evil:
        evil.handshake(key)
        before = status(node)["rejected"].get("bad-testimony", 0)
        # about a worker the node knows (its other peer), each item failing its check (bad is negative)
        item = {"worker": other.node_id, "good": 5.0, "bad": -5.0, "streak": 3, "since": 0, "last_bad": 0,
                "stamp": now_ms()}
        messages = 5
        for _ in range(messages):
            evil.send(evil.seal_raw("testimony", key, {"items": [item] * 256}))
        wait_for(lambda: status(node)["rejected"].get("bad-testimony", 0) >= before + messages * 256, 30,
                 "the bad testimony counted item by item")
        lines = wait_for(lambda: log_lines(node, "bad-testimony", evil.node_id[:12]), 15, "the refusal logged")
        assert len(lines) <= messages, f"{len(lines)} log lines for {messages} messages"
        assert "256 of 256 items" in lines[-1]
    assert node.alive()


@pytest.mark.parametrize("name", ["peers.json", "held-heads.json", "replay.json"])
def test_a_node_starts_on_a_home_whose_own_files_are_damaged(tmp_path, name):
    """Each of these nested 100,000 deep stopped `mesh node` at start with a RecursionError traceback; the
    node takes what of them does not parse as nothing, as it does for other damage (it learns its peers
    again, peers give it their heads again, and the replay marks of what still fits the window are lost)."""
    node = LocalNode(tmp_path / "n", ["--no-model"])
    node.home.mkdir(parents=True)
    (node.home / name).write_text("[" * 100_000 + "]" * 100_000 + "\n")
    node.start([])
    try:
        node.wait_started(60)
        assert node.client.request("GET", "/health")["ok"]
    finally:
        node.stop()  # (by its process group: the node and its actors)
