"""Arbitrary style transfer in one forward pass: the `Stylizer` inference API (AdaIN).

A `Stylizer` holds the encoder (VGG19 to relu4_1) and the decoder, jit-compiles the forward pass once per
input shape, and caches each style image's relu4_1 statistics, so re-stylizing with a known style costs one
encoder and one decoder pass. On top of the single-style pass of pytorch-AdaIN it offers:

- `alpha`, the content/style trade-off (feature interpolation, as in the paper), per image if wanted;
- style interpolation over N styles with float weights (normalised to sum to 1);
- spatial control: N masks for N styles (the Lua original's `-mask`, generalised from 2 to N);
- colour preservation: "luminance" (stylize, then keep the content's chroma) or "histogram" (recolour each
  style image to the content's colours with CORAL first), both also with blends and masks;
- batches of contents against one style (`stylize`) and one content against many styles (`stylize_each`).

Shapes and compilation: `jax.jit` keeps one executable per distinct input shape (batch, height, width), for
the content pass and for the style-statistics pass. A video or webcam stream whose frames share one size
compiles once and then runs warm; a folder of photos of different sizes compiles once per size (resize with
`content_size` to share shapes). Nothing is padded to buckets, because padding would change the content
statistics AdaIN uses.

Output size: the decoder's output is 8x the relu4_1 grid, which ceil-mode pooling makes at least as large as
the input; the extra bottom/right rows and columns are cropped, so outputs always have the content's size.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import image as imagelib
from nst_jax.errors import ImageError, NstError, WeightsError
from nst_jax.models import adain
from nst_jax.models.decoder import check_decoder_params
from nst_jax.vgg import SPECS, VGGSpec, check_vgg_params, expected_shapes

Array = jax.Array
ColorMode = Literal["luminance", "histogram"]
COLOR_MODES = ("luminance", "histogram")
# Relative tolerance on aspect ratios when a mask of another size is stretched over the content image.
_ASPECT_TOLERANCE = 0.02


_STATS = jax.jit(adain.style_statistics, static_argnames="spec")
_FORWARD = jax.jit(adain.stylize, static_argnames="spec")
_REGIONS = jax.jit(adain.stylize_regions, static_argnames="spec")


class StyleStats(NamedTuple):
    """relu4_1 statistics of a style: per-channel mean and std, each (1, 1, 1, 512) float32."""

    mean: Array
    std: Array


def _as_batch(img: Any, what: str) -> np.ndarray:
    """(H, W, 3) or (N, H, W, 3) float images -> (N, H, W, 3) float32."""
    a = np.asarray(img)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape[1] < 1 or a.shape[2] < 1:
        raise NstError(f"{what} must be (H, W, 3) or (N, H, W, 3) RGB, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise NstError(f"{what} must be float RGB in [0, 1], got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _digest(img: np.ndarray) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    h.update(repr(img.shape).encode())
    h.update(img.tobytes())
    return h.digest()


def _normalise_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    if weights is None:
        return np.full((n,), 1.0 / n, np.float32)
    w = np.asarray([float(x) for x in weights], np.float64)
    if w.shape != (n,):
        raise NstError(f"got {len(w)} style weights for {n} styles")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise NstError(f"style weights must be non-negative with a positive sum, got {list(weights)}")
    return (w / w.sum()).astype(np.float32)


def _alphas(alpha: float | Sequence[float], n: int) -> np.ndarray:
    a = np.asarray(alpha, np.float64).reshape(-1)
    if a.size == 1:
        a = np.full((n,), a[0])
    if a.shape != (n,):
        raise NstError(f"got {a.size} alpha values for {n} images")
    if not np.all((a >= 0) & (a <= 1)):
        raise NstError(f"alpha must be in [0, 1], got {a.tolist() if a.size > 1 else float(a[0])}")
    return a.astype(np.float32)


def adaptive_avg_pool(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Average a (H, W) mask onto an (h, w) grid (torch's adaptive_avg_pool2d bins: floor start, ceil end)."""
    H, W = mask.shape
    h, w = hw
    rows = [(i * H // h, -(-(i + 1) * H // h)) for i in range(h)]
    cols = [(j * W // w, -(-(j + 1) * W // w)) for j in range(w)]
    c = np.zeros((H + 1, W + 1), np.float64)
    c[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), 0), 1)
    r0, r1 = np.array(rows).T
    c0, c1 = np.array(cols).T
    total = c[r1][:, c1] - c[r0][:, c1] - c[r1][:, c0] + c[r0][:, c0]
    area = np.outer(r1 - r0, c1 - c0)
    return (total / area).astype(np.float32)


def masks_to_grid(masks: Sequence[Any], content_hw: tuple[int, int], grid_hw: tuple[int, int],
                  n_styles: int) -> np.ndarray:
    """Prepare spatial-control masks: check count and shape, stretch to the content, average onto the grid.

    Args:
      masks: one (H, W) array in [0, 1] per style; or, for exactly 2 styles, a single mask (white = first
        style, black = second, as the Lua original's `-mask`). A mask of another size than the content must
        have the same aspect ratio (within 2%); it is resized (bilinear) to the content's size.
      content_hw: the content image's (H, W).
      grid_hw: the relu4_1 grid (h, w).
      n_styles: number of styles.

    Returns:
      (h, w, K) float32 weights.

    Raises:
      NstError: wrong count; ImageError: a mask whose shape does not match the content.
    """
    ms = [np.asarray(m, np.float32) for m in masks]
    if len(ms) == 1 and n_styles == 2:
        ms = [ms[0], 1.0 - ms[0]]
    if len(ms) != n_styles:
        raise NstError(f"got {len(masks)} masks for {n_styles} styles: give one mask per style"
                       + (" (or one mask for two styles)" if n_styles == 2 else ""))
    H, W = content_hw
    out = []
    for i, m in enumerate(ms):
        m = np.squeeze(m)
        if m.ndim != 2:
            raise ImageError(f"mask {i + 1} must be a single-channel (H, W) image, got shape "
                             f"{np.shape(masks[i])}")
        if not np.all(np.isfinite(m)) or m.min() < 0 or m.max() > 1:
            raise ImageError(f"mask {i + 1} must hold values in [0, 1]")
        if m.shape != (H, W):
            ratio = (m.shape[1] / m.shape[0]) / (W / H)
            if abs(ratio - 1.0) > _ASPECT_TOLERANCE:
                raise ImageError(f"mask {i + 1} is {m.shape[1]}x{m.shape[0]} but the content image is "
                                 f"{W}x{H}: their aspect ratios differ")
            m = np.asarray(imagelib.resize(m[None, :, :, None], (H, W), "bilinear"))[0, :, :, 0]
        out.append(adaptive_avg_pool(np.clip(m, 0.0, 1.0), grid_hw))
    return np.stack(out, axis=-1)


class Stylizer:
    """AdaIN stylization with compiled forward passes and cached style statistics.

    Example:
      >>> st = Stylizer.load()                                  # pytorch-AdaIN's released weights
      >>> out = st.stylize(content, [style], alpha=0.8)         # (N, H, W, 3) in [0, 1]
      >>> out = st.stylize(content, [s1, s2], weights=[0.7, 0.3], preserve_color="luminance")

    Attributes:
      spec: the encoder's identity (must be the one the decoder was trained with).
      style_encodes: how many style images have been run through the encoder (cache misses).
    """

    def __init__(self, vgg_params: Any, vgg_spec: VGGSpec, decoder_params: Any, *, dtype: Any = jnp.float32,
                 cache_size: int = 1024):
        """Build from parameter trees.

        Args:
          vgg_params: VGG19 weights at least up to conv4_1 (`nst_jax.weights.load_vgg`).
          vgg_spec: their identity.
          decoder_params: AdaIN decoder weights (`nst_jax.weights.load_decoder`).
          dtype: compute dtype: float32 (CPU; bf16 is slower there) or bfloat16 (GPU/TPU).
          cache_size: style statistics kept (least recently used dropped first; 4 KiB each).

        Raises:
          WeightsError: the trees do not fit the networks.
        """
        check_vgg_params(vgg_params, vgg_spec, adain.TAP)
        check_decoder_params(decoder_params)
        needed = expected_shapes(vgg_spec, adain.TAP)
        self.vgg = {k: {leaf: jnp.asarray(v, jnp.float32) for leaf, v in vgg_params[k].items()}
                    for k in needed}
        self.decoder = {k: {leaf: jnp.asarray(v, jnp.float32) for leaf, v in p.items()}
                        for k, p in decoder_params.items()}
        self.spec = vgg_spec
        self.dtype = jnp.dtype(dtype)
        self.cache_size = int(cache_size)
        self.style_encodes = 0
        self._cache: OrderedDict[bytes, StyleStats] = OrderedDict()
        # Module-level jitted functions: Stylizers with the same encoder identity share compiled programs.
        self._stats_fn = partial(_STATS, spec=vgg_spec)
        self._forward_fn = partial(_FORWARD, spec=vgg_spec)
        self._regions_fn = partial(_REGIONS, spec=vgg_spec)

    # ----------------------------------------------------------------------------------------------------
    # Construction from weight files

    @classmethod
    def load(cls, vgg: str | Path | None = None, decoder: str | Path | None = None,
             checkpoint: str | Path | None = None, *, dtype: Any = jnp.float32) -> Stylizer:
        """Load weights and build a `Stylizer`.

        Args:
          vgg: VGG19 weights (registry name or file). Default: the encoder the decoder pairs with ("adain" for
            pytorch-AdaIN's decoder; the one a checkpoint's config names).
          decoder: AdaIN decoder (registry name "adain", pytorch-AdaIN's decoder.pth, or a converted .npz).
            Default: pytorch-AdaIN's released decoder (fetched into the cache if absent).
          checkpoint: a training --workdir or checkpoint step directory instead of `decoder`.
          dtype: compute dtype.

        Raises:
          WeightsError: unreadable weights, weights that do not fit, or an encoder that is not the one the
            decoder was trained with (e.g. torchvision's VGG19 with AdaIN's decoder).
          DownloadError: default weights are not cached and cannot be fetched.
        """
        from nst_jax.weights import load_decoder, load_vgg

        if checkpoint is not None and decoder is not None:
            raise NstError("give either a decoder file or a training checkpoint, not both")
        if decoder is not None and Path(decoder).is_dir():
            decoder, checkpoint = None, decoder  # a training directory: its config names its encoder
        if checkpoint is not None:
            from nst_jax.checkpoints import load_decoder_checkpoint

            dec_params, config = load_decoder_checkpoint(checkpoint)
            pairs_with = str(config["vgg_weights"])
            origin = f"the decoder in checkpoint {checkpoint}"
        else:
            dec_src = decoder if decoder is not None else "adain"
            dec_params = load_decoder(dec_src)
            pairs_with = _decoder_vgg(dec_src)
            origin = f"decoder {dec_src}" if decoder is not None else "pytorch-AdaIN's decoder"
        if vgg is None:
            try:
                vgg_params, spec = _load_named_vgg(pairs_with)
            except WeightsError as e:
                raise WeightsError(f"{e} (the encoder {origin} was trained with; give another copy of it "
                                   f"with --vgg)") from None
        else:
            vgg_params, spec = load_vgg(vgg)
            expected = _vgg_identity(pairs_with)
            if expected is not None and spec.source != expected:
                named = "" if pairs_with == expected else f" ({pairs_with})"
                raise WeightsError(
                    f"{vgg} is a {spec.source} VGG19, but {origin} was trained on the {expected} "
                    f"encoder{named}; a decoder only works with the encoder it was trained with")
        return cls(vgg_params, spec, dec_params, dtype=dtype)

    # ----------------------------------------------------------------------------------------------------
    # Style statistics

    def style_stats(self, style_img: Any) -> StyleStats:
        """relu4_1 statistics of one style image, computed once per distinct image (cached by content hash).

        Args:
          style_img: (H, W, 3) or (1, H, W, 3) float RGB in [0, 1].

        Returns:
          `StyleStats` with (1, 1, 1, 512) mean and std.
        """
        x = _as_batch(style_img, "style image")
        if x.shape[0] != 1:
            raise NstError(f"style_stats takes one style image, got a batch of {x.shape[0]}")
        key = _digest(x)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        mean, std = self._stats_fn(self.vgg, jnp.asarray(x, self.dtype))
        self.style_encodes += 1
        stats = StyleStats(mean, std)
        self._cache[key] = stats
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return stats

    def clear_cache(self) -> None:
        """Forget every cached style."""
        self._cache.clear()

    @staticmethod
    def blend_stats(stats: Sequence[StyleStats], weights: Sequence[float] | None = None) -> StyleStats:
        """Interpolate styles: a convex mix of their statistics (weights are normalised to sum to 1).

        Equal to pytorch-AdaIN's interpolation (the weighted sum of the styles' AdaIN outputs), which is
        affine in the style statistics.

        Args:
          stats: K `StyleStats` (each (1, 1, 1, 512), or all (N, 1, 1, 512)).
          weights: K non-negative floats with a positive sum; None = equal weights.
        """
        if len(stats) == 0:
            raise NstError("blend_stats needs at least one style")
        w = _normalise_weights(weights, len(stats))
        means = jnp.stack([jnp.asarray(s.mean, jnp.float32) for s in stats])
        stds = jnp.stack([jnp.asarray(s.std, jnp.float32) for s in stats])
        mean, std = adain.blend_statistics(means, stds, jnp.asarray(w))
        return StyleStats(mean, std)

    def _stats_for(self, styles: Sequence[Any], content: np.ndarray | None) -> list[StyleStats]:
        """Statistics of each style; with `content` (1, H, W, 3), style images are first recoloured to it."""
        out = []
        for i, s in enumerate(styles):
            if isinstance(s, StyleStats):
                if content is not None:
                    raise NstError("histogram colour preservation recolours style images; precomputed "
                                   "StyleStats cannot be recoloured (pass the style image instead)")
                out.append(StyleStats(jnp.asarray(s.mean, jnp.float32).reshape(1, 1, 1, -1),
                                      jnp.asarray(s.std, jnp.float32).reshape(1, 1, 1, -1)))
                continue
            x = _as_batch(s, f"style image {i + 1}")
            if x.shape[0] != 1:
                raise NstError(f"style {i + 1} is a batch of {x.shape[0]} images; pass one image per style")
            if content is not None:
                x = np.asarray(imagelib.coral(x, content), np.float32)
            out.append(self.style_stats(x))
        return out

    # ----------------------------------------------------------------------------------------------------
    # Stylization

    def stylize_stats(self, content: Any, mean: Any, std: Any, alpha: Any) -> Array:
        """One jitted forward pass with per-image style statistics and alpha (the live server's batched call).

        Args:
          content: (N, H, W, 3) images in [0, 1] (or (1, H, W, 3): its features are shared by N styles).
          mean, std: (N, 1, 1, 512) style statistics.
          alpha: (N,) stylization strengths in [0, 1].

        Returns:
          (N, H, W, 3) float32 JAX array in [0, 1].
        """
        mean = jnp.asarray(mean, jnp.float32)
        std = jnp.asarray(std, jnp.float32)
        n = mean.shape[0]
        if mean.shape != (n, 1, 1, adain.CHANNELS) or std.shape != mean.shape:
            raise NstError(f"style statistics must be (N, 1, 1, {adain.CHANNELS}), got {mean.shape} and "
                           f"{std.shape}")
        x = jnp.asarray(content, self.dtype)
        if x.ndim != 4 or x.shape[0] not in (1, n):
            raise NstError(f"content must be (N, H, W, 3) with N = 1 or {n}, got {x.shape}")
        a = jnp.asarray(alpha, jnp.float32).reshape(-1)
        if a.shape != (n,):
            a = jnp.broadcast_to(a, (n,))
        return self._forward_fn(self.vgg, self.decoder, x, mean, std, a)

    def stylize(self, content: Any, styles: Sequence[Any], *, weights: Sequence[float] | None = None,
                alpha: float | Sequence[float] = 1.0, masks: Sequence[Any] | None = None,
                preserve_color: ColorMode | None = None) -> np.ndarray:
        """Stylize a batch of content images with one style, a blend of styles, or masked styles.

        Args:
          content: (N, H, W, 3) or (H, W, 3) float RGB in [0, 1] (one size for the whole batch).
          styles: K style images ((H, W, 3) or (1, H, W, 3), any sizes) or `StyleStats`.
          weights: with K > 1 and no masks: interpolation weights (normalised); None = equal weights.
          alpha: stylization strength in [0, 1] (1 = full style, 0 = the content reconstructed), or one
            per image.
          masks: spatial control: K (H, W) masks in [0, 1], one per style (see `masks_to_grid`); exclusive
            with `weights`.
          preserve_color: None, "luminance" (keep the content's chroma) or "histogram" (CORAL each style image
            to the content's colours before taking its statistics).

        Returns:
          (N, H, W, 3) float32 NumPy array in [0, 1].
        """
        x = _as_batch(content, "content")
        n, H, W, _ = x.shape
        if len(styles) == 0:
            raise NstError("give at least one style")
        if preserve_color not in (None, *COLOR_MODES):
            raise NstError(f"unknown colour preservation {preserve_color!r}; use luminance or histogram")
        if masks is not None and weights is not None:
            raise NstError("style weights blend styles everywhere and masks place them: give one or the "
                           "other")
        a = jnp.asarray(_alphas(alpha, n))
        per_image = preserve_color == "histogram"
        # Histogram matching makes each style's statistics depend on the content image.
        groups = ([self._stats_for(styles, x[i:i + 1]) for i in range(n)] if per_image
                  else [self._stats_for(styles, None)])
        xj = jnp.asarray(x, self.dtype)
        if masks is None:
            w = _normalise_weights(weights, len(styles))
            blended = [self.blend_stats(g, w) for g in groups]
            mean = jnp.concatenate([b.mean for b in blended])
            std = jnp.concatenate([b.std for b in blended])
            if mean.shape[0] != n:
                mean = jnp.broadcast_to(mean, (n,) + mean.shape[1:])
                std = jnp.broadcast_to(std, (n,) + std.shape[1:])
            out = self._forward_fn(self.vgg, self.decoder, xj, mean, std, a)
        else:
            grid = adain.feature_grid(H, W, self.spec)
            m = masks_to_grid(masks, (H, W), grid, len(styles))
            means = jnp.stack([jnp.concatenate([s.mean.reshape(1, -1) for s in g]) for g in groups])
            stds = jnp.stack([jnp.concatenate([s.std.reshape(1, -1) for s in g]) for g in groups])
            means = jnp.broadcast_to(means, (n,) + means.shape[1:])
            stds = jnp.broadcast_to(stds, (n,) + stds.shape[1:])
            mj = jnp.broadcast_to(jnp.asarray(m), (n,) + m.shape)
            out = self._regions_fn(self.vgg, self.decoder, xj, mj, means, stds, a)
        if preserve_color == "luminance":
            out = imagelib.luminance_transfer(out, jnp.asarray(x))
        return np.asarray(out, np.float32)

    def stylize_each(self, content: Any, styles: Sequence[Any], *, alpha: float = 1.0,
                     preserve_color: ColorMode | None = None) -> np.ndarray:
        """One content image against many styles in one batched pass (the content is encoded once).

        Args:
          content: (H, W, 3) or (1, H, W, 3).
          styles: S style images or `StyleStats`.
          alpha: stylization strength in [0, 1].
          preserve_color: as `stylize`.

        Returns:
          (S, H, W, 3) float32 NumPy array, one image per style.
        """
        x = _as_batch(content, "content")
        if x.shape[0] != 1:
            raise NstError(f"stylize_each takes one content image, got a batch of {x.shape[0]}")
        if len(styles) == 0:
            raise NstError("give at least one style")
        if preserve_color not in (None, *COLOR_MODES):
            raise NstError(f"unknown colour preservation {preserve_color!r}; use luminance or histogram")
        stats = self._stats_for(styles, x if preserve_color == "histogram" else None)
        s = len(stats)
        mean = jnp.concatenate([st.mean for st in stats])
        std = jnp.concatenate([st.std for st in stats])
        a = jnp.asarray(_alphas(alpha, s))
        out = self._forward_fn(self.vgg, self.decoder, jnp.asarray(x, self.dtype), mean, std, a)
        if preserve_color == "luminance":
            out = imagelib.luminance_transfer(out, jnp.asarray(x))
        return np.asarray(out, np.float32)


def tune_allocator() -> bool:
    """Make glibc keep freed large buffers for reuse instead of returning them to the OS after every pass.

    XLA's CPU runtime allocates each program's scratch memory (about 250 MB for a 512 px stylization) on its
    worker threads. glibc serves those from per-thread arenas that cannot hold more than 64 MiB, so it falls
    back to a fresh `mmap` even with `MALLOC_MMAP_MAX_=0`, and the kernel page-faults and zeroes the memory
    again on every pass (about 86k faults and 0.16-0.32 s of system time per 512 px pass measured here). One
    arena, no mmap and no trimming keep the memory in the process: under 200 faults and 4 ms of system time
    per pass. Like starting with `MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>`; call
    it before the first computation. The cost: memory freed after a large image stays with the process until
    it exits. The command line calls it; NST_JAX_MALLOC=default turns it off.

    Returns:
      whether the settings were applied (False on non-glibc systems or when turned off).
    """
    if os.environ.get("NST_JAX_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8
    return all(mallopt(param, value) == 1 for param, value in
               ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1)))


def _decoder_vgg(src: str | Path) -> str:
    """The VGG a decoder file pairs with: the one named in a converted checkpoint export, else AdaIN's."""
    path = Path(src)
    if path.is_file():
        from nst_jax.weights import read_weights

        try:
            what, content = read_weights(path)
        except WeightsError:
            return "adain"  # load_decoder has already accepted the file; let it be judged there
        if what == "npz-adain_decoder":
            meta = content[1] if isinstance(content, tuple) else {}
            if isinstance(meta, dict) and meta.get("vgg_weights"):
                return str(meta["vgg_weights"])
    return "adain"


def _vgg_identity(name: str) -> str | None:
    """The `VGGSpec.source` of the encoder a name refers to; None if it cannot be known without the file."""
    from nst_jax.weights.registry import REGISTRY

    kind, _, spec_name = name.partition(":")
    if kind == "random":
        return SPECS[spec_name or "random"].source if (spec_name or "random") in SPECS else None
    if name in REGISTRY and REGISTRY[name].spec:
        return SPECS[REGISTRY[name].spec].source
    path = Path(name)
    if path.is_file():
        from nst_jax.weights import load_vgg

        return load_vgg(path)[1].source
    return None


def _load_named_vgg(name: str) -> tuple[Any, VGGSpec]:
    """Load the encoder a decoder or checkpoint names (registry name, file, or "random[:SPEC]" for tests)."""
    from nst_jax.checkpoints import resolve_vgg

    return resolve_vgg(name, adain.TAP)
