"""Bounded image decoding and encoding for the live server.

Everything a client sends is untrusted: sizes are checked from the header before any pixel is decoded, frames
must be JPEG, uploads one of a few still-image formats, and every decoder failure (truncated data, garbage,
decompression bombs) becomes an `ImageError` whose message is sent back on that client's socket.
"""

from __future__ import annotations

import dataclasses
import io
import struct

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nst_jax.errors import ImageError
from nst_jax.image import to_rgb, to_uint8

FRAME_FORMATS = ("JPEG",)
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds on what clients may send.

    Attributes:
      frame_bytes: largest encoded frame accepted.
      frame_pixels / frame_side: largest decoded frame (width * height, and either side).
      upload_bytes: largest encoded style upload.
      upload_pixels / upload_side: largest decoded upload.
      text_bytes: largest JSON control message.
    """

    frame_bytes: int = 2 << 20
    frame_pixels: int = 2048 * 2048
    frame_side: int = 4096
    upload_bytes: int = 12 << 20
    upload_pixels: int = 25_000_000
    upload_side: int = 8192
    text_bytes: int = 64 << 10


def _open_checked(data: bytes, formats: tuple[str, ...], max_pixels: int, max_side: int,
                  what: str) -> Image.Image:
    """Parse only the header, check format and dimensions; the pixels are not decoded yet."""
    if not data:
        raise ImageError(f"{what} is empty")
    try:
        # Only the header is parsed here. (Pillow may warn about a decompression bomb; the warning is
        # harmless, since our own bounds below are far lower, and filtering it per call would not be
        # thread-safe.)
        im = Image.open(io.BytesIO(data), formats=list(formats))
    except UnidentifiedImageError:
        raise ImageError(f"{what} is not a {'/'.join(formats)} image") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{what} is too large to decode") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
        raise ImageError(f"{what} cannot be read: {e}") from None
    w, h = im.size
    if w < 1 or h < 1 or w > max_side or h > max_side or w * h > max_pixels:
        im.close()
        raise ImageError(f"{what} is {w}x{h}; the limit is {max_side} px a side and {max_pixels} pixels")
    return im


def _load(im: Image.Image, what: str) -> Image.Image:
    try:
        im.load()
        return im
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as e:
        raise ImageError(f"{what} cannot be decoded: {e}") from None


def _square(im: Image.Image, size: int) -> Image.Image:
    """Centre crop to a square, then resize to size x size (antialiased)."""
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    if (w, h) != (s, s):
        im = im.crop((left, top, left + s, top + s))
    if s != size:
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return im


def decode_frame(data: bytes, size: int, limits: Limits = Limits()) -> np.ndarray:
    """Decode one JPEG camera frame into a (size, size, 3) float32 RGB array in [0, 1].

    Frames that are not square are centre-cropped; any resolution within `limits` is accepted and resized.

    Raises:
      ImageError: too many bytes, not a JPEG, too many pixels, truncated or corrupt.
    """
    if len(data) > limits.frame_bytes:
        raise ImageError(f"frame is {len(data)} bytes; the limit is {limits.frame_bytes}")
    im = _open_checked(data, FRAME_FORMATS, limits.frame_pixels, limits.frame_side, "frame")
    with im:
        # JPEG can decode at 1/2, 1/4 or 1/8 scale for free: never decode more pixels than the model will see.
        im.draft("RGB", (size, size))
        im = to_rgb(_load(im, "frame"))
        im = _square(im, size)
        return np.asarray(im, dtype=np.float32) / np.float32(255.0)


def decode_upload(data: bytes, size: int, limits: Limits = Limits()) -> tuple[np.ndarray, Image.Image]:
    """Decode an uploaded style image: EXIF orientation applied, centre square crop at size x size.

    Returns:
      (style (1, size, size, 3) float32 in [0, 1], the cropped RGB PIL image for a thumbnail).

    Raises:
      ImageError: too many bytes, unsupported format, too many pixels, truncated or corrupt.
    """
    if len(data) > limits.upload_bytes:
        raise ImageError(f"upload is {len(data)} bytes; the limit is {limits.upload_bytes}")
    im = _open_checked(data, UPLOAD_FORMATS, limits.upload_pixels, limits.upload_side, "upload")
    with im:
        if im.format == "JPEG":
            im.draft("RGB", (size, size))
        im = _load(im, "upload")
        try:
            im = ImageOps.exif_transpose(im)
        except (OSError, ValueError, SyntaxError, struct.error) as e:
            raise ImageError(f"upload has unreadable orientation data: {e}") from None
        sq = _square(to_rgb(im), size)
    arr = np.asarray(sq, dtype=np.float32)[None] / np.float32(255.0)
    return arr, sq


def square_uint8(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop and resize an (H, W, 3) uint8 RGB frame (e.g. from OpenCV) to (size, size, 3) uint8."""
    return np.asarray(_square(Image.fromarray(rgb, "RGB"), size))


def encode_jpeg(img: np.ndarray, quality: int = 85) -> bytes:
    """(H, W, 3) float in [0, 1] (rounded as `nst_jax.image.to_uint8`) or uint8 -> JPEG bytes."""
    if img.dtype != np.uint8:
        img = to_uint8(img)
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def thumbnail_jpeg(im: Image.Image, side: int = 96) -> bytes:
    """A small JPEG of a style image for the gallery."""
    t = im.copy()
    t.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=3.0)
    buf = io.BytesIO()
    t.convert("RGB").save(buf, "JPEG", quality=85)
    return buf.getvalue()
