"""One WebSocket client: its settings, style condition and a one-deep outbox drained by its own sender task.

A newer result overwrites one not yet sent, so a client that stops reading costs the others nothing: its sender
blocks on its own socket, its gate (`can_take`) closes, and its frames stop being computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from nst_jax.serve.settings import Settings


class Client:
    """One WebSocket: its settings, style condition and a one-deep outbox drained by its own sender task.

    Args:
      cid: the client's id.
      ws: its prepared WebSocket.
      settings: its settings now.
      condition: the model condition of `settings.styles` (None while there is no style).
      on_sent: called after each result leaves (the batcher re-checks its gates).
    """

    def __init__(self, cid: int, ws: web.WebSocketResponse, settings: Settings, condition: Any,
                 on_sent: Callable[[], None]):
        self.id = cid
        self.ws = ws
        self.settings = settings
        self.condition = condition
        self.on_sent = on_sent
        self.closed = False
        self.uploading = False
        self.entry: Any = None  # its model (`lineup.Entry`)
        self.switching: str | None = None  # the model it asked for last
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
        """Queue an error message for the page (`extra`: e.g. the seq of the frame it concerns)."""
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


def tune_socket(transport: asyncio.Transport | None, limit: int | None) -> None:
    """Small send buffers: a slow reader then blocks its sender (and drops frames) within a few frames,
    instead of queueing seconds of stale video in the kernel.

    Args:
      transport: the WebSocket's transport (None once the peer is gone).
      limit: bytes the transport and the kernel may buffer; None keeps their defaults.
    """
    if transport is None:
        return
    if limit:
        transport.set_write_buffer_limits(high=limit)
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if limit:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limit)
