"""The live server: one static page, its script, and a WebSocket per client (aiohttp).

Per client: a receive loop (decodes frames in a thread pool and drops them into its model's batcher's
latest-frame-wins slot), and a sender task that owns every write to the socket (`client.Client`). The server
may offer several models (`lineup.Lineup`): each page picks one, loaded on first use.

With a server-side camera (`--camera`/`--video`) the server stylizes one shared stream (`show.SharedShow`):
every page shows it and any page's controls change it; `--record` writes that stream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import inspect
import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from nst_jax.errors import ImageError
from nst_jax.serve import codec, protocol, security
from nst_jax.serve.batcher import ConditionModel, Job
from nst_jax.serve.client import Client, tune_socket
from nst_jax.serve.config import ServerConfig
from nst_jax.serve.lineup import Entry, Lineup, Loader
from nst_jax.serve.programs import ProgramCache
from nst_jax.serve.settings import Settings, parse_settings, postprocess
from nst_jax.serve.show import SharedShow
from nst_jax.serve.sources import Recorder, VideoSource
from nst_jax.serve.styles import StyleLibrary
from nst_jax.serve.uploads import Uploads

# Importers of the single-module server keep working: these names moved to their own modules
# (`ServerThread`, a test harness, is in `nst_jax.serve.testing`).
__all__ = ["LiveServer", "ServerConfig", "Settings", "parse_settings", "postprocess"]

log = logging.getLogger("nst_jax.serve")
# What a client can cause (a message that fails) is logged through this: one short line, rate limited.
_quiet = security.QuietLog(log)

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "strength.js": "text/javascript", "style.css": "text/css"}
# Recent aiohttp releases take a per-socket writer limit; older ones buffer up to their fixed default.
_HAS_WRITER_LIMIT = "writer_limit" in inspect.signature(web.WebSocketResponse.__init__).parameters


class LiveServer:
    """The application: model, styles, batcher, clients and (optionally) a server-side camera and recorder.

    Args:
      model: a `Stylizer` of any family (or anything with its `caps`, `condition`, `blend` and
        `stylize_conditions`: `batcher.ConditionModel`).
      library: the styles, conditions already computed by this model (`styles.fill_library`, or
        `styles.fill_table` for a table model); may be empty only if uploads are expected before the first
        frame.
      config: sizes, limits and security settings.
      source: a server-side camera or video (then browser frames are refused and one shared stream is shown).
      recorder: writes the shared stream (needs `source`).
      name: the model's name on the page (default: its `origin`).
      more: names of further models a page may pick, each opened by `loader(name)` on first use.
    """

    def __init__(self, model: ConditionModel, library: StyleLibrary, config: ServerConfig | None = None,
                 source: VideoSource | None = None, recorder: Recorder | None = None, *, name: str | None = None,
                 more: tuple[str, ...] = (), loader: Loader | None = None):
        config = config or ServerConfig()
        if config.size not in config.sizes:
            raise ValueError(f"size {config.size} is not one of sizes {config.sizes}")
        if recorder is not None and source is None:
            raise ValueError("a recorder needs a server-side source")
        self.config = config
        self.source = source
        self.recorder = recorder
        self.programs = ProgramCache(config.max_programs)
        self.lineup = Lineup(config.sizes, config.max_batch, config.style_size, self.programs, loader)
        first = self.lineup.add(name or str(getattr(model, "origin", "model")), model, library)
        for other in more:
            self.lineup.add(other)
        # the first model's, as before there were several (tests, the benchmark, the server-side camera)
        self.model, self.library, self.batcher = model, library, first.batcher
        self.clients: dict[int, Client] = {}
        self._ids = itertools.count(1)
        self._decode_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="nst-decode")
        self._encode_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="nst-encode")
        self._tasks: list[asyncio.Task] = []
        self.uploads = Uploads(config, self.clients, self._decode_pool)
        self._static = {name: (STATIC_DIR / name).read_bytes() for name in ["index.html", *STATIC_FILES]}
        self.shared = (None if source is None else
                       SharedShow(source, recorder, self.batcher, self.clients, self._decode_pool,
                                  self._encode_pool, config.jpeg_quality))
        self.url: str | None = None

    # --- settings and conditions ----------------------------------------------------------------------------

    def default_settings(self, entry: Entry | None = None, like: Settings | None = None) -> Settings:
        """The first style of `entry` (default: the first model); the other choices `like`'s if given."""
        first = (entry or self.lineup.first).library.first_id()
        styles = ((first, 1.0),) if first is not None else ()
        if like is not None:
            return dataclasses.replace(like, version=like.version + 1, styles=styles)
        return Settings(0, styles, 1.0, "none", self.config.size, False)

    async def blend(self, styles: tuple[tuple[str, float], ...], entry: Entry | None = None) -> Any:
        """The condition of a weighted blend of `entry`'s styles (cached, see `styles.BlendCache`)."""
        return await (entry or self.lineup.first).blends.get(styles)

    # --- HTTP -----------------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        """The aiohttp application (routes, Host check, start-up and shutdown hooks)."""
        check_host = security.host_middleware(self.host_allowed)
        app = web.Application(middlewares=[check_host], client_max_size=1 << 16)
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
        return security.host_allowed(host_header, self.config.loopback_only)

    def origin_allowed(self, request: web.Request) -> bool:
        """Whether a WebSocket upgrade comes from this server's page, an allowed origin or a non-browser."""
        return security.origin_allowed(request.headers, request.secure, self.config.allowed_origins)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._static["index.html"], content_type="text/html", charset="utf-8",
                            headers=security.SECURITY_HEADERS)

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return web.Response(body=self._static[name], content_type=STATIC_FILES[name], charset="utf-8",
                            headers=security.SECURITY_HEADERS)

    async def _thumb(self, request: web.Request) -> web.Response:
        try:
            style = self.lineup.style(request.match_info["sid"])
        except KeyError:
            raise web.HTTPNotFound() from None
        return web.Response(body=style.thumb, content_type="image/jpeg",
                            headers={"Cache-Control": "max-age=86400, immutable",
                                     "X-Content-Type-Options": "nosniff"})

    # --- WebSocket ------------------------------------------------------------------------------------------

    def model_state(self, client: Client) -> dict:
        """What the page shows of the client's model: its name, styles, capabilities, settings, the picker."""
        entry = client.entry
        return {"model": entry.name, "models": self.lineup.describe(), "styles": entry.library.describe(),
                "settings": client.settings.describe(), "caps": dataclasses.asdict(entry.model.caps),
                "smoothing": self.source is None and entry.batcher.smoothing_supported()}

    def hello(self, client: Client) -> dict:
        return {"type": "hello", "client": client.id, "sizes": list(self.config.sizes),
                "source": "server" if self.source is not None else "browser",
                "source_label": self.source.label if self.source is not None else None,
                "limits": {"frame_bytes": self.config.limits.frame_bytes,
                           "upload_bytes": self.config.limits.upload_bytes},
                "max_blend": protocol.MAX_BLEND, "preserve_color": list(protocol.PRESERVE_COLOR),
                **self.model_state(client)}

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        problem = security.websocket_handshake_problem(request.headers)
        if problem is not None:
            return web.Response(status=400, text=f"not a WebSocket upgrade: {problem}\n")
        if not self.origin_allowed(request):
            return web.Response(status=403, text="WebSocket origin not allowed\n")
        if len(self.clients) >= self.config.max_clients:
            return web.Response(status=503, text="too many clients\n")
        limit = self.config.send_buffer
        extra = {"writer_limit": limit} if limit and _HAS_WRITER_LIMIT else {}
        ws = web.WebSocketResponse(max_msg_size=self.config.limits.upload_bytes + 4096,
                                   heartbeat=self.config.heartbeat, compress=False, **extra)
        await ws.prepare(request)
        tune_socket(request.transport, self.config.send_buffer)
        cid = next(self._ids)
        if self.shared is not None and self.shared.settings is not None:
            settings = dataclasses.replace(self.shared.settings, side_by_side=False)
            condition = self.shared.condition
        else:
            settings = self.default_settings()
            condition = await self.blend(settings.styles) if settings.styles else None
        client = Client(cid, ws, settings, condition, lambda: client.entry.batcher.kick())
        client.entry = self.lineup.first
        self.clients[cid] = client
        log.info("client %d connected from %s (%d now)", cid, request.remote, len(self.clients))
        client.task = asyncio.ensure_future(client.sender())
        client.put_control(self.hello(client))
        if self.shared is not None:
            self.shared.wake()
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
                    log.debug("client %d: message failed", cid, exc_info=True)
                    _quiet.error("client %d: message failed", cid, exc_info=e)
                    client.error(f"the server could not handle that message ({type(e).__name__})")
        finally:
            client.closed = True
            client.entry.batcher.discard(cid)
            self.clients.pop(cid, None)
            self.uploads.forget(cid)
            log.info("client %d left after %d frames (%d now)", cid, client.results_sent, len(self.clients))
            if client.task is not None:
                client.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await client.task
        return ws

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
        if kind == "model":
            await self._switch(client, obj.get("name"))
            return
        if kind != "settings":
            client.error(f"unknown control message type {str(kind)[:40]!r}")
            return
        entry = client.entry
        try:
            settings = parse_settings(obj, client.settings, entry.library, self.config.sizes)
            condition = await self.blend(settings.styles, entry)
        except protocol.ProtocolError as e:
            client.error(str(e), version=obj.get("version") if isinstance(obj.get("version"), int) else None)
            return
        except KeyError:
            client.error("a style in the blend was removed; pick again")
            return
        if client.entry is not entry:
            return  # the page switched models meanwhile
        client.settings = settings
        client.condition = condition
        if self.shared is not None:
            self.shared.set(settings, condition, client)

    async def _on_binary(self, client: Client, data: bytes) -> None:
        try:
            kind, seq, name, payload = protocol.unpack_client(data)
        except protocol.ProtocolError as e:
            client.error(str(e))
            return
        entry = client.entry
        if kind == protocol.UPLOAD:
            if self.uploads.accept(client, entry, seq, len(payload)):
                self._tasks.append(asyncio.ensure_future(self.uploads.run(client, entry, seq, name, payload)))
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
        if client.closed or client.entry is not entry:
            return  # gone, or switched models while this frame was decoding
        if client.settings.size != settings.size:
            return  # the page switched sizes while this frame was decoding; its next frame has the new size
        settings = client.settings
        deliver = functools.partial(self._deliver_client, client, seq, settings, content)
        strength = None
        if settings.strength is not None:
            if not entry.model.caps.strength_map:
                client.error("this model cannot take a strength map; turn the strength control off", seq=seq)
                return
            strength = settings.strength.map(content.shape[:2])
        job = Job(content, client.condition, settings.alpha, deliver,
                  fail=functools.partial(client.error, seq=seq), gate=client.can_take,
                  smoothing=settings.smoothing, strength=strength)
        if entry.batcher.submit(client.id, job):
            client.frames_replaced += 1

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

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def _switch(self, client: Client, name: Any) -> None:
        """Move the client to model `name` (loading it first if no page has used it yet)."""
        if not isinstance(name, str) or name not in self.lineup:
            client.error(f"no model {str(name)[:60]!r} on this server; it runs {', '.join(self.lineup.entries)}")
            return
        if self.source is not None and name != client.entry.name:
            client.error("this server streams its own camera with one model")
            return
        client.switching = name
        if self.lineup[name].state != "ready":
            client.put_control({"type": "model", "name": name, "state": "loading", "models": self.lineup.describe()})
        try:
            entry = await self.lineup.ensure(name)
            settings = self.default_settings(entry, client.settings)
            condition = await self.blend(settings.styles, entry) if settings.styles else None
        except RuntimeError as e:
            client.put_control({"type": "model", "name": name, "state": "failed", "models": self.lineup.describe()})
            client.error(str(e))
            return
        if client.closed or client.switching != name:
            return  # gone, or another model was picked while this one loaded
        client.entry.batcher.discard(client.id)
        client.entry, client.settings, client.condition = entry, settings, condition
        client.put_control({"type": "model", "name": name, "state": "ready", **self.model_state(client)})

    async def _on_startup(self, app: web.Application) -> None:
        self.lineup.start()
        if self.shared is not None:
            settings = self.default_settings()
            condition = await self.blend(settings.styles) if settings.styles else None
            self._tasks.append(self.shared.start(settings, condition))
        self._tasks.append(asyncio.ensure_future(self._run_stats()))

    async def _run_stats(self) -> None:
        rates = self.lineup.rates()
        next(rates)
        while True:
            await asyncio.sleep(self.config.stats_interval)
            per_model = rates.send(None)
            for c in list(self.clients.values()):
                msg = {"type": "stats", "clients": len(self.clients), **per_model[c.entry.name]}
                if self.source is not None and self.source.error:
                    msg["source_error"] = self.source.error
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
        await self.lineup.close()
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
        # aiohttp's own logger would write a traceback and the request bytes for every malformed request.
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False, shutdown_timeout=2.0,
                               logger=security.SERVER_LOG, keepalive_timeout=self.config.keepalive_timeout)
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
                "batch_sizes": dict(s.batch_sizes), "clients": [c.snapshot() for c in self.clients.values()],
                "models": self.lineup.stats()[1], "programs": len(self.programs)}
