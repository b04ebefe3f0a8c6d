"""The node's pages send their API token only to the node that gave them it. Found by this project's red
team (2026-12-06): a dashboard tab kept polling a node that had stopped, and sent `Authorization: Bearer
<token>` to the next process listening on its port, within 10 s. Once the node stops answering, the page
sends the token nowhere until it is reloaded. Here `page.js` runs in real Chromium against a stand-in node."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mesh.errors import UserError
from mesh.http.pagekeys import proof

from .browser import CHROMIUM, Page, new_page

pytestmark = [pytest.mark.mesh, pytest.mark.timeout(120), pytest.mark.skipif(CHROMIUM is None, reason="needs chromium")]

PAGE_JS = (Path(__file__).resolve().parents[2] / "mesh" / "http" / "editor" / "page.js").read_bytes()
HTML = b'<!doctype html><html><body><div id="message"></div><div id="token-box"></div><script src="/page.js"></script></body></html>'


def serving(port: int, heard: list[str], holds: str = "", prove_as: str = "") -> ThreadingHTTPServer:
    """A server on 127.0.0.1:`port` (0: any) that serves the page and answers /status, keeping every
    Authorization header it is sent; /prove answers as a node holding the token `holds` would (none: 404),
    for the Host it was sent, or for `prove_as` (a proof borrowed from a node at another address)."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/favicon.ico":  # (the browser's own, at a time of its choosing)
                self.send_error(404)
                return
            heard.append(self.headers.get("Authorization") or "")
            if self.path.startswith("/prove?nonce="):
                if not holds:
                    self.send_error(404)
                    return
                said = proof(holds, prove_as or self.headers["Host"], self.path.partition("=")[2])
                body, kind = json.dumps({"proof": said}).encode(), "application/json"
            else:
                body, kind = ((HTML, "text/html") if self.path.startswith("/?") or self.path == "/"
                              else (PAGE_JS, "text/javascript") if self.path == "/page.js"
                              else (json.dumps({"ok": True}).encode(), "application/json"))
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


def test_after_a_reload_a_kept_token_goes_only_to_a_server_that_proves_it_holds_it(loop, browser):
    """Found by the red team of 2026-12-07: the token the tab kept went, after a reload (or a restored tab),
    to whatever process held the node's port by then. It is sent only once the server at the page's address
    proves it holds it (mesh/http/pagekeys.py): not by a squatter, nor with a proof made for another address."""
    seen: dict[str, list[str]] = {"errors": [], "urls": [], "posts": []}
    heard: list[str] = []
    node = serving(0, heard, holds="the-token")
    port = node.server_address[1]
    page = loop.run_until_complete(new_page(browser, seen))
    read = "() => window.homemeshPage.readToken()"
    try:
        ui = Page(loop, page)
        loop.run_until_complete(page.goto(f"http://127.0.0.1:{port}/#token=the-token", waitUntil="load"))
        assert ui.js(read) == "the-token" and ui.js("() => location.hash") == ""  # (out of the address)
        loop.run_until_complete(page.reload(waitUntil="load"))
        assert ui.js(read) == "the-token"  # the node proves it holds the token: the kept one is used
        node.shutdown()
        node.server_close()
        for squatter_holds, prove_as in (("", ""), ("the-token", "127.0.0.1:1"), ("another-token", "")):
            squatter_heard: list[str] = []
            squatter = serving(port, squatter_heard, squatter_holds, prove_as)
            try:
                loop.run_until_complete(page.reload(waitUntil="load"))
                assert ui.js(read) == "", (squatter_holds, prove_as)
                assert ui.js("() => document.querySelector('#message').textContent").startswith(
                    "the server at this address did not prove it holds")
                assert ui.js("() => window.homemeshPage.api('', 'GET', '/status').then(r => r.status)") == 200
                assert "the-token" not in " ".join(squatter_heard), squatter_heard
            finally:
                squatter.shutdown()
                squatter.server_close()
    finally:
        loop.run_until_complete(page.close())


def test_the_address_mesh_up_prints_leaves_no_token_in_the_browser(make_mesh, tmp_path):
    """Found by the red team of 2026-12-07: the address `mesh up` printed (`/dashboard#token=…`) put the API
    token in Chromium's History database and session files, whatever page.js did after. The address holds a
    one-use ticket now: the page loads with it once, the token is in no file of the profile, and the ticket
    is worth nothing after."""
    node = make_mesh(1, lambda i: ["--no-model", "--no-scrape"]).nodes[0]
    ticket = node.client.request("POST", "/tickets")["ticket"]
    profile = tmp_path / "profile"
    out = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                          "--virtual-time-budget=5000", "--dump-dom", f"{node.api}/dashboard/#ticket={ticket}"],
                         capture_output=True, timeout=90)
    assert b'data-loaded="' in out.stdout, out.stdout[-2000:]  # (the dashboard read the node's data: it had the token)
    token = node.client.token.encode()
    kept = [str(f.relative_to(profile)) for f in profile.rglob("*") if f.is_file() and token in f.read_bytes()]
    assert not kept, f"the API token is in the browser's files: {kept}"
    with pytest.raises(UserError, match="unknown or was used"):  # (used: worth nothing now)
        node.client.request("POST", "/tickets/redeem", {"ticket": ticket})
