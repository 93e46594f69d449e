"""The style gallery: images from `--styles DIR`, built-in patterns, uploads; their statistics computed once.

Every style image is centre-cropped to a fixed square (`style_size`) before its statistics are computed, so
the encoder compiles once for styles too, and an upload never stalls the frames behind a compilation.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nst_jax.serve.codec import thumbnail_jpeg


@dataclasses.dataclass
class Style:
    """One entry of the gallery.

    Attributes:
      id: stable, never reused ("s0", "s1", ...).
      name: shown on the page (file stem or upload name).
      origin: "gallery", "builtin" or "upload".
      stats: what the model's `style_stats` returned (StyleStats: mean and std, (1, 1, 1, C)).
      thumb: a small JPEG for the page.
      digest: hash of the cropped style pixels (a second upload of the same image reuses this entry).
    """

    id: str
    name: str
    origin: str
    stats: Any
    thumb: bytes
    digest: str

    def describe(self) -> dict:
        """The JSON the page gets."""
        return {"id": self.id, "name": self.name, "origin": self.origin, "thumb": f"/styles/{self.id}.jpg"}


def image_digest(img: np.ndarray) -> str:
    """Content hash of a float style image (after cropping), for de-duplicating uploads."""
    return hashlib.sha256(np.ascontiguousarray(img, np.float32).tobytes()).hexdigest()


class StyleLibrary:
    """Styles by id; uploads are bounded (the oldest upload is forgotten first).

    Args:
      max_uploads: how many uploaded styles are kept at once.
    """

    def __init__(self, max_uploads: int = 32):
        self.max_uploads = max_uploads
        self._styles: dict[str, Style] = {}
        self._uploads: collections.deque[str] = collections.deque()
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._styles)

    def __contains__(self, sid: object) -> bool:
        return sid in self._styles

    def get(self, sid: str) -> Style:
        """The style with this id (KeyError if unknown or evicted)."""
        return self._styles[sid]

    def find(self, digest: str) -> Style | None:
        """A style with the same pixels, if there is one."""
        for s in self._styles.values():
            if s.digest == digest:
                return s
        return None

    def add(self, name: str, origin: str, stats: Any, thumb: bytes, digest: str) -> Style:
        """Add a style; for uploads beyond `max_uploads`, the oldest upload is dropped."""
        style = Style(f"s{next(self._ids)}", name, origin, stats, thumb, digest)
        self._styles[style.id] = style
        if origin == "upload":
            self._uploads.append(style.id)
            while len(self._uploads) > self.max_uploads:
                self._styles.pop(self._uploads.popleft(), None)
        return style

    def describe(self) -> list[dict]:
        """Every style, in the order added, as the page's JSON."""
        return [s.describe() for s in self._styles.values()]

    def first_id(self) -> str | None:
        """The id of the first style (the page's default), or None if the library is empty."""
        return next(iter(self._styles), None)


def builtin_patterns(size: int) -> list[tuple[str, np.ndarray]]:
    """A few procedural style images (1, size, size, 3) so the page has styles without `--styles`.

    They are deterministic colour patterns (stripes, tiles, rings, smooth noise): real paintings come from
    `--styles DIR` or an upload.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / np.float32(size)
    out = []
    # Diagonal stripes in warm colours.
    t = np.sin((x + y) * np.float32(2 * np.pi * 6))
    stripes = np.stack([0.85 + 0.15 * t, 0.45 + 0.35 * t, 0.15 + 0.1 * t], -1)
    out.append(("stripes", stripes))
    # Tiles: an 8x8 grid of colours from a fixed palette.
    rng = np.random.default_rng(1)
    palette = np.array([[0.1, 0.2, 0.55], [0.95, 0.8, 0.2], [0.8, 0.15, 0.15], [0.1, 0.1, 0.1],
                        [0.9, 0.9, 0.85], [0.2, 0.55, 0.3]], np.float32)
    grid = palette[rng.integers(0, len(palette), (8, 8))]
    iy = np.minimum((y * 8).astype(np.int64), 7)
    ix = np.minimum((x * 8).astype(np.int64), 7)
    out.append(("tiles", grid[iy, ix]))
    # Concentric rings, blue and orange.
    r = np.sqrt((x - 0.5) ** 2 + (y - 0.5) ** 2)
    t = 0.5 + 0.5 * np.cos(r * np.float32(2 * np.pi * 10))
    rings = np.stack([0.95 * t + 0.05, 0.55 * t + 0.2 * (1 - t), 0.2 * t + 0.75 * (1 - t)], -1)
    out.append(("rings", rings))
    # Smooth colour noise: low-resolution noise upsampled bilinearly.
    small = rng.random((6, 6, 3), dtype=np.float32)
    noise = np.asarray(Image.fromarray((small * 255).astype(np.uint8), "RGB").resize(
        (size, size), Image.Resampling.BICUBIC), np.float32) / np.float32(255.0)
    out.append(("clouds", noise))
    return [(name, np.clip(img, 0.0, 1.0).astype(np.float32)[None]) for name, img in out]


def to_pil(img: np.ndarray) -> Image.Image:
    """(1, H, W, 3) or (H, W, 3) float [0, 1] -> RGB PIL image."""
    a = np.asarray(img)
    if a.ndim == 4:
        a = a[0]
    return Image.fromarray((np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), "RGB")


def load_gallery(directory: str | Path | None, style_size: int) -> list[tuple[str, str, np.ndarray]]:
    """(name, origin, image (1, S, S, 3)) for every image in `directory`, or the built-in patterns if None.

    Raises:
      ImageError: the directory is missing, holds no images, or an image cannot be read.
    """
    from nst_jax import image

    if directory is None:
        return [(name, "builtin", img) for name, img in builtin_patterns(style_size)]
    items = []
    for path in image.list_images(directory):
        img = image.load_image(path, size=style_size, crop=True)
        items.append((path.stem, "gallery", np.asarray(img, np.float32)))
    return items


def fill_library(library: StyleLibrary, items: Iterable[tuple[str, str, np.ndarray]],
                 style_stats: Callable[[np.ndarray], Any],
                 progress: Callable[[Sequence], Iterable] = iter) -> None:
    """Compute each item's statistics (with the model's `style_stats`) and add it to `library`."""
    for name, origin, img in progress(list(items)):
        digest = image_digest(img)
        if library.find(digest) is not None:
            continue
        library.add(name, origin, style_stats(img), thumbnail_jpeg(to_pil(img)), digest)
