"""The WebSocket protocol between the page (static/app.js) and the server.

Binary messages start with a one-byte kind and a big-endian header:
  client -> server
    FRAME   kind=1, seq u32, JPEG bytes                         a camera frame
    UPLOAD  kind=2, seq u32, name_len u16, name (UTF-8), bytes  a new style image
  server -> client
    RESULT  kind=1, seq u32, version u32, JPEG bytes            a stylized frame (seq of its input frame,
                                                                 version of the settings it was made with)
    SOURCE  kind=3, seq u32, version u32, JPEG bytes            a server-side camera frame (side-by-side view)
Text messages are JSON objects with a "type":
  client -> server: settings {version, styles: [[id, weight], ...], alpha, preserve_color, size, side_by_side,
    strength (null or {kind, x, y, radius, angle, softness, invert}: the page's strength map, settings.py)}
    (preserve_color: one of PRESERVE_COLOR, or an alias in PRESERVE_COLOR_ALIASES, answered with its canonical name)
  server -> client: hello, styles, settings (server-camera mode), uploaded, error
"""

from __future__ import annotations

import struct

from nst_jax.errors import NstError

FRAME = 1
UPLOAD = 2
RESULT = 1
SOURCE = 3

# Live colour modes, applied to the stylized frame. "histogram_output" recolours the OUTPUT to the camera frame;
# "histogram" elsewhere in nst-jax recolours the style image, so live it is only an alias kept for old clients.
PRESERVE_COLOR = ("none", "luminance", "histogram_output")
PRESERVE_COLOR_ALIASES = {"histogram": "histogram_output"}
MAX_BLEND = 8

_U32 = struct.Struct(">I")
_RESULT = struct.Struct(">BII")
_UPLOAD = struct.Struct(">BIH")


class ProtocolError(NstError, ValueError):
    """A malformed message; its text is sent back to the client (an `NstError`, and a ValueError as before)."""


def pack_frame(seq: int, jpeg: bytes) -> bytes:
    """Client side of a FRAME message (used by tests and benchmarks)."""
    return bytes([FRAME]) + _U32.pack(seq & 0xFFFFFFFF) + jpeg


def pack_upload(seq: int, name: str, data: bytes) -> bytes:
    """Client side of an UPLOAD message (used by tests)."""
    raw = name.encode("utf-8")[:255]
    return _UPLOAD.pack(UPLOAD, seq & 0xFFFFFFFF, len(raw)) + raw + data


def pack_result(kind: int, seq: int, version: int, jpeg: bytes) -> bytes:
    """Server side of a RESULT or SOURCE message."""
    return _RESULT.pack(kind, seq & 0xFFFFFFFF, version & 0xFFFFFFFF) + jpeg


def unpack_result(msg: bytes) -> tuple[int, int, int, bytes]:
    """(kind, seq, version, jpeg) of a server binary message."""
    if len(msg) < _RESULT.size:
        raise ProtocolError("short result message")
    kind, seq, version = _RESULT.unpack_from(msg)
    return kind, seq, version, msg[_RESULT.size:]


def unpack_client(msg: bytes) -> tuple[int, int, str, bytes]:
    """(kind, seq, name, payload) of a client binary message; name is "" for frames.

    Raises:
      ProtocolError: unknown kind or a header cut short.
    """
    if len(msg) < 5:
        raise ProtocolError(f"binary message of {len(msg)} bytes is too short for a header")
    kind = msg[0]
    if kind == FRAME:
        return FRAME, _U32.unpack_from(msg, 1)[0], "", msg[5:]
    if kind == UPLOAD:
        if len(msg) < _UPLOAD.size:
            raise ProtocolError("upload header cut short")
        _, seq, n = _UPLOAD.unpack_from(msg)
        end = _UPLOAD.size + n
        if len(msg) < end:
            raise ProtocolError("upload name cut short")
        name = msg[_UPLOAD.size:end].decode("utf-8", errors="replace")
        return UPLOAD, seq, name, msg[end:]
    raise ProtocolError(f"unknown binary message kind {kind}")
