"""Live style transfer in the browser: an aiohttp server, one static page, frames batched across clients.

Modules (the package imports none of them: `python serve.py` runs `nst_jax.serve.cli.main`):
  cli       `python serve.py` flags -> model, gallery, warm-up, serving until Ctrl-C
  app       LiveServer (HTTP routes, WebSocket dispatch, model switches, stats, lifecycle)
  config    ServerConfig
  lineup    the models a page can pick, each loaded on first use with its own batcher
  programs  the bounded LRU of compiled (model, size, batch) programs
  uploads   style uploads: checks, decoding, conditions
  settings  a page's settings: validation and colour finishing
  security  response headers, Host and Origin checks, the loopback test
  client    one WebSocket's one-deep outbox and sender
  show      the shared stream of a server-side camera
  batcher   latest-frame-wins slots and one padded, pre-compiled model call per tick
  styles    gallery, uploads and their cached style conditions
  codec     bounded JPEG/PNG decoding and JPEG encoding
  protocol  the binary/JSON WebSocket messages
  sources   OpenCV camera/video source and the recorder
  testing   ServerThread (a server on a background thread), a fake camera, minimal clients
  static/   index.html, app.js, style.css
"""
