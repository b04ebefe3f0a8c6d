"""Job bodies whose json_schema llama.cpp's converter trips over (this project's attack round, 2026-12-06,
second pass): it trusts a schema's shape, so `"properties": [1]`, `"pattern": 5`, `"items": 5` raised
AttributeError, which nothing caught: POST /jobs and /v1/chat/completions answered 500 (as the real node
did: tests/security/test_hostile_round.py). Each is a 400 that says why."""

from __future__ import annotations

from pathlib import Path

import pytest

from .test_api_facade import Fake, call

pytestmark = pytest.mark.timeout(60)

TRIPS = [
    {"type": "object", "properties": [1]},
    {"type": "string", "pattern": 5},
    {"type": "array", "items": 5},
    {"type": "array", "prefixItems": 5},
    {"oneOf": [[]]},
    {"properties": {"a": {"$ref": 5}}},
]


@pytest.fixture
def facade(tmp_path: Path):
    (tmp_path / "jobs").mkdir()
    return Fake(tmp_path).facade()


@pytest.mark.parametrize("schema", TRIPS)
def test_a_schema_the_converter_trips_over_is_a_400_at_post_jobs(facade, schema):
    job = {"steps": [{"id": "a", "kind": "llm", "params": {"prompt": "p", "json_schema": schema}}]}
    status, body = call(facade, "POST", "/jobs", {"job": job})
    assert status == 400, body
    assert "json_schema: llama.cpp cannot build a grammar from it" in body["error"]


@pytest.mark.parametrize("fmt", [
    {"type": "json_schema", "json_schema": "x"},
    {"type": "json_schema", "json_schema": [1]},
    {"type": "json_schema", "json_schema": {"schema": {"type": "object", "properties": [1]}}},
])
def test_a_response_format_of_the_wrong_shape_is_a_400_at_chat_completions(facade, fmt):
    status, body = call(facade, "POST", "/v1/chat/completions",
                        {"model": "default", "messages": [{"role": "user", "content": "hi"}], "response_format": fmt})
    assert status == 400, body
    assert body["error"]["type"] == "invalid_request_error"
