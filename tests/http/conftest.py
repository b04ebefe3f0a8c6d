"""Fixtures of the browser tests (tests/http/browser.py): one event loop and one headless Chromium per module."""

from __future__ import annotations

import asyncio

import pytest

from .browser import launch_browser


@pytest.fixture(scope="module")
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def browser(loop):
    b = loop.run_until_complete(launch_browser())
    yield b
    loop.run_until_complete(b.close())
