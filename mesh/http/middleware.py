"""Pure-ASGI wrappers around the API app: a cap on request bodies, and the editor's security headers.
Pure ASGI, so the event streams pass through them untouched."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from mesh.http.common import ApiError, error_body

MAX_BODY = 4 << 20
EDITOR_CSP = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
              "connect-src 'self'; frame-ancestors 'none'")  # no other page may frame it (clickjacking)


class BodyLimit:
    """Refuse bodies over MAX_BODY before they are read into memory (declared or streamed)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > MAX_BODY:
            return await JSONResponse(error_body(scope["path"], 413, f"body over {MAX_BODY} bytes"), 413)(
                scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                raise ApiError(413, f"body over {MAX_BODY} bytes")
            return message

        return await self.app(scope, limited, send)


PAGES = ("/editor", "/dashboard")  # the node's own pages, each a folder of static files
PAGE_DATA = ("/dashboard/data",)  # (under a page's folder, but the token's data: an answer like the API's)


class EditorHeaders:
    """The node's pages (the editor, /editor, and the owner's dashboard, /dashboard) may load and call this
    node and nothing else: a Content-Security-Policy the browser enforces, and no framing; and the browser
    asks the node again before it runs a page's code (`no-cache`: they were fresh for hours by heuristic, and a
    page fixed by an upgrade kept running old). Every other answer is `no-store`: the token's answers (the
    node's key, peers, balance, job outputs) were written to the browser's disk cache, outside the home."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        under = any(path == p or path.startswith(p + "/") for p in PAGES)
        extra = [(b"cache-control", b"no-cache" if under and path not in PAGE_DATA else b"no-store")]
        if under:
            extra += [(b"content-security-policy", EDITOR_CSP.encode()), (b"x-frame-options", b"DENY"),
                      (b"x-content-type-options", b"nosniff")]

        async def with_headers(message):
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"]
                message = {**message, "headers": [*kept, *extra]}
            await send(message)

        return await self.app(scope, receive, with_headers)
