"""The shared stream of a server-side camera (`--camera`/`--video`): one stylized stream every page shows.

Any page's controls change it (a performer's setup), each change reaching every page with a new settings
version; `--record` writes it. One frame is in the model at a time: the next is taken from the source when the
previous one has been encoded, so the stream runs at the model's speed and never queues.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from nst_jax.serve import codec, protocol
from nst_jax.serve.batcher import Batcher, Job
from nst_jax.serve.client import Client
from nst_jax.serve.settings import Settings, postprocess
from nst_jax.serve.sources import Recorder, VideoSource

log = logging.getLogger("nst_jax.serve")

SHOW_KEY = "__show__"


class SharedShow:
    """Stylizes the latest source frame with the shared settings and hands the result to every client.

    Args:
      source: the server-side camera or video.
      recorder: writes the stream (or None).
      batcher: the server's batcher (the stream has its own slot, `SHOW_KEY`).
      clients: the server's clients by id (the live dict: clients come and go).
      decode_pool, encode_pool: thread pools for resizing source frames and for colour + JPEG.
      jpeg_quality: of the frames sent.
    """

    def __init__(self, source: VideoSource, recorder: Recorder | None, batcher: Batcher,
                 clients: Mapping[int, Client], decode_pool: concurrent.futures.Executor,
                 encode_pool: concurrent.futures.Executor, jpeg_quality: int):
        self.source = source
        self.recorder = recorder
        self.batcher = batcher
        self.clients = clients
        self.decode_pool = decode_pool
        self.encode_pool = encode_pool
        self.jpeg_quality = jpeg_quality
        self.settings: Settings | None = None
        self.condition: Any = None
        self._busy = False
        self._event: asyncio.Event | None = None

    def start(self, settings: Settings, condition: Any) -> asyncio.Task:
        """Start the source with the first settings and their condition (None without a style), on the event
        loop; returns the stream's task."""
        loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.settings = dataclasses.replace(settings, version=1)
        self.condition = condition
        event = self._event
        self.source.on_frame(lambda: loop.call_soon_threadsafe(event.set))
        self.source.start()
        return asyncio.ensure_future(self._run())

    def set(self, settings: Settings, condition: Any, origin: Client | None) -> None:
        """New shared settings (from a page): every client gets them, with a new version."""
        shared = dataclasses.replace(settings, side_by_side=False)
        version = (self.settings.version + 1) if self.settings is not None else 1
        self.settings = dataclasses.replace(shared, version=version)
        self.condition = condition
        for c in self.clients.values():
            c.settings = dataclasses.replace(self.settings, side_by_side=c.settings.side_by_side)
            c.condition = condition
            c.put_control({"type": "settings", "settings": c.settings.describe(),
                           "from": origin.id if origin is not None else None})
        self.wake()

    def wake(self) -> None:
        """Look at the source again (a new frame, a new client, the previous frame done)."""
        if self._event is not None:
            self._event.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last: tuple[int, int] | None = None
        while True:
            await self._event.wait()
            self._event.clear()
            if self._busy or self.settings is None or not self.settings.styles:
                continue
            if not self.clients and self.recorder is None:
                continue
            count, frame = self.source.latest()
            settings = self.settings
            if (count, settings.version) == last:
                continue  # nothing new to show (woken by the end of the previous frame)
            last = (count, settings.version)
            condition = self.condition
            content = await loop.run_in_executor(self.decode_pool, self._content, frame, settings.size)
            self._busy = True
            job = Job(content, condition, settings.alpha,
                      functools.partial(self._deliver, count, settings, content), fail=self._failed)
            self.batcher.submit(SHOW_KEY, job)

    @staticmethod
    def _content(frame: np.ndarray, size: int) -> np.ndarray:
        return codec.square_uint8(frame, size).astype(np.float32) / np.float32(255.0)

    def _failed(self, message: str) -> None:
        self._busy = False
        for c in self.clients.values():
            c.error(message)

    def _deliver(self, count: int, settings: Settings, content: np.ndarray, out: np.ndarray) -> None:
        want_source = any(c.settings.side_by_side for c in self.clients.values())
        fut = asyncio.get_running_loop().run_in_executor(
            self.encode_pool, self._encode, out, content, settings, count, want_source)

        def done(f: asyncio.Future) -> None:
            self._busy = False
            self.wake()
            if f.exception() is not None:
                log.error("encoding the shared stream failed: %s", f.exception())
                return
            result, source = f.result()
            for c in list(self.clients.values()):
                c.put_result(result, count, source if c.settings.side_by_side else None)

        fut.add_done_callback(done)

    def _encode(self, out: np.ndarray, content: np.ndarray, settings: Settings, count: int,
                want_source: bool) -> tuple[bytes, bytes | None]:
        rgb = postprocess(out, content, settings.preserve_color)
        if self.recorder is not None:
            frame = rgb
            if rgb.shape[0] != self.recorder.size:  # the page picked another output size than --size
                frame = np.asarray(Image.fromarray(rgb, "RGB").resize((self.recorder.size,) * 2))
            self.recorder.write(frame)
        q = self.jpeg_quality
        result = protocol.pack_result(protocol.RESULT, count, settings.version, codec.encode_jpeg(rgb, q))
        source = None
        if want_source:
            jpeg = codec.encode_jpeg(content, q)
            source = protocol.pack_result(protocol.SOURCE, count, settings.version, jpeg)
        return result, source

