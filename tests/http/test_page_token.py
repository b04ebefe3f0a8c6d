"""The node's pages send their API token only to the node that gave them it. Found by this project's red
team (2026-12-06): a dashboard tab kept polling a node that had stopped, and sent `Authorization: Bearer
<token>` to the next process listening on its port, within 10 s. Once the node stops answering, the page
sends the token nowhere until it is reloaded. Here `page.js` runs in real Chromium against a stand-in node."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from .browser import CHROMIUM, Page, new_page

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120), pytest.mark.skipif(CHROMIUM is None, reason="needs chromium")]

PAGE_JS = (Path(__file__).resolve().parents[2] / "mesh" / "http" / "editor" / "page.js").read_bytes()
HTML = b'<!doctype html><html><body><div id="message"></div><div id="token-box"></div><script src="/page.js"></script></body></html>'


def serving(port: int, heard: list[str]) -> ThreadingHTTPServer:
    """A server on 127.0.0.1:`port` (0: any) that serves the page and answers /status, keeping every
    Authorization header it is sent."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/favicon.ico":  # (the browser's own, at a time of its choosing)
                self.send_error(404)
                return
            heard.append(self.headers.get("Authorization") or "")
            body, kind = ((HTML, "text/html") if self.path == "/" else (PAGE_JS, "text/javascript")
                          if self.path == "/page.js" else (json.dumps({"ok": True}).encode(), "application/json"))
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_page_sends_its_token_to_no_one_once_its_node_stopped_answering(loop, browser):
    seen: dict[str, list[str]] = {"errors": [], "urls": [], "posts": []}
    node_heard: list[str] = []
    node = serving(0, node_heard)
    port = node.server_address[1]
    page = loop.run_until_complete(new_page(browser, seen))
    try:
        loop.run_until_complete(page.goto(f"http://127.0.0.1:{port}/", waitUntil="load"))
        ui = Page(loop, page)
        ask = "() => window.homemeshPage.api('the-token', 'GET', '/status').then(r => r.status)"
        assert ui.js(ask) == 200 and "Bearer the-token" in node_heard
        node.shutdown()
        node.server_close()  # the node stops
        assert ui.js(ask) == 0  # it does not answer
        squatter_heard: list[str] = []
        squatter = serving(port, squatter_heard)  # another process takes the port
        try:
            for _ in range(3):  # the page's next polls
                assert ui.js(ask) == 0
            assert "the-token" not in " ".join(squatter_heard), squatter_heard
            assert "reload" in ui.js("() => window.homemeshPage.api('the-token', 'GET', '/status')"
                                     ".then(r => r.body.error)")
        finally:
            squatter.shutdown()
            squatter.server_close()
    finally:
        loop.run_until_complete(page.close())
