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

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from nst_jax import color, models, runtime, tiling
from nst_jax.checks import normalise_weights
from nst_jax.errors import NstError
from nst_jax.files import array_digest
from nst_jax.image import masks_to_grid, to_uint8
from nst_jax.models import adain
from nst_jax.models.open import Loaded, open_model
from nst_jax.typing import Array
from nst_jax.vgg import VGGSpec

ColorMode = Literal["luminance", "histogram"]
COLOR_MODES = ("luminance", "histogram")
# AdaIN's statistics API (the one before conditions) is the AdaIN family's; re-exported under its old home.
StyleStats = adain.StyleStats


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


def _alphas(alpha: float | Sequence[float], n: int) -> np.ndarray:
    a = np.asarray(alpha, np.float64).reshape(-1)
    if a.size == 1:
        a = np.full((n,), a[0])
    if a.shape != (n,):
        raise NstError(f"got {a.size} alpha values for {n} images")
    if not np.all((a >= 0) & (a <= 1)):
        raise NstError(f"alpha must be in [0, 1], got {a.tolist() if a.size > 1 else float(a[0])}")
    return a.astype(np.float32)


class Stylizer:
    """Stylization with compiled forward passes and cached style conditions, for any model family.

    A style becomes the family's *condition* (AdaIN: relu4_1 mean/std of a style image; CIN: weights over its
    table of styles; arbitrary: a predicted style vector), computed once per distinct style and cached; blends
    are convex mixes of conditions, masks place conditions per pixel, alpha trades content for style.

    Example:
      >>> st = Stylizer.load()                                  # pytorch-AdaIN's released weights
      >>> out = st.stylize(content, [style], alpha=0.8)         # (N, H, W, 3) in [0, 1]
      >>> out = st.stylize(content, [s1, s2], weights=[0.7, 0.3], preserve_color="luminance")

    Attributes:
      family: the model family (`nst_jax.models.Family`); `caps` what it can do.
      params, frozen, static: its trainable tree, frozen arrays and static identity.
      spec: the AdaIN encoder's identity (AdaIN only; must be the one the decoder was trained with).
      style_encodes: how many style images have been run through the style network (cache misses).
    """

    def __init__(self, loaded: Loaded | Any, vgg_spec: VGGSpec | None = None, decoder_params: Any = None, *,
                 dtype: Any = jnp.float32, cache_size: int = 1024):
        """A stylizer for a model (`nst_jax.models.open.open_model`), or for AdaIN's parameter trees.

        Args:
          loaded: a `Loaded` model of any family; or AdaIN's VGG19 weights at least up to conv4_1
            (`nst_jax.weights.load_vgg`), with `vgg_spec` (their identity) and `decoder_params`
            (`nst_jax.weights.load_decoder`).
          dtype: compute dtype: float32, or bfloat16 where the family supports it (`Family.dtypes`; opt-in, for
            GPU/TPU: slower than float32 on XLA's CPU backend; benchmarks/RESULTS.md).
          cache_size: style conditions kept (least recently used dropped first; 4 KiB each for AdaIN).

        Raises:
          WeightsError: the trees do not fit the networks.
          NstError: a dtype the family does not support.
        """
        if not isinstance(loaded, Loaded):
            loaded = adain.loaded(loaded, vgg_spec, decoder_params)
        family = loaded.family
        self.dtype = jnp.dtype(dtype)
        if self.dtype.name not in family.dtypes:
            raise NstError(f"compute dtype {self.dtype} is not supported for a {family.name} model "
                           f"({' or '.join(family.dtypes)})")
        # Weights cast once here, so the compiled programs hold weights of the compute dtype (statistics and
        # norms stay float32 inside the families).
        cast = partial(jax.tree.map, lambda v: jnp.asarray(v, jnp.float32).astype(self.dtype))
        self.family = family
        self.caps = family.caps
        self.params = cast(loaded.params)
        self.frozen = cast(loaded.frozen)
        self.static = loaded.static
        self.origin = loaded.origin
        self.cache_size = int(cache_size)
        self.style_encodes = 0
        self._cache: OrderedDict[str, Any] = OrderedDict()
        # Module-level jitted functions: stylizers with the same identity share compiled programs.
        self._cond_fn = partial(_jitted(family, "condition"), static=self.static)
        self._forward_fn = partial(_jitted(family, "stylize"), static=self.static)
        self._masked_fn = (partial(_jitted(family, "stylize_masked"), static=self.static)
                           if family.stylize_masked is not None else None)

    # AdaIN's historical attributes
    @property
    def spec(self) -> Any:
        """The static identity (AdaIN: the encoder's `VGGSpec`)."""
        return self.static

    @property
    def vgg(self) -> Any:
        """AdaIN's encoder weights."""
        return self.frozen.get("vgg") if isinstance(self.frozen, dict) else None

    @property
    def decoder(self) -> Any:
        """AdaIN's decoder weights."""
        return self.params

    # ----------------------------------------------------------------------------------------------------
    # Construction from weight files

    @classmethod
    def load(cls, vgg: str | Path | None = None, decoder: str | Path | None = None,
             checkpoint: str | Path | None = None, *, model: str | Path | None = None,
             dtype: Any = jnp.float32) -> Stylizer:
        """Load weights and build a `Stylizer`: `Stylizer(open_model(model, vgg=, decoder=, checkpoint=))`.

        The arguments and errors are `nst_jax.models.open.open_model`'s: with no `model` (or "adain"),
        pytorch-AdaIN's released decoder and encoder unless `vgg`, `decoder` or `checkpoint` pick others; `model`
        names any family's network, file or training folder. `dtype` is the compute dtype.
        """
        return cls(open_model(model, vgg=vgg, decoder=decoder, checkpoint=checkpoint), dtype=dtype)

    @classmethod
    def load_model(cls, model: str | Path, *, dtype: Any = jnp.float32) -> Stylizer:
        """A stylizer for a model named by the user, of any family (every form `open_model` takes)."""
        return cls(open_model(model), dtype=dtype)

    # ----------------------------------------------------------------------------------------------------
    # Conditions

    def condition(self, style: Any) -> Any:
        """The condition of one style, with a leading axis of 1, computed once per distinct style (cached).

        Args:
          style: a style image (H, W, 3) or (1, H, W, 3) float RGB in [0, 1] (families with style images); an
            int index or a weight vector over the table (families with a style table); or a condition.
        """
        if self.caps.style_table and not self.caps.style_images:
            return self._table_condition(style)
        x = _as_batch(style, "style image")
        if x.shape[0] != 1:
            raise NstError(f"a style is one image, got a batch of {x.shape[0]}")
        key = array_digest(x)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        cond = self._cond_fn(self.params, self.frozen, jnp.asarray(x, self.dtype))
        self.style_encodes += 1
        self._cache[key] = cond
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return cond

    def _table_condition(self, style: Any) -> Any:
        n = self.num_styles
        if isinstance(style, int | np.integer):
            if not 0 <= int(style) < n:
                raise NstError(f"style index {int(style)} is out of range: this model has {n} styles (0-{n - 1})")
            w = np.zeros((1, n), np.float32)
            w[0, int(style)] = 1.0
        else:
            w = np.asarray(style, np.float32).reshape(1, -1)
            if w.shape[1] != n:
                raise NstError(f"style weights have {w.shape[1]} values; this model has {n} styles")
        return self._cond_fn(self.params, self.frozen, jnp.asarray(w))

    @property
    def num_styles(self) -> int | None:
        """The size of the style table (families with one), else None."""
        if not self.caps.style_table:
            return None
        return int(self.family.num_styles(self.params))

    def blend(self, conditions: Sequence[Any], weights: Sequence[float] | None = None) -> Any:
        """A convex mix of K conditions (each with a leading axis of 1, or all N); weights normalised."""
        if len(conditions) == 0:
            raise NstError("a blend needs at least one style")
        w = normalise_weights(weights, len(conditions), what="style weights")
        stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x, jnp.float32) for x in xs]), *conditions)
        return self.family.mix(stacked, jnp.asarray(w))

    def stylize_conditions(self, content: Any, condition: Any, alpha: Any) -> Array:
        """One jitted forward pass with per-image conditions and alpha (the live server's batched call).

        Args:
          content: (N, H, W, 3) images in [0, 1] (or (1, H, W, 3), shared by N conditions).
          condition: a condition tree with leading axis N.
          alpha: (N,) stylization strengths in [0, 1].

        Returns:
          (N, H, W, 3) float32 JAX array in [0, 1].
        """
        cond = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), condition)
        n = jax.tree.leaves(cond)[0].shape[0]
        x = jnp.asarray(content, self.dtype)
        if x.ndim != 4 or x.shape[0] not in (1, n):
            raise NstError(f"content must be (N, H, W, 3) with N = 1 or {n}, got {x.shape}")
        a = jnp.asarray(alpha, jnp.float32).reshape(-1)
        if a.shape != (n,):
            a = jnp.broadcast_to(a, (n,))
        return self._forward_fn(self.params, self.frozen, x, cond, a)

    def stylize_masked_conditions(self, content: Any, conditions: Any, masks: Any, alpha: Any) -> Array:
        """`stylize_conditions` with K conditions per image placed by masks, in one jitted pass.

        Args:
          content: (N, H, W, 3) in [0, 1]; conditions: leading axes (N, K); masks: (N, H, W, K) at the
            content's resolution; alpha: (N,).

        Raises:
          NstError: the family cannot place styles with masks.
        """
        if self._masked_fn is None or not self.caps.masks:
            raise NstError(f"a {self.family.name} model cannot place styles with masks")
        cond = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), conditions)
        return self._masked_fn(self.params, self.frozen, jnp.asarray(content, self.dtype), cond,
                               jnp.asarray(masks, jnp.float32), jnp.asarray(alpha, jnp.float32).reshape(-1))

    # ----------------------------------------------------------------------------------------------------
    # AdaIN's statistics API (conditions {"mean", "std"})

    def style_stats(self, style_img: Any) -> StyleStats:
        """relu4_1 statistics of one style image (AdaIN), computed once per distinct image (cached).

        Args:
          style_img: (H, W, 3) or (1, H, W, 3) float RGB in [0, 1].

        Returns:
          `StyleStats` with (1, 1, 1, 512) mean and std.
        """
        stats_type = self._need_stats("style_stats")
        x = _as_batch(style_img, "style image")
        if x.shape[0] != 1:
            raise NstError(f"style_stats takes one style image, got a batch of {x.shape[0]}")
        return stats_type(**self.condition(x))

    def _need_stats(self, what: str) -> type:
        """The family's statistics type, or an error where its conditions are not a style's statistics."""
        if self.family.stats_type is None:
            raise NstError(f"{what} is AdaIN's; this is a {self.family.name} model (use condition)")
        return self.family.stats_type

    def clear_cache(self) -> None:
        """Forget every cached style."""
        self._cache.clear()

    # Interpolate styles: a convex mix of their statistics (`nst_jax.models.adain.blend_stats`).
    blend_stats = staticmethod(adain.blend_stats)

    def stylize_stats(self, content: Any, mean: Any, std: Any, alpha: Any) -> Array:
        """`stylize_conditions` with AdaIN statistics: mean, std (N, 1, 1, 512) each."""
        self._need_stats("stylize_stats")
        return self.stylize_conditions(content, adain.stats_condition(mean, std), alpha)

    def _conditions_for(self, styles: Sequence[Any], content: np.ndarray | None) -> list[Any]:
        """The condition of each style; with `content` (1, H, W, 3), style images are first recoloured to it."""
        out = []
        for i, s in enumerate(styles):
            if isinstance(s, StyleStats):
                self._need_stats("StyleStats")
                if content is not None:
                    raise NstError("histogram colour preservation recolours style images; precomputed "
                                   "StyleStats cannot be recoloured (pass the style image instead)")
                out.append(adain.stats_condition(*(np.reshape(v, (1, 1, 1, -1)) for v in s)))
                continue
            if self.caps.style_table and not self.caps.style_images:
                out.append(self._table_condition(s))
                continue
            x = _as_batch(s, f"style image {i + 1}")
            if x.shape[0] != 1:
                raise NstError(f"style {i + 1} is a batch of {x.shape[0]} images; pass one image per style")
            if content is not None:
                x = np.asarray(color.coral(x, content), np.float32)
            out.append(self.condition(x))
        return out

    def _check_color(self, preserve_color: str | None) -> None:
        if preserve_color not in (None, *COLOR_MODES):
            raise NstError(f"unknown colour preservation {preserve_color!r}; use luminance or histogram")
        if preserve_color is not None and preserve_color not in self.caps.color_modes:
            raise NstError(f"a {self.family.name} model supports colour preservation "
                           f"{' or '.join(self.caps.color_modes) or 'none'}, not {preserve_color!r}")

    # ----------------------------------------------------------------------------------------------------
    # Stylization

    def stylize(self, content: Any, styles: Sequence[Any], *, weights: Sequence[float] | None = None,
                alpha: float | Sequence[float] = 1.0, masks: Sequence[Any] | None = None,
                preserve_color: ColorMode | None = None, tile: int | str | None = None,
                tile_stats: str | None = None, memory_budget: int | str | None = None) -> np.ndarray:
        """Stylize a batch of content images with one style, a blend of styles, or masked styles.

        Args:
          content: (N, H, W, 3) or (H, W, 3) float RGB in [0, 1] (one size for the whole batch).
          styles: K styles: style images ((H, W, 3) or (1, H, W, 3), any sizes) or `StyleStats` (AdaIN), style
            indices (CIN).
          weights: with K > 1 and no masks: interpolation weights (normalised); None = equal weights.
          alpha: stylization strength in [0, 1] (1 = full style, 0 = the content reconstructed), or one
            per image.
          masks: spatial control: K (H, W) masks in [0, 1], one per style (see `masks_to_grid`); exclusive
            with `weights`.
          preserve_color: None, "luminance" (keep the content's chroma) or "histogram" (CORAL each style image
            to the content's colours before taking its statistics).
          tile: None (one pass), "auto" (tiles where the image would not fit `memory_budget`) or a tile side in
            pixels: tiled stylization with the whole image's statistics (`nst_jax.tiling`, docs/tiling.md).
          tile_stats: where tiles' statistics come from: "exact" or "thumbnail" (None: the family's default).
          memory_budget: bytes (or a size such as "2G") of working memory for one pass (None: a quarter of the
            available memory).

        Returns:
          (N, H, W, 3) float32 NumPy array in [0, 1].
        """
        x = _as_batch(content, "content")
        n, H, W, _ = x.shape
        cond, m = self._request(x, styles, weights, masks, preserve_color)
        a = jnp.asarray(_alphas(alpha, n))
        tile_plan = self.tile_plan(H, W, tile, memory_budget)
        if tile_plan is not None:
            return np.stack([tiling.stylize_tiled(
                self, x[i], jax.tree.map(lambda v, i=i: v[i:i + 1], cond), None if m is None else m, a[i:i + 1],
                tile_plan, stats=tile_stats, luminance=preserve_color == "luminance", progress=False)
                for i in range(n)])
        xj = jnp.asarray(x, self.dtype)
        if m is None:
            out = self._forward_fn(self.params, self.frozen, xj, cond, a)
        else:
            out = self._masked_fn(self.params, self.frozen, xj, cond, jnp.broadcast_to(jnp.asarray(m), (n,) + m.shape),
                                  a)
        if preserve_color == "luminance":
            out = color.luminance_transfer(out, jnp.asarray(x))
        return np.asarray(out, np.float32)

    def tile_plan(self, height: int, width: int, tile: int | str | None, memory_budget: int | str | None = None
                  ) -> tiling.TilePlan | None:
        """The tiles an image of `height` x `width` runs in, or None (one pass): `nst_jax.tiling.plan_for`."""
        return tiling.plan_for(self.family, height, width, tile, memory_budget)

    def stylize_image(self, image: np.ndarray, styles: Sequence[Any], *, weights: Sequence[float] | None = None,
                      alpha: float = 1.0, masks: Sequence[Any] | None = None,
                      preserve_color: ColorMode | None = None, tile: int | str | None = "auto",
                      tile_stats: str | None = None, memory_budget: int | str | None = None,
                      progress: bool = False, verbose: bool = False) -> np.ndarray:
        """One image of any size, (H, W, 3) uint8 (`nst_jax.image.load_uint8`), stylized into a new uint8 array,
        in tiles where it would not fit the budget; `stylize`'s arguments. The whole image is never held as
        float32 when tiled ("histogram" recolours the styles to its thumbnail).

        Returns:
          (H, W, 3) uint8.
        """
        img = np.asarray(image)
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise NstError(f"stylize_image takes an (H, W, 3) uint8 image, got {img.dtype} {img.shape}")
        H, W = img.shape[:2]
        tile_plan = self.tile_plan(H, W, tile, memory_budget)
        if tile_plan is None:
            return to_uint8(self.stylize(tiling.as_float(img), styles, weights=weights, alpha=alpha, masks=masks,
                                         preserve_color=preserve_color)[0])
        small = tiling.thumbnail(img, 1)[None] if preserve_color == "histogram" else np.zeros((1, 1, 1, 3), np.float32)
        cond, m = self._request(small, styles, weights, masks, preserve_color, hw=(H, W))
        return tiling.stylize_tiled(self, img, cond, m, _alphas(alpha, 1), tile_plan, stats=tile_stats,
                                    out=np.empty((H, W, 3), np.uint8), luminance=preserve_color == "luminance",
                                    progress=progress, verbose=verbose)

    def _request(self, x: np.ndarray, styles: Sequence[Any], weights: Sequence[float] | None,
                 masks: Sequence[Any] | None, preserve_color: str | None, hw: tuple[int, int] | None = None
                 ) -> tuple[Any, np.ndarray | None]:
        """The conditions of a request for contents x (N, H, W, 3), checked: (leaves (N, ...), None), or with
        masks (leaves (N, K, ...), masks (H, W, K) at `hw`, default the contents' resolution)."""
        n, H, W, _ = x.shape
        H, W = hw or (H, W)
        if len(styles) == 0:
            raise NstError("give at least one style")
        self._check_color(preserve_color)
        if masks is not None and weights is not None:
            raise NstError("style weights blend styles everywhere and masks place them: give one or the "
                           "other")
        # Histogram matching makes each style's condition depend on the content image.
        groups = ([self._conditions_for(styles, x[i:i + 1]) for i in range(n)] if preserve_color == "histogram"
                  else [self._conditions_for(styles, None)])
        fill = partial(jax.tree.map, lambda v: v if v.shape[0] == n else jnp.broadcast_to(v, (n,) + v.shape[1:]))
        if masks is None:
            w = normalise_weights(weights, len(styles), what="style weights")
            blended = [self.blend(g, w) for g in groups]
            return fill(jax.tree.map(lambda *xs: jnp.concatenate(xs), *blended)), None
        if self._masked_fn is None or not self.caps.masks:
            raise NstError(f"a {self.family.name} model cannot place styles with masks")
        m = masks_to_grid(masks, (H, W), (H, W), len(styles))
        # conditions (N, K, ...): group g's K conditions, each with its leading 1 dropped
        per = [jax.tree.map(lambda *xs: jnp.concatenate(xs)[None], *g) for g in groups]
        return fill(jax.tree.map(lambda *xs: jnp.concatenate(xs), *per)), m

    def stylize_each(self, content: Any, styles: Sequence[Any], *, alpha: float = 1.0,
                     preserve_color: ColorMode | None = None) -> np.ndarray:
        """One content image against many styles in one batched pass (the content is encoded once).

        Args:
          content: (H, W, 3) or (1, H, W, 3).
          styles: S styles (as `stylize`).
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
        self._check_color(preserve_color)
        conds = self._conditions_for(styles, x if preserve_color == "histogram" else None)
        s = len(conds)
        cond = jax.tree.map(lambda *xs: jnp.concatenate(xs), *conds)
        a = jnp.asarray(_alphas(alpha, s))
        out = self._forward_fn(self.params, self.frozen, jnp.asarray(x, self.dtype), cond, a)
        if preserve_color == "luminance":
            out = color.luminance_transfer(out, jnp.asarray(x))
        return np.asarray(out, np.float32)


_JITTED: dict[tuple[str, str], Any] = {}


def _jitted(family: models.Family, what: str, build: Any = None) -> Any:
    """One jitted copy of each family function per process (static identity as a static argument); with
    `build`, the program `build(family)` composed over the family's functions, cached under `what` (e.g.
    `nst_jax.smoothing`'s smoothed pass)."""
    key = (family.name, what)
    if key not in _JITTED:
        fn = getattr(family, what) if build is None else build(family)
        _JITTED[key] = runtime.jit(fn, family.compiler_options, static_argnames="static")
    return _JITTED[key]
