"""The live server: one static page, its script, and a WebSocket per client (aiohttp).

Per client: a receive loop (decodes frames in a thread pool and drops them into the batcher's
latest-frame-wins slot), and a sender task that owns every write to the socket. Results go to a one-deep
outbox that a newer result overwrites, so a client that stops reading costs the others nothing: its sender
blocks on its own socket, its gate closes, and its frames stop being computed.

With a server-side camera (`--camera`/`--video`) the server stylizes one shared stream: every page shows it
and any page's controls change it (a performer's setup); `--record` writes that stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import inspect
import ipaddress
import itertools
import json
import logging
import math
import socket
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from PIL import Image
from yarl import URL

from nst_jax.errors import ImageError
from nst_jax.serve import codec, protocol
from nst_jax.serve.batcher import Batcher, Job
from nst_jax.serve.sources import Recorder, VideoSource
from nst_jax.serve.styles import StyleLibrary, image_digest

log = logging.getLogger("nst_jax.serve")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
# Recent aiohttp releases take a per-socket writer limit; older ones buffer up to their fixed default.
_HAS_WRITER_LIMIT = "writer_limit" in inspect.signature(web.WebSocketResponse.__init__).parameters

_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
        "media-src 'self' blob: mediastream:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(self), microphone=()",
    "Cache-Control": "no-store",
}


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How the server behaves (everything but the model and the styles).

    Attributes:
      sizes: square frame sizes offered on the page (each warmed at start).
      size: the default frame size (one of `sizes`).
      style_size: side of the square style images are cropped to before their statistics are computed.
      max_batch: most frames in one model call.
      limits: byte and pixel bounds on frames, uploads and control messages.
      loopback_only: accept only Host headers naming this machine (when bound to a loopback address; this
        stops DNS-rebinding pages from reaching the server through the browser).
      allowed_origins: extra WebSocket origins besides the page's own (e.g. "https://studio.example:8443").
      max_clients: concurrent WebSocket clients; more get HTTP 503.
      jpeg_quality: of the frames sent back.
      send_buffer: bytes each WebSocket may buffer (kernel send buffer, transport and writer limits); small,
        so a slow link drops frames instead of queueing seconds of them. None keeps the defaults.
      heartbeat: seconds between WebSocket pings (a dead peer is dropped after missing one).
      stats_interval: seconds between status messages to each page.
    """

    sizes: tuple[int, ...] = (256,)
    size: int = 256
    style_size: int = 512
    max_batch: int = 4
    limits: codec.Limits = codec.Limits()
    loopback_only: bool = True
    allowed_origins: tuple[str, ...] = ()
    max_clients: int = 32
    jpeg_quality: int = 85
    send_buffer: int | None = 128 << 10
    heartbeat: float = 20.0
    stats_interval: float = 1.0


@dataclasses.dataclass(frozen=True)
class Settings:
    """One client's (or the shared show's) choices, as validated from the page."""

    version: int
    styles: tuple[tuple[str, float], ...]
    alpha: float = 1.0
    preserve_color: str = "none"
    size: int = 256
    side_by_side: bool = False

    def describe(self) -> dict:
        """JSON form (the page's own format)."""
        return {"version": self.version, "styles": [list(s) for s in self.styles], "alpha": self.alpha,
                "preserve_color": self.preserve_color, "size": self.size, "side_by_side": self.side_by_side}


def _number(obj: dict, key: str, default: float) -> float:
    v = obj.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise protocol.ProtocolError(f"settings: {key} must be a finite number")
    return float(v)


def parse_settings(obj: dict, current: Settings, library: StyleLibrary, sizes: Sequence[int]) -> Settings:
    """Validate a settings message; keys it leaves out keep their current values.

    Raises:
      ProtocolError: with a message for the page.
    """
    version = obj.get("version", current.version)
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version < 2**32:
        raise protocol.ProtocolError("settings: version must be an integer in [0, 2^32)")
    styles = current.styles
    if "styles" in obj:
        raw = obj["styles"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= protocol.MAX_BLEND:
            raise protocol.ProtocolError(
                f"settings: styles must list 1 to {protocol.MAX_BLEND} [id, weight] pairs")
        parsed = []
        for item in raw:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)):
                raise protocol.ProtocolError("settings: each style must be [id, weight]")
            sid, w = item
            if sid not in library:
                raise protocol.ProtocolError(f"settings: unknown style {sid[:40]!r}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise protocol.ProtocolError("settings: style weights must be finite and >= 0")
            parsed.append((sid, float(w)))
        if sum(w for _, w in parsed) <= 0:
            raise protocol.ProtocolError("settings: at least one style weight must be positive")
        styles = tuple(parsed)
    alpha = min(max(_number(obj, "alpha", current.alpha), 0.0), 1.0)
    preserve = obj.get("preserve_color", current.preserve_color)
    if preserve not in protocol.PRESERVE_COLOR:
        raise protocol.ProtocolError(
            f"settings: preserve_color must be one of {', '.join(protocol.PRESERVE_COLOR)}")
    size = obj.get("size", current.size)
    if isinstance(size, bool) or size not in sizes:
        raise protocol.ProtocolError(f"settings: size must be one of {', '.join(map(str, sizes))}")
    sbs = obj.get("side_by_side", current.side_by_side)
    if not isinstance(sbs, bool):
        raise protocol.ProtocolError("settings: side_by_side must be true or false")
    return Settings(version, styles, alpha, preserve, int(size), sbs)


def postprocess(out: np.ndarray, content: np.ndarray, preserve_color: str) -> np.ndarray:
    """Colour preservation on one stylized frame; returns (H, W, 3) uint8.

    "luminance" keeps the frame's chroma under the stylized luminance (YIQ); "histogram" recolours the
    stylized frame to the camera frame's colour mean and covariance (CORAL). Both run after the model, so
    switching them costs nothing per style (the offline `stylize` command's histogram mode recolours the style
    image instead).
    """
    from nst_jax import image

    if preserve_color == "luminance":
        out = image.luminance_transfer(out[None], content[None])[0]
    elif preserve_color == "histogram":
        out = image.coral(out[None], content[None])[0]
    return (np.clip(out, 0.0, 1.0) * np.float32(255.0) + np.float32(0.5)).astype(np.uint8)


class Client:
    """One WebSocket: its settings, style statistics and a one-deep outbox drained by its own sender task."""

    def __init__(self, cid: int, ws: web.WebSocketResponse, settings: Settings, stats: tuple[Any, Any],
                 on_sent: Callable[[], None]):
        self.id = cid
        self.ws = ws
        self.settings = settings
        self.mean, self.std = stats
        self.on_sent = on_sent
        self.closed = False
        self.uploading = False
        self.frames_in = 0
        self.results_sent = 0
        self.results_dropped = 0
        self.frames_replaced = 0
        self.errors_sent = 0
        self._result: bytes | None = None
        self._last_seq = -1
        self._source: bytes | None = None
        self._control: deque[str] = deque(maxlen=32)
        self._wake = asyncio.Event()
        self._sending_since: float | None = None
        self.task: asyncio.Task | None = None

    def can_take(self) -> bool:
        """Gate for the batcher: compute a new frame only when the previous result has left the outbox."""
        return not self.closed and self._result is None

    def blocked_for(self) -> float:
        """Seconds the current send has been waiting on the socket (0 when idle)."""
        return 0.0 if self._sending_since is None else time.perf_counter() - self._sending_since

    def put_result(self, msg: bytes, seq: int, source: bytes | None = None) -> None:
        """Offer a stylized frame: it replaces one not yet sent, and is ignored if a newer one came first."""
        if self.closed or seq < self._last_seq:
            return
        self._last_seq = seq
        if self._result is not None:
            self.results_dropped += 1
        self._result = msg
        if source is not None:
            self._source = source
        self._wake.set()

    def put_control(self, obj: dict) -> None:
        """Queue a JSON message (bounded: the oldest is dropped if the client is not reading)."""
        if self.closed:
            return
        self._control.append(json.dumps(obj))
        self._wake.set()

    def error(self, message: str, **extra: Any) -> None:
        self.errors_sent += 1
        self.put_control({"type": "error", "message": message, **extra})

    async def sender(self) -> None:
        """Own every write to the socket; a slow socket blocks only this task."""
        try:
            while not self.closed:
                await self._wake.wait()
                self._wake.clear()
                while self._control and not self.closed:
                    text = self._control.popleft()
                    await self._send(self.ws.send_str(text))
                if self._source is not None:
                    msg, self._source = self._source, None
                    await self._send(self.ws.send_bytes(msg))
                if self._result is not None:
                    msg, self._result = self._result, None
                    await self._send(self.ws.send_bytes(msg))
                    self.results_sent += 1
                    self.on_sent()
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            # The peer went away (or we are shutting down): the receive loop cleans up.
            self.closed = True

    async def _send(self, coro) -> None:
        self._sending_since = time.perf_counter()
        try:
            await coro
        finally:
            self._sending_since = None

    def snapshot(self) -> dict:
        """Counters for tests and the benchmark."""
        return {"id": self.id, "frames_in": self.frames_in, "results_sent": self.results_sent,
                "results_dropped": self.results_dropped, "frames_replaced": self.frames_replaced,
                "errors_sent": self.errors_sent, "blocked_s": self.blocked_for()}


class LiveServer:
    """The application: model, styles, batcher, clients and (optionally) a server-side camera and recorder.

    Args:
      model: a `Stylizer` (or anything with `style_stats`, `blend_stats` and `stylize_stats`).
      library: the styles, statistics already computed (see `styles.fill_library`); may be empty only if
        uploads are expected before the first frame.
      config: sizes, limits and security settings.
      source: a server-side camera or video (then browser frames are refused and one shared stream is shown).
      recorder: writes the shared stream (needs `source`).
    """

    def __init__(self, model: Any, library: StyleLibrary, config: ServerConfig = ServerConfig(),
                 source: VideoSource | None = None, recorder: Recorder | None = None):
        if config.size not in config.sizes:
            raise ValueError(f"size {config.size} is not one of sizes {config.sizes}")
        if recorder is not None and source is None:
            raise ValueError("a recorder needs a server-side source")
        self.model = model
        self.library = library
        self.config = config
        self.source = source
        self.recorder = recorder
        self.batcher = Batcher(model, config.sizes, config.max_batch)
        self.clients: dict[int, Client] = {}
        self._ids = itertools.count(1)
        self._decode_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="nst-decode")
        self._encode_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="nst-encode")
        self._blend_cache: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._tasks: list[asyncio.Task] = []
        self._static = {name: (STATIC_DIR / name).read_bytes() for name in ["index.html", *STATIC_FILES]}
        self.show: Settings | None = None
        self._show_stats: tuple[np.ndarray, np.ndarray] | None = None
        self._show_busy = False
        self._source_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url: str | None = None

    # --- settings and statistics ----------------------------------------------------------------------------

    def default_settings(self) -> Settings:
        first = self.library.first_id()
        styles = ((first, 1.0),) if first is not None else ()
        return Settings(0, styles, 1.0, "none", self.config.size, False)

    def _blend_now(self, styles: tuple[tuple[str, float], ...]) -> tuple[np.ndarray, np.ndarray]:
        """Blend on the model thread; (mean, std) as NumPy (1, 1, 1, C)."""
        stats = [self.library.get(sid).stats for sid, _ in styles]
        if len(stats) == 1:
            s = stats[0]
        else:
            s = self.model.blend_stats(stats, [w for _, w in styles])
        return np.asarray(s.mean, np.float32), np.asarray(s.std, np.float32)

    async def blend(self, styles: tuple[tuple[str, float], ...]) -> tuple[np.ndarray, np.ndarray]:
        """Style statistics for a weighted blend (cached: moving a slider back and forth computes nothing)."""
        total = sum(w for _, w in styles)
        key = tuple((sid, round(w / total, 4)) for sid, w in styles if w > 0)
        hit = self._blend_cache.get(key)
        if hit is not None:
            self._blend_cache.move_to_end(key)
            return hit
        value = await self.batcher.run_model(self._blend_now, key)
        self._blend_cache[key] = value
        while len(self._blend_cache) > 256:
            self._blend_cache.popitem(last=False)
        return value

    def _zero_stats(self) -> tuple[np.ndarray, np.ndarray]:
        c = self.batcher.channels
        return np.zeros((1, 1, 1, c), np.float32), np.ones((1, 1, 1, c), np.float32)

    # --- HTTP -----------------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application (routes, Host check, start-up and shutdown hooks)."""
        app = web.Application(middlewares=[self._host_middleware], client_max_size=1 << 16)
        app.router.add_get("/", self._index)
        app.router.add_get("/static/{name}", self._static_file)
        app.router.add_get("/styles/{sid}.jpg", self._thumb)
        app.router.add_get("/ws", self._websocket)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        return app

    def host_allowed(self, host_header: str | None) -> bool:
        """Whether a request's Host header names this server (always true unless `loopback_only`)."""
        if not self.config.loopback_only:
            return True
        if not host_header:
            return False
        try:
            host = URL(f"//{host_header}").host
        except ValueError:
            return False
        if host is None:
            return False
        host = host.strip("[]").lower()
        if host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def origin_allowed(self, request: web.Request) -> bool:
        """A browser's WebSocket must come from this server's own page (or an `allowed_origins` entry).

        Clients that send no Origin (scripts, not browsers) are let through: the check exists to stop other
        web pages open in the user's browser from using the server.
        """
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        if origin in self.config.allowed_origins:
            return True
        try:
            o = URL(origin)
        except ValueError:
            return False
        if o.scheme not in ("http", "https") or not o.host:
            return False
        if o.scheme != ("https" if request.secure else "http"):
            return False
        try:
            h = URL(f"//{request.headers.get('Host', '')}")
        except ValueError:
            return False
        if not h.host:
            return False
        default_port = 443 if request.secure else 80
        return (o.host.lower(), o.port) == (h.host.lower(), h.port or default_port)

    @web.middleware
    async def _host_middleware(self, request: web.Request, handler):
        if not self.host_allowed(request.headers.get("Host")):
            return web.Response(status=403, text="Host not allowed: open the page as http://127.0.0.1:PORT/\n")
        return await handler(request)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._static["index.html"], content_type="text/html", charset="utf-8",
                            headers=_SECURITY_HEADERS)

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], content_type=STATIC_FILES[name], charset="utf-8",
                            headers=_SECURITY_HEADERS)

    async def _thumb(self, request: web.Request) -> web.Response:
        try:
            style = self.library.get(request.match_info["sid"])
        except KeyError:
            raise web.HTTPNotFound() from None
        return web.Response(body=style.thumb, content_type="image/jpeg",
                            headers={"Cache-Control": "max-age=86400, immutable",
                                     "X-Content-Type-Options": "nosniff"})

    # --- WebSocket ------------------------------------------------------------------------------------------

    def hello(self, client: Client) -> dict:
        return {"type": "hello", "client": client.id, "styles": self.library.describe(),
                "sizes": list(self.config.sizes), "settings": client.settings.describe(),
                "source": "server" if self.source is not None else "browser",
                "source_label": self.source.label if self.source is not None else None,
                "limits": {"frame_bytes": self.config.limits.frame_bytes,
                           "upload_bytes": self.config.limits.upload_bytes},
                "max_blend": protocol.MAX_BLEND, "preserve_color": list(protocol.PRESERVE_COLOR)}

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not self.origin_allowed(request):
            return web.Response(status=403, text="WebSocket origin not allowed\n")
        if len(self.clients) >= self.config.max_clients:
            return web.Response(status=503, text="too many clients\n")
        limit = self.config.send_buffer
        extra = {"writer_limit": limit} if limit and _HAS_WRITER_LIMIT else {}
        ws = web.WebSocketResponse(max_msg_size=self.config.limits.upload_bytes + 4096,
                                   heartbeat=self.config.heartbeat, compress=False, **extra)
        await ws.prepare(request)
        self._tune_socket(request)
        cid = next(self._ids)
        if self.show is not None:
            settings = dataclasses.replace(self.show, side_by_side=False)
            stats = self._show_stats or self._zero_stats()
        else:
            settings = self.default_settings()
            stats = await self.blend(settings.styles) if settings.styles else self._zero_stats()
        client = Client(cid, ws, settings, stats, self.batcher.kick)
        self.clients[cid] = client
        log.info("client %d connected from %s (%d now)", cid, request.remote, len(self.clients))
        client.task = asyncio.ensure_future(client.sender())
        client.put_control(self.hello(client))
        if self.source is not None:
            self._wake_show()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.ERROR:
                    break
                try:
                    if msg.type == WSMsgType.TEXT:
                        await self._on_text(client, msg.data)
                    elif msg.type == WSMsgType.BINARY:
                        await self._on_binary(client, msg.data)
                except Exception as e:  # a message nobody foresaw must not end the connection
                    log.exception("client %d: message failed", cid)
                    client.error(f"the server could not handle that message ({type(e).__name__})")
        finally:
            client.closed = True
            self.batcher.discard(cid)
            self.clients.pop(cid, None)
            log.info("client %d left after %d frames (%d now)", cid, client.results_sent, len(self.clients))
            if client.task is not None:
                client.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await client.task
        return ws

    def _tune_socket(self, request: web.Request) -> None:
        """Small send buffers: a slow reader then blocks its sender (and drops frames) within a few frames,
        instead of queueing seconds of stale video in the kernel."""
        transport = request.transport
        if transport is None:
            return
        limit = self.config.send_buffer
        if limit:
            transport.set_write_buffer_limits(high=limit)
        sock = transport.get_extra_info("socket")
        if sock is None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if limit:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit)

    async def _on_text(self, client: Client, data: str) -> None:
        if len(data) > self.config.limits.text_bytes:
            client.error(f"control message of {len(data)} bytes exceeds {self.config.limits.text_bytes}")
            return
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            client.error("control message is not JSON (or nested too deeply)")
            return
        if not isinstance(obj, dict):
            client.error("control message must be a JSON object")
            return
        kind = obj.get("type")
        if kind != "settings":
            client.error(f"unknown control message type {str(kind)[:40]!r}")
            return
        try:
            settings = parse_settings(obj, client.settings, self.library, self.config.sizes)
            stats = await self.blend(settings.styles)
        except protocol.ProtocolError as e:
            client.error(str(e), version=obj.get("version") if isinstance(obj.get("version"), int) else None)
            return
        except KeyError:
            client.error("a style in the blend was removed; pick again")
            return
        client.settings = settings
        client.mean, client.std = stats
        if self.source is not None:
            self._set_show(settings, stats, client)

    async def _on_binary(self, client: Client, data: bytes) -> None:
        try:
            kind, seq, name, payload = protocol.unpack_client(data)
        except protocol.ProtocolError as e:
            client.error(str(e))
            return
        if kind == protocol.UPLOAD:
            if client.uploading:
                client.error("an upload is still being processed; wait for it", seq=seq)
                return
            if len(payload) > self.config.limits.upload_bytes:
                limit = self.config.limits.upload_bytes
                client.error(f"upload is {len(payload)} bytes; the limit is {limit}", seq=seq)
                return
            client.uploading = True
            self._tasks.append(asyncio.ensure_future(self._upload(client, seq, name, payload)))
            self._tasks = [t for t in self._tasks if not t.done()]
            return
        if self.source is not None:
            client.error("this server streams its own camera; frames from the page are not used", seq=seq)
            return
        if len(payload) > self.config.limits.frame_bytes:
            limit = self.config.limits.frame_bytes
            client.error(f"frame is {len(payload)} bytes; the limit is {limit}", seq=seq)
            return
        client.frames_in += 1
        settings = client.settings
        if not settings.styles:
            client.error("no style yet: upload one", seq=seq)
            return
        loop = asyncio.get_running_loop()
        try:
            content = await loop.run_in_executor(self._decode_pool, codec.decode_frame, payload,
                                                 settings.size, self.config.limits)
        except ImageError as e:
            client.error(str(e), seq=seq)
            return
        if client.closed:
            return
        if client.settings.size != settings.size:
            return  # the page switched sizes while this frame was decoding; its next frame has the new size
        settings = client.settings
        deliver = functools.partial(self._deliver_client, client, seq, settings, content)
        job = Job(content, client.mean, client.std, settings.alpha, deliver,
                  fail=functools.partial(self._fail, client, seq), gate=client.can_take)
        if self.batcher.submit(client.id, job):
            client.frames_replaced += 1

    def _fail(self, client: Client, seq: int, message: str) -> None:
        client.error(message, seq=seq)

    def _deliver_client(self, client: Client, seq: int, settings: Settings, content: np.ndarray,
                        out: np.ndarray) -> None:
        if client.closed:
            return
        fut = asyncio.get_running_loop().run_in_executor(
            self._encode_pool, self._encode_result, out, content, settings.preserve_color, seq,
            settings.version)
        fut.add_done_callback(lambda f: client.put_result(f.result(), seq) if not f.exception() else
                              client.error(f"encoding failed: {f.exception()}", seq=seq))

    def _encode_result(self, out: np.ndarray, content: np.ndarray, preserve: str, seq: int,
                       version: int) -> bytes:
        jpeg = codec.encode_jpeg(postprocess(out, content, preserve), self.config.jpeg_quality)
        return protocol.pack_result(protocol.RESULT, seq, version, jpeg)

    async def _upload(self, client: Client, seq: int, name: str, payload: bytes) -> None:
        loop = asyncio.get_running_loop()
        try:
            img, pil = await loop.run_in_executor(self._decode_pool, codec.decode_upload, payload,
                                                  self.config.style_size, self.config.limits)
            digest = image_digest(img)
            style = self.library.find(digest)
            if style is None:
                stats = await self.batcher.run_model(self.model.style_stats, img)
                thumb = await loop.run_in_executor(self._decode_pool, codec.thumbnail_jpeg, pil)
                label = Path(name).stem[:60] or "upload"
                style = self.library.add(label, "upload", stats, thumb, digest)
                styles = self.library.describe()
                for c in list(self.clients.values()):
                    c.put_control({"type": "styles", "styles": styles})
            client.put_control({"type": "uploaded", "seq": seq, "style": style.describe()})
        except ImageError as e:
            client.error(str(e), seq=seq)
        except Exception as e:  # a model failure on one upload must not take the server down
            log.exception("upload failed")
            client.error(f"upload failed: {type(e).__name__}: {e}", seq=seq)
        finally:
            client.uploading = False

    # --- server-side camera (one shared stream) -------------------------------------------------------------

    def _set_show(self, settings: Settings, stats: tuple[np.ndarray, np.ndarray],
                  origin: Client | None) -> None:
        shared = dataclasses.replace(settings, side_by_side=False)
        version = (self.show.version + 1) if self.show is not None else 1
        self.show = dataclasses.replace(shared, version=version)
        self._show_stats = stats
        for c in self.clients.values():
            c.settings = dataclasses.replace(self.show, side_by_side=c.settings.side_by_side)
            c.mean, c.std = stats
            c.put_control({"type": "settings", "settings": c.settings.describe(),
                           "from": origin.id if origin is not None else None})
        self._wake_show()

    def _wake_show(self) -> None:
        if self._source_event is not None:
            self._source_event.set()

    async def _run_show(self) -> None:
        assert self.source is not None
        loop = asyncio.get_running_loop()
        last: tuple[int, int] | None = None
        while True:
            await self._source_event.wait()
            self._source_event.clear()
            if self._show_busy or self.show is None or not self.show.styles:
                continue
            if not self.clients and self.recorder is None:
                continue
            count, frame = self.source.latest()
            settings = self.show
            if (count, settings.version) == last:
                continue  # nothing new to show (woken by the end of the previous frame)
            last = (count, settings.version)
            mean, std = self._show_stats
            content = await loop.run_in_executor(self._decode_pool, self._source_content, frame,
                                                 settings.size)
            self._show_busy = True
            job = Job(content, mean, std, settings.alpha,
                      functools.partial(self._deliver_show, count, settings, content),
                      fail=self._show_failed)
            self.batcher.submit("__show__", job)

    def _source_content(self, frame: np.ndarray, size: int) -> np.ndarray:
        return codec.square_uint8(frame, size).astype(np.float32) / np.float32(255.0)

    def _show_failed(self, message: str) -> None:
        self._show_busy = False
        for c in self.clients.values():
            c.error(message)

    def _deliver_show(self, count: int, settings: Settings, content: np.ndarray, out: np.ndarray) -> None:
        want_source = any(c.settings.side_by_side for c in self.clients.values())
        fut = asyncio.get_running_loop().run_in_executor(
            self._encode_pool, self._encode_show, out, content, settings, count, want_source)

        def done(f: asyncio.Future) -> None:
            self._show_busy = False
            self._wake_show()
            if f.exception() is not None:
                log.error("encoding the shared stream failed: %s", f.exception())
                return
            result, source = f.result()
            for c in list(self.clients.values()):
                c.put_result(result, count, source if c.settings.side_by_side else None)

        fut.add_done_callback(done)

    def _encode_show(self, out: np.ndarray, content: np.ndarray, settings: Settings, count: int,
                     want_source: bool) -> tuple[bytes, bytes | None]:
        rgb = postprocess(out, content, settings.preserve_color)
        if self.recorder is not None:
            frame = rgb
            if rgb.shape[0] != self.recorder.size:  # the page picked another output size than --size
                frame = np.asarray(Image.fromarray(rgb, "RGB").resize((self.recorder.size,) * 2))
            self.recorder.write(frame)
        q = self.config.jpeg_quality
        result = protocol.pack_result(protocol.RESULT, count, settings.version, codec.encode_jpeg(rgb, q))
        source = None
        if want_source:
            jpeg = codec.encode_jpeg(content, q)
            source = protocol.pack_result(protocol.SOURCE, count, settings.version, jpeg)
        return result, source

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def _on_startup(self, app: web.Application) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.ensure_future(self.batcher.run()))
        if self.source is not None:
            self._source_event = asyncio.Event()
            settings = self.default_settings()
            stats = await self.blend(settings.styles) if settings.styles else self._zero_stats()
            self.show = dataclasses.replace(settings, version=1)
            self._show_stats = stats
            loop = self._loop
            self.source.on_frame(lambda: loop.call_soon_threadsafe(self._source_event.set))
            self.source.start()
            self._tasks.append(asyncio.ensure_future(self._run_show()))
            self._tasks.append(asyncio.ensure_future(self._run_stats()))
        else:
            self._tasks.append(asyncio.ensure_future(self._run_stats()))

    async def _run_stats(self) -> None:
        last_frames, last_t = self.batcher.stats.frames, time.perf_counter()
        while True:
            await asyncio.sleep(self.config.stats_interval)
            s = self.batcher.stats
            now = time.perf_counter()
            fps = (s.frames - last_frames) / max(now - last_t, 1e-9)
            last_frames, last_t = s.frames, now
            msg = {"type": "stats", "clients": len(self.clients), "server_fps": round(fps, 1),
                   "avg_batch": round(s.frames / s.calls, 2) if s.calls else 0.0,
                   "model_ms": round(1000 * s.model_seconds / s.calls, 1) if s.calls else 0.0}
            if self.source is not None and self.source.error:
                msg["source_error"] = self.source.error
            for c in list(self.clients.values()):
                c.put_control(msg)

    async def _on_shutdown(self, app: web.Application) -> None:
        clients = list(self.clients.values())
        for c in clients:
            c.closed = True
        # A client that stopped reading cannot take a close frame: do not wait on any for long.
        closes = [asyncio.wait_for(c.ws.close(code=1001, message=b"server shutting down"), 1.0)
                  for c in clients]
        await asyncio.gather(*closes, return_exceptions=True)

    async def _on_cleanup(self, app: web.Application) -> None:
        self.batcher.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.source is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.source.close)
        self._decode_pool.shutdown(wait=True)
        self._encode_pool.shutdown(wait=True)
        if self.recorder is not None:
            path = self.recorder.close()
            if path is not None:
                log.warning("recorded %d frames to %s", self.recorder.frames, path)

    async def serve(self, host: str = "127.0.0.1", port: int = 8000, *, ssl_context=None,
                    ready: Callable[[str], None] | None = None, stop: asyncio.Event | None = None) -> None:
        """Serve until `stop` is set (or the task is cancelled), then shut down cleanly.

        Args:
          host, port: where to listen (port 0 picks a free port).
          ssl_context: serve HTTPS/WSS (browsers only give pages on other machines the camera over HTTPS).
          ready: called with the page's URL once the server accepts connections.
          stop: set it to stop the server.
        """
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port, ssl_context=ssl_context, reuse_address=True)
            await site.start()
            bound = runner.addresses[0]  # the real port when port=0
            scheme = "https" if ssl_context is not None else "http"
            shown = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
            if ":" in shown:
                shown = f"[{shown}]"
            self.url = f"{scheme}://{shown}:{bound[1]}/"
            if ready is not None:
                ready(self.url)
            await (stop.wait() if stop is not None else asyncio.Event().wait())
        finally:
            await runner.cleanup()

    def snapshot(self) -> dict:
        """Server and per-client counters (tests, benchmark)."""
        s = self.batcher.stats
        return {"frames": s.frames, "calls": s.calls, "replaced": s.replaced, "failures": s.failures,
                "batch_sizes": dict(s.batch_sizes), "clients": [c.snapshot() for c in self.clients.values()]}


class ServerThread:
    """Run a `LiveServer` on its own event loop in a background thread (tests, benchmarks, notebooks).

    Example:
      with ServerThread(server, port=0) as st:
          print(st.url)
    """

    def __init__(self, server: LiveServer, host: str = "127.0.0.1", port: int = 0, ssl_context=None,
                 timeout: float = 60.0):
        self.server = server
        self.host, self.port, self.ssl_context, self.timeout = host, port, ssl_context, timeout
        self.url: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="nst-serve", daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def ready(url: str) -> None:
                self.url = url
                self._ready.set()

            await self.server.serve(self.host, self.port, ssl_context=self.ssl_context, ready=ready,
                                    stop=self._stop)

        try:
            asyncio.run(main())
        except BaseException as e:  # surfaced by start()
            self._error = e
            self._ready.set()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn()` on the server's loop and return its result (to read counters safely)."""
        fut = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:
                fut.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout=self.timeout)

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(self.timeout):
            raise TimeoutError("the server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
