"""What the browser tests of the node's pages (the editor, the dashboard) share: where Chromium is, the
page size, where screenshots go, launching headless Chromium through pyppeteer, and a page wrapper that
waits by polling the page. The fixtures that use these are in tests/http/conftest.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Screenshots go to the test's tmp dir; `MESH_SCREENSHOTS=docs pytest tests/http/test_editor.py` refreshes the
# README's (so a test run never rewrites files under version control). An absolute path is used as it is.
SHOTS = os.environ.get("MESH_SCREENSHOTS")
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
VIEWPORT = {"width": 1280, "height": 720}


def shots_dir(tmp_path: Path) -> Path:
    return ROOT / SHOTS if SHOTS else tmp_path


async def launch_browser():
    from pyppeteer import launch

    return await launch(
        executablePath=CHROMIUM, headless=True, handleSIGINT=False, handleSIGTERM=False, handleSIGHUP=False,
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-extensions",
              f"--window-size={VIEWPORT['width']},{VIEWPORT['height']}"])


async def new_page(browser, seen: dict[str, list[str]]):
    """A page of the viewport's size whose console errors, page errors and requests are kept in `seen`."""
    page = await browser.newPage()
    await page.setViewport(VIEWPORT)
    page.on("console", lambda msg: msg.type == "error" and seen["errors"].append(f"console: {msg.text}"))
    page.on("pageerror", lambda exc: seen["errors"].append(f"page error: {exc}"))
    page.on("request", lambda req: (seen["urls"].append(req.url),
                                    req.method == "POST" and seen["posts"].append(req.url)))
    return page


class Page:
    """A page driven from a test's synchronous code: evaluate, wait for a condition, click, type, screenshot."""

    def __init__(self, loop, page):
        self.loop = loop
        self.page = page

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def js(self, expr: str, *args):
        return self.run(self.page.evaluate(expr, *args))

    def wait(self, expr: str, timeout: float, *args):
        """Wait until `expr` (a JS function) returns something truthy in the page."""
        return self.run(self.page.waitForFunction(expr, {"timeout": timeout * 1000, "polling": 100}, *args))

    def center(self, selector: str) -> tuple[float, float]:
        box = self.run(self._box(selector))
        return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2

    async def _box(self, selector: str) -> dict:
        handle = await self.page.waitForSelector(selector, timeout=10_000)
        return await handle.boundingBox()

    def drag(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        async def go():
            m = self.page.mouse
            await m.move(*start)
            await m.down()
            await m.move(start[0] + 8, start[1] + 3, {"steps": 2})
            await m.move(*end, {"steps": 12})
            await m.up()
        self.run(go())

    def click(self, selector: str) -> None:
        self.run(self.page.click(selector))

    def type_into(self, selector: str, text: str) -> None:
        self.click(selector)
        self.run(self.page.keyboard.type(text))

    def text(self, selector: str) -> str:
        return self.js("s => { const e = document.querySelector(s); return e ? e.textContent : null; }", selector)

    def message(self) -> str:
        return self.text("#message")

    def screenshot(self, path: Path, full: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.run(self.page.screenshot({"path": str(path), "fullPage": full}))
