"""The style gallery: images from `--styles DIR`, built-in patterns, uploads, or a model's own table of styles;
each style's condition (what the model's `condition` makes of it) computed once.

Every style image is centre-cropped to a fixed square (`style_size`) before its condition is computed, so the
encoder compiles once for styles too, and an upload never stalls the frames behind a compilation.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from PIL import Image

from nst_jax.files import array_digest
from nst_jax.serve.codec import thumbnail_jpeg


@dataclasses.dataclass
class Style:
    """One entry of the gallery.

    Attributes:
      id: stable, never reused ("s0", "s1", ...).
      name: shown on the page (file stem or upload name).
      origin: "gallery", "builtin", "upload" or "table" (a style of the model's own table).
      condition: what the model's `condition` returned (a pytree with a leading axis of 1, e.g. AdaIN's
        {"mean", "std"}, (1, 1, 1, 512) each).
      thumb: a small JPEG for the page.
      digest: hash of the cropped style pixels (a second upload of the same image reuses this entry).
    """

    id: str
    name: str
    origin: str
    condition: Any
    thumb: bytes
    digest: str

    def describe(self) -> dict:
        """The JSON the page gets."""
        return {"id": self.id, "name": self.name, "origin": self.origin, "thumb": f"/styles/{self.id}.jpg"}


def _to_host(condition: Any) -> Any:
    # A NamedTuple (AdaIN's StyleStats from `Stylizer.style_stats`, the API before conditions) becomes the dict
    # of its fields, which is its condition ({"mean", "std"}).
    if isinstance(condition, tuple) and hasattr(condition, "_asdict"):
        condition = condition._asdict()
    # Conditions are tiny: NumPy copies are stacked per batch without a device round trip each time.
    return jax.tree.map(np.asarray, condition)


class StyleLibrary:
    """Styles by id; uploads are bounded (the oldest upload is forgotten first).

    Args:
      max_uploads: how many uploaded styles are kept at once.
      prefix: of the ids ("s0", "s1", ...; another per model, so that ids never repeat on one server).
    """

    def __init__(self, max_uploads: int = 32, prefix: str = "s"):
        self.max_uploads = max_uploads
        self.prefix = prefix
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

    def add(self, name: str, origin: str, condition: Any, thumb: bytes, digest: str) -> Style:
        """Add a style (its condition kept as NumPy); for uploads beyond `max_uploads`, the oldest upload is
        dropped."""
        style = Style(f"{self.prefix}{next(self._ids)}", name, origin, _to_host(condition), thumb, digest)
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
                 condition: Callable[[np.ndarray], Any],
                 progress: Callable[[Sequence], Iterable] = iter) -> None:
    """Compute each item's condition (with the model's `condition`) and add it to `library`.

    Args:
      library: where the styles go (an image already there is skipped).
      items: (name, origin, image (1, S, S, 3)) as `load_gallery` gives them.
      condition: the model's `condition` (style image -> condition with a leading axis of 1).
      progress: wraps the item list (e.g. a progress bar).
    """
    for name, origin, img in progress(list(items)):
        digest = array_digest(img)
        if library.find(digest) is not None:
            continue
        library.add(name, origin, condition(img), thumbnail_jpeg(to_pil(img)), digest)


def fill_table(library: StyleLibrary, model: Any, size: int,
               progress: Callable[[Sequence], Iterable] = iter) -> None:
    """Add every style of a table model (`caps.style_table`, e.g. CIN) to `library`.

    Style i's condition is `model.condition(i)` (the one-hot row of the table); its thumbnail is a built-in
    pattern stylized with it at `size` (a warmed frame size, so nothing extra compiles).

    Args:
      library: where the styles go.
      model: has `num_styles`, `condition` and `stylize_conditions`; and `style_names` if its styles have
        names (else "style 0", "style 1", ...: the indices `nst-jax stylize --style` takes).
      size: side of the thumbnails' source picture.
      progress: wraps the list of styles (e.g. a progress bar).
    """
    n = int(model.num_styles)
    names = [str(x) for x in getattr(model, "style_names", None) or [f"style {i}" for i in range(n)]]
    if len(names) != n:
        raise ValueError(f"the model has {n} styles but {len(names)} style names")
    probe = dict(builtin_patterns(size))["rings"]
    one = np.ones((1,), np.float32)
    for i, name in progress(list(enumerate(names))):
        cond = model.condition(i)
        picture = np.asarray(model.stylize_conditions(probe, cond, one), np.float32)
        library.add(name, "table", cond, thumbnail_jpeg(to_pil(picture)), f"table:{i}")


class BlendCache:
    """Conditions of weighted blends of a library's styles, cached on the event loop by their normalised
    weights (moving a slider back and forth computes nothing).

    Args:
      library: the styles the ids name.
      blend: the model's convex mix, `blend(conditions, weights)` (weights normalised to sum to 1); every
        family's stylization is affine in its condition, so this is the blend of the styles themselves.
      run: runs a function on the model thread and awaits it (`Batcher.run_model`).
      size: blends kept (least recently used dropped first).
    """

    def __init__(self, library: StyleLibrary, blend: Callable[[Sequence[Any], Sequence[float]], Any],
                 run: Callable[..., Awaitable[Any]], size: int = 256):
        self.library = library
        self.blend = blend
        self.run = run
        self.size = size
        self._cache: collections.OrderedDict[tuple, Any] = collections.OrderedDict()

    def _blend_now(self, styles: tuple[tuple[str, float], ...]) -> Any:
        conditions = [self.library.get(sid).condition for sid, _ in styles]
        if len(conditions) == 1:
            return conditions[0]
        return _to_host(self.blend(conditions, [w for _, w in styles]))

    async def get(self, styles: Sequence[tuple[str, float]]) -> Any:
        """The condition of `styles` ((id, weight) pairs, some weight positive).

        Raises:
          KeyError: a style has been removed from the library.
        """
        total = sum(w for _, w in styles)
        key = tuple((sid, round(w / total, 4)) for sid, w in styles if w > 0)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        value = await self.run(self._blend_now, key)
        self._cache[key] = value
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return value
