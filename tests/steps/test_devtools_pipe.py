"""The browser's DevTools pipe (mesh.steps.chromium.DevToolsPipe) read without a browser: a real
StreamReader fed the bytes a browser would write."""

from __future__ import annotations

import asyncio

import pytest

from mesh.steps import chromium
from mesh.steps.chromium import DevToolsPipe, PipeClosed

pytestmark = pytest.mark.timeout(30)


def reading(*chunks: bytes, eof: bool = True) -> DevToolsPipe:
    reader = asyncio.StreamReader(limit=chromium.MAX_MESSAGE)
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return DevToolsPipe(None, reader, None)


def test_a_message_over_the_cap_is_dropped_and_the_next_one_read(monkeypatch):
    """Found by this project's red team (2026-12-06): a page's console.log over the cap closed the pipe, and
    with it every other step on the browser; the message is now read past, however it arrives."""
    monkeypatch.setattr(chromium, "MAX_MESSAGE", 1024)

    async def go() -> list[str]:
        pipe = reading(b'{"id":1}\0', b"x" * 5000, b"y" * 3000 + b"\0", b'{"id":2}\0', b"z" * 1025 + b"\0",
                       b'{"id":3}\0')
        return [await pipe.recv() for _ in range(3)]
    assert asyncio.run(go()) == ['{"id":1}', '{"id":2}', '{"id":3}']


def test_the_pipe_closing_mid_message_is_said_as_such(monkeypatch):
    monkeypatch.setattr(chromium, "MAX_MESSAGE", 1024)

    async def go(*chunks: bytes) -> None:
        await reading(*chunks).recv()
    with pytest.raises(PipeClosed, match="closed"):
        asyncio.run(go(b'{"id":1'))
    with pytest.raises(PipeClosed, match="closed"):
        asyncio.run(go(b"x" * 4000))  # (closed while an over-long message was being read past)
