"""Who may use the live server: response headers, the Host check (DNS rebinding), the WebSocket Origin and
handshake checks, and a quiet, rate-limited log for what junk connections cause."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import threading
import time
from collections import deque
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


# ---------------------------------------------------------------------------------------------------------------
# Junk connections: a bounded log and a handshake check that never echoes what the client sent

MAX_LOG_LINE = 200


def _one_line(text: str, limit: int = MAX_LOG_LINE) -> str:
    """Printable ASCII only, one line, at most `limit` characters (control bytes and newlines escaped)."""
    out = text.encode("ascii", "backslashreplace").decode("ascii")
    out = "".join(c if " " <= c <= "~" else f"\\x{ord(c):02x}" for c in out)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def describe_exception(exc: BaseException | None) -> str:
    """A short name for an error a connection caused: its type and HTTP status, never its message.

    aiohttp's parser errors carry the offending request bytes in their message, so the message is left out.
    """
    if exc is None:
        return ""
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__} ({code})" if isinstance(code, int) and code else type(exc).__name__


class QuietLog(logging.LoggerAdapter):
    """A stand-in for aiohttp's server logger: one short line per event, no traceback, rate limited.

    aiohttp's request handler logs every malformed request with `logger.exception(...)`: a traceback and the
    request bytes, so anyone who reaches the port can fill the disk. This adapter drops `exc_info`, names the
    error by type and status only, caps the line at `MAX_LOG_LINE` characters, and lets through at most
    `burst` lines, refilled at `per_second`; what it drops is counted and reported on the next line it writes.

    Args:
      logger: where the lines go.
      burst: lines that may be written back to back.
      per_second: steady rate of lines after a burst.
      clock: monotonic seconds (tests).
    """

    def __init__(self, logger: logging.Logger, burst: int = 20, per_second: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(logger, {})
        self.burst, self.per_second, self.clock = burst, per_second, clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()
        self.suppressed = 0

    def _allow(self) -> int | None:
        """None when the line is to be dropped, else how many were dropped before it."""
        with self._lock:
            now = self.clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.per_second)
            self._last = now
            if self._tokens < 1.0:
                self.suppressed += 1
                return None
            self._tokens -= 1.0
            dropped, self.suppressed = self.suppressed, 0
            return dropped

    def log(self, level: int, msg: object, *args: object, exc_info: object = None, **kwargs: object) -> None:
        if not self.logger.isEnabledFor(level):
            return
        dropped = self._allow()
        if dropped is None:
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = str(msg)
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if exc_info is True or isinstance(exc_info, tuple):
            import sys

            exc = sys.exc_info()[1] if exc_info is True else exc_info[1]
        line = _one_line(text + (f": {describe_exception(exc)}" if exc is not None else ""))
        if dropped:
            line += f" ({dropped} similar lines suppressed)"
        self.logger.log(level, "%s", line)


# Every bad-request line aiohttp writes goes through one of these (per process: junk on many sockets shares
# one budget).
SERVER_LOG = QuietLog(logging.getLogger("nst_jax.serve.http"))


def websocket_handshake_problem(headers: Mapping[str, str]) -> str | None:
    """Why a WebSocket upgrade request is malformed (RFC 6455 4.2.1), or None if it is fine.

    Checked before aiohttp sees the request, so a refusal costs one short response and no log line (aiohttp
    itself logs unknown sub-protocols with the client's header values).

    Args:
      headers: the request's headers.
    """
    if headers.get("Upgrade", "").strip().lower() != "websocket":
        return "expected 'Upgrade: websocket'"
    if "upgrade" not in [t.strip().lower() for t in headers.get("Connection", "").split(",")]:
        return "expected 'Connection: Upgrade'"
    if headers.get("Sec-WebSocket-Version", "").strip() != "13":
        return "expected 'Sec-WebSocket-Version: 13'"
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return "Sec-WebSocket-Key must be 16 bytes in base64"
    except (binascii.Error, ValueError):
        return "Sec-WebSocket-Key must be 16 bytes in base64"
    if "Sec-WebSocket-Protocol" in headers:
        return "no WebSocket sub-protocols are offered"
    return None


class RateLimit:
    """At most `count` events in any `period` seconds (a sliding window; one per client for uploads).

    Args:
      count: events allowed per window.
      period: the window in seconds.
      clock: monotonic seconds (tests).
    """

    def __init__(self, count: int, period: float, clock: Callable[[], float] = time.monotonic):
        self.count, self.period, self.clock = count, period, clock
        self._times: deque[float] = deque(maxlen=max(count, 1))

    def allow(self) -> bool:
        """Record an event and say whether it is within the limit (refused ones are not recorded)."""
        now = self.clock()
        while self._times and now - self._times[0] >= self.period:
            self._times.popleft()
        if self.count <= 0 or len(self._times) >= self.count:
            return False
        self._times.append(now)
        return True

    def retry_after(self) -> float:
        """Seconds until the next event would be allowed."""
        if len(self._times) < self.count:
            return 0.0
        return max(self.period - (self.clock() - self._times[0]), 0.0)
