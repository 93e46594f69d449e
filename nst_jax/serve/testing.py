"""Helpers for the live server's tests and benchmark: a deterministic fake camera and minimal clients.

- `write_y4m`: a YUV4MPEG2 file Chromium plays as its camera (`--use-file-for-fake-video-capture`).
- `jpeg`: encode a test frame.
- `StalledClient`: a WebSocket client on a raw socket with a tiny receive buffer that sends frames and never
  reads, to show that one stuck client does not hold up the others.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import struct
from pathlib import Path

import numpy as np
from PIL import Image


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
