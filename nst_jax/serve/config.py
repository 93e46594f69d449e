"""How the live server behaves: `ServerConfig` (everything but the models and the styles)."""

from __future__ import annotations

import dataclasses

from nst_jax.serve import codec


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
      uploads_per_minute: style uploads one client may send per minute (each costs a decode and a model call).
      keepalive_timeout: seconds an idle HTTP connection is kept open.
      max_programs: compiled model programs kept at once, over all models (`programs.ProgramCache`).
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
    uploads_per_minute: int = 10
    keepalive_timeout: float = 75.0
    max_programs: int = 32
