"""Who may use the live server: response headers, the Host check (DNS rebinding) and the WebSocket Origin check."""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Collection, Mapping

from aiohttp import web
from yarl import URL

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(self), microphone=()",
    "Cache-Control": "no-store",
}


def is_loopback(host: str) -> bool:
    """Whether a host name or address (IPv6 with or without brackets) can only mean this machine.

    Args:
      host: "localhost", "127.0.0.5", "::1", "[::1]", ... (no port).
    """
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(host_header: str | None, loopback_only: bool) -> bool:
    """Whether a request's Host header names this server (always true unless `loopback_only`).

    Args:
      host_header: the request's Host header ("127.0.0.1:8000"), None if absent.
      loopback_only: the server listens on loopback only, so only loopback names are its own.
    """
    if not loopback_only:
        return True
    if not host_header:
        return False
    try:
        host = URL(f"//{host_header}").host
    except ValueError:
        return False
    return host is not None and is_loopback(host)


def origin_allowed(headers: Mapping[str, str], secure: bool, allowed_origins: Collection[str] = ()) -> bool:
    """A browser's WebSocket must come from this server's own page (or an `allowed_origins` entry).

    Clients that send no Origin (scripts, not browsers) are let through: the check exists to stop other
    web pages open in the user's browser from using the server.

    Args:
      headers: the upgrade request's headers (Origin, Host).
      secure: the request came over TLS (then the page's origin must be https).
      allowed_origins: extra origins accepted as they are written.
    """
    origin = headers.get("Origin")
    if origin is None:
        return True
    if origin in allowed_origins:
        return True
    try:
        o = URL(origin)
    except ValueError:
        return False
    if o.scheme not in ("http", "https") or not o.host:
        return False
    if o.scheme != ("https" if secure else "http"):
        return False
    try:
        h = URL(f"//{headers.get('Host', '')}")
    except ValueError:
        return False
    if not h.host:
        return False
    default_port = 443 if secure else 80
    return (o.host.lower(), o.port) == (h.host.lower(), h.port or default_port)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_middleware(allowed: Callable[[str | None], bool]):
    """An aiohttp middleware answering 403 to requests whose Host header `allowed` refuses."""

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not allowed(request.headers.get("Host")):
            return web.Response(status=403, text="Host not allowed: open the page as http://127.0.0.1:PORT/\n")
        return await handler(request)

    return check_host
