"""Helpers for the live server's tests, benchmark and notebooks: a server thread, a fake camera, minimal clients.

- `ServerThread`: a `LiveServer` on its own event loop in a background thread.
- `write_y4m`: a YUV4MPEG2 file Chromium plays as its camera (`--use-file-for-fake-video-capture`).
- `jpeg`: encode a test frame.
- `StalledClient`: a WebSocket client on a raw socket with a tiny receive buffer that sends frames and never
  reads, to show that one stuck client does not hold up the others.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from nst_jax.serve.app import LiveServer


def write_y4m(path: str | Path, frames: list[np.ndarray], fps: int = 30) -> Path:
    """Write (H, W, 3) uint8 RGB frames (H, W even) as a C420jpeg YUV4MPEG2 file (full-range BT.601)."""
    h, w, _ = frames[0].shape
    if h % 2 or w % 2:
        raise ValueError("y4m 4:2:0 needs even frame sides")
    path = Path(path)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
            y = 0.299 * r + 0.587 * g + 0.114 * b
            cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
            cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
            f.write(b"FRAME\n")
            for plane in (y, cb.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3)),
                          cr.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))):
                f.write(np.clip(np.rint(plane), 0, 255).astype(np.uint8).tobytes())
    return path


def jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    """(H, W, 3) uint8 or float [0, 1] RGB -> JPEG bytes."""
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


class StalledClient:
    """A WebSocket client that sends binary messages and never reads what comes back.

    Its receive buffer is made as small as the kernel allows before connecting, so the server's writes to it
    back up after a few frames, as with a frozen browser tab or a dead link.
    """

    def __init__(self, host: str, port: int, path: str = "/ws", rcvbuf: int = 1024, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("server closed during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")

    def send_binary(self, payload: bytes) -> bool:
        """Send one masked binary frame; False once the server's side is gone or our send buffer is full."""
        n = len(payload)
        if n < 126:
            header = struct.pack(">BB", 0x82, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack(">BBH", 0x82, 0x80 | 126, n)
        else:
            header = struct.pack(">BBQ", 0x82, 0x80 | 127, n)
        # An all-zero mask key is valid and leaves the payload as is.
        try:
            self.sock.sendall(header + b"\x00\x00\x00\x00" + payload)
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()


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
