"""Who may use the server, checked before a request reaches a route (pure ASGI, nothing read from the body).

- Host: on a loopback address only loopback names are served, so a site whose DNS name is
  re-pointed at 127.0.0.1 (DNS rebinding) gets 403 (a Host that cannot be parsed: 400).
- Origin: a browser names the page a request comes from; only the server's own page and the
  origins given with --cors pass, so a site the user visits cannot send it work (403).
  Desktop clients (Qt, curl, scripts) send no Origin.
- Token: with a token, every request but the page itself needs `Authorization: Bearer TOKEN` (401).
- Size: an upload must say its Content-Length (chunked: 411) and stay under --max-upload-mb (413), so the
  limit holds before a byte is read.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from .settings import Settings, is_loopback

# the page (static, holds no data; it asks for the token itself) and the Krita plug-in it links to (public
# code, fetched by a plain link that cannot send the token)
OPEN_PATHS = ("/", "/krita-plugin.zip")


class Guard:
    """A pure ASGI middleware answering the first check a request fails with a one-line JSON error.

    Two of them wrap the app (see app.py): SiteGuard outside CORSMiddleware, so a foreign page's preflight
    gets the same 403 as its request; RequestGuard inside it, so a 401/411/413 for an allowed origin
    carries the CORS headers that let that page read the error.
    """

    def __init__(self, app, settings: Settings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        problem = self.problem(scope, Headers(scope=scope))
        if problem is None:
            return await self.app(scope, receive, send)
        status, message = problem
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        await JSONResponse({"error": message}, status_code=status, headers=headers)(scope, receive, send)

    def problem(self, scope, headers: Headers) -> tuple[int, str] | None:
        """(status, message) of the first check the request fails, or None."""
        raise NotImplementedError


class SiteGuard(Guard):
    """Which site the request comes from: the Host and Origin headers."""

    def problem(self, scope, headers: Headers) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if self.settings.loopback:
            name = hostname(host)
            if name is None:
                return 400, f"Host header {host!r} is malformed; use {self.settings.url}"
            if not is_loopback(name):
                return 403, (
                    f"Host {host!r} is not an address of this server; use {self.settings.url} "
                    "(requests under other names are refused against DNS rebinding)"
                )
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin.rstrip("/"), host):
            if origin == "null":  # a file:// page or a sandboxed frame: no site that --cors could name
                return 403, (
                    "requests from pages without an origin (Origin null: a file:// page, a sandboxed frame) "
                    "are refused; open the page from a web server and start this server with --cors ORIGIN"
                )
            return 403, (
                f"requests from web pages of other sites are refused (Origin {origin}); "
                f"start the server with --cors {origin} to allow that site"
            )
        return None

    def origin_allowed(self, origin: str, host: str) -> bool:
        if origin in self.settings.cors or "*" in self.settings.cors:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:  # e.g. http://[bad: not a page's origin
            return False
        return parts.netloc == host and parts.scheme in ("http", "https")


class RequestGuard(Guard):
    """What the request carries: the token, and an upload's declared size."""

    def problem(self, scope, headers: Headers) -> tuple[int, str] | None:
        if scope["method"] == "OPTIONS" and "origin" in headers:
            return None  # a CORS preflight from an allowed origin: browsers send it without credentials
        if self.settings.token and scope["path"] not in OPEN_PATHS and not self.token_ok(headers):
            return 401, "this server needs a token: send the header `Authorization: Bearer TOKEN`"
        if scope["method"] in ("POST", "PUT", "PATCH"):
            return self.size_problem(headers)
        return None

    def token_ok(self, headers: Headers) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.settings.token.encode())

    def size_problem(self, headers: Headers) -> tuple[int, str] | None:
        length = headers.get("content-length", "0" if "transfer-encoding" not in headers else "")
        if not length.isdigit():
            return 411, "send the upload with a Content-Length header (chunked uploads are not accepted)"
        limit = self.settings.max_upload_bytes
        if int(length) > limit:
            return 413, (
                f"the upload is {int(length) / 2**20:.1f} MB; this server accepts up to "
                f"{limit / 2**20:.0f} MB (--max-upload-mb)"
            )
        return None


def hostname(host: str) -> str | None:
    """The name in a Host header (no port, no brackets), or None when it cannot be parsed (`[bad`)."""
    try:
        return urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return None
