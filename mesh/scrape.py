"""The scrape step: headless Chromium (pyppeteer) with one browser per node and a pool of pages, every
request through the egress proxy (mesh.egress), a per-step timeout, and BeautifulSoup extraction. With
no browser on the machine it fetches the page over plain HTTP (through the same proxy) and says so in
the result's work record (`via`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import urllib.error
import urllib.request

from .egress import EgressProxy
from .errors import StepFailed
from .extract import extract
from .ssrf import Allow, Refused, check_url, resolve
from .stepuser import StepUser

log = logging.getLogger("mesh.scrape")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PAGES = 4  # pages open at once (the pool); more steps wait for one
MAX_HTML = 5 << 20
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--disable-extensions",
        "--proxy-bypass-list=<-loopback>"]  # no implicit bypass: loopback goes through the proxy too


def find_browser(configured: str | None = None) -> str | None:
    if configured:
        return configured if shutil.which(configured) else None
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


class Scraper:
    def __init__(self, allow: Allow, browser_path: str | None, user: StepUser | None = None):
        self.allow = allow
        self.user = user  # who Chromium runs as when the node is root
        self.browser_path = browser_path
        self.proxy = EgressProxy(allow)
        self.browser = None
        self.idle: list = []  # pages ready for reuse
        self.slots = asyncio.Semaphore(PAGES)
        self.lock = asyncio.Lock()

    @property
    def via(self) -> str:
        return "chromium" if self.browser_path else "http (no browser on this node)"

    async def close(self) -> None:
        if self.browser is not None:
            with contextlib.suppress(Exception):  # a dead browser cannot be closed cleanly; it is gone anyway
                await self.browser.close()
            self.browser = None
        await self.proxy.close()

    async def _browser(self):
        async with self.lock:
            if not self.proxy.port:
                await self.proxy.start()
            if self.browser is None or not self._alive():
                from pyppeteer import launch

                self.idle.clear()
                self.browser = await launch(
                    executablePath=self.browser_path, headless=True, args=ARGS + [
                        f"--proxy-server=http://127.0.0.1:{self.proxy.port}"],
                    handleSIGINT=False, handleSIGTERM=False, handleSIGHUP=False, autoClose=True)
                log.info("chromium started (%s)", self.browser_path)
            return self.browser

    def _alive(self) -> bool:
        proc = getattr(self.browser, "process", None)
        return proc is None or proc.poll() is None

    async def scrape(self, params: dict, timeout: float) -> tuple[dict, dict]:
        """(output, work) for one step; StepFailed (Refused for blocked targets) otherwise."""
        url = params["url"]
        host, port = check_url(url)
        await asyncio.to_thread(resolve, host, port, self.allow)  # a clear error before anything starts
        t0 = time.monotonic()
        try:
            if self.browser_path:
                html, final = await asyncio.wait_for(self._render(url, params), timeout)
            else:
                html, final = await asyncio.wait_for(self._fetch(url), timeout)
        except asyncio.TimeoutError:
            raise StepFailed(f"scrape of {url[:200]} timed out after {timeout:g} s") from None
        if final != url:  # where redirects ended must be allowed too (the proxy refused it if not)
            fhost, fport = check_url(final)
            await asyncio.to_thread(resolve, fhost, fport, self.allow)
        output = await asyncio.to_thread(extract, html, final, params)
        return output, {"cpu_s": round(time.monotonic() - t0, 4), "via": self.via}

    async def _render(self, url: str, params: dict) -> tuple[str, str]:
        from pyppeteer.errors import PyppeteerError
        from websockets.exceptions import ConnectionClosed

        async with self.slots:
            try:
                browser = await self._browser()
                page = self.idle.pop() if self.idle else await browser.newPage()
            except (PyppeteerError, ConnectionClosed, OSError) as exc:
                self.browser = None  # start a fresh one next time
                raise StepFailed(f"browser could not open a page: {type(exc).__name__}: {str(exc)[:300]}") from None
            reuse = False
            try:
                response = await page.goto(url, {"waitUntil": "networkidle2", "timeout": 0})
                if response is not None and response.headers.get("x-homemesh-egress") == "refused":
                    raise Refused(await response.text())
                if params.get("wait_for"):
                    await page.waitForSelector(params["wait_for"], {"timeout": 0})
                html = await page.content()
                if len(html) > MAX_HTML:
                    raise StepFailed(f"page of {len(html)} characters is over the {MAX_HTML} limit")
                reuse = True
                return html, page.url
            except StepFailed:
                raise
            except (PyppeteerError, ConnectionClosed, OSError) as exc:  # the browser failed or died: say so
                raise StepFailed(f"browser: {type(exc).__name__}: {str(exc)[:300]}") from None
            finally:
                if reuse and len(self.idle) < PAGES:
                    with contextlib.suppress(Exception):
                        await page.goto("about:blank")
                        self.idle.append(page)
                else:
                    with contextlib.suppress(Exception):
                        await page.close()

    async def _fetch(self, url: str) -> tuple[str, str]:
        if not self.proxy.port:
            await self.proxy.start()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler(
            {"http": f"http://127.0.0.1:{self.proxy.port}", "https": f"http://127.0.0.1:{self.proxy.port}"}))

        def get() -> tuple[str, str]:
            try:
                with opener.open(urllib.request.Request(url, headers={"User-Agent": "homemesh"}), timeout=60) as r:
                    body = r.read(MAX_HTML + 1)
                    if len(body) > MAX_HTML:
                        raise StepFailed(f"page over the {MAX_HTML}-byte limit")
                    return body.decode(r.headers.get_content_charset() or "utf-8", "replace"), r.geturl()
            except urllib.error.HTTPError as exc:
                if exc.headers.get("X-Homemesh-Egress") == "refused":
                    raise Refused(exc.read().decode("utf-8", "replace")) from None
                raise StepFailed(f"HTTP {exc.code} from {url[:200]}") from None
            except urllib.error.URLError as exc:
                raise StepFailed(f"cannot fetch {url[:200]}: {exc.reason}") from None

        return await asyncio.to_thread(get)
