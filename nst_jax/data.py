"""Content and style image streams for training: tensorflow-datasets or image folders, augmented, resumable.

A source is named `tfds:NAME[/CONFIG][:VERSION]` (read through `tfds.data_source`, random access, no
TensorFlow needed for datasets whose builder does not import it, e.g. `dtd`) or `folder:PATH` (every image
file under PATH, recursively, sorted: WikiArt's genre folders work as they come).

Each stream is a grain pipeline: shuffle (a new order every epoch), decode, augment, in `data_threads`
threads. It is deterministic given the seed, and `get_state()` / `set_state()` record and restore the exact
position, so a resumed run sees the very batches an uninterrupted run would have seen. Unreadable, corrupt
and tiny images are skipped and counted, never fatal; a source where no image can be used is a clear
`DataError`. With several processes, each one decodes only its slice of every global batch of the one global
stream, so the global batches do not depend on the process count (`ImageStream`'s `shard_index`, `shard_count`).

Augmentation (what the peers feed their nets):
- "crop": resize (shorter side to `resize_size`, aspect kept, as the Lua original; or both sides, as
  pytorch-AdaIN's `Resize((512, 512))`), then a random `image_size` crop. Resizing is Pillow's bilinear on
  8-bit images, which is what torchvision's `Resize` does on PIL images.
- "magenta": Magenta's `arbitrary_style_image_inputs(augment_style_images=True)`: random brightness (+-0.8),
  saturation (x0.5-1.5), hue (+-0.2), left-right and up-down flips, then the shorter side to a random size in
  [image_size + 2, image_size + 200) and a random crop.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from nst_jax import color, runtime
from nst_jax.errors import NstError
from nst_jax.image import center_crop_box, is_image_name, shorter_side_hw, to_rgb

log = logging.getLogger(__name__)

SOURCE_FORMS = "tfds:NAME[/CONFIG][:VERSION] or folder:PATH"
# How many skipped images are reported one by one before only the count is kept.
_REPORT_FIRST = 10


class DataError(NstError):
    """A data source is missing, empty, or has no usable image."""


@dataclasses.dataclass(frozen=True)
class Augment:
    """How a decoded image becomes a training crop.

    Attributes:
      image_size: side of the square crop.
      resize_size: target of the resize before cropping; 0 keeps the original size.
      resize_mode: "shorter" (shorter side to resize_size) or "square" (both sides).
      mode: "crop" or "magenta" (see the module docstring).
      min_side: images whose shorter side (before resizing) is below this are skipped.
    """

    image_size: int = 256
    resize_size: int = 512
    resize_mode: Literal["shorter", "square"] = "shorter"
    mode: Literal["crop", "magenta"] = "crop"
    min_side: int = 64

    def __post_init__(self):
        if self.image_size < 1:
            raise DataError(f"image_size must be positive, got {self.image_size}")
        if self.resize_mode not in ("shorter", "square"):
            raise DataError(f"resize_mode must be 'shorter' or 'square', got {self.resize_mode!r}")
        if self.mode not in ("crop", "magenta"):
            raise DataError(f"mode must be 'crop' or 'magenta', got {self.mode!r}")
        if self.resize_size and self.resize_size < self.image_size:
            raise DataError(f"resize_size ({self.resize_size}) is smaller than the crop image_size "
                            f"({self.image_size})")


class Skipped(NamedTuple):
    """An item that could not be used: which one and why."""

    where: str
    reason: str


# ----------------------------------------------------------------------------------------------------
# Sources


class Source(NamedTuple):
    """A random-access collection of raw items (paths or tfds examples) and how to name it in messages."""

    items: Sequence[Any]
    name: str
    image_key: str | None  # None: items are file paths


def parse_source(spec: str) -> tuple[str, str]:
    """Split a source spec into (kind, value); kind is "tfds" or "folder".

    Raises:
      DataError: the spec has neither prefix.
    """
    kind, sep, value = str(spec).partition(":")
    if not sep or kind not in ("tfds", "folder") or not value:
        raise DataError(f"data source {spec!r} is not {SOURCE_FORMS}")
    return kind, value


def scan_folder(path: str | os.PathLike) -> list[Path]:
    """Every image file under `path` (`nst_jax.image.is_image_name`: by extension, hidden files and folders
    skipped), recursively, in sorted order.

    Raises:
      DataError: `path` is not a directory or holds no image file.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath, f) for f in sorted(filenames) if is_image_name(f)]
    if not found:
        raise DataError(f"no image files under {root} (expected .jpg, .png, ... files, searched recursively)")
    return found


def open_source(spec: str, *, split: str = "train", image_key: str = "image", data_dir: str | None = None,
                download: bool | None = None) -> Source:
    """Open a content or style source.

    Args:
      spec: "tfds:NAME[/CONFIG][:VERSION]" or "folder:PATH".
      split: the tfds split.
      image_key: the tfds feature that holds the image.
      data_dir: tfds data directory (None: tfds's default).
      download: let tfds download and prepare a missing dataset; None means yes unless offline
        (`nst_jax.runtime.offline`: NST_JAX_OFFLINE=1, true, yes or on).

    Returns:
      a `Source`.

    Raises:
      DataError: the folder is missing or empty, or tfds cannot provide the dataset.
    """
    kind, value = parse_source(spec)
    if kind == "folder":
        return Source(scan_folder(value), f"folder {value}", None)
    if download is None:
        download = not runtime.offline()
    try:
        import tensorflow_datasets as tfds

        ds = tfds.data_source(value, split=split, data_dir=data_dir or None, download=download)
    except Exception as e:  # tfds raises many types (missing TF, missing files, network)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ""
        if "tensorflow" in str(e).lower():
            hint = (" (this dataset's tfds builder needs TensorFlow: `pip install tensorflow-cpu`, or "
                    "point at the images with folder:PATH)")
        raise DataError(f"cannot open tfds dataset {value!r} split {split!r}: {msg}{hint}") from None
    if len(ds) == 0:
        raise DataError(f"tfds dataset {value!r} split {split!r} is empty")
    return Source(ds, f"tfds {value}[{split}]", image_key)


# ----------------------------------------------------------------------------------------------------
# Decoding and augmentation


def _describe(item: Any, source: Source, index: int | None = None) -> str:
    if source.image_key is None:
        return str(item)
    name = None
    if isinstance(item, dict):
        for key in ("image/filename", "file_name", "filename", "image/id", "id"):
            if key in item:
                name = item[key]
                break
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    return f"{source.name} example {name if name is not None else index}"


def decode(item: Any, image_key: str | None, draft: int | None = None) -> Image.Image:
    """Decode one raw item (a file path, encoded bytes, or a tfds example) into an 8-bit RGB PIL image.

    EXIF orientation is applied and alpha is composited on white (`nst_jax.image.to_rgb`). For JPEGs,
    `draft` lets the decoder skip resolution it would throw away (shorter side kept >= draft).

    Raises:
      Whatever Pillow raises for a missing, corrupt or truncated file; callers turn it into a `Skipped`.
    """
    if image_key is not None:
        if not isinstance(item, dict) or image_key not in item:
            keys = ", ".join(sorted(item)) if isinstance(item, dict) else type(item).__name__
            raise KeyError(f"no {image_key!r} feature (has: {keys}); set image_key")
        item = item[image_key]
    if isinstance(item, np.ndarray):
        a = item
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {a.dtype}")
        return to_rgb(Image.fromarray(a))
    src = io.BytesIO(item) if isinstance(item, bytes | bytearray) else item
    with Image.open(src) as im:
        if draft and im.format == "JPEG":
            w, h = im.size
            scale = min(w, h) / draft
            if scale >= 2:
                im.draft("RGB", (int(w / scale + 0.5), int(h / scale + 0.5)))
        im.load()
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)


def _resize_hw(h: int, w: int, aug: Augment, size: int | None = None) -> tuple[int, int]:
    size = size or aug.resize_size
    if not size:
        return h, w
    if aug.resize_mode == "square":
        return size, size
    return shorter_side_hw(h, w, size)


def augment(img: Image.Image, aug: Augment, rng: np.random.Generator) -> np.ndarray:
    """Resize and randomly crop (plus Magenta's jitter if asked) one image: (S, S, 3) uint8."""
    w, h = img.size
    s = aug.image_size
    if aug.mode == "magenta":
        a = color.color_jitter(np.asarray(img), rng)
        if rng.random() < 0.5:
            a = a[:, ::-1]
        if rng.random() < 0.5:
            a = a[::-1]
        img = Image.fromarray(np.ascontiguousarray(a))
        size = int(rng.integers(s + 2, s + 200))
        nh, nw = _resize_hw(h, w, dataclasses.replace(aug, resize_mode="shorter"), size)
    else:
        nh, nw = _resize_hw(h, w, aug)
    if (nh, nw) != (h, w):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    if nh < s or nw < s:
        raise ValueError(f"{w}x{h} image resized to {nw}x{nh} is smaller than the {s} px crop")
    # torchvision RandomCrop: top and left uniform over the valid offsets
    top = int(rng.integers(0, nh - s + 1))
    left = int(rng.integers(0, nw - s + 1))
    return np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.uint8)


def center_crop_image(img: Image.Image, aug: Augment) -> np.ndarray:
    """The deterministic counterpart of `augment` (for fixed sample images): resize, centre crop, uint8."""
    w, h = img.size
    nh, nw = _resize_hw(h, w, aug)
    s = aug.image_size
    if (nh, nw) != (h, w):
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    if nh < s or nw < s:
        raise ValueError(f"{w}x{h} image is smaller than the {s} px crop")
    top, left = center_crop_box(nh, nw, s, s)
    return np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.uint8)


def prepare(source: Source, aug: Augment, index: int, item: Any, rng: np.random.Generator | None
            ) -> np.ndarray | Skipped:
    """Decode and augment one item; a failure (or a too-small image) comes back as `Skipped`, never raised."""
    try:
        # JPEGs may decode at reduced resolution, never below the size they are resized to next.
        draft = aug.image_size + 200 if aug.mode == "magenta" else aug.resize_size or None
        img = decode(item, source.image_key, draft=draft)
        if min(img.size) < aug.min_side:
            return Skipped(_describe(item, source, index),
                           f"too small ({img.size[0]}x{img.size[1]} < min_side {aug.min_side})")
        if rng is None:
            return center_crop_image(img, aug)
        return augment(img, aug, rng)
    except Exception as e:  # corrupt, truncated, not an image, decompression bomb, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return Skipped(_describe(item, source, index), f"{type(e).__name__}: {reason}")


# ----------------------------------------------------------------------------------------------------
# Streams


class ImageStream:
    """An endless, deterministic, checkpointable stream of (batch, S, S, 3) float32 batches in [0, 1].

    Example:
      >>> stream = ImageStream(open_source("folder:data/wikiart"), Augment(), batch_size=8, seed=1)
      >>> batch = next(stream)            # (8, 256, 256, 3)
      >>> state = stream.get_state()      # JSON-able; stream.set_state(state) resumes exactly here
    """

    def __init__(self, source: Source, aug: Augment, *, batch_size: int, seed: int, shard_index: int = 0,
                 shard_count: int = 1, threads: int = 8, prefetch_batches: int = 4,
                 on_skip: Callable[[Skipped, int], None] | None = None):
        """Args:
          source, aug: what to read and how to augment it.
          batch_size: images per batch of this stream (with shards: this process's part of the global batch).
          seed: the order and the augmentation, the same in every process.
          shard_index, shard_count: this process's part: of each global batch of
            `batch_size * shard_count` consecutive elements of the one global stream, elements
            `[shard_index * batch_size, (shard_index + 1) * batch_size)`. The processes' batches, concatenated
            in process order, are the batches of one process reading the whole stream (while no image is
            skipped: a skipped image's place is taken by the next element of the same process).
          threads, prefetch_batches: decoding threads and read-ahead.
          on_skip: called with each skipped item and the running count.
        """
        import grain

        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= shard_index < shard_count:
            raise DataError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
        self.source = source
        self.aug = aug
        self.batch_size = batch_size
        self.on_skip = on_skip or _log_skip
        self._n = len(source.items)
        seq = np.random.SeedSequence(seed).generate_state(2)
        # The global stream: element i is source item k = a seeded permutation (a new one every epoch), augmented
        # with a generator drawn from (seed, i), so any process computes any element identically.
        ds = grain.MapDataset.range(self._n).shuffle(seed=int(seq[0])).repeat(None)
        ds = ds.random_map(lambda k, rng: (k, prepare(source, aug, k, source.items[k], rng)), seed=int(seq[1]))
        if shard_count > 1:
            glob, b, everyone, first = ds, batch_size, batch_size * shard_count, shard_index * batch_size
            ds = grain.MapDataset.range(sys.maxsize).map(lambda j: glob[(j // b) * everyone + first + j % b])
        options = grain.ReadOptions(num_threads=max(int(threads), 1),
                                    prefetch_buffer_size=max(prefetch_batches, 1) * batch_size)
        self._ds = ds.to_iter_dataset(options)
        self._it = iter(self._ds)
        self.skipped = 0
        self.seen = 0
        self._bad_run: set[int] = set()

    def __iter__(self) -> ImageStream:
        return self

    def __next__(self) -> np.ndarray:
        out = np.empty((self.batch_size, self.aug.image_size, self.aug.image_size, 3), np.float32)
        k = 0
        while k < self.batch_size:
            item, x = next(self._it)
            self.seen += 1
            if isinstance(x, Skipped):
                self.skipped += 1
                self._bad_run.add(item)
                self.on_skip(x, self.skipped)
                if len(self._bad_run) >= self._n:  # every item of the source failed, none in between worked
                    raise DataError(f"none of the {self._n} images of {self.source.name} could be "
                                    f"used (last: {x.where}: {x.reason})")
                continue
            self._bad_run.clear()
            np.divide(x, np.float32(255.0), out=out[k], casting="unsafe")
            k += 1
        return out

    def get_state(self) -> dict:
        """The stream's position and counters, JSON-able."""
        return {"position": self._it.get_state(), "seen": self.seen, "skipped": self.skipped}

    def set_state(self, state: dict) -> None:
        """Continue from a position recorded by `get_state` (of a stream built with the same arguments)."""
        self._it = iter(self._ds)
        self._it.set_state(state["position"])
        self.seen = int(state.get("seen", 0))
        self.skipped = int(state.get("skipped", 0))
        self._bad_run.clear()


def _log_skip(s: Skipped, count: int) -> None:
    if count <= _REPORT_FIRST:
        log.warning("skipped %s: %s", s.where, s.reason)
        if count == _REPORT_FIRST:
            log.warning("further skipped images are only counted (see data/skipped_* in the metrics)")


def fixed_images(source: Source, aug: Augment, n: int) -> np.ndarray:
    """The first `n` usable images of a source, resized and centre-cropped: (n, S, S, 3) float32.

    Used for the sample grids, so every grid of a run (resumed or not) shows the same pictures.

    Raises:
      DataError: fewer than `n` usable images among the first few hundred.
    """
    out, reasons = [], []
    for i in range(min(len(source.items), max(50 * n, 200))):
        x = prepare(source, aug, i, source.items[i], None)
        if isinstance(x, Skipped):
            reasons.append(f"{x.where}: {x.reason}")
            continue
        out.append(x)
        if len(out) == n:
            return np.stack(out).astype(np.float32) / np.float32(255.0)
    last = f" (last problem: {reasons[-1]})" if reasons else ""
    raise DataError(f"{source.name} has fewer than {n} usable images{last}")
