"""A chat template from a GGUF this node did not ship with (the owner's `mesh models add`, or a model
fetched from a peer) cannot hold the node: it is read and rendered in a child process, off the event loop.
Two nested loops in one, rendered in the node's process, held its event loop 38.9 s: the HTTP API and the
peer gateway waited (this project's attack round on the llm path, 2026-12-06)."""

from __future__ import annotations

import threading
import time

import pytest

from mesh.errors import MeshError

from ..conftest import cli_json
from ..tinygguf import tiny_gguf

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(180)]
LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[-1]['content'] }}"


def test_a_looping_chat_template_neither_holds_the_api_nor_answers_with_a_prompt(make_mesh, tmp_path):
    node = make_mesh(1, lambda i: ["--no-model", "--no-scrape"], name="chat-template").nodes[0]
    tiny_gguf(tmp_path / "evil.gguf", chat_template=LOOP)
    cli_json("models", "add", str(tmp_path / "evil.gguf"), "--name", "evil", "--home", str(node.home))
    answer: dict = {}

    def chat() -> None:
        try:
            node.client.request("POST", "/v1/chat/completions", {"model": "evil", "max_tokens": 4,
                                                                 "messages": [{"role": "user", "content": "hi"}]},
                                timeout=120)
        except MeshError as exc:  # the error answer is what is looked at
            answer["error"] = str(exc)

    asker = threading.Thread(target=chat)
    asker.start()
    time.sleep(1.0)  # the render under way
    worst = 0.0
    while asker.is_alive() and worst < 5:
        started = time.monotonic()
        node.client.request("GET", "/v1/models", timeout=60)
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.2)
    asker.join(60)
    print(f"\nGET /v1/models took at most {worst:.2f} s while the template ran; the chat: {answer}")
    assert worst < 2.0, f"the API waited {worst:.1f} s on a chat template"
    assert "chat template" in answer.get("error", ""), answer



