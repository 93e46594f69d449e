"""Live style transfer in the browser: an aiohttp server, one static page, frames batched across clients.

Modules:
  cli       `python serve.py` flags -> model, gallery, warm-up, serving until Ctrl-C
  app       LiveServer (HTTP routes, WebSocket clients, server-side stream), ServerThread
  batcher   latest-frame-wins slots and one padded, pre-compiled model call per tick
  styles    gallery, uploads and their cached statistics
  codec     bounded JPEG/PNG decoding and JPEG encoding
  protocol  the binary/JSON WebSocket messages
  sources   OpenCV camera/video source and the recorder
  static/   index.html, app.js, style.css
"""

from nst_jax.serve.cli import main

__all__ = ["main"]
