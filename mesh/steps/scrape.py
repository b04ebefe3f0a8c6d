"""The scrape step: headless Chromium (mesh.steps.chromium: one per node, never root, sandboxed) driven by
pyppeteer, and BeautifulSoup extraction. Each step gets an incognito browser context of its own whose
only way out is an egress proxy of its own (mesh.steps.egress). When the step ends (done, failed or timed out)
that proxy is shut first and the context disposed next, which closes the step's page, any popup, worker
and service worker; so nothing a page started outlives its step or gets a request out afterwards. The
browser-wide proxy only serves Chromium's default context, which no page uses. With no browser on the
machine the page is fetched over plain HTTP (through a per-step proxy too) and the result's work record
says so (`via`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable

from mesh.errors import StepFailed
from mesh.steps import cgroup
from mesh.steps.chromium import FLAGS, Chromium
from mesh.steps.egress import EgressProxy
from mesh.steps.extract_proc import extract_within
from mesh.steps.ssrf import Allow, Refused, check_url, resolve
from mesh.steps.stepuser import StepUser

log = logging.getLogger("mesh.steps.scrape")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
STEPS = 4  # browser contexts open at once; more steps wait for a slot
MAX_HTML = 5 << 20


class _WebRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects to http and https only: any other scheme is refused, never followed."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise Refused(f"a redirect to a {scheme[:20]}: URL: only http and https pages are fetched")
        return super().redirect_request(req, fp, code, msg, headers, newurl)
DISPOSE_S = 10.0  # a context not gone by then takes the whole browser with it
# bytes of memory the browser and every page in it may use together (its own cgroup, inside the owner's cap):
# four scrapes of a page whose workers each allocated 500 MB took 3.7 GiB of the machine, paid per page. An
# honest 10 MB page (twice the HTML a step may return) peaked at 1,688 MiB here, page cache included
BROWSER_MEMORY = 2 << 30
BROWSER_PIDS = 512  # processes the browser may have (renderers, utilities, zygotes)


def find_browser(configured: str | None = None) -> str | None:
    if configured:
        return configured if shutil.which(configured) else None
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def _browser_errors() -> tuple[type[BaseException], ...]:
    """What talking to the browser raises when it failed or its DevTools connection dropped: pyppeteer's
    own errors, a closed pipe (chromium.PipeClosed, an OSError), and, mid-call on a closed connection, a
    None reply read as a dict (TypeError, KeyError) or a future set twice (InvalidStateError). A page making
    a 200 MiB text node dropped the connection while its step ended; the TypeError went uncaught, and each
    such page left a whole browser running."""
    from pyppeteer.errors import PyppeteerError

    return PyppeteerError, OSError, TypeError, KeyError, asyncio.InvalidStateError


class Scraper:
    def __init__(self, allow: Allow, browser_path: str | None, user: StepUser | None = None, cap: str = "",
                 own_ports: Callable[[], frozenset[int]] = frozenset):
        self.allow = allow
        self.own_ports = own_ports  # the node's own listening ports (ownports.OwnPorts): no step reaches them
        self.cap = cap  # the owner's cap groups (mesh.steps.cgroup.OwnerCap) the browser is put under
        self.user = user  # who Chromium runs as when the node is root
        self.browser_path = browser_path
        self.flags = list(FLAGS)
        # browser-wide, and shut from the start: steps have proxies of their own, and the browser's own
        # background requests (updates, sync, safe browsing) from the default context go nowhere
        self.proxy = EgressProxy(allow)
        self.chromium: Chromium | None = None
        self.browser = None
        self.slots = asyncio.Semaphore(STEPS)
        self.lock = asyncio.Lock()
        self.group: cgroup.StepGroup | None = None  # the running browser's memory group

    @property
    def via(self) -> str:
        return "chromium" if self.browser_path else "http (no browser on this node)"

    async def close(self) -> None:
        async with self.lock:
            await self._drop_browser()
        await self.proxy.close()

    async def _drop_browser(self) -> None:
        browser, chromium, group = self.browser, self.chromium, self.group
        self.browser, self.chromium, self.group = None, None, None
        await self._stop(browser, chromium, group)

    @staticmethod
    async def _stop(browser, chromium: Chromium | None, group: cgroup.StepGroup | None) -> None:
        try:
            if browser is not None:
                with contextlib.suppress(*_browser_errors()):  # a dead browser's connection is gone anyway
                    await browser.disconnect()
        finally:  # whatever disconnecting raised, the process goes (it was left running, with its renderers)
            if chromium is not None:
                await chromium.stop()
            if group is not None:
                await asyncio.to_thread(group.close)  # (kills what is left in it)

    async def _browser(self):
        async with self.lock:
            if self.browser is not None and self.chromium.alive() and self.browser._connection._connected:
                return self.browser
            await self._drop_browser()
            self.chromium, self.group, self.browser = await self._launch()
            return self.browser

    async def _launch(self) -> tuple[Chromium, cgroup.StepGroup | None, object]:
        """A new Chromium, in a memory group of its own, and pyppeteer's Browser on its pipe."""
        if not self.proxy.port:
            await self.proxy.start()
            self.proxy.shut()
        from mesh.steps.devtools import connect

        chromium = Chromium(self.browser_path, self.user, [*self.flags, f"--proxy-server=http://127.0.0.1:{self.proxy.port}"])
        group = None
        try:
            pipe = await chromium.start()
            group = self._group_browser(chromium)  # (moved once started: it runs as the step user, which cannot enter a group)
            return chromium, group, await connect(pipe)
        except BaseException:
            await self._stop(None, chromium, group)
            raise

    def _group_browser(self, chromium: Chromium) -> cgroup.StepGroup | None:
        """Move every browser process into a group of its own held to BROWSER_MEMORY (inside the owner's
        memory cap, and joined to its CPU cap), again until a look finds none new: one forked by a parent
        not yet moved is born outside, while all forked after their parent moved are born inside. A page
        past the limit has its renderer killed by the kernel, and its step fails; a page growing the
        browser's own process past it has the browser killed (see `_render`)."""
        group = cgroup.StepGroup(BROWSER_MEMORY, BROWSER_PIDS, self.cap)
        if not group.places:
            return group  # (no cgroups here: the owner's caps, if any, were not made either)
        moved: set[int] = set()
        for _ in range(10):
            new = [pid for pid in chromium.pids() if pid not in moved]
            if not new:
                return group
            group.join(new)
            moved.update(new)
        log.warning("Chromium kept starting processes while it was put in its group")
        return group

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
        left = timeout - (time.monotonic() - t0)  # the page is read within the step's limit, not the node's time
        output = await extract_within(html, final, params, left,
                                      lambda pid: cgroup.join_caps(self.cap, [pid]) if self.cap else None)
        return output, {"seconds": round(time.monotonic() - t0, 4), "via": self.via}  # wall time: paid per page

    @contextlib.asynccontextmanager
    async def _step_proxy(self) -> AsyncIterator[EgressProxy]:
        proxy = EgressProxy(self.allow, self.own_ports)
        await proxy.start()
        try:
            yield proxy
        finally:
            await proxy.close()

    async def _render(self, url: str, params: dict) -> tuple[str, str]:
        """The page in the browser every step shares; when that browser dies under the step, the step again
        in a browser of its own, once. One page can kill the shared browser from the outside (history.replaceState
        or location.hash with 2 MB URLs, 50 a tick, grew Chromium's own process 75 MB/s past BROWSER_MEMORY:
        this project's red team, 2026-12-07), and every step on it failed; alone, it kills only its own."""
        async with self.slots:
            try:
                browser = await self._browser()
            except _browser_errors() as exc:
                async with self.lock:
                    await self._drop_browser()  # start a fresh one next time
                raise StepFailed(f"browser could not start: {type(exc).__name__}: {str(exc)[:300]}") from None
            try:
                return await self._in(browser, url, params)
            except StepFailed:
                if browser._connection._connected:
                    raise
                log.info("the shared browser died under a scrape of %s: again in a browser of its own", url[:200])
            try:
                chromium, group, alone = await self._launch()
            except _browser_errors() as exc:
                raise StepFailed(f"browser could not start: {type(exc).__name__}: {str(exc)[:300]}") from None
            try:
                return await self._in(alone, url, params)
            finally:
                await asyncio.shield(self._stop(alone, chromium, group))

    async def _in(self, browser, url: str, params: dict) -> tuple[str, str]:
        """The page in a context of its own in `browser`, through a proxy of its own."""
        errors = _browser_errors()
        async with self._step_proxy() as proxy:
            context = None
            try:
                context = await self._new_context(browser, proxy.port)
                page = await context.newPage()
                # pyppeteer attaches to the page's workers only to leave them again, and its futures
                # then fail unheard ("Target closed") when the context goes: nothing here needs them
                await page._client.send("Target.setAutoAttach",
                                        {"autoAttach": False, "waitForDebuggerOnStart": False})
                await self._quiet(page)
                context.on("targetcreated", lambda target: self._close_stray(browser, target, page))
                loaded = await self._load_unless_crashed(page, url, params)
                if proxy.over:
                    raise StepFailed(proxy.over)
                return loaded
            except errors as exc:  # the browser failed or died: say so
                raise StepFailed(f"browser: {type(exc).__name__}: {str(exc)[:300]}") from None
            finally:  # shielded: a second cancellation must not leave the context running
                await asyncio.shield(self._end_step(browser, proxy, context))

    @staticmethod
    async def _quiet(page) -> None:
        """Turn off the page's console, exception and log events, which pyppeteer enables for its own
        evaluate and console API: each crossed the connection every step shares, whole, for the node to
        parse (a page logging 50 MB slowed every step on the machine). A scrape reads the page through the
        DOM domain and evaluates only in a world of its own (`_html_size`), neither of which needs them."""
        await asyncio.gather(page._client.send("Runtime.disable"), page._client.send("Log.disable"))

    @staticmethod
    async def _new_context(browser, proxy_port: int):
        """An incognito context whose every request goes through this step's proxy (pyppeteer's own
        createIncognitoBrowserContext takes no proxy)."""
        from pyppeteer.browser import BrowserContext

        reply = await browser._connection.send("Target.createBrowserContext", {
            "proxyServer": f"http://127.0.0.1:{proxy_port}", "proxyBypassList": "<-loopback>",
            "disposeOnDetach": True})
        context = BrowserContext(browser, reply["browserContextId"])
        browser._contexts[reply["browserContextId"]] = context
        return context

    @staticmethod
    def _close_stray(browser, target, page) -> None:
        """A second page in a step's context (a popup the blocker let through): closed at once."""
        if target.type != "page" or target._targetId == page.target._targetId:
            return
        log.info("closing a page opened by a scraped page: %s", target.url[:200])
        closing = asyncio.ensure_future(
            browser._connection.send("Target.closeTarget", {"targetId": target._targetId}))
        closing.add_done_callback(lambda f: f.cancelled() or f.exception())  # gone already: nothing to do

    async def _end_step(self, browser, proxy: EgressProxy, context) -> None:
        proxy.shut()  # before the context goes: its unload beacons meet a closed door
        if context is None:
            return
        try:
            await asyncio.wait_for(self._dispose(browser, context), DISPOSE_S)
        except (*_browser_errors(), asyncio.TimeoutError) as exc:
            log.warning("a browser context would not close (%s); stopping Chromium", exc)
            async with self.lock:
                if self.browser is browser:
                    await self._drop_browser()

    @staticmethod
    async def _dispose(browser, context) -> None:
        """Dispose of the context and return only when every target it held is gone. Chromium answers
        the dispose while a service worker of the context is still listed (with no context id by then)
        for ~70 ms, longer under load: so the step's targets are taken by id before, and awaited."""
        send = browser._connection.send
        held = {t["targetId"] for t in (await send("Target.getTargets"))["targetInfos"]
                if t.get("browserContextId") == context._id}
        await context.close()
        while held & {t["targetId"] for t in (await send("Target.getTargets"))["targetInfos"]}:
            await asyncio.sleep(0.02)

    async def _load_unless_crashed(self, page, url: str, params: dict) -> tuple[str, str]:
        """_load, failing as soon as the page's renderer dies (killed past BROWSER_MEMORY, or crashed) or the
        browser's connection goes (the browser died): the load would otherwise wait for the step's whole
        timeout, holding one of the browser's STEPS slots all that time."""
        crashed: asyncio.Future = asyncio.get_running_loop().create_future()
        page.on("error", lambda exc: crashed.done() or crashed.set_result(str(exc)))
        lost = getattr(page._client._connection, "lost", None)  # the browser's connection (PipeConnection)
        if lost is not None:  # gone, the load waited out the step's whole timeout (pyppeteer's goto has none)
            lost.add_done_callback(lambda _: crashed.done() or crashed.set_result("its browser's connection closed"))
        load = asyncio.ensure_future(self._load(page, url, params))
        try:
            await asyncio.wait({load, crashed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not load.done():
                load.cancel()
                await asyncio.gather(load, return_exceptions=True)
        if crashed.done() and not (load.done() and not load.cancelled() and load.exception() is None):
            raise StepFailed(f"the page crashed ({crashed.result()[:200]}): past the {BROWSER_MEMORY >> 20} MiB "
                             "the browser may use, or its renderer died")
        return load.result()

    async def _load(self, page, url: str, params: dict) -> tuple[str, str]:
        """Load, wait, read, all through the DOM domain: pyppeteer's evaluate (behind its content() and
        waitForSelector) runs with `userGesture: true`, which hands the page a user activation, and
        with it the power to open popups past the blocker (measured)."""
        response = await page.goto(url, {"waitUntil": "networkidle2", "timeout": 0})
        if response is not None and response.headers.get("x-homemesh-egress") == "refused":
            raise Refused(await response.text())
        if params.get("wait_for"):
            while not await self._select(page, params["wait_for"]):
                await asyncio.sleep(0.1)
        size = await self._html_size(page)
        if size > MAX_HTML:
            raise StepFailed(f"page of {size} characters is over the {MAX_HTML} limit")
        root = (await page._client.send("DOM.getDocument", {"depth": 0}))["root"]["nodeId"]
        html = (await page._client.send("DOM.getOuterHTML", {"nodeId": root}))["outerHTML"]
        if len(html) > MAX_HTML:  # (the page changed since it was measured)
            raise StepFailed(f"page of {len(html)} characters is over the {MAX_HTML} limit")
        return html, page.url

    @staticmethod
    async def _html_size(page) -> int:
        """The page's HTML in characters, measured in the renderer before any of it crosses the DevTools
        connection every step in the browser shares: 40 MB of one attribute raised the node's memory by 750
        MB, and 80 MB of \\x01 (480 MB as JSON escapes) dropped the connection, failing every other step
        with it (this project's red team, 2026-12-06). Measured in a world of its own, whose DOM getters
        the page's scripts cannot replace, and without a user gesture (see `_load`)."""
        world = await page._client.send("Page.createIsolatedWorld", {"frameId": page.mainFrame._id,
                                                                      "worldName": "homemesh-measure"})
        got = await page._client.send("Runtime.evaluate", {
            "expression": "document.documentElement ? document.documentElement.outerHTML.length : 0",
            "contextId": world["executionContextId"], "returnByValue": True, "userGesture": False})
        value = got.get("result", {}).get("value")
        if "exceptionDetails" in got or not isinstance(value, int):  # (a string past V8's limit, say)
            raise StepFailed(f"the page's HTML could not be measured: over the {MAX_HTML} limit, or broken")
        return value

    @staticmethod
    async def _select(page, selector: str) -> bool:
        from pyppeteer.errors import NetworkError

        root = (await page._client.send("DOM.getDocument", {"depth": 0}))["root"]["nodeId"]
        try:
            found = await page._client.send("DOM.querySelector", {"nodeId": root, "selector": selector})
        except NetworkError as exc:
            if "while querying" not in str(exc):
                raise
            raise StepFailed(f"wait_for: {selector[:200]!r} is not a CSS selector") from None
        return found["nodeId"] != 0

    async def _fetch(self, url: str) -> tuple[str, str]:
        async with self._step_proxy() as proxy:
            try:
                return await asyncio.to_thread(self._get, url, proxy.port)
            finally:
                if proxy.over:  # (whatever the fetch made of a cut connection)
                    raise StepFailed(proxy.over)

    @staticmethod
    def _get(url: str, proxy_port: int) -> tuple[str, str]:
        proxy = f"http://127.0.0.1:{proxy_port}"
        opener = urllib.request.OpenerDirector()  # http and https through the proxy, nothing else (build_opener
        # adds ftp, file and data, and its redirects followed ftp:// around the proxy: an FTP login to a
        # refused loopback address, its reply in the step's error; this project's red team, 2026-12-06)
        for handler in (urllib.request.ProxyHandler({"http": proxy, "https": proxy}), urllib.request.HTTPHandler(),
                        urllib.request.HTTPSHandler(), _WebRedirects(), urllib.request.HTTPDefaultErrorHandler(),
                        urllib.request.HTTPErrorProcessor()):
            opener.add_handler(handler)
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
